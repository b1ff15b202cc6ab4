#!/usr/bin/env bash
# End-to-end test of deploy/kubernetes: the manifests render, pass the
# Kubernetes schemas offline, keep the sidecar's security contract, and the
# pod they describe works: clavis serves the ConfigMap's config with the
# Secrets' files, the startup probe passes once it is ready, only the CA
# certificate reaches the shared volume, and the official OpenAI SDK with
# exactly the agent container's environment gets the real key injected
# (a fake upstream on 127.0.0.1 records it; nothing leaves the machine).
#
# Usage: tests/e2e_deploy/run.sh
# Env:   CLAVIS_BIN=path   use this binary instead of `cargo build`
#        E2E_KEEP_TMP=1    keep the temp dir (always kept when something failed)
#
# Rendering needs `kubectl` (Kustomize is built in); without it the render,
# schema and policy checks are skipped (said so; a failure under CI=true) and
# the pod is laid out from the component's own files.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV="$HERE/.venv"
PY="$VENV/bin/python"

KEY_OPENAI="sk-REAL-deploy-e2e-0123456789"
AGENT_TOKEN="deploy-e2e-agent-token-0123456789"
ADMIN_TOKEN="deploy-e2e-admin-token-0123456789"

unset HTTPS_PROXY https_proxy HTTP_PROXY http_proxy ALL_PROXY all_proxy NO_PROXY no_proxy \
      SSL_CERT_FILE REQUESTS_CA_BUNDLE CURL_CA_BUNDLE OPENAI_API_KEY OPENAI_BASE_URL 2>/dev/null || true

# shellcheck source=../e2e/lib.sh
source "$HERE/../e2e/lib.sh"
e2e_init clavis-e2e-deploy "rendered.yaml, pod/, clavis.log, upstream-record.jsonl"
DEPLOY="$ROOT/deploy/kubernetes"

clavis_binary
python_venv .e2e-requirements "$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)" -r "$HERE/requirements.txt"

# ------------------------------------------------------------ render, schemas, policy
SOURCE="$DEPLOY/components/clavis/sidecar.yaml"
if command -v kubectl >/dev/null; then
    step "kubectl kustomize overlays/dev renders" \
        bash -c "kubectl kustomize '$DEPLOY/overlays/dev' >'$TMP/rendered.yaml'"
    step "kubectl kustomize base renders (the agent alone)" \
        bash -c "kubectl kustomize '$DEPLOY/base' >'$TMP/base.yaml'"
    step "kubectl kustomize overlays/vault renders (keys from Vault)" \
        bash -c "kubectl kustomize '$DEPLOY/overlays/vault' >'$TMP/rendered-vault.yaml'"
    SOURCE="$TMP/rendered.yaml"
    for k in 1.29.0 1.33.0 1.37.0; do
        step "rendered manifests pass the Kubernetes $k schemas (--strict)" \
            "$VENV/bin/kubernetes-validate" --quiet --strict -k "$k" "$TMP/rendered.yaml" "$TMP/base.yaml" \
            "$DEPLOY/components/clavis/secrets.example.yaml" "$TMP/rendered-vault.yaml" \
            "$DEPLOY/components/clavis-vault/vault/auth-delegator.yaml"
    done
    for rendered in rendered rendered-vault; do
    log "policy (tests/e2e_deploy/pod.py) on $rendered.yaml"
    policy_rc=0
    out=$("$PY" "$HERE/pod.py" policy "$TMP/$rendered.yaml" 2>&1) || policy_rc=$?
    while IFS= read -r line; do
        case $line in
        "ok    "*) pass "policy ($rendered): ${line#ok    }" ;;
        "FAIL  "*) fail "policy ($rendered): ${line#FAIL  }" ;;
        *) fail "policy ($rendered): $line" ;;
        esac
    done <<<"$out"
    # pod.py exits 1 when a rule failed, and each such rule was counted above;
    # a failing exit that named no rule (a crash, a kill) counts on its own.
    if ((policy_rc != 0)) && ! grep -q '^FAIL  ' <<<"$out"; then
        fail "policy ($rendered): pod.py checked every rule" "pod.py policy exited $policy_rc"
    fi
    done
else
    for what in "kubectl kustomize renders overlays/dev and base" "rendered manifests pass the Kubernetes schemas" \
        "policy (tests/e2e_deploy/pod.py)"; do
        skip "$what" "kubectl is not installed"
    done
fi

# ------------------------------------------------------------ the pod, on loopback
gen_certs api.openai.com
start_fake_upstream
read -r PROXY_PORT ADMIN_PORT < <(free_ports 2)
POD="$TMP/pod"
CLAVIS_LOG="$TMP/clavis.log"
"$PY" "$HERE/pod.py" materialize "$SOURCE" "$DEPLOY/components/clavis" "$POD" \
    --proxy "$PROXY_PORT" --admin "$ADMIN_PORT" --upstream "$UP_TLS" --test-ca "$TMP/test-ca.pem" \
    --openai-key "$KEY_OPENAI" --agent-token "$AGENT_TOKEN" --admin-token "$ADMIN_TOKEN" ||
    abort "lay out the pod's volumes (pod.py materialize)"
CONFIG="$POD/etc/clavis/clavis.yaml"

