#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs the real clients the compatibility tests run (once; they
# are cached, see tests/compat/install.sh) and Debian's prometheus package, builds the binaries the end-to-end tests start, then runs every
# test of the workspace. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/compat/install.sh >/dev/null
# The metrics test runs a real Prometheus and promtool.
scripts/install-prometheus.sh
cargo build --workspace --bins
cargo test --workspace "$@"
