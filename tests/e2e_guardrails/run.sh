#!/usr/bin/env bash
# End-to-end test of the guardrails (SPEC §9–§11) with real clients: the
# openai, anthropic, stripe and PyGithub SDKs hold placeholder keys and talk to
# the real API host names through clavis, which applies policies and budgets
# before it forwards to tests/e2e/fake_upstream.py on 127.0.0.1 (nothing leaves
# the machine). Then a fleet: two clavis processes sharing one Redis budget.
#
#   policies   PyGithub under a triage policy (reads and comments pass, a
#              delete is refused naming the rule); stripe refunds above the
#              allowed amount refused, below it sent
#   budgets    openai and anthropic token budgets settled from the answers'
#              usage (plain and streamed), the output cap clavis sets, the
#              stream usage option it adds, a call that would not fit refused
#              (429, Retry-After, RateLimit-Policy/RateLimit, problem+json)
#   errors     each SDK's exception carries the problem's detail
#   fleet      200 concurrent requests through two clavis on one Redis budget
#              of 100: exactly 100 reach the upstream; Redis stopped -> 503
#              budget-store-unavailable, nothing sent; Redis back -> served;
#              a shared rate limit and a shared token budget
#
# Usage: tests/e2e_guardrails/run.sh
# Env:   CLAVIS_BIN=path   use this binary instead of `cargo build` (target/debug/clavis)
#        E2E_VERBOSE=1     print every step's output, not only failures'
#        E2E_KEEP_TMP=1    keep the temp dir (always kept when a step failed)
#        E2E_SKIP=REGEX    skip the steps whose name matches (a failure under CI=true)
#
# Needs python3 (the SDKs go into tests/e2e/.venv, shared with tests/e2e/run.sh),
# curl, and redis-server (installed with apt-get when missing and run as root,
# as .ci/run is). Prints PASS/FAIL per step, then "N passed, M failed".
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
E2E="$HERE/../e2e"
VENV="$E2E/.venv" # the same SDKs as tests/e2e/run.sh, from its requirements.txt
PY="$VENV/bin/python"

KEY_OPENAI="sk-REAL-openai-guard-0123456789"
KEY_ANTHROPIC="sk-ant-REAL-anthropic-guard-0123"
KEY_GITHUB="ghp_REALgithubguard0123456789"
KEY_STRIPE="sk_test_REALstripeguard0123"
ADMIN_TOKEN="e2e-guard-admin-token-0123456789abcdef"
AGENT=e2e
AGENT_TOKEN=e2e-guard-agent-token
HOSTS=(api.openai.com api.anthropic.com api.github.com api.stripe.com)

unset OPENAI_API_KEY OPENAI_BASE_URL OPENAI_ORG_ID OPENAI_PROJECT_ID ANTHROPIC_API_KEY ANTHROPIC_AUTH_TOKEN \
      ANTHROPIC_BASE_URL GITHUB_TOKEN STRIPE_API_KEY ALL_PROXY all_proxy CURL_CA_BUNDLE SSL_CERT_DIR \
      HTTPS_PROXY https_proxy HTTP_PROXY http_proxy NO_PROXY no_proxy SSL_CERT_FILE REQUESTS_CA_BUNDLE \
      2>/dev/null || true

# shellcheck source=../e2e/lib.sh
source "$E2E/lib.sh"
e2e_init clavis-e2e-guardrails \
    "clavis.log, fleet-a.log, fleet-b.log, redis.log, upstream-record.jsonl, *.yaml"

# ---------------------------------------------------------------- binary, SDKs, upstream
clavis_binary
python_venv .e2e-requirements "$(sha256sum "$E2E/requirements.txt" | cut -d' ' -f1)" -r "$E2E/requirements.txt"
gen_certs "${HOSTS[@]}"
start_fake_upstream

