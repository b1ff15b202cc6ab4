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
# This script's own steps must not be skipped by an E2E_SKIP meant for others.
OUTER_SKIP=${E2E_SKIP:-}
unset E2E_SKIP

# verdict CMD...: runs `step inner CMD...` with fresh counters in a subshell;
# prints "PASSED FAILED SKIPPED" (its output is in $TMP/inner.out).
verdict() {
    (
        PASSED=0 FAILED=0 SKIPPED=0 FAILED_STEPS=()
        step inner "$@" >"$TMP/inner.out" 2>&1
        echo "$PASSED $FAILED $SKIPPED"
    )
}

# want EXPECTED CMD...: the verdict on CMD is EXPECTED ("1 0 0" = passed).
want() {
    local expected=$1 got
    shift
    got=$(verdict "$@")
    [[ $got == "$expected" ]] || {
        echo "step $* gave passed/failed/skipped $got, want $expected; its output:"
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

[[ -z $OUTER_SKIP ]] || E2E_SKIP=$OUTER_SKIP
summary
((FAILED == 0))
