#!/usr/bin/env bash
# End-to-end test of the management REST API: the four calls existing clients
# make, byte for byte, from Python httpx and from curl, against a real
# `clavis serve` with a fake TLS upstream on 127.0.0.1 (nothing leaves the
# machine: upstream.resolve maps the API hosts to loopback).
#
#   POST /v1/services                  {"name": "my-openai", "connector_name": "openai"}
#   POST /v1/services/{id}/credentials {"token_type": "api_key", "data": {"api_key": "sk-..."}}
#   GET  /v1/services/my-openai/token  -> {"access_token": "sk-...", ...}  (reveal agents only)
#   POST /v1/proxy/my-anthropic        {"method": "POST", "path": "/v1/messages", "body": {...}}
#
# Usage: tests/e2e_admin/run.sh
# Env:   CLAVIS_BIN=path   use this binary instead of `cargo build` (target/debug/clavis)
#        E2E_KEEP_TMP=1    keep the temp dir (always kept when something failed)
#
# Reuses tests/e2e/gen_certs.py and tests/e2e/fake_upstream.py (invoked, not
# changed). Needs python3 (venv + pip on first run) and curl. Prints PASS/FAIL
# per check and ends with "N passed, M failed"; exits non-zero on any failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV="$HERE/.venv"
PY="$VENV/bin/python"
PIP_PACKAGES=("httpx>=0.28,<0.29" "cryptography>=44")

ADMIN_TOKEN="e2e-admin-token-0123456789abcdef"
REVEAL_TOKEN="e2e-reveal-agent-token"
PLAIN_TOKEN="e2e-plain-agent-token"
KEY_OPENAI="sk-e2e-admin-openai-0123456789abcdef"
KEY_ANTHROPIC="sk-ant-e2e-admin-anthropic-0123456789"
HOSTS=(api.openai.com api.anthropic.com)

unset HTTPS_PROXY https_proxy HTTP_PROXY http_proxy ALL_PROXY all_proxy NO_PROXY no_proxy 2>/dev/null || true

# shellcheck source=../e2e/lib.sh
source "$HERE/../e2e/lib.sh"
e2e_init clavis-e2e-admin

# ------------------------------------------------------------ binary
clavis_binary

# ------------------------------------------------------------ python venv
python_venv .e2e-requirements "${PIP_PACKAGES[*]}" "${PIP_PACKAGES[@]}"

# ------------------------------------------------------------ fake upstream
gen_certs "${HOSTS[@]}"
start_fake_upstream

# ------------------------------------------------------------ clavis
clavis_paths
{
    config_head --admin-token "$ADMIN_TOKEN" "$UP_TLS" "${HOSTS[@]}"
    echo "services:"
    echo "  - { name: my-anthropic, connector: anthropic, credentials: { api_key: \"$KEY_ANTHROPIC\" } }"
    echo "agents:"
    echo "  - { name: revealer, token: \"$REVEAL_TOKEN\", services: [\"*\"], reveal: true }"
    echo "  - { name: plain, token: \"$PLAIN_TOKEN\", services: [\"*\"] }"
} >"$CONFIG"
start_clavis debug
pass "clavis ready (GET /readyz = 200)"

# ------------------------------------------------------------ httpx
log "httpx"
# calls.py prints its own PASS/FAIL lines, counted here; its exit status is a
# check of its own: a crash, a timeout or an exception after the last line
# must fail the run even when every line it printed says PASS.
calls_rc=0
out=$(timeout -k 5 120 "$PY" "$HERE/calls.py" --admin "$ADMIN" --token "$ADMIN_TOKEN" --openai-key "$KEY_OPENAI" \
    --reveal-token "$REVEAL_TOKEN" --plain-agent-token "$PLAIN_TOKEN" 2>&1) || calls_rc=$?
echo "$out"
PASSED=$((PASSED + $(grep -c '^PASS ' <<<"$out" || true)))
FAILED=$((FAILED + $(grep -c '^FAIL ' <<<"$out" || true)))
while IFS= read -r line; do FAILED_STEPS+=("httpx: ${line#FAIL }"); done < <(grep '^FAIL ' <<<"$out" || true)
grep -q '^PASS ' <<<"$out" || fail "httpx: calls.py ran no check"
CALLS_EXIT="httpx: calls.py exited 0 (its exit status counts, not only its PASS lines)"
if ((calls_rc == 0)); then
    pass "$CALLS_EXIT"
elif ((calls_rc == 124)); then
    fail "$CALLS_EXIT" "timed out after 120 s"
else
    fail "$CALLS_EXIT" "exit $calls_rc"
fi

