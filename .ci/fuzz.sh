#!/usr/bin/env bash
# CI: runs each fuzz target (fuzz/) for a bounded time when a nightly toolchain is present, and fails on a
# crash, naming the input that caused it. Without nightly it says so and does nothing more: `cargo test`
# has already replayed every seed corpus (fuzz/corpus/<target>/) through the same properties on stable.
#
# Usage: .ci/fuzz.sh [seconds per target]   (default 30, or $FUZZ_SECONDS)
# Installs cargo-fuzz into ~/.cargo/bin when missing. Targets run side by side, one per core. New inputs
# a run finds go to fuzz/target/corpus/, never into the seed corpus: add one there by hand when it is
# worth keeping (a crash, once fixed).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-${FUZZ_SECONDS:-30}}
targets=(frame credentials token_response headers)

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: no nightly toolchain, so no fuzzing; the seed corpora were replayed on stable by cargo test"
    exit 0
fi
started=$SECONDS
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install --locked --quiet cargo-fuzz
fi
installed=$SECONDS

# The main workspace's lock, so the targets are built against the dependency versions everything else
# is; cargo adds only what the fuzz crate brings (libfuzzer-sys).
cp Cargo.lock fuzz/Cargo.lock
cd fuzz
# No sanitizer: the code the targets reach has no `unsafe` (the one call in the workspace, malloc_trim in
# forwarder/src/memory.rs, is not on their path). Overflow checks and debug assertions stay on.
cargo +nightly fuzz build --sanitizer none
built=$SECONDS

bin=target/x86_64-unknown-linux-gnu/release
# One target's run; its log and, on a crash, the reproducer go under target/ and artifacts/.
fuzz_one() {
    local target=$1
    mkdir -p "target/corpus/$target" "artifacts/$target"
    rm -f "target/fuzz-$target.failed"
    touch "target/fuzz-$target.start"
    "$bin/$target" "target/corpus/$target" "corpus/$target" -artifact_prefix="artifacts/$target/" \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"target/fuzz-$target.log" 2>&1 ||
        touch "target/fuzz-$target.failed"
}
parallel=$(nproc)
for ((i = 0; i < ${#targets[@]}; i += parallel)); do
    for target in "${targets[@]:i:parallel}"; do fuzz_one "$target" & done
    wait
done

failed=()
for target in "${targets[@]}"; do
    log="target/fuzz-$target.log"
    if [[ ! -e "target/fuzz-$target.failed" ]]; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
        echo "fuzz: $target: ${runs:-?} runs in ${seconds}s (${rate:-?}/s), no crash"
        continue
    fi
    failed+=("$target")
    echo "fuzz: $target FAILED; what broke, and the end of its log ($PWD/$log):"
    grep -m1 -A2 'panicked at' "$log" || true
    tail -n 12 "$log"
    find "artifacts/$target" -type f -newer "target/fuzz-$target.start" | while read -r input; do
        echo "fuzz: reproducer: $PWD/$input"
        echo "      replay it: (cd fuzz && cargo +nightly fuzz run --sanitizer none $target $input),"
        echo "      or copy it into fuzz/corpus/$target/ and run cargo test, whose replay test names it"
    done
done
echo "fuzz: install $((installed - started))s, build $((built - installed))s, runs $((SECONDS - built))s"
if ((${#failed[@]})); then
    echo "fuzz: crashes in: ${failed[*]}"
    exit 1
fi
