#!/usr/bin/env bash
# Runs every libFuzzer target (or those named) for FUZZ_SECONDS each.
# Installs cargo-fuzz if missing; the machine's stable toolchain is enough
# (RUSTC_BOOTSTRAP=1 lets it take the -Z flags cargo-fuzz passes).
#
# Usage: fuzz/run.sh [TARGET...]      (make fuzz)
# Env:   FUZZ_SECONDS=60   per target
#        FUZZ_SANITIZER=none   or address (for the C decoders, slower)
# New inputs go to fuzz/corpus-work/TARGET (not committed; the seeds in
# fuzz/corpus/TARGET are read only). A crash stops the run and is left in
# fuzz/artifacts/TARGET/: fix it, then copy the input to
# fuzz/regressions/TARGET/ so `cargo test --test fuzz_props` replays it.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1 CARGO_INCREMENTAL=0
SECONDS_EACH=${FUZZ_SECONDS:-60}
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
mapfile -t TARGETS < <(if (($#)); then printf '%s\n' "$@"; else cargo fuzz list; fi)
# No sanitizer: clavis's own code is safe Rust (overflow checks and debug
# assertions stay on); ASan would only slow the search. `-s address` for C deps.
SAN=${FUZZ_SANITIZER:-none}
echo "== build (${TARGETS[*]}), sanitizer $SAN"
time cargo fuzz build -s "$SAN"
for t in "${TARGETS[@]}"; do
    echo "== $t for ${SECONDS_EACH}s"
    mkdir -p "corpus-work/$t" "regressions/$t"
    cargo fuzz run -s "$SAN" "$t" "corpus-work/$t" "corpus/$t" "regressions/$t" -- \
        -max_total_time="$SECONDS_EACH" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 2>&1 |
        grep -E '^(#[0-9]+.*(DONE|pulse)|stat::number_of_executed_units|==[0-9]+==|thread .* panicked|Test unit written|SUMMARY|Done)' || true
    if compgen -G "artifacts/$t/crash-*" >/dev/null || compgen -G "artifacts/$t/timeout-*" >/dev/null; then
        echo "FAIL $t: see fuzz/artifacts/$t/"
        exit 1
    fi
done
echo "== no crash in ${TARGETS[*]}"
