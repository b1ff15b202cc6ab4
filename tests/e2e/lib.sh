# Shared set-up for the end-to-end scripts (tests/e2e*/run.sh). Sourced, not run:
#
#   set -euo pipefail
#   HERE=...; VENV="$HERE/.venv"; PY="$VENV/bin/python"
#   source "$HERE/../e2e/lib.sh"
#   e2e_init clavis-e2e-NAME "clavis.log, upstream-record.jsonl, clavis.yaml"
#
# e2e_init makes $TMP and installs the EXIT trap that stops every process in
# PIDS, prints the summary if the script stopped early, and keeps $TMP when a
# step failed (or with E2E_KEEP_TMP=1). A script ends with
#
#   summary
#   ((FAILED == 0))
#
# Env honoured here: CLAVIS_BIN, E2E_VERBOSE, E2E_KEEP_TMP, E2E_SKIP (see step),
# CI (under CI=true a skipped step is a failed one, see skip).

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd) # tests/e2e: gen_certs.py, fake_upstream.py
ROOT=$(cd "$E2E_DIR/../.." && pwd)
STEP_TIMEOUT=${STEP_TIMEOUT:-90} # seconds, for a step that runs an external command

# ---------------------------------------------------------------- results

log() { printf '== %s\n' "$*"; }
indent() { sed 's/^/      /'; }
pass() { PASSED=$((PASSED + 1)); printf 'PASS  %s\n' "$1"; }

