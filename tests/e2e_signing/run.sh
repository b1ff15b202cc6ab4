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
#        E2E_SKIP=REGEX    skip the steps whose name matches (extended regex)
#
# Prints PASS/FAIL per step, then "N passed, M failed"; exits non-zero on any failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV="$HERE/.venv"
PY="$VENV/bin/python"
AGENT=e2e
AGENT_TOKEN=e2e-signing-agent-token
REAL_CB_NAME="organizations/e2e-real-org/apiKeys/real-key-0001"
REAL_KALSHI_ID="7d1f2c3b-real-4e5f-8a9b-0123456789ab"
HOSTS=(api.coinbase.com external-api.kalshi.com)

unset HTTPS_PROXY https_proxy HTTP_PROXY http_proxy ALL_PROXY all_proxy NO_PROXY no_proxy \
      SSL_CERT_FILE SSL_CERT_DIR REQUESTS_CA_BUNDLE CURL_CA_BUNDLE COINBASE_API_KEY COINBASE_API_SECRET 2>/dev/null || true

# shellcheck source=../e2e/lib.sh
source "$HERE/../e2e/lib.sh"
e2e_init clavis-e2e-signing "clavis.log, upstream.log, upstream-record.jsonl, clavis.yaml"

# ---------------------------------------------------------------- 1. build
clavis_binary

# ---------------------------------------------------------------- 2. SDKs
REQS="coinbase-advanced-py kalshi-python-sync cryptography"
# shellcheck disable=SC2086
python_venv .e2e-requirements "$REQS" $REQS
"$PY" -m pip list --disable-pip-version-check 2>/dev/null | grep -Ei '^(coinbase-advanced-py|kalshi.python.sync) ' | indent || true

# ---------------------------------------------------------------- 3. keys and certificates
log "keys, test CA and upstream certificate in $TMP"
K="$TMP/keys"
mkdir -p "$K"
chmod 700 "$K"
# Chained with &&: in a `{ ...; } || abort` group only the last command's
# status would count (errexit is off in a || list).
{
    # Real keys: clavis signs with them; the upstream knows only their public halves.
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$K/real-kalshi.pem" &&
        openssl pkey -in "$K/real-kalshi.pem" -pubout -out "$K/real-kalshi.pub.pem" &&
        openssl ecparam -name prime256v1 -genkey -noout -out "$K/real-coinbase.pem" &&
        openssl pkey -in "$K/real-coinbase.pem" -pubout -out "$K/real-coinbase.pub.pem" &&
        # Throw-away keys the SDKs hold (valid, so the SDKs sign; worthless upstream).
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$K/agent-kalshi.pem" &&
        openssl ecparam -name prime256v1 -genkey -noout -out "$K/agent-coinbase.pem"
} >"$TMP/keys.log" 2>&1 || abort "generate keys with openssl" "$(tail -n 20 "$TMP/keys.log")"
gen_certs "${HOSTS[@]}"

# ---------------------------------------------------------------- 4. fake upstream
RECORD="$TMP/upstream-record.jsonl"
: >"$RECORD"
start_upstream "$TMP/upstream-port.json" "$PY" "$HERE/upstream.py" --cert "$TMP/upstream.pem" --key "$TMP/upstream.key" \
    --ready-file "$TMP/upstream-port.json" --record "$RECORD" \
    --coinbase-pub "$K/real-coinbase.pub.pem" --coinbase-key-name "$REAL_CB_NAME" \
    --kalshi-pub "$K/real-kalshi.pub.pem" --kalshi-key-id "$REAL_KALSHI_ID"
UP_PORT=$(json_fields "$TMP/upstream-port.json" port)

# ---------------------------------------------------------------- 5. clavis
clavis_paths
{
    config_head --require-auth "$UP_PORT" "${HOSTS[@]}"
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
start_clavis info
[[ -f "$BUNDLE" ]] || abort "start clavis" "no CA bundle at $BUNDLE"
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
    # A missing log would make grep fail (status 2), which the if would call clean.
    [[ -s $CLAVIS_LOG ]] || { echo "clavis's log $CLAVIS_LOG is missing or empty"; return 1; }
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
((FAILED == 0))
