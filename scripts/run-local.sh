#!/usr/bin/env bash
# Runs the agent and the forwarder on this machine, on ~/.claude/.credentials.json by default, with the
# API on http://127.0.0.1:8000. Ctrl-C stops both. Extra arguments go to the forwarder.
#   SIDECRED_CREDENTIALS=/path/.credentials.json scripts/run-local.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p sidecred-agent -p sidecred-forwarder

: "${SIDECRED_SOCKET:=${XDG_RUNTIME_DIR:-/tmp/sidecred-$(id -u)}/sidecred-local/agent.sock}"
export SIDECRED_SOCKET
pids=()
stop() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait; }
trap stop EXIT INT TERM

target/release/sidecred-agent run &
pids+=($!)
for _ in $(seq 1 200); do
  [[ -S "$SIDECRED_SOCKET" ]] && break
  kill -0 "${pids[0]}" 2>/dev/null || exit 1
  sleep 0.05
done
target/release/sidecred-forwarder "$@" &
pids+=($!)
wait -n
