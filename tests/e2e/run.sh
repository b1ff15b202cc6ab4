#!/usr/bin/env bash
# End-to-end test: real clients (official SDKs, requests, httpx, curl, Node
# undici) talk to the real API host names through clavis, holding placeholder
# keys; a fake upstream on 127.0.0.1 records what arrives. Nothing leaves the
# machine: clavis's upstream.resolve maps every host to loopback.
#
# Usage: tests/e2e/run.sh
# Env:   CLAVIS_BIN=path     use this binary instead of `cargo build --release`
#        E2E_VERBOSE=1       print every step's output, not only failures'
#        E2E_KEEP_TMP=1      keep the temp dir (always kept when a step failed)
#        E2E_SKIP=REGEX      skip the steps whose name matches (extended regex), e.g. 'scrubbed'
#
# Prints PASS/FAIL per step, then "N passed, M failed"; exits non-zero on any failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV="$HERE/.venv"
PY="$VENV/bin/python"

# Real keys (fake values, but the "real" side of the test): clavis holds them,
# the upstream must see them, no client, log or header on the way may.
KEY_OPENAI="sk-REAL-openai-e2e-0123456789"
KEY_ANTHROPIC="sk-ant-REAL-anthropic-e2e-0123"
KEY_GITHUB="ghp_REALgithube2e0123456789"
KEY_STRIPE="sk_test_REALstripee2e0123"
KEY_BRAVE="BSA-REAL-brave-e2e-0123456789"
AGENT=e2e
AGENT_TOKEN=e2e-agent-token
LIMITED_TOKEN=limited-agent-token # a second agent, allowed my-openai only
HOSTS=(api.openai.com api.anthropic.com api.github.com api.stripe.com api.search.brave.com plain.test.example)

# An agent's environment must not leak into the clients.
unset OPENAI_API_KEY OPENAI_BASE_URL OPENAI_ORG_ID OPENAI_PROJECT_ID ANTHROPIC_API_KEY ANTHROPIC_AUTH_TOKEN \
      ANTHROPIC_BASE_URL GITHUB_TOKEN STRIPE_API_KEY ALL_PROXY all_proxy CURL_CA_BUNDLE SSL_CERT_DIR \
      HTTPS_PROXY https_proxy HTTP_PROXY http_proxy NO_PROXY no_proxy SSL_CERT_FILE REQUESTS_CA_BUNDLE \
      NODE_EXTRA_CA_CERTS NODE_OPTIONS 2>/dev/null || true

# shellcheck source=lib.sh
source "$HERE/lib.sh"
e2e_init clavis-e2e "clavis.log, upstream-record.jsonl, clavis.yaml"

# ---------------------------------------------------------------- 1. build
clavis_binary --release

# ---------------------------------------------------------------- 2. clients
python_venv .e2e-requirements "$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)" -r "$HERE/requirements.txt"

log "node client dependencies"
NODE_OK=1
if ! command -v node >/dev/null; then
    NODE_OK=0
elif [[ ! -f "$HERE/node_modules/undici/package.json" ]]; then
    (cd "$HERE" && npm install --no-audit --no-fund --no-package-lock --silent) || NODE_OK=0
fi

# ---------------------------------------------------------------- 3. certificates
gen_certs "${HOSTS[@]}"

# ---------------------------------------------------------------- 4. fake upstream
start_fake_upstream

# ---------------------------------------------------------------- 5. clavis
clavis_paths
TLS_HOSTS=()
for h in "${HOSTS[@]}"; do [[ $h == plain.test.example ]] || TLS_HOSTS+=("$h"); done
{
    config_head "$UP_TLS" "${TLS_HOSTS[@]}"
    echo "    \"plain.test.example:80\": \"127.0.0.1:$UP_PLAIN\""
    echo "services:"
    echo "  - { name: my-openai, connector: openai, credentials: { api_key: \"$KEY_OPENAI\" } }"
    echo "  - { name: my-anthropic, connector: anthropic, credentials: { api_key: \"$KEY_ANTHROPIC\" } }"
    echo "  - { name: my-github, connector: github, credentials: { api_key: \"$KEY_GITHUB\" } }"
    echo "  - { name: my-stripe, connector: stripe, credentials: { api_key: \"$KEY_STRIPE\" } }"
    echo "  - { name: my-brave, connector: brave-search, credentials: { api_key: \"$KEY_BRAVE\" } }"
    echo "agents:"
    echo "  - { name: $AGENT, token: \"$AGENT_TOKEN\", services: [\"*\"] }"
    echo "  - { name: limited, token: \"$LIMITED_TOKEN\", services: [my-openai] }"
} >"$CONFIG"
start_clavis trace
pass "clavis ready (GET /readyz = 200)"