# ---------------------------------------------------------------- clavis with guardrails
clavis_paths
{
    config_head --admin-token "$ADMIN_TOKEN" "$UP_TLS" "${HOSTS[@]}"
    cat <<EOF
policies:
  - name: github-triage
    default: deny
    rules:
      - { name: reads,    allow: { methods: [GET, HEAD] } }
      - { name: comments, allow: { methods: [POST], path: "/repos/acme/*/issues/*/comments" } }
      - { name: deletes,  deny:  { methods: [DELETE] } }
  - name: stripe-refunds
    default: deny
    rules:
      - { name: reads, allow:   { methods: [GET] } }
      - { name: small, allow:   { methods: [POST], path: /v1/refunds, body: { amount: { max: 5000 } } } }
      - { name: large, approve: { methods: [POST], path: /v1/refunds } }
services:
  - { name: github, connector: github, credentials: { api_key: "$KEY_GITHUB" }, policy: github-triage }
  - { name: stripe, connector: stripe, credentials: { api_key: "$KEY_STRIPE" } }
  - { name: openai, connector: openai, credentials: { api_key: "$KEY_OPENAI" } }
  - { name: anthropic, connector: anthropic, credentials: { api_key: "$KEY_ANTHROPIC" } }
agents:
  - { name: $AGENT, token: "$AGENT_TOKEN", services: ["*"], policies: { stripe: stripe-refunds } }
# 30d: a calendar month, so a run is very unlikely to straddle a reset.
budgets:
  - { name: e2e-llm,    agent: $AGENT, service: openai,    window: 30d, limit: { tokens: 5000 } }
  - { name: e2e-claude, agent: $AGENT, service: anthropic, window: 30d, limit: { tokens: 2000 } }
EOF
} >"$CONFIG"
start_clavis debug
pass "clavis ready with policies and budgets (GET /readyz = 200)"

PROXY_URL="http://$AGENT:$AGENT_TOKEN@127.0.0.1:$PROXY_PORT"
SDK_ENV=(HTTPS_PROXY="$PROXY_URL" https_proxy="$PROXY_URL" NO_PROXY= no_proxy= SSL_CERT_FILE="$BUNDLE"
    REQUESTS_CA_BUNDLE="$BUNDLE" E2E_ADMIN="$ADMIN" E2E_ADMIN_TOKEN="$ADMIN_TOKEN" E2E_RECORD="$RECORD")
guard() { timeout -k 5 90 env "${SDK_ENV[@]}" "$PY" "$HERE/guard_clients.py" "$@"; }

log "policies (SPEC §10)"
step "PyGithub under github-triage: get_repo, get_issue, create_comment pass" guard pygithub-triage-allows
step "PyGithub under github-triage: repo.delete() refused (403, rule named), never sent" guard pygithub-delete-denied
step "stripe: Refund.create(amount=4000) under body amount max 5000 is sent" guard stripe-refund-under-limit
step "stripe: Refund.create(amount=6000) refused (403 policy-denied), never sent" guard stripe-refund-over-limit

log "budgets (SPEC §11)"
step "openai: chat.completions.create settles the answer's usage exactly" guard openai-plain-usage
step "openai: no max_tokens -> the upstream gets max_completion_tokens = what the budget leaves" guard openai-cap-set
step "openai: stream gets stream_options.include_usage; its usage chunk is counted" guard openai-stream-usage
step "openai: a call that would not fit -> 429 budget-exceeded with Retry-After and RateLimit headers, never sent" \
    guard openai-over-budget
step "anthropic: messages.stream settles message_start input + message_delta output" guard anthropic-stream-usage
step "anthropic: a call that would not fit -> 429 budget-exceeded, never sent" guard anthropic-over-budget

# The fake upstream must have seen the real keys only, never a placeholder.
real_keys_only() {
    "$PY" - "$RECORD" "$KEY_OPENAI" "$KEY_ANTHROPIC" "$KEY_GITHUB" "$KEY_STRIPE" <<'EOF'
import json, sys
path, keys = sys.argv[1], sys.argv[2:]
rows = [json.loads(l) for l in open(path) if l.strip()]
assert rows, "the upstream recorded nothing"
for r in rows:
    auth = [v for k, v in r["headers"] if k in ("authorization", "x-api-key")]
    assert any(k in v for v in auth for k in keys), f"{r['method']} {r['path']}: no real key in {len(auth)} auth headers"
    assert not any("placeholder" in v for _, v in r["headers"]), f"{r['method']} {r['path']}: a placeholder went upstream"
print(f"{len(rows)} requests, each with a real key and no placeholder")
EOF
}
step "every request that reached the upstream carried a real key, no placeholder" real_keys_only
no_keys_in_log() {
    local k
    for k in "$KEY_OPENAI" "$KEY_ANTHROPIC" "$KEY_GITHUB" "$KEY_STRIPE"; do
        if grep -qF -- "$k" "$CLAVIS_LOG"; then echo "a real key is in clavis's log"; return 1; fi
    done
}
step "clavis's log holds none of the real keys" no_keys_in_log
clavis_alive "clavis still running after the SDK steps"

# ---------------------------------------------------------------- a fleet on one Redis
log "fleet: two clavis on one Redis budget (SPEC §11)"
# ensure_redis: redis-server on PATH, installed from Debian's packages when
# missing (as root, which .ci/run is); a failure here fails the run.
ensure_redis() {
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return 0
    if [[ $(id -u) != 0 ]]; then
        echo "redis-server is not installed and this is not root: apt-get install redis-server"
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null
    command -v redis-server && command -v redis-cli
}
step "redis-server available (apt-get install redis-server when missing)" ensure_redis
if ! command -v redis-server >/dev/null; then
    abort "fleet steps" "no redis-server; see the step above"
