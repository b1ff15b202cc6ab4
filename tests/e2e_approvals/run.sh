#!/usr/bin/env bash
# End-to-end test of approvals (SPEC §12) from the agent's side, with the
# official Stripe SDK: a refund that a policy's `approve` rule matches is held
# while a person decides on the admin port (here: this script, with curl).
#
#   - approved within the hold: the SDK call gets the upstream's refund;
#   - not decided in time: the SDK raises an error whose text carries the
#     detail and the approval id (and the Clavis-Approval header);
#   - approved afterwards: the same SDK call succeeds, once; the next
#     identical call is held again, on a new approval;
#   - the agent waits on its approval with GET /api/approvals/{id}?wait=.
#
# A fake Stripe upstream on 127.0.0.1 (tests/e2e/fake_upstream.py) records
# every refund that reaches it: each check says how many did.
#
# Usage: tests/e2e_approvals/run.sh        (env as tests/e2e/run.sh: CLAVIS_BIN,
#        E2E_VERBOSE, E2E_KEEP_TMP, E2E_SKIP; CI=true fails any skipped step)
# Prints PASS/FAIL per step, then "N passed, M failed"; exits non-zero on any failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The clients' virtualenv of tests/e2e (the Stripe SDK is in its requirements).
VENV="$HERE/../e2e/.venv"
PY="$VENV/bin/python"

KEY_STRIPE="sk_test_REALstripe-approvals-e2e-0123"
ADMIN_TOKEN="approvals-e2e-admin-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
AGENT=codex
AGENT_TOKEN="codex-approvals-e2e-token"
HOLD=5 # seconds a held refund waits for a decision

unset STRIPE_API_KEY ALL_PROXY all_proxy HTTPS_PROXY https_proxy HTTP_PROXY http_proxy NO_PROXY no_proxy \
      SSL_CERT_FILE REQUESTS_CA_BUNDLE CURL_CA_BUNDLE SSL_CERT_DIR 2>/dev/null || true

# shellcheck source=../e2e/lib.sh
source "$HERE/../e2e/lib.sh"
e2e_init clavis-e2e-approvals "clavis.log, upstream-record.jsonl, clavis.yaml, agent-*.json"

# ---------------------------------------------------------------- set-up
clavis_binary
python_venv .e2e-requirements "$(sha256sum "$E2E_DIR/requirements.txt" | cut -d' ' -f1)" \
    -r "$E2E_DIR/requirements.txt"
gen_certs api.stripe.com
start_fake_upstream
clavis_paths
{
    config_head --admin-token "$ADMIN_TOKEN" --require-auth "$UP_TLS" api.stripe.com
    cat <<EOF
policies:
  - name: refunds
    default: allow
    rules:
      - { name: refunds-need-a-person, approve: { methods: [POST], path: /v1/refunds } }
services:
  - { name: stripe, connector: stripe, credentials: { api_key: "$KEY_STRIPE" }, policy: refunds }
agents:
  - { name: $AGENT, token: "$AGENT_TOKEN", services: [stripe] }
approvals: { hold: ${HOLD}s, ttl: 15m }
EOF
} >"$CONFIG"
start_clavis info
pass "clavis ready (GET /readyz = 200)"

PROXY_URL="http://$AGENT:$AGENT_TOKEN@127.0.0.1:$PROXY_PORT"

# ---------------------------------------------------------------- helpers
# agent OUT CHARGE AMOUNT: the Stripe SDK's Refund.create through clavis; its
# JSON line goes to $TMP/agent-OUT.json; the exit status is agent.py's.
agent() {
    timeout -k 5 90 env HTTPS_PROXY="$PROXY_URL" https_proxy="$PROXY_URL" NO_PROXY= no_proxy= \
        REQUESTS_CA_BUNDLE="$BUNDLE" SSL_CERT_FILE="$BUNDLE" \
        "$PY" "$HERE/agent.py" refund "$2" "$3" >"$TMP/agent-$1.json"
}

# field OUT EXPR: a Python expression over the agent's JSON answer `a`.
field() {
    "$PY" -c 'import json,sys; a=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$TMP/agent-$1.json" "$2"
}