# probe NAME: the manifest's probe command, with this binary as `clavis`.
probe() {
    local cmd text
    # Read into a variable first: `mapfile < <(...)` would drop the reader's exit status.
    text=$("$PY" -c 'import json,sys; print(*json.load(open(sys.argv[1]))["probes"][sys.argv[2]], sep="\n")' \
        "$POD/pod.json" "$1") || { echo "no $1 in $POD/pod.json"; return 1; }
    mapfile -t cmd <<<"$text"
    [[ ${cmd[0]} == clavis ]] || { echo "probe does not run clavis: ${cmd[*]}"; return 1; }
    "$CLAVIS_BIN" "${cmd[@]:1}"
}

step "clavis check accepts the ConfigMap's config with the Secrets mounted" "$CLAVIS_BIN" check --config "$CONFIG"
probe_down() {
    local rc=0
    probe startupProbe || rc=$?
    ((rc == 1)) || { echo "exit $rc, not 1"; return 1; }
}
step "the startup probe fails (exit 1) while clavis is not running" probe_down

# As the container runs it: the manifest's args (its --config), json logs.
RUST_LOG=info "$CLAVIS_BIN" serve --config "$CONFIG" --log-format json >"$CLAVIS_LOG" 2>&1 &
PIDS+=($!)
ready=0
for _ in $(seq 300); do
    if probe startupProbe >/dev/null 2>&1; then ready=1; break; fi
    sleep 0.1
done
((ready == 1)) || abort "the startup probe passes once clavis is ready" "$(tail -n 30 "$CLAVIS_LOG")"
pass "the startup probe passes once clavis is ready"
step "the readiness probe passes" probe readinessProbe
step "the liveness probe passes" probe livenessProbe

shared_files() {
    local shared="$POD/var/run/clavis-ca" key="$POD/var/lib/clavis/clavis-ca.key"
    [[ -s $shared/clavis-ca.pem && -s $shared/clavis-ca-bundle.pem ]] || { echo "CA files missing in $shared"; return 1; }
    [[ -z $(ls -A "$shared" | grep -v -e '^clavis-ca.pem$' -e '^clavis-ca-bundle.pem$') ]] || { echo "unexpected files: $(ls -A "$shared")"; return 1; }
    ! grep -rq "PRIVATE KEY" "$shared" || { echo "a private key in the shared volume"; return 1; }
    [[ $(stat -c %a "$key") == 600 ]] || { echo "CA key mode $(stat -c %a "$key")"; return 1; }
    grep -q "PRIVATE KEY" "$key"
}
step "only the CA certificate and bundle reach the shared volume; the key stays private (0600)" shared_files

# The agent container's environment, exactly as the manifest gives it. Without
# it (pod.json unreadable) a client would go to the real host, not to clavis:
# refuse to run one unless HTTPS_PROXY points at this clavis.
agent() {
    local envs=() text
    text=$("$PY" -c 'import json,sys; [print(f"{k}={v}") for k, v in json.load(open(sys.argv[1]))["agent_env"].items()]' \
        "$POD/pod.json") || { echo "cannot read the agent's environment from $POD/pod.json"; return 1; }
    mapfile -t envs <<<"$text"
    printf '%s\n' "${envs[@]}" | grep -q "^HTTPS_PROXY=http://.*@127\.0\.0\.1:$PROXY_PORT\$" ||
        { echo "the agent's HTTPS_PROXY is not this clavis (127.0.0.1:$PROXY_PORT)"; return 1; }
    env -i PATH="$PATH" HOME="$TMP" "${envs[@]}" OPENAI_API_KEY=placeholder "$@"
}

sdk_call() {
    agent "$PY" -c '
import openai
models = openai.OpenAI().models.list()
assert [m.id for m in models.data] == ["gpt-e2e"], models
print("ok")'
    "$PY" - "$RECORD" "$KEY_OPENAI" <<'PYEOF'
import json, sys
record, key = sys.argv[1], sys.argv[2]
hits = [json.loads(l) for l in open(record) if l.strip()]
hits = [h for h in hits if h["path"] == "/v1/models"]
assert hits, "the upstream saw no /v1/models"
auth = [v for k, v in hits[-1]["headers"] if k == "authorization"]
assert auth == [f"Bearer {key}"], f"authorization at the upstream: {len(auth)} header(s), not the real key"
PYEOF
}
step "openai SDK with the agent's environment: real key injected at the upstream" sdk_call

curl_call() {
    agent curl -sS -o /dev/null -w '%{http_code}' --max-time 10 https://api.openai.com/v1/models | grep -qx 200
}
step "curl with the agent's environment (lower-case proxy variable, CA bundle)" curl_call

no_token() {
    local code
    # The CONNECT's own status, alone: curl's error text (merged before) says
    # "407" too, whatever the status.
    code=$(curl -s -o /dev/null -w '%{http_connect}' --max-time 10 --proxy "http://127.0.0.1:$PROXY_PORT" \
        --cacert "$POD/var/run/clavis-ca/clavis-ca-bundle.pem" https://api.openai.com/v1/models || true)
    [[ $code == 407 ]] || { echo "CONNECT answered $code, want 407"; return 1; }
}
step "another process in the pod without the agent's token gets 407" no_token

no_secret_in_log() {
    # A missing log would make grep fail (status 2) and `!` call that clean.
    [[ -s $CLAVIS_LOG ]] || { echo "clavis's log $CLAVIS_LOG is missing or empty"; return 1; }
    ! grep -F -e "$KEY_OPENAI" -e "$AGENT_TOKEN" -e "$ADMIN_TOKEN" "$CLAVIS_LOG"
}
step "no key or token in clavis's log" no_secret_in_log

summary
((FAILED == 0))
