#!/usr/bin/env bash
# Soak test: clavis under steady load with faults for SOAK_SECONDS (default
# 180, the CI run): SOAK_STREAMS concurrent SSE streams (default 50, events
# every 100 ms, restarted when done) and SOAK_RPS small requests a second
# (default 100), through fake TLS upstreams on loopback reached by real host
# names (upstream.resolve, test CA in upstream.extra_ca). One request or
# stream in a hundred asks for a fault: a reset mid-answer, a stall past
# clavis's upstream.request_timeout (504) or mid-stream (the client gives
# up), or a host whose upstream refuses connections (502).
#
# Checks: no panic; clavis still serves at the end; RSS at the end within
# 10 % of RSS at 30 s; open file descriptors back to the baseline once the
# load stops and pooled upstream connections pass limits.idle_timeout (5 s
# here); no real key in clavis's output, its audit file or any response.
#
# Usage: tests/soak/run.sh            (make soak; make test runs it under CI)
# Env:   SOAK_SECONDS=3600             the long run, for people (see README)
#        SOAK_STREAMS, SOAK_RPS, SOAK_FAULT_RATE (0.01)
#        CLAVIS_BIN, E2E_VERBOSE, E2E_KEEP_TMP as for tests/e2e/run.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The clients' virtualenv of tests/e2e (httpx and cryptography are in it).
VENV="$HERE/../e2e/.venv"
PY="$VENV/bin/python"

SECONDS_WANTED=${SOAK_SECONDS:-180}
KEY_OPENAI="sk-REAL-openai-soak-0123456789"
KEY_ANTHROPIC="sk-ant-REAL-anthropic-soak-0123"
AGENT=soak
AGENT_TOKEN="soak-agent-token-0123456789"
FD_SLACK=2 # the admin port's keep-alive from the last readiness probe, a log file reopened

unset ALL_PROXY all_proxy HTTPS_PROXY https_proxy HTTP_PROXY http_proxy NO_PROXY no_proxy \
      SSL_CERT_FILE REQUESTS_CA_BUNDLE CURL_CA_BUNDLE SSL_CERT_DIR 2>/dev/null || true

# shellcheck source=../e2e/lib.sh
source "$HERE/../e2e/lib.sh"
e2e_init clavis-soak "clavis.log, audit.jsonl, clavis.yaml, summary.json, upstream.log"
STEP_TIMEOUT=$((SECONDS_WANTED + 300))

# ---------------------------------------------------------------- set-up
clavis_binary
python_venv .e2e-requirements "$(sha256sum "$E2E_DIR/requirements.txt" | cut -d' ' -f1)" \
    -r "$E2E_DIR/requirements.txt"
gen_certs api.openai.com api.anthropic.com
start_upstream "$TMP/upstream-port.json" "$PY" "$HERE/upstream.py" \
    --cert "$TMP/upstream.pem" --key "$TMP/upstream.key" --ready-file "$TMP/upstream-port.json"
UP_TLS=$(json_fields "$TMP/upstream-port.json" port)
clavis_paths
read -r REFUSED_PORT < <(free_ports 1) # bound, then closed: connecting there is refused
{
    config_head "$UP_TLS" api.openai.com
    echo "    \"api.anthropic.com:443\": \"127.0.0.1:$REFUSED_PORT\""
    echo "  request_timeout: 2s"
    echo "  connect_timeout: 2s"
    echo "limits: { idle_timeout: 5s }"
    # The in-memory audit ring (10 000 events by default) fills in 100 s at
    # this load: bounded growth, yet it would read as a leak between 30 s
    # and the end. 1 000 events fill in the first 10 s.
    echo "audit: { file: \"$TMP/audit.jsonl\", ring: 1000 }"
    echo "services:"
    echo "  - { name: my-openai, connector: openai, credentials: { api_key: \"$KEY_OPENAI\" } }"
    echo "  - { name: my-anthropic, connector: anthropic, credentials: { api_key: \"$KEY_ANTHROPIC\" } }"
    echo "agents:"
    echo "  - { name: $AGENT, token: \"$AGENT_TOKEN\", services: [\"*\"] }"
} >"$CONFIG"
start_clavis info
pass "clavis ready (GET /readyz = 200)"

fds() { find "/proc/$CLAVIS_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$CLAVIS_PID/status"; }
FD_BASE=$(fds)
RSS_BASE=$(rss)

# ---------------------------------------------------------------- load
PROXY_URL="http://$AGENT:$AGENT_TOKEN@127.0.0.1:$PROXY_PORT"
SUMMARY="$TMP/summary.json"
load() {
    log "load for ${SECONDS_WANTED}s: ${SOAK_STREAMS:-50} streams, ${SOAK_RPS:-100} requests/s"
    SOAK_KEYS="$KEY_OPENAI,$KEY_ANTHROPIC" "$PY" "$HERE/load.py" --proxy "$PROXY_URL" --bundle "$BUNDLE" \
        --seconds "$SECONDS_WANTED" --streams "${SOAK_STREAMS:-50}" --rps "${SOAK_RPS:-100}" \
        --fault-rate "${SOAK_FAULT_RATE:-0.01}" --pid "$CLAVIS_PID" --summary "$SUMMARY"
}
step "load ran; no real key in any response the clients saw" load
[[ -s $SUMMARY ]] || abort "load summary written" "no $SUMMARY"

