#!/usr/bin/env bash
# End-to-end test of the signing connectors with the official SDKs:
# coinbase-advanced-py (`from coinbase.rest import RESTClient`) and Kalshi's
# kalshi-python-sync, each holding a throw-away but valid key, call the real
# API host names through a real `clavis serve` (HTTPS_PROXY). A fake TLS
# upstream on 127.0.0.1 (upstream.resolve) verifies every signature with the
# REAL keys' public halves, which only clavis holds, and refuses the SDKs' own
# signatures (checked directly too). Every key is generated at run time.
#
# Usage: tests/e2e_signing/run.sh
# Env:   CLAVIS_BIN=path   use this binary instead of `cargo build` (target/debug/clavis)
#        E2E_VERBOSE=1     print every step's output, not only failures'
#        E2E_KEEP_TMP=1    keep the temp dir (always kept when a step failed)
#
# Prints PASS/FAIL per step, then "N passed, M failed"; exits non-zero on any failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VENV="$HERE/.venv"
PY="$VENV/bin/python"
AGENT=e2e
AGENT_TOKEN=e2e-signing-agent-token
REAL_CB_NAME="organizations/e2e-real-org/apiKeys/real-key-0001"
REAL_KALSHI_ID="7d1f2c3b-real-4e5f-8a9b-0123456789ab"
HOSTS=(api.coinbase.com external-api.kalshi.com)

unset HTTPS_PROXY https_proxy HTTP_PROXY http_proxy ALL_PROXY all_proxy NO_PROXY no_proxy \
      SSL_CERT_FILE SSL_CERT_DIR REQUESTS_CA_BUNDLE CURL_CA_BUNDLE COINBASE_API_KEY COINBASE_API_SECRET 2>/dev/null || true

PASSED=0
FAILED=0
FAILED_STEPS=()
SUMMARY_DONE=0
PIDS=()
TMP=$(mktemp -d "${TMPDIR:-/tmp}/clavis-e2e-signing.XXXXXX")

log() { printf '== %s\n' "$*"; }
pass() { PASSED=$((PASSED + 1)); printf 'PASS  %s\n' "$1"; }
fail() { FAILED=$((FAILED + 1)); FAILED_STEPS+=("$1"); printf 'FAIL  %s\n' "$1"; }
indent() { sed 's/^/      /'; }

# step NAME CMD...: runs CMD (90 s cap); PASS on exit 0, output shown on failure.
step() {
    local name=$1 out rc=0
    shift
    if declare -F "$1" >/dev/null; then
        out=$("$@" 2>&1) || rc=$?
    else
        out=$(timeout -k 5 90 "$@" 2>&1) || rc=$?
    fi
    if ((rc == 0)); then
        pass "$name"
        if [[ -n "${E2E_VERBOSE:-}" && -n "$out" ]]; then indent <<<"$out"; fi
    else
        fail "$name"
        { [[ -n "$out" ]] && tail -n 40 <<<"$out"; ((rc == 124)) && echo "(timed out)"; echo "(exit $rc)"; } | indent
    fi
    return 0
}

summary() {
    SUMMARY_DONE=1
    echo
    if ((FAILED > 0)); then
        echo "failed steps:"
        printf '  - %s\n' "${FAILED_STEPS[@]}"
    fi
    echo "$PASSED passed, $FAILED failed"
}

