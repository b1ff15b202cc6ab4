#!/usr/bin/env bash
# The console (GET /console, SPEC §12) in a real browser, against a real
# clavis: Playwright for Python driving Debian's Chromium runs
# console_test.py twice.
#
#   1. against the mock admin port (dev.sh): the page's own logic, including
#      what only the mock can stage (raw SSE cut at awkward bytes);
#   2. against clavis with a fake upstream (tests/e2e/fake_upstream.py):
#      clavis_driver.py makes approvals by sending real requests through the
#      proxy as an agent (held in the background by `approve` rules) and audit
#      events by real proxied calls; the browser reaches the admin port through
#      forward.py, which can cut the audit stream to test the reconnect.
#      Sign in, a pending approval appears without reloading, approving it
#      lets the held call complete, deny with a reason reaches the agent, the
#      live audit shows the events, markup from the agent renders as text,
#      a wrong token is refused, CSP and the other headers, no request
#      outside the admin port.
#   Then: the upstream saw exactly the requests the browser approved.
#
# Usage: tests/e2e_console/run.sh   (env as tests/e2e/run.sh; CONSOLE_OUT=dir keeps screenshots)
# Prints PASS/FAIL per step (and per browser check), then "N passed, M failed".
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV="$HERE/.venv"
PY="$VENV/bin/python"
ADMIN_TOKEN="console-e2e-admin-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
AGENT_TOKEN="codex-console-e2e-token"
KEY_STRIPE="sk_test_REALstripe-console-e2e-0123"
KEY_GITHUB="ghp_REALgithubconsolee2e0123456789"
KEY_OPENAI="sk-REAL-openai-console-e2e-0123"
XSS_RULE='approve <script>window.__pwned=1</script>'
unset HTTPS_PROXY https_proxy HTTP_PROXY http_proxy ALL_PROXY all_proxy NO_PROXY no_proxy SSL_CERT_FILE \
      REQUESTS_CA_BUNDLE 2>/dev/null || true

# shellcheck source=../e2e/lib.sh
source "$HERE/../e2e/lib.sh"
e2e_init clavis-e2e-console "clavis.log, upstream-record.jsonl, clavis.yaml, console-*.log, screenshots/"

# ---------------------------------------------------------------- set-up
clavis_binary
if [[ ! -x /usr/bin/chromium ]]; then
    log "installing chromium (apt)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null ||
        abort "install Debian's chromium" "apt-get install chromium failed"
fi
python_venv .console-requirements "playwright>=1.49,<2 cryptography>=44" "playwright>=1.49,<2" "cryptography>=44"

# browser STEP_NAME LOG ARGS...: console_test.py ARGS; its checks are shown
# (indented) whatever the outcome, the step passes when all of them did.
browser() {
    local name=$1 out=$2 rc=0
    shift 2
    timeout -k 5 240 "$PY" "$HERE/console_test.py" "$@" >"$out" 2>&1 || rc=$?
    grep -E '^(PASS|FAIL|N/A|SKIP) |^ {6}' "$out" | indent || true
    if ((rc == 0)); then pass "$name"; else fail "$name" "$(tail -n 25 "$out")"; fi
}

# ---------------------------------------------------------------- 1. the mock
log "console against the mock admin port (dev.sh)"
mock_pass() {
    local rc=0
    CONSOLE_OUT="$TMP/screenshots/mock" timeout -k 5 240 bash "$HERE/dev.sh" >"$TMP/console-mock.log" 2>&1 || rc=$?
    grep -E '^(PASS|FAIL|N/A|SKIP) |^ {6}' "$TMP/console-mock.log" | indent || true
    if ((rc == 0)); then pass "console against the mock: every check"; else
        fail "console against the mock: every check" "$(tail -n 25 "$TMP/console-mock.log")"; fi
}
mock_pass