pem_body() { grep -v -- '-----' | tr -d ' \r\n'; }
admin_ca_matches() {
    [[ -s "$BUNDLE" ]] || { echo "bundle $BUNDLE missing or empty"; return 1; }
    [[ -s "$CA_CERT" ]] || { echo "CA cert $CA_CERT missing or empty"; return 1; }
    grep -qF "$(sed -n 2p "$CA_CERT")" "$BUNDLE" || { echo "the bundle does not contain the clavis CA"; return 1; }
    local n; n=$(grep -c 'BEGIN CERTIFICATE' "$BUNDLE")
    ((n > 10)) || { echo "the bundle holds $n certificates: the public roots are missing"; return 1; }
    local served
    served=$(curl -q -sS --noproxy '*' --max-time 5 "$ADMIN/ca.pem") || { echo "GET /ca.pem failed"; return 1; }
    [[ "$(pem_body <<<"$served")" == "$(pem_body <"$CA_CERT")" ]] ||
        { echo "GET /ca.pem differs from $CA_CERT:"; echo "${served:0:300}"; return 1; }
    echo "bundle: $n certificates; GET /ca.pem = ca.cert"
}
step "CA files written at start; GET /ca.pem serves the CA" admin_ca_matches

# ---------------------------------------------------------------- 6. clients
PROXY_URL="http://$AGENT:$AGENT_TOKEN@127.0.0.1:$PROXY_PORT"
SDK_ENV=(HTTPS_PROXY="$PROXY_URL" https_proxy="$PROXY_URL" HTTP_PROXY="$PROXY_URL" http_proxy="$PROXY_URL"
    NO_PROXY= no_proxy= SSL_CERT_FILE="$BUNDLE" REQUESTS_CA_BUNDLE="$BUNDLE")
client() { timeout -k 5 90 env "${SDK_ENV[@]}" "$PY" "$HERE/clients.py" "$@"; }
# checks NAME: check_record.py NAME on the upstream's record and clavis's log.
checks() {
    timeout -k 5 60 env E2E_KEY_OPENAI="$KEY_OPENAI" E2E_KEY_ANTHROPIC="$KEY_ANTHROPIC" E2E_KEY_GITHUB="$KEY_GITHUB" \
        E2E_KEY_STRIPE="$KEY_STRIPE" E2E_KEY_BRAVE="$KEY_BRAVE" "$PY" "$HERE/check_record.py" "$1" "$RECORD" "$CLAVIS_LOG"
}

log "SDK and library clients"
step "openai SDK: chat.completions.create" client openai-plain
step "openai SDK: chat.completions.create stream=True (streamed, not buffered)" client openai-stream
step "anthropic SDK: messages.create" client anthropic-plain
step "anthropic SDK: messages.stream (streamed, not buffered)" client anthropic-stream
step "anthropic SDK: auth_token (Authorization: Bearer)" client anthropic-auth-token
# Both placeholders go out; the upstream must see the real key in x-api-key
# alone (the anthropic connector strips both, injects x-api-key).
anthropic_both_headers() {
    client anthropic-both-headers
    checks anthropic-both-headers
}
step "anthropic SDK: x-api-key and Authorization both sent" anthropic_both_headers
step "PyGithub: get_user().login (Authorization: token ...)" client pygithub
step "stripe SDK: Balance.retrieve()" client stripe
step "requests: GET api.openai.com/v1/models (HTTP/1.0 CONNECT)" client requests
step "httpx: GET api.stripe.com/v1/balance" client httpx