# admin METHOD PATH [JSON]: the admin API as the operator; prints the body,
# fails on a status other than 200.
admin() {
    local args=(-q -sS --noproxy '*' --max-time 40 -X "$1" -H "Authorization: Bearer $ADMIN_TOKEN" -w '\n%{http_code}')
    [[ -n ${3:-} ]] && args+=(-H 'Content-Type: application/json' -d "$3")
    local out code
    out=$(curl "${args[@]}" "$ADMIN$2")
    code=$(tail -n 1 <<<"$out")
    [[ $code == 200 ]] || { echo "$1 $2 answered $code: $(sed '$d' <<<"$out")" >&2; return 1; }
    sed '$d' <<<"$out"
}

# pending_for CHARGE: the id of the pending approval whose body holds
# charge=CHARGE, waiting for it up to 20 s.
pending_for() {
    local id=""
    for _ in $(seq 200); do
        id=$(admin GET '/v1/approvals?status=pending' | "$PY" -c '
import json, sys
for r in json.load(sys.stdin):
    if "charge=" + sys.argv[1] in r["body_preview"].split("&"):
        print(r["id"]); break' "$1")
        [[ -n $id ]] && { echo "$id"; return 0; }
        sleep 0.1
    done
    echo "no pending approval for charge $1 within 20 s" >&2
    return 1
}

# refunds_seen CHARGE: how many refunds for CHARGE reached the upstream.
refunds_seen() {
    "$PY" - "$RECORD" "$1" <<'EOF'
import json, sys
n = 0
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e["path"].startswith("/v1/refunds") and ("charge=" + sys.argv[2]) in e["body"].split("&"):
        n += 1
print(n)
EOF
}

# want WHAT GOT EXPECTED
want() { [[ $2 == "$3" ]] || { echo "$1: got '$2', want '$3'"; return 1; }; }

# ---------------------------------------------------------------- steps
log "the agent's side: stripe SDK"

approved_within_the_hold() {
    agent held ch_e2e_held 9000 &
    local pid=$! id
    id=$(pending_for ch_e2e_held)
    echo "held on $id"
    kill -0 "$pid" 2>/dev/null || { echo "the SDK call was answered before a decision"; return 1; }
    want "refunds upstream while held" "$(refunds_seen ch_e2e_held)" 0
    admin POST "/v1/approvals/$id/approve" '{"reason":"customer called"}' >/dev/null
    wait "$pid" || { echo "agent.py exited $?: $(cat "$TMP/agent-held.json")"; return 1; }
    cat "$TMP/agent-held.json"
    want ok "$(field held 'a["ok"]')" True
    [[ $(field held 'a["id"]') == re_e2e* ]] || { echo "not the upstream's refund"; return 1; }
    want amount "$(field held 'a["amount"]')" 9000
    want "refunds upstream" "$(refunds_seen ch_e2e_held)" 1
    want "approval status" "$(admin GET "/v1/approvals/$id" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["status"])')" used
    echo "$id" >"$TMP/held.id"
}
step "stripe SDK: a refund held and approved within the hold gets the upstream's refund" approved_within_the_hold

LATE_ID=""
not_decided_in_time() {
    local t0 t1 rc=0
    t0=$(date +%s%N)
    agent late ch_e2e_late 25000 || rc=$?
    t1=$(date +%s%N)
    cat "$TMP/agent-late.json"
    want "agent.py exit status" "$rc" 3
    want "HTTP status" "$(field late 'a["status"]')" 403
    want "SDK error class" "$(field late 'a["error_class"]')" PermissionError
    want "Clavis-Error" "$(field late 'a["clavis_error"]')" approval-pending
    local id text
    id=$(field late 'a["approval_id"]')
    [[ $id == apr_* ]] || { echo "no Clavis-Approval header"; return 1; }
    want "approval_id in the JSON" "$(field late 'a["json_approval_id"]')" "$id"
    text=$(field late 'a["text"]')
    for part in "$id" "waits for a person's approval" "POST /v1/refunds" "/api/approvals/$id"; do
        [[ $text == *"$part"* ]] || { echo "the exception text lacks '$part'"; return 1; }
    done
    (((t1 - t0) / 1000000 >= HOLD * 1000 - 200)) || { echo "answered after $(((t1 - t0) / 1000000)) ms, before the ${HOLD}s hold"; return 1; }
    want "refunds upstream" "$(refunds_seen ch_e2e_late)" 0
    echo "$id" >"$TMP/late.id"
}
step "stripe SDK: not decided within the hold -> PermissionError naming approval-pending and its id" not_decided_in_time

approved_later_goes_once() {
    local id rc=0
    id=$(cat "$TMP/late.id")
    admin POST "/v1/approvals/$id/approve" '{}' >/dev/null
    agent again ch_e2e_late 25000 || rc=$?
    cat "$TMP/agent-again.json"
    want "agent.py exit status" "$rc" 0
    want amount "$(field again 'a["amount"]')" 25000
    want "refunds upstream" "$(refunds_seen ch_e2e_late)" 1
}
step "stripe SDK: after approval the same call succeeds, once" approved_later_goes_once

identical_call_held_again() {
    local old rc=0 new
    old=$(cat "$TMP/late.id")
    agent third ch_e2e_late 25000 || rc=$?
    cat "$TMP/agent-third.json"
    want "agent.py exit status" "$rc" 3
    want "Clavis-Error" "$(field third 'a["clavis_error"]')" approval-pending
    new=$(field third 'a["approval_id"]')
    [[ $new == apr_* && $new != "$old" ]] || { echo "want a new approval, got '$new' (old $old)"; return 1; }
    want "refunds upstream" "$(refunds_seen ch_e2e_late)" 1
    echo "$new" >"$TMP/third.id"
}
step "stripe SDK: a second identical call is held again, on a new approval" identical_call_held_again

agent_waits() {
    local id out code
    id=$(cat "$TMP/third.id")
    curl -q -sS --noproxy '*' --max-time 40 -H "Authorization: Bearer $AGENT_TOKEN" \
        "$ADMIN/api/approvals/$id?wait=30s" >"$TMP/wait.json" &
    local pid=$!
    # The operator denies it while the agent waits (tests/approvals.rs shows
    # that the long poll answers at the decision, not at its end).
    admin POST "/v1/approvals/$id/deny" '{"reason":"refunded by hand already"}' >/dev/null
    wait "$pid"
    cat "$TMP/wait.json"
    want status "$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["status"])' "$TMP/wait.json")" denied
    # Another caller's token never reads it.
    code=$(curl -q -s --noproxy '*' -o /dev/null -w '%{http_code}' --max-time 10 \
        -H "Authorization: Bearer not-$AGENT_TOKEN" "$ADMIN/api/approvals/$id")
    want "wrong token" "$code" 401
    # The denied refund, sent again before the ttl: refused with the reason.
    local rc=0
    agent denied ch_e2e_late 25000 || rc=$?
    want "agent.py exit status" "$rc" 3
    want "Clavis-Error" "$(field denied 'a["clavis_error"]')" approval-denied
    out=$(field denied 'a["text"]')
    [[ $out == *"refunded by hand already"* ]] || { echo "the reason is not in the exception: $out"; return 1; }
}
step "agent: GET /api/approvals/{id}?wait= returns the denial; the SDK then reads the reason" agent_waits

audit_trail() {
    local id
    id=$(cat "$TMP/held.id")
    admin GET '/v1/audit?limit=1000' | "$PY" -c '
import json, sys
want = [("approval_requested", "proxy:codex"), ("approval_granted", "admin"), ("approval_used", "proxy:codex")]
got = [(e["action"], e["actor"]) for e in reversed(json.load(sys.stdin))
       if e["action"].startswith("approval_") and sys.argv[1] in (e["detail"].get("note") or "")]
print(got)
assert got == want, f"want {want}"' "$id"
}
step "audit: approval_requested, approval_granted, approval_used with their actors" audit_trail

no_secret_in_log() {
    ! grep -qF "$KEY_STRIPE" "$CLAVIS_LOG" || { echo "the real key is in the log"; return 1; }
    ! grep -qF "$ADMIN_TOKEN" "$CLAVIS_LOG" || { echo "the admin token is in the log"; return 1; }
    ! grep -qF "$KEY_STRIPE" "$TMP"/agent-*.json || { echo "the real key reached the agent"; return 1; }
    echo "neither the key nor the admin token in clavis.log or the agent's output"
}
step "no real key in clavis's log or the agent's answers" no_secret_in_log

clavis_alive
summary
((FAILED == 0))
