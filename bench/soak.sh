#!/usr/bin/env bash
# Soak: 1,000 concurrent SSE streams through the forwarder (and the agent) for 60 s, each client opening
# its next stream as the last ends, with 3 refreshes forced in the middle. Every stream is compared
# byte for byte with what the API sent; the forwarder's RSS and descriptors are reported, and its
# descriptors must come back to the baseline once the clients leave (bench/src/bin/soak/).
#
# Usage: bench/soak.sh [--smoke]
#   --smoke  100 streams for 10 s with 2 refreshes (CI); the same checks.
# Everything runs on 127.0.0.1 against fakes of the token endpoint and the API started by the soak itself.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
parse_smoke "$@"
if ((SMOKE)); then
    ARGS=(--streams 100 --duration 10s --refreshes 2)
else
    ARGS=(--streams 1000 --duration 60s --refreshes 3)
fi
build_release
# Each stream holds a client socket and an API socket in this process.
ulimit -n "$(ulimit -Hn)"
exec "$BIN/soak" --agent "$BIN/sidecred-agent" --forwarder "$BIN/sidecred-forwarder" "${ARGS[@]}"