# curl through the proxy: expect status 200 and a body substring.
curl_ok() { # EXPECT_SUBSTRING CURL_ARGS...
    local want=$1 body code
    shift
    body=$(curl -q -sS --max-time 30 --proxy "http://127.0.0.1:$PROXY_PORT" --proxy-user "$AGENT:$AGENT_TOKEN" \
        --cacert "$BUNDLE" -w '\n%{http_code} %{http_version}' "$@") || { echo "curl failed: $body"; return 1; }
    code=$(tail -n 1 <<<"$body")
    body=$(sed '$d' <<<"$body")
    echo "status/version: $code"
    [[ $code == 200\ * ]] || { echo "want 200, body: ${body:0:300}"; return 1; }
    [[ $body == *"$want"* ]] || { echo "body lacks '$want': ${body:0:300}"; return 1; }
}
curl_h2() {
    local out
    out=$(curl_ok gpt-e2e --http2 -H "Authorization: Bearer placeholder" https://api.openai.com/v1/models) ||
        { echo "$out"; return 1; }
    echo "$out"
    grep -q '^status/version: 200 2$' <<<"$out" || { echo "want HTTP/2 between curl and clavis"; return 1; }
}
curl_wrong_password() {
    local code headers
    code=$(curl -q -s -o /dev/null --max-time 30 -w '%{http_connect}' --proxy "http://127.0.0.1:$PROXY_PORT" \
        --proxy-user "$AGENT:wrong-token" --cacert "$BUNDLE" https://api.openai.com/v1/models || true)
    echo "CONNECT answered $code"
    [[ $code == 407 ]] || { echo "want 407"; return 1; }
    headers=$(curl -q -sv -o /dev/null --max-time 30 --proxy "http://127.0.0.1:$PROXY_PORT" \
        --proxy-user "$AGENT:wrong-token" --cacert "$BUNDLE" https://api.openai.com/v1/models 2>&1 || true)
    grep -qi '^< proxy-authenticate: basic realm="clavis"' <<<"$headers" ||
        { echo 'want Proxy-Authenticate: Basic realm="clavis"'; grep '^<' <<<"$headers"; return 1; }
}
curl_agent_not_allowed() {
    # clavis may refuse the CONNECT itself or the request inside the tunnel: either is a 403.
    local body codes
    body=$(curl -q -s --max-time 30 --proxy "http://127.0.0.1:$PROXY_PORT" --proxy-user "limited:$LIMITED_TOKEN" \
        --cacert "$BUNDLE" -w '\n%{http_connect} %{http_code}' -H "Authorization: token placeholder" \
        https://api.github.com/user || true)
    codes=$(tail -n 1 <<<"$body")
    body=$(sed '$d' <<<"$body")
    echo "CONNECT/request answered $codes: ${body:0:300}"
    case "$codes" in
    "403 "*) return 0 ;;
    *" 403") [[ $body == *'"clavis_'* ]] || { echo 'want a clavis JSON error {"error":{"type":"clavis_..."}}'; return 1; } ;;
    *) echo "want 403 (agent 'limited' may only use my-openai)"; return 1 ;;
    esac
}
curl_plain_http_claimed() {
    local body code
    body=$(curl -q -sS --max-time 30 --proxy "$PROXY_URL" -w '\n%{http_code}' \
        -H "Authorization: Bearer placeholder" http://api.openai.com/v1/models) || { echo "curl failed: $body"; return 1; }
    code=$(tail -n 1 <<<"$body")
    body=$(sed '$d' <<<"$body")
    echo "answered $code: ${body:0:300}"
    [[ $code == 403 ]] || { echo "want 403"; return 1; }
    [[ $body == *'"clavis_'* ]] || { echo 'want a clavis JSON error {"error":{"type":"clavis_..."}}'; return 1; }
}
curl_echo_scrubbed() {
    local body
    body=$(curl -q -sS --max-time 30 --proxy "http://127.0.0.1:$PROXY_PORT" --proxy-user "$AGENT:$AGENT_TOKEN" \
        --cacert "$BUNDLE" -H "Authorization: Bearer placeholder" https://api.openai.com/e2e/echo-headers) ||
        { echo "curl failed: $body"; return 1; }
    if [[ $body == *"$KEY_OPENAI"* ]]; then echo "the upstream's echo of the real key reached the client"; return 1; fi
    [[ $body == *"[REDACTED]"* ]] || { echo "want [REDACTED] in the echoed headers: ${body:0:300}"; return 1; }
    echo "echoed credential replaced by [REDACTED]"
}

log "curl"
step "curl: api.openai.com GET /v1/models" curl_ok gpt-e2e -H "Authorization: Bearer placeholder" https://api.openai.com/v1/models
step "curl: api.anthropic.com POST /v1/messages" curl_ok msg_e2e0001 -H "x-api-key: placeholder" \
    -H "anthropic-version: 2023-06-01" -H "content-type: application/json" \
    -d '{"model":"claude-e2e","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}' https://api.anthropic.com/v1/messages
step "curl: api.github.com GET /user" curl_ok e2e-octocat -H "Authorization: token placeholder" https://api.github.com/user
step "curl: api.stripe.com GET /v1/balance (curl -u key:)" curl_ok '"balance"' -u "sk_test_placeholder:" https://api.stripe.com/v1/balance
step "curl: api.search.brave.com GET /res/v1/web/search" curl_ok '"echo"' -H "X-Subscription-Token: placeholder" \
    "https://api.search.brave.com/res/v1/web/search?q=clavis"
step "curl --http2: api.openai.com (h2 inside the tunnel)" curl_h2
step "curl --proxytunnel: http://plain.test.example (unclaimed, CONNECT :80 tunnelled)" curl_ok plain.test.example \
    --proxytunnel http://plain.test.example/curl-tunnel
step "curl: placeholder naming the service (Bearer clavis:my-openai)" curl_ok gpt-e2e \
    -H "Authorization: Bearer clavis:my-openai" https://api.openai.com/v1/models
step "curl: wrong proxy password -> 407 with Basic challenge" curl_wrong_password
step "curl: agent without the github service -> 403" curl_agent_not_allowed
step "curl: plain http:// to a claimed host -> 403" curl_plain_http_claimed
step "curl: upstream echo of the credential is scrubbed" curl_echo_scrubbed

log "node (undici EnvHttpProxyAgent)"
node_client() {
    ((NODE_OK == 1)) || { echo "node or the undici package is not available"; return 1; }
    # undici reads the lower-case variables first: set both cases.
    timeout -k 5 90 env HTTPS_PROXY="$PROXY_URL" https_proxy="$PROXY_URL" HTTP_PROXY="$PROXY_URL" \
        http_proxy="$PROXY_URL" NO_PROXY= no_proxy= NODE_EXTRA_CA_CERTS="$CA_CERT" node "$HERE/node_client.mjs" "$@"
}
step "node fetch: GET https://api.openai.com/v1/models" node_client https://api.openai.com/v1/models gpt-e2e \
    "Authorization: Bearer placeholder"
step "node fetch: GET http://plain.test.example/ (undici CONNECT :80, tunnelled)" node_client \
    http://plain.test.example/node-tunnel '"host": "plain.test.example"'

# ---------------------------------------------------------------- 7. what arrived
log "upstream record and clavis log"
step "upstream saw the real OpenAI key (Authorization: Bearer)" checks openai
step "upstream saw the real Anthropic key (x-api-key, no Authorization)" checks anthropic
step "upstream saw the real GitHub token (Authorization: Bearer)" checks github
step "upstream saw the real Stripe key (Authorization: Bearer)" checks stripe
step "upstream saw the real Brave key (X-Subscription-Token)" checks brave
step "no placeholder in any header the upstream saw" checks no-placeholder
step "no Proxy-* header reached the upstream" checks no-proxy-headers
step "tunnelled plain-HTTP requests reached plain.test.example untouched" checks tunnel
step "clavis trace log holds none of the real keys" checks log

clavis_alive
if ((FAILED > 0)); then
    echo "clavis warnings/errors (last 20):"
    grep -E '"level":"(WARN|ERROR)"' "$CLAVIS_LOG" | tail -n 20 | cut -c1-400 | indent || true
fi

summary
((FAILED == 0))