cleanup() {
    local rc=$?
    set +e
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    if ((SUMMARY_DONE == 0)); then
        fail "script aborted (exit $rc) before all steps ran"
        summary
        rc=1
    fi
    if ((FAILED > 0)) || [[ -n "${E2E_KEEP_TMP:-}" ]]; then
        echo "artifacts kept in $TMP (clavis.log, upstream.log, upstream-record.jsonl, clavis.yaml)" >&2
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

abort() {
    fail "$1"
    shift
    if (($# > 0)); then printf '%s\n' "$@" | indent; fi
    summary
    exit 1
}

free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# ---------------------------------------------------------------- 1. build
if [[ -n "${CLAVIS_BIN:-}" ]]; then
    log "using CLAVIS_BIN=$CLAVIS_BIN"
else
    log "cargo build"
    (cd "$ROOT" && nice -n 10 cargo build 2>&1 | tail -n 30) || abort "build clavis (cargo build)"
    CLAVIS_BIN="$ROOT/target/debug/clavis"
fi
[[ -x "$CLAVIS_BIN" ]] || abort "clavis binary at $CLAVIS_BIN" "not found or not executable"
pass "clavis binary available ($CLAVIS_BIN)"

# ---------------------------------------------------------------- 2. SDKs
log "python venv $VENV"
REQS="coinbase-advanced-py kalshi-python-sync cryptography"
if [[ ! -x "$PY" ]] || ! "$PY" -c 'import coinbase.rest, kalshi_python_sync, cryptography' 2>/dev/null; then
    [[ -x "$PY" ]] || python3 -m venv "$VENV" || abort "create the virtualenv $VENV"
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --disable-pip-version-check $REQS || abort "pip install $REQS"
fi
"$PY" -m pip list --disable-pip-version-check 2>/dev/null | grep -Ei '^(coinbase-advanced-py|kalshi.python.sync) ' | indent || true

# ---------------------------------------------------------------- 3. keys and certificates
log "keys, test CA and upstream certificate in $TMP"
K="$TMP/keys"
mkdir -p "$K"
chmod 700 "$K"
{
    # Real keys: clavis signs with them; the upstream knows only their public halves.
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$K/real-kalshi.pem"
    openssl pkey -in "$K/real-kalshi.pem" -pubout -out "$K/real-kalshi.pub.pem"
    openssl ecparam -name prime256v1 -genkey -noout -out "$K/real-coinbase.pem"
    openssl pkey -in "$K/real-coinbase.pem" -pubout -out "$K/real-coinbase.pub.pem"
    # Throw-away keys the SDKs hold (valid, so the SDKs sign; worthless upstream).
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$K/agent-kalshi.pem"
    openssl ecparam -name prime256v1 -genkey -noout -out "$K/agent-coinbase.pem"
} >"$TMP/keys.log" 2>&1 || abort "generate keys with openssl" "$(tail -n 20 "$TMP/keys.log")"
"$PY" "$ROOT/tests/e2e/gen_certs.py" "$TMP" "${HOSTS[@]}" >/dev/null ||
    abort "generate the test CA and upstream certificate (tests/e2e/gen_certs.py)"

# ---------------------------------------------------------------- 4. fake upstream
log "fake upstream"
RECORD="$TMP/upstream-record.jsonl"
: >"$RECORD"
"$PY" "$HERE/upstream.py" --cert "$TMP/upstream.pem" --key "$TMP/upstream.key" \
    --ready-file "$TMP/upstream-port.json" --record "$RECORD" \
    --coinbase-pub "$K/real-coinbase.pub.pem" --coinbase-key-name "$REAL_CB_NAME" \
    --kalshi-pub "$K/real-kalshi.pub.pem" --kalshi-key-id "$REAL_KALSHI_ID" \
    >"$TMP/upstream.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [[ -f "$TMP/upstream-port.json" ]] && break; sleep 0.1; done
[[ -f "$TMP/upstream-port.json" ]] || abort "start the fake upstream" "$(tail -n 20 "$TMP/upstream.log")"
UP_PORT=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' "$TMP/upstream-port.json")

# ---------------------------------------------------------------- 5. clavis
read -r PROXY_PORT ADMIN_PORT < <(free_ports 2)
CA_DIR="$TMP/ca"
BUNDLE="$CA_DIR/clavis-ca-bundle.pem"
CONFIG="$TMP/clavis.yaml"
CLAVIS_LOG="$TMP/clavis.log"
{
    echo "proxy: { listen: \"127.0.0.1:$PROXY_PORT\", require_auth: true }"
    echo "admin: { listen: \"127.0.0.1:$ADMIN_PORT\" }"
    echo "ca: { cert: \"$CA_DIR/clavis-ca.pem\", key: \"$CA_DIR/clavis-ca.key\", bundle: \"$BUNDLE\" }"
    echo "upstream:"
    echo "  extra_ca: [\"$TMP/test-ca.pem\"]"
    echo "  resolve:"
    for h in "${HOSTS[@]}"; do echo "    \"$h:443\": \"127.0.0.1:$UP_PORT\""; done
    echo "services:"
    echo "  - name: coinbase-real"
    echo "    connector: coinbase"
    echo "    credentials: { api_key: \"$REAL_CB_NAME\", api_secret: \"\${file:$K/real-coinbase.pem}\" }"
    echo "  - name: kalshi-real"
    echo "    connector: kalshi"
    echo "    credentials: { api_key_id: \"$REAL_KALSHI_ID\", private_key: \"\${file:$K/real-kalshi.pem}\" }"
    echo "agents:"
    echo "  - { name: $AGENT, token: $AGENT_TOKEN, services: [\"*\"] }"
} >"$CONFIG"
log "clavis serve on 127.0.0.1:$PROXY_PORT (admin $ADMIN_PORT)"
RUST_LOG=info "$CLAVIS_BIN" serve --config "$CONFIG" --log-format json >"$CLAVIS_LOG" 2>&1 &
PIDS+=($!)
ready=0
for _ in $(seq 150); do
    if [[ -f "$BUNDLE" ]] && curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1; then
        ready=1
        break
    fi
    sleep 0.1
done
((ready)) || abort "start clavis" "$(tail -n 30 "$CLAVIS_LOG")"
pass "clavis serving, CA bundle at ca.bundle"

# ---------------------------------------------------------------- 6. SDK calls
agent_env=(
    env
    "HTTPS_PROXY=http://$AGENT:$AGENT_TOKEN@127.0.0.1:$PROXY_PORT"
    "REQUESTS_CA_BUNDLE=$BUNDLE" "SSL_CERT_FILE=$BUNDLE"
    "E2E_PROXY_USER=$AGENT" "E2E_PROXY_PASS=$AGENT_TOKEN"
    "AGENT_CB_NAME=organizations/agent-dummy/apiKeys/throw-away" "AGENT_CB_PEM=$K/agent-coinbase.pem"
    "AGENT_KALSHI_ID=00000000-agent-dummy-0000-000000000000" "AGENT_KALSHI_PEM=$K/agent-kalshi.pem"
    "E2E_UPSTREAM_PORT=$UP_PORT" "E2E_UPSTREAM_CA=$TMP/test-ca.pem" "E2E_REAL_KALSHI_ID=$REAL_KALSHI_ID"
)
client() { timeout -k 5 90 "${agent_env[@]}" "$PY" "$HERE/clients.py" "$@"; }

step "upstream refuses the Coinbase SDK's own JWT (direct, no clavis)" client coinbase-direct
step "upstream refuses the Kalshi SDK's own signature (direct, no clavis)" client kalshi-direct
before=$(wc -l <"$RECORD")
step "coinbase-advanced-py GET /accounts?limit=5 re-signed by clavis (ES256 JWT verified)" client coinbase-get
step "coinbase-advanced-py POST /orders JSON re-signed by clavis (ES256 JWT verified)" client coinbase-post
step "kalshi-python-sync GET /portfolio/orders?limit=5 re-signed by clavis (RSA-PSS verified)" client kalshi-get
step "kalshi-python-sync POST /portfolio/orders JSON re-signed by clavis (RSA-PSS verified)" client kalshi-post

check_record() {
    "$PY" - "$RECORD" "$before" <<'EOF'
import json, sys
lines = open(sys.argv[1]).read().splitlines()[int(sys.argv[2]):]
recs = [json.loads(l) for l in lines]
bad = [r for r in recs if not r["ok"]]
assert not bad, "refused through clavis: " + json.dumps([(r["method"], r["path"], r["reason"]) for r in bad])
seen = {(r["host"], r["method"], r["path"].split("?")[0]) for r in recs}
want = {
    ("api.coinbase.com", "GET", "/api/v3/brokerage/accounts"),
    ("api.coinbase.com", "POST", "/api/v3/brokerage/orders"),
    ("external-api.kalshi.com", "GET", "/trade-api/v2/portfolio/orders"),
    ("external-api.kalshi.com", "POST", "/trade-api/v2/portfolio/orders"),
}
assert want <= seen, f"missing {want - seen}"
queries = [r["path"] for r in recs if r["method"] == "GET"]
assert any("limit=5" in q for q in queries if "accounts" in q), queries
assert any("limit=5" in q for q in queries if "orders" in q), queries
for r in recs:
    for k, v in r["headers"]:
        assert "agent-dummy" not in v and "throw-away" not in v, (k, v)
print(f"{len(recs)} requests through clavis, all verified with the real keys")
EOF
}
step "every request through clavis verified upstream; no agent key id leaked" check_record

no_key_in_log() {
    local line
    for f in real-kalshi.pem real-coinbase.pem; do
        # The second line of each PEM: 64 characters of the private key's base64.
        line=$(sed -n 2p "$K/$f")
        if grep -qF -- "$line" "$CLAVIS_LOG"; then
            echo "key material of $f in clavis.log"
            return 1
        fi
    done
}
step "no real key material in clavis's log" no_key_in_log

summary