# ------------------------------------------------------------ curl
log "curl"
# call NAME EXPECTED_STATUS METHOD PATH [TOKEN [BODY]]: sets BODY_OUT; PASS/FAIL on the status.
BODY_OUT=""
call() {
    local name=$1 want=$2 method=$3 path=$4 token=${5:-$ADMIN_TOKEN} data=${6-} args code
    args=(-q -sS --noproxy '*' --max-time 30 -X "$method" -H "Authorization: Bearer $token" -w '\n%{http_code}')
    [[ -n "$data" ]] && args+=(-H 'Content-Type: application/json' --data-binary "$data")
    BODY_OUT=$(curl "${args[@]}" "$ADMIN$path" 2>&1) || { fail "curl: $name" "curl failed: $BODY_OUT"; return 1; }
    code=$(tail -n 1 <<<"$BODY_OUT")
    BODY_OUT=$(sed '$d' <<<"$BODY_OUT")
    if [[ $code == "$want" ]]; then
        return 0
    fi
    fail "curl: $name" "want $want, got $code: ${BODY_OUT:0:300}"
    return 1
}
json_get() { "$PY" -c 'import json,sys; v=json.loads(sys.argv[1])
for k in sys.argv[2:]: v=v[k]
print(v if not isinstance(v,bool) else str(v).lower())' "$@"; }

if call 'POST /v1/services {"name": "my-openai", "connector_name": "openai"} -> 201' 201 POST /v1/services "$ADMIN_TOKEN" \
    '{"name": "my-openai", "connector_name": "openai"}'; then
    SID=$(json_get "$BODY_OUT" id)
    if [[ $(json_get "$BODY_OUT" name) == my-openai && $(json_get "$BODY_OUT" connector_name) == openai && -n $SID ]]; then
        pass 'curl: POST /v1/services {"name": "my-openai", "connector_name": "openai"} -> 201'
    else
        fail 'curl: POST /v1/services -> 201 body' "$BODY_OUT"
    fi
    if call 'POST /v1/services/{id}/credentials -> 200' 200 POST "/v1/services/$SID/credentials" "$ADMIN_TOKEN" \
        "{\"token_type\": \"api_key\", \"data\": {\"api_key\": \"$KEY_OPENAI\"}}"; then
        if [[ $(json_get "$BODY_OUT" status) == stored && $BODY_OUT != *"$KEY_OPENAI"* ]]; then
            pass 'curl: POST /v1/services/{id}/credentials {"token_type": "api_key", ...} -> 200 stored'
        else
            fail 'curl: POST /v1/services/{id}/credentials body' "$BODY_OUT"
        fi
    fi
fi
for who in admin reveal; do
    token=$ADMIN_TOKEN
    [[ $who == reveal ]] && token=$REVEAL_TOKEN
    if call "GET /v1/services/my-openai/token as $who -> 200" 200 GET /v1/services/my-openai/token "$token"; then
        if [[ $(json_get "$BODY_OUT" access_token) == "$KEY_OPENAI" ]] && json_get "$BODY_OUT" expires_at >/dev/null; then
            pass "curl: GET /v1/services/my-openai/token as $who -> 200 {\"access_token\": \"sk-...\", ...}"
        else
            fail "curl: GET /v1/services/my-openai/token as $who body" "$BODY_OUT"
        fi
    fi
done
if call "GET /v1/services/my-openai/token as a non-reveal agent -> 403" 403 GET /v1/services/my-openai/token "$PLAIN_TOKEN"; then
    if [[ $(json_get "$BODY_OUT" error type) == clavis_* && $BODY_OUT != *"$KEY_OPENAI"* ]]; then
        pass "curl: GET /v1/services/my-openai/token as a non-reveal agent -> 403 clavis error"
    else
        fail "curl: non-reveal agent 403 body" "$BODY_OUT"
    fi
fi
if call 'POST /v1/proxy/my-anthropic -> 200' 200 POST /v1/proxy/my-anthropic "$ADMIN_TOKEN" \
    '{"method": "POST", "path": "/v1/messages", "body": {"model": "claude-e2e", "max_tokens": 8, "messages": [{"role": "user", "content": "hi from curl"}]}}'; then
    if [[ $(json_get "$BODY_OUT" type) == message ]]; then
        pass 'curl: POST /v1/proxy/my-anthropic {"method": "POST", "path": "/v1/messages", ...} -> 200 message'
    else
        fail 'curl: POST /v1/proxy/my-anthropic body' "$BODY_OUT"
    fi
fi
call "DELETE /v1/services/my-openai" 200 DELETE /v1/services/my-openai && pass "curl: DELETE /v1/services/my-openai"
call "GET /v1/services/my-openai after delete -> 404" 404 GET /v1/services/my-openai &&
    pass "curl: GET /v1/services/my-openai after delete -> 404"

# ------------------------------------------------------------ what the upstream saw
check_upstream() {
    "$PY" - "$RECORD" "$KEY_ANTHROPIC" <<'EOF'
import json, sys
record, key = sys.argv[1], sys.argv[2]
msgs = [json.loads(l) for l in open(record) if l.strip()]
msgs = [m for m in msgs if m.get("path") == "/v1/messages" and m.get("host", "").startswith("api.anthropic.com")]
if len(msgs) != 2:
    sys.exit(f"want 2 requests to api.anthropic.com/v1/messages (httpx + curl), got {len(msgs)}")
for m in msgs:
    keys = [v for k, v in m["headers"] if k == "x-api-key"]
    if keys != [key]:
        sys.exit(f"x-api-key seen: {keys!r}")
    if any(k == "authorization" or k.startswith("proxy-") for k, _ in m["headers"]):
        sys.exit(f"unexpected auth header: {m['headers']!r}")
    body = json.loads(m["body"])
    if body.get("model") != "claude-e2e" or not body["messages"][0]["content"].startswith("hi from "):
        sys.exit(f"body: {m['body']!r}")
print("x-api-key injected once into each /v1/proxy call; the body arrived as sent")
EOF
}
if out=$(check_upstream 2>&1); then pass "upstream saw the stored Anthropic key on both /v1/proxy calls"; else
    fail "upstream saw the stored Anthropic key on both /v1/proxy calls" "$out"; fi

# A missing log would make grep fail (status 2), which the else would call clean.
if [[ ! -s $CLAVIS_LOG ]]; then
    fail "clavis log holds no key" "the log $CLAVIS_LOG is missing or empty"
elif grep -qF -e "$KEY_OPENAI" -e "$KEY_ANTHROPIC" "$CLAVIS_LOG"; then
    fail "clavis log holds no key" "$(grep -F -e "$KEY_OPENAI" -e "$KEY_ANTHROPIC" "$CLAVIS_LOG" | head -n 3 | cut -c1-300)"
else
    pass "clavis log holds no key"
fi
clavis_alive "clavis still running"

summary
((FAILED == 0))