# field PYTHON_EXPR: a value of the summary (`s` is the parsed JSON).
field() { "$PY" -c "import json,sys; s=json.load(open(sys.argv[1])); print($1)" "$SUMMARY"; }

# ---------------------------------------------------------------- checks
answers_as_expected() {
    local total expected streams bad
    total=$(field "s['counts'].get('requests', 0)")
    expected=$(field "s['counts'].get('requests-as-expected', 0)")
    streams=$(field "s['counts'].get('streams', 0)")
    bad=$(field "sum(s['errors'].values())")
    echo "requests $expected/$total as expected; streams $streams; unexpected outcomes $bad"
    # Under a shared 2-core machine a few answers may be late; more than
    # 1 % unexpected is a fault clavis did not contain.
    ((total > 0 && streams > 0)) || { echo "no load ran"; return 1; }
    ((bad * 100 <= total + streams)) || { field "json.dumps(s['errors'], indent=1)"; return 1; }
}
step "at least 99 % of answers as the fault predicts (200, 502, 504, stream cut)" answers_as_expected

still_serves() {
    local code
    code=$(curl -q -s -o /dev/null -w '%{http_code}' --max-time 10 --proxy "$PROXY_URL" --cacert "$BUNDLE" \
        -H "Authorization: Bearer placeholder" https://api.openai.com/v1/small)
    echo "GET /v1/small answered $code"
    [[ $code == 200 ]]
}
step "clavis still serves after the load" still_serves

rss_stable() {
    local at30 end
    at30=$(field "s['rss_kib']['at_30s']")
    end=$(field "s['rss_kib']['end']")
    echo "RSS: start $RSS_BASE KiB, at 30 s $at30 KiB, end of load $end KiB"
    ((at30 > 0)) || { echo "the load ran less than 30 s: no RSS at 30 s"; return 1; }
    ((end * 10 <= at30 * 11)) || { echo "RSS grew more than 10 % after 30 s"; return 1; }
}
step "RSS at the end within 10 % of RSS at 30 s" rss_stable

fds_back() {
    local FD_END
    # Pooled upstream connections close after limits.idle_timeout (5 s),
    # client connections when the load's client closed them; a stream the
    # client gave up on mid-stall holds its upstream connection until the
    # upstream's 30 s stall ends (nothing is read or written on it before).
    for _ in $(seq 80); do
        FD_END=$(fds)
        ((FD_END <= FD_BASE + FD_SLACK)) && break
        sleep 0.5
    done
    echo "open fds: baseline $FD_BASE, after the load $FD_END (slack $FD_SLACK)"
    ((FD_END <= FD_BASE + FD_SLACK)) || { ls -l "/proc/$CLAVIS_PID/fd" | tail -n 30; return 1; }
}
step "open file descriptors back to the baseline within 40 s of the load" fds_back

no_panic() {
    if grep -n 'panicked' "$CLAVIS_LOG" "$TMP/upstream.log" | head -n 5 | grep .; then return 1; fi
    echo "no 'panicked' in clavis's output"
}
step "clavis never panicked" no_panic

no_key_anywhere() {
    local f k found=0
    for f in "$CLAVIS_LOG" "$TMP/audit.jsonl"; do
        for k in "$KEY_OPENAI" "$KEY_ANTHROPIC"; do
            if grep -qF "$k" "$f" 2>/dev/null; then echo "a real key in $(basename "$f")"; found=1; fi
        done
    done
    [[ -s "$TMP/audit.jsonl" ]] || { echo "the audit file is empty"; return 1; }
    ((found == 0)) && echo "no real key in clavis's output or its audit file ($(wc -l <"$TMP/audit.jsonl") events)"
    ((found == 0))
}
step "no real key in clavis's output or audit file" no_key_anywhere

clavis_alive

log "summary"
field "'requests %d (as expected %d), streams %d (complete %d, cut by a fault %d), events %d' % (
    s['counts'].get('requests', 0), s['counts'].get('requests-as-expected', 0), s['counts'].get('streams', 0),
    s['counts'].get('streams-complete', 0), s['counts'].get('streams-fault-as-expected', 0),
    s['counts'].get('events', 0))" | indent
field "'faults injected: ' + (', '.join('%s %d' % kv for kv in sorted(s['faults_injected'].items())) or 'none')" | indent
field "'unexpected outcomes: ' + (', '.join('%s: %d' % kv for kv in sorted(s['errors'].items())) or 'none')" | indent
field "'RSS KiB: start %d, at 30 s %d, end %d' % (s['rss_kib']['start'], s['rss_kib']['at_30s'], s['rss_kib']['end'])" | indent
echo "fds: baseline $FD_BASE, now $(fds)" | indent

summary
((FAILED == 0))