# fail NAME [DETAIL...]: counts a failure; the details are printed indented.
fail() {
    FAILED=$((FAILED + 1))
    FAILED_STEPS+=("$1")
    printf 'FAIL  %s\n' "$1"
    shift
    if (($# > 0)) && [[ -n "$*" ]]; then printf '%s\n' "$@" | indent; fi
    return 0
}

# in_ci: whether this runs under CI (CI set, as CI systems do, and not false/0).
in_ci() { [[ -n ${CI:-} && $CI != false && $CI != 0 ]]; }

# skip NAME WHY [DETAIL...]: a step that did not run. Outside CI that is a
# visible SKIP line; under CI (CI=true) nothing may go unchecked, so it is a
# failure (with the DETAILs). Every script says "skipped" only through this.
skip() {
    if in_ci; then
        fail "$1" "skipped under CI=true, which must run every step: $2" "${@:3}"
    else
        SKIPPED=$((SKIPPED + 1))
        printf 'SKIP  %s (%s)\n' "$1" "$2"
    fi
}

# run_step CMD...: a step's command. A shell function runs with errexit and
# pipefail, also inside its $(...) (inherit_errexit), so any command in it that
# fails, not only its last, fails the step. Bash ignores errexit inside a
# function called from `cmd || ...` or `if cmd`, so the caller must not call
# this there (step does not). An external command is capped at $STEP_TIMEOUT s
# (shell functions bound their own commands' time).
run_step() {
    if declare -F "$1" >/dev/null; then
        set -eE -o pipefail
        shopt -s inherit_errexit
        # Says which command stopped the step (errtrace: inside functions too).
        trap 'echo "step stopped at ${BASH_SOURCE[0]##*/}:$LINENO: \`$BASH_COMMAND\` exited $?" >&2' ERR
        "$@"
    else
        timeout -k 5 "$STEP_TIMEOUT" "$@"
    fi
}

# step NAME CMD...: runs CMD (see run_step), PASS on exit 0. Output is shown on
# failure, and always with E2E_VERBOSE=1. Steps whose name matches the extended
# regex E2E_SKIP are skipped (a failure under CI, see skip).
step() {
    local - name=$1 out rc
    shift
    if [[ -n "${E2E_SKIP:-}" && $name =~ $E2E_SKIP ]]; then
        skip "$name" "its name matches E2E_SKIP='$E2E_SKIP'"
        return 0
    fi
    # `local -` restores the caller's errexit when step returns. The step runs
    # in the command substitution's subshell, not in a `||` list: there its own
    # errexit holds.
    set +e
    out=$(run_step "$@" 2>&1)
    rc=$?
    if ((rc == 0)); then
        pass "$name"
        if [[ -n "${E2E_VERBOSE:-}" && -n "$out" ]]; then indent <<<"$out"; fi
    else
        fail "$name"
        { [[ -n "$out" ]] && tail -n 40 <<<"$out"; ((rc == 124)) && echo "(timed out)"; echo "(exit $rc)"; } | indent
    fi
    return 0
}

# summary: the failed steps, then "N passed, M failed[, K skipped]" as the last line.
summary() {
    SUMMARY_DONE=1
    echo
    if ((${#FAILED_STEPS[@]} > 0)); then
        echo "failed steps:"
        printf '  - %s\n' "${FAILED_STEPS[@]}"
    fi
    if ((SKIPPED > 0)); then
        echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"
    else
        echo "$PASSED passed, $FAILED failed"
    fi
}

# abort NAME [DETAIL...]: a failed step after which the script cannot go on.
abort() {
    fail "$@"
    summary
    exit 1
}

# ---------------------------------------------------------------- temp dir, processes, cleanup

# e2e_init TMP_PREFIX [ARTIFACTS]: counters, $TMP, and the EXIT/INT/TERM traps.
# ARTIFACTS names what the kept temp dir holds, for the closing note.
e2e_init() {
    PASSED=0
    FAILED=0
    SKIPPED=0
    FAILED_STEPS=()
    SUMMARY_DONE=0
    PIDS=()
    E2E_ARTIFACTS=${2:-}
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    trap e2e_cleanup EXIT
    trap 'exit 130' INT TERM
}

e2e_cleanup() {
    local rc=$? pid
    set +e
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    if ((SUMMARY_DONE == 0)); then
        # Aborted before the end (a setup command failed under set -e).
        fail "script aborted (exit $rc) before all steps ran"
        summary
        rc=1
    fi
    if ((FAILED > 0)) || [[ -n "${E2E_KEEP_TMP:-}" ]]; then
        echo "artifacts kept in $TMP${E2E_ARTIFACTS:+ ($E2E_ARTIFACTS)}" >&2
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}

# ---------------------------------------------------------------- set-up

# clavis_binary [--release]: sets CLAVIS_BIN (cargo build unless it is set).
clavis_binary() {
    local profile=debug args=()
    if [[ ${1:-} == --release ]]; then profile=release args=(--release); fi
    if [[ -n "${CLAVIS_BIN:-}" ]]; then
        log "using CLAVIS_BIN=$CLAVIS_BIN"
    else
        log "cargo build ${args[*]}"
        (cd "$ROOT" && nice -n 10 cargo build "${args[@]}" 2>&1 | tail -n 30) ||
            abort "build clavis (cargo build ${args[*]})"
        CLAVIS_BIN="$ROOT/target/$profile/clavis"
    fi
    [[ -x "$CLAVIS_BIN" ]] || abort "clavis binary at $CLAVIS_BIN" "not found or not executable"
    pass "clavis binary available ($CLAVIS_BIN)"
}

# python_venv STAMP KEY PIP_ARGS...: makes the virtualenv $VENV (python3 -m venv,
# else virtualenv) and pip-installs PIP_ARGS into it, unless $VENV/STAMP already
# holds KEY (what was installed last time).
python_venv() {
    local stamp="$VENV/$1" key=$2
    shift 2
    log "python venv $VENV"
    [[ -x "$PY" && "$(cat "$stamp" 2>/dev/null)" == "$key" ]] && return 0
    if [[ ! -x "$PY" ]]; then
        python3 -m venv "$VENV" 2>/dev/null ||
            { python3 -m pip install -q virtualenv && python3 -m virtualenv -q "$VENV"; } ||
            abort "create the virtualenv $VENV"
    fi
    "$PY" -m pip install -q --disable-pip-version-check "$@" || abort "pip install $*"
    echo "$key" >"$stamp"
}

# gen_certs HOST...: the test CA ($TMP/test-ca.pem) and an upstream certificate
# for HOSTs ($TMP/upstream.pem, .key).
gen_certs() {
    log "test CA and upstream certificate in $TMP"
    "$PY" "$E2E_DIR/gen_certs.py" "$TMP" "$@" >/dev/null ||
        abort "generate the test CA and upstream certificate (tests/e2e/gen_certs.py)"
}

# start_upstream READY_FILE CMD...: runs an upstream in the background (output
# in $TMP/upstream.log) and waits up to 10 s for it to write READY_FILE.
start_upstream() {
    local ready=$1
    shift
    log "fake upstream"
    "$@" >"$TMP/upstream.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do [[ -s "$ready" ]] && break; sleep 0.1; done
    [[ -s "$ready" ]] || abort "start the fake upstream" "$(tail -n 20 "$TMP/upstream.log")"
}

# start_fake_upstream: tests/e2e/fake_upstream.py, recording into $RECORD; sets
# UP_TLS and UP_PLAIN (its TLS and plain-HTTP ports).
start_fake_upstream() {
    RECORD="$TMP/upstream-record.jsonl"
    start_upstream "$TMP/upstream-ports.json" "$PY" "$E2E_DIR/fake_upstream.py" \
        --cert "$TMP/upstream.pem" --key "$TMP/upstream.key" \
        --record "$RECORD" --ready-file "$TMP/upstream-ports.json"
    read -r UP_TLS UP_PLAIN < <(json_fields "$TMP/upstream-ports.json" tls_port plain_port)
}

# json_fields FILE KEY...: the KEYs of the JSON object in FILE, on one line.
json_fields() {
    "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(*[d[k] for k in sys.argv[2:]])' "$@"
}

free_ports() { # prints N distinct free loopback ports
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# clavis_paths: picks PROXY_PORT and ADMIN_PORT; sets ADMIN, CONFIG, CLAVIS_LOG
# and the CA paths (CA_DIR, CA_CERT, BUNDLE).
clavis_paths() {
    read -r PROXY_PORT ADMIN_PORT < <(free_ports 2)
    ADMIN="http://127.0.0.1:$ADMIN_PORT"
    CONFIG="$TMP/clavis.yaml"
    CLAVIS_LOG="$TMP/clavis.log"
    CA_DIR="$TMP/ca"
    CA_CERT="$CA_DIR/clavis-ca.pem"
    BUNDLE="$CA_DIR/clavis-ca-bundle.pem"
}

# config_head [--admin-token T] [--require-auth] UP_PORT HOST...: the proxy,
# admin, ca and upstream sections of the config (HOST:443 resolved to UP_PORT on
# loopback, the test CA trusted); more resolve lines may follow.
config_head() {
    local admin_opts="" proxy_opts="" h
    while [[ ${1:-} == --* ]]; do
        case $1 in
        --admin-token) admin_opts=", token: \"$2\""; shift 2 ;;
        --require-auth) proxy_opts=", require_auth: true"; shift ;;
        *) echo "config_head: unknown option $1" >&2; return 1 ;;
        esac
    done
    local port=$1
    shift
    echo "proxy: { listen: \"127.0.0.1:$PROXY_PORT\"$proxy_opts }"
    echo "admin: { listen: \"127.0.0.1:$ADMIN_PORT\"$admin_opts }"
    echo "ca: { cert: \"$CA_CERT\", key: \"$CA_DIR/clavis-ca.key\", bundle: \"$BUNDLE\" }"
    echo "upstream:"
    echo "  extra_ca: [\"$TMP/test-ca.pem\"]"
    echo "  resolve:"
    for h in "$@"; do echo "    \"$h:443\": \"127.0.0.1:$port\""; done
}

# start_clavis RUST_LOG: `clavis serve` on $CONFIG (JSON log in $CLAVIS_LOG),
# then waits up to 30 s for GET /readyz = 200; aborts if it never comes.
start_clavis() {
    local ready=0 code why crc=0
    log "clavis serve (proxy 127.0.0.1:$PROXY_PORT, admin 127.0.0.1:$ADMIN_PORT)"
    RUST_LOG=$1 "$CLAVIS_BIN" serve --config "$CONFIG" --log-format json >"$CLAVIS_LOG" 2>&1 &
    CLAVIS_PID=$!
    PIDS+=("$CLAVIS_PID")
    for _ in $(seq 300); do
        kill -0 "$CLAVIS_PID" 2>/dev/null || break
        code=$(curl -q -s --noproxy '*' -o /dev/null -w '%{http_code}' --max-time 2 "$ADMIN/readyz" || true)
        if [[ $code == 200 ]]; then ready=1; break; fi
        sleep 0.1
    done
    ((ready == 1)) && return 0
    why="clavis did not become ready within 30 s"
    if ! kill -0 "$CLAVIS_PID" 2>/dev/null; then
        wait "$CLAVIS_PID" || crc=$?
        why="clavis exited with status $crc before it was ready"
    fi
    abort "clavis ready (GET $ADMIN/readyz = 200 within 30 s)" "$why; config:" "$(indent <"$CONFIG")" \
        "log tail:" "$(tail -n 40 "$CLAVIS_LOG")"
}

# clavis_alive: PASS/FAIL on clavis still running after the steps.
clavis_alive() {
    if kill -0 "$CLAVIS_PID" 2>/dev/null; then
        pass "${1:-clavis still running after all steps}"
    else
        fail "${1:-clavis still running after all steps}" "$(tail -n 30 "$CLAVIS_LOG")"
    fi
}
