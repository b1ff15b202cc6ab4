#!/usr/bin/env bash
# Development runner for the console's browser test, against the mock admin
# port (tests/e2e_console/mock_admin.py), not against clavis: the quick loop
# while working on assets/console/. run.sh (in make test) runs this first,
# then the same test against a real clavis.
#
#   tests/e2e_console/dev.sh              run console_test.py once
#   tests/e2e_console/dev.sh --serve      only start the mock and print its URL
#
# Env: CONSOLE_OUT=dir   where screenshots go (default: a new temp dir)
#      MOCK_VERBOSE=1    log every request the mock serves
#      CONSOLE_ASSETS=dir serve the console from dir instead of assets/console
# Makes tests/e2e_console/.venv with playwright from PyPI (its own driver; no
# `playwright install`: the browser is Debian's chromium, installed with apt
# if /usr/bin/chromium is missing). Exits non-zero on any failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV="$HERE/.venv"
PY="$VENV/bin/python"
TOKEN="console-dev-admin-token-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
unset HTTPS_PROXY https_proxy HTTP_PROXY http_proxy ALL_PROXY all_proxy NO_PROXY no_proxy 2>/dev/null || true

if [[ ! -x /usr/bin/chromium ]]; then
    echo "== installing chromium (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

if [[ ! -x "$PY" ]] || ! "$PY" -c 'import playwright' 2>/dev/null; then
    echo "== creating $VENV"
    python3 -m venv "$VENV"
    "$PY" -m pip install -q --disable-pip-version-check "playwright>=1.49,<2"
fi

OUT=${CONSOLE_OUT:-$(mktemp -d /tmp/clavis-console-XXXXXX)}
mkdir -p "$OUT"
MOCK_LOG="$OUT/mock.log"

PORT_FILE="$OUT/mock.port"
rm -f "$PORT_FILE"
"$PY" -u "$HERE/mock_admin.py" --port 0 --token "$TOKEN" >"$PORT_FILE" 2>"$MOCK_LOG" &
MOCK_PID=$!
trap 'kill "$MOCK_PID" 2>/dev/null || true; wait "$MOCK_PID" 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
    grep -q '^LISTENING ' "$PORT_FILE" 2>/dev/null && break
    kill -0 "$MOCK_PID" 2>/dev/null || { echo "mock exited:"; cat "$MOCK_LOG"; exit 1; }
    sleep 0.1
done
PORT=$(awk '/^LISTENING /{print $2; exit}' "$PORT_FILE")
[[ -n "$PORT" ]] || { echo "mock did not start:"; cat "$MOCK_LOG"; exit 1; }
BASE="http://127.0.0.1:$PORT"

if [[ "${1:-}" == "--serve" ]]; then
    echo "mock admin port: $BASE/console   token: $TOKEN   (Ctrl-C to stop)"
    wait "$MOCK_PID"
    exit 0
fi

echo "== console_test.py against the mock at $BASE (screenshots in $OUT)"
rc=0
"$PY" "$HERE/console_test.py" --base-url "$BASE" --token "$TOKEN" --driver mock --out "$OUT" || rc=$?
if ((rc != 0)) && [[ -s "$MOCK_LOG" ]]; then
    echo "-- mock log (last 30 lines)"
    tail -n 30 "$MOCK_LOG"
fi
exit "$rc"