fi

read -r REDIS_PORT < <(free_ports 1)
mkdir -p "$TMP/redis"
# start_redis: redis-server on REDIS_PORT, its own dir, nothing saved.
start_redis() {
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$TMP/redis" --save "" --appendonly no \
        --daemonize no >>"$TMP/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
}
start_redis
redis_up() {
    local i
    for i in $(seq 100); do
        [[ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]] && return 0
        kill -0 "$REDIS_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "redis-server on 127.0.0.1:$REDIS_PORT did not answer PING within 10 s"
    tail -n 20 "$TMP/redis.log"
    return 1
}
step "redis-server answers on its own port, own dir" redis_up

# fleet_config NAME: a config on fresh ports with the budget counts in the
# Redis; the CA stays $TMP/ca, made by the first clavis (one bundle for all).
fleet_config() {
    clavis_paths
    CONFIG="$TMP/$1.yaml"
    CLAVIS_LOG="$TMP/$1.log"
    {
        config_head --admin-token "$ADMIN_TOKEN" "$UP_TLS" api.github.com api.stripe.com api.openai.com
        echo "budget_store: \"redis://127.0.0.1:$REDIS_PORT/0\""
        echo "services:"
        echo "  - { name: github, connector: github, credentials: { api_key: \"$KEY_GITHUB\" } }"
        echo "  - { name: stripe, connector: stripe, credentials: { api_key: \"$KEY_STRIPE\" } }"
        echo "  - { name: openai, connector: openai, credentials: { api_key: \"$KEY_OPENAI\" } }"
        echo "agents:"
        echo "  - { name: $AGENT, token: \"$AGENT_TOKEN\", services: [\"*\"] }"
        echo "budgets:"
        echo "  - { name: fleet, service: github, window: 30d, limit: { requests: 100 } }"
        echo "  - { name: fleet-rate, service: stripe, rate: { requests: 1, per: 1m, burst: 5 } }"
        echo "  - { name: fleet-llm, agent: $AGENT, service: openai, window: 30d, limit: { tokens: 3000 } }"
    } >"$CONFIG"
}
fleet_config fleet-a
start_clavis debug
FLEET_A="http://$AGENT:$AGENT_TOKEN@127.0.0.1:$PROXY_PORT"
FLEET_A_ADMIN=$ADMIN
FLEET_A_PID=$CLAVIS_PID
fleet_config fleet-b
start_clavis debug
FLEET_B="http://$AGENT:$AGENT_TOKEN@127.0.0.1:$PROXY_PORT"
FLEET_B_ADMIN=$ADMIN
pass "two clavis ready on one Redis budget store"

FLEET_ENV=(NO_PROXY= no_proxy= SSL_CERT_FILE="$BUNDLE" E2E_ADMIN="$FLEET_A_ADMIN" E2E_ADMIN_B="$FLEET_B_ADMIN"
    E2E_ADMIN_TOKEN="$ADMIN_TOKEN" E2E_RECORD="$RECORD" E2E_FLEET="$FLEET_A $FLEET_B")
fleet() { timeout -k 5 120 env "${FLEET_ENV[@]}" "$PY" "$HERE/guard_clients.py" "$@"; }
step "200 concurrent requests via two clavis, budget of 100: exactly 100 reach the upstream, 100 get 429" \
    fleet fleet-flood
step "a Redis rate limit is one bucket: burst of 5, 10 concurrent via two clavis -> 5 pass, 5 rate-limited" \
    fleet fleet-shared-rate
step "openai through the fleet: the cap comes from the shared Redis budget, usage settles there for both" \
    fleet fleet-tokens

stop_redis() {
    kill "$REDIS_PID"
    local i
    for i in $(seq 100); do
        kill -0 "$REDIS_PID" 2>/dev/null || return 0
        sleep 0.1
    done
    echo "redis-server did not stop within 10 s"
    return 1
}
step "redis-server stopped" stop_redis
step "Redis down: 503 budget-store-unavailable from both clavis, nothing sent upstream" fleet fleet-store-down
start_redis
step "redis-server started again (empty) on the same port" redis_up
step "Redis back: both clavis serve again without a restart" fleet fleet-store-back

fleet_alive() {
    kill -0 "$FLEET_A_PID" && kill -0 "$CLAVIS_PID"
}
step "both fleet clavis still running" fleet_alive

summary
((FAILED == 0))