# ---------------------------------------------------------------- 2. real clavis
gen_certs api.stripe.com api.github.com api.openai.com
start_fake_upstream
clavis_paths
{
    config_head --admin-token "$ADMIN_TOKEN" --require-auth "$UP_TLS" api.stripe.com api.github.com api.openai.com
    cat <<EOF
policies:
  - name: money-moves
    default: allow
    rules:
      - { name: "$XSS_RULE", approve: { methods: [POST], path: "/v1/**", query: { q: { regex: ".*" } } } }
      - { name: refunds-and-moves, approve: { methods: [POST, DELETE], path: "/v1/**" } }
  - name: repo-deletes
    default: allow
    rules:
      - { name: deletes-need-a-person, approve: { methods: [DELETE] } }
services:
  - { name: stripe, connector: stripe, credentials: { api_key: "$KEY_STRIPE" }, policy: money-moves }
  - { name: github, connector: github, credentials: { api_key: "$KEY_GITHUB" }, policy: repo-deletes }
  - { name: openai, connector: openai, credentials: { api_key: "$KEY_OPENAI" } }
agents:
  - { name: codex, token: "$AGENT_TOKEN", services: [stripe, github, openai] }
budgets:
  - { name: codex-llm, agent: codex, service: openai, window: 1d, limit: { requests: 500 } }
  - { name: github-shared, service: github, rate: { requests: 20, per: 1s, burst: 40 } }
approvals: { hold: 90s, ttl: 15m }
EOF
} >"$CONFIG"
start_clavis info
pass "clavis ready (GET /readyz = 200)"

log "forwarder in front of the admin port"
start_forwarder() {
    "$PY" "$HERE/forward.py" --to "127.0.0.1:$ADMIN_PORT" --ready-file "$TMP/forward.json" \
        >"$TMP/forward.log" 2>&1 &
    FORWARD_PID=$!
    PIDS+=("$FORWARD_PID")
    for _ in $(seq 100); do [[ -s "$TMP/forward.json" ]] && break; sleep 0.1; done
    [[ -s "$TMP/forward.json" ]] || abort "start forward.py" "$(cat "$TMP/forward.log")"
    FORWARD_PORT=$(json_fields "$TMP/forward.json" port)
}
start_forwarder

log "console against clavis (through the forwarder on port $FORWARD_PORT)"
CLAVIS_ADMIN_URL="$ADMIN" CLAVIS_PROXY="127.0.0.1:$PROXY_PORT" CLAVIS_AGENT="codex:$AGENT_TOKEN" \
    CLAVIS_CA_BUNDLE="$BUNDLE" FORWARD_PID="$FORWARD_PID" PYTHONPATH="$HERE" \
    browser "console against clavis: every check" "$TMP/console-real.log" \
    --base-url "http://127.0.0.1:$FORWARD_PORT" --token "$ADMIN_TOKEN" \
    --driver "$HERE/clavis_driver.py:ClavisDriver" --out "$TMP/screenshots/clavis"

# What reached the upstream: the approved requests, once each; the denied
# and the undecided ones, never.
upstream_saw_what_was_approved() {
    "$PY" - "$RECORD" <<'EOF'
import json, sys
seen = {}
for line in open(sys.argv[1]):
    e = json.loads(line)
    key = (e["method"], e["path"].split("?")[0])
    seen[key] = seen.get(key, 0) + 1
want = {("POST", "/v1/refunds"): 1,          # approved in the browser
        ("POST", "/v1/transfers"): 1,        # approved elsewhere (the API)
        ("POST", "/v1/payouts"): 0,          # denied (after the routed 409)
        ("DELETE", "/repos/acme/site"): 0}   # denied in the browser, with a reason
got = {k: seen.get(k, 0) for k in want}
print("upstream saw:", got)
assert got == want, f"want {want}"
EOF
}
step "the upstream saw exactly the approved requests, once each" upstream_saw_what_was_approved

no_secret_in_log() {
    for secret in "$KEY_STRIPE" "$KEY_GITHUB" "$KEY_OPENAI" "$ADMIN_TOKEN"; do
        ! grep -qF "$secret" "$CLAVIS_LOG" || { echo "a secret is in clavis.log"; return 1; }
    done
    echo "no key and no admin token in clavis.log"
}
step "no secret in clavis's log" no_secret_in_log

clavis_alive
summary
((FAILED == 0))
