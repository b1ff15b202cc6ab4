#!/usr/bin/env bash
# Self-test of tests/e2e/lib.sh, the harness every e2e script trusts to say
# FAIL: each step here runs lib.sh's `step` on a small command that must fail
# (or pass) and checks the verdict it gave. Needs bash only; no clavis.
#
# Usage: tests/e2e_lib/run.sh
# Prints PASS/FAIL per rule, then "N passed, M failed"; exits non-zero on any failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../e2e/lib.sh
source "$HERE/../e2e/lib.sh"
e2e_init clavis-e2e-lib

# tally [VAR=VALUE...] CMD...: runs CMD in a subshell with fresh counters and
# with E2E_SKIP and CI unset unless given; prints "PASSED FAILED SKIPPED" (CMD's
# output is in $TMP/inner.out).
tally() {
    (
        unset E2E_SKIP CI
        while [[ $1 == [A-Z_]*=* ]]; do export "${1?}"; shift; done
        PASSED=0 FAILED=0 SKIPPED=0 FAILED_STEPS=()
        "$@" >"$TMP/inner.out" 2>&1
        echo "$PASSED $FAILED $SKIPPED"
    )
}

# verdict [VAR=VALUE...] CMD...: tally of `step inner CMD...`.
verdict() {
    local vars=()
    while [[ $1 == [A-Z_]*=* ]]; do vars+=("$1"); shift; done
    tally "${vars[@]}" step inner "$@"
}

# want EXPECTED [VAR=VALUE...] CMD...: the verdict is EXPECTED ("1 0 0" = passed).
# want_tally EXPECTED [VAR=VALUE...] CMD...: the same for CMD run as it is.
want() { expect verdict "$@"; }
want_tally() { expect tally "$@"; }
expect() {
    local how=$1 expected=$2 got
    shift 2
    got=$("$how" "$@")
    [[ $got == "$expected" ]] || {
        echo "$how $* gave passed/failed/skipped $got, want $expected; its output:"
        cat "$TMP/inner.out"
        return 1
    }
}

fails_midway() { false; echo "went on after a failed command"; }
fails_in_substitution() { local x; x=$(false; echo "went on"); echo "x=$x"; }
fails_in_a_pipe() { false | cat; echo "went on after a failed pipeline"; }
fails_in_a_nested_function() { fails_midway; echo "went on"; }
handles_its_failure() { false || echo "handled"; ! false; echo "done"; }
passes() { echo "all good"; }

step "a failing command before a function step's last fails the step" want "0 1 0" fails_midway
step "a failing command inside a function step's \$(...) fails the step" want "0 1 0" fails_in_substitution
step "a failing stage of a pipeline in a function step fails the step" want "0 1 0" fails_in_a_pipe
step "a failure inside a function that a step calls fails the step" want "0 1 0" fails_in_a_nested_function
step "a failure the function handles (|| or !) does not fail the step" want "1 0 0" handles_its_failure
step "a function step whose commands all succeed passes" want "1 0 0" passes
step "a failing external command fails the step" want "0 1 0" false
stops_where() {
    verdict fails_midway >/dev/null
    grep -q 'step stopped at run.sh:[0-9]*: `false` exited 1' "$TMP/inner.out" ||
        { echo "no line naming the failed command:"; cat "$TMP/inner.out"; return 1; }
}
step "a failed function step names the command that stopped it" stops_where
errexit_restored() {
    ( # step turns errexit off around its command: it must turn it back on.
        set -euo pipefail
        local before=$- PASSED=0 FAILED=0 SKIPPED=0 FAILED_STEPS=()
        step inner fails_midway >/dev/null 2>&1
        [[ $- == "$before" ]] || { echo "shell options were $before, are $- after a step"; exit 1; }
    )
}
step "step leaves the caller's shell options as they were" errexit_restored

# Skips: visible outside CI, failures under it (CI=true must run every step).
step "outside CI, a step matching E2E_SKIP is skipped" want "0 0 1" E2E_SKIP=inner passes
skip_line() {
    verdict E2E_SKIP=inner passes >/dev/null
    grep -q '^SKIP  inner ' "$TMP/inner.out" || { echo "no SKIP line:"; cat "$TMP/inner.out"; return 1; }
}
step "outside CI, a skipped step prints a SKIP line" skip_line
step "under CI=true, a step matching E2E_SKIP fails instead of skipping" want "0 1 0" CI=true E2E_SKIP=inner passes
step "under CI=1, a step matching E2E_SKIP fails instead of skipping" want "0 1 0" CI=1 E2E_SKIP=inner passes
step "with CI=false, a step matching E2E_SKIP is skipped" want "0 0 1" CI=false E2E_SKIP=inner passes
step "under CI=true, a step that E2E_SKIP does not name runs" want "1 0 0" CI=true E2E_SKIP=other passes
step "outside CI, a script's own skip is counted as skipped" want_tally "0 0 1" skip inner "a reason"
step "under CI=true, a script's own skip is a failure" want_tally "0 1 0" CI=true skip inner "a reason"

summary
((FAILED == 0))
