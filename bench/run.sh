#!/usr/bin/env bash
# clavis benchmark: one command, on a fresh Debian machine as root.
#
#   bench/run.sh            full run: 3 rounds, ~10 s per scenario and target, 10000 idle conns
#   bench/run.sh --quick    1 round, ~3 s per scenario and target, 2000 idle conns
#
# Extra flags go to the harness: --targets direct,clavis,mitmproxy,hudsucker
# --scenarios ka16,ka64,newconn,large,sse,streamreq,mint,streams,idle,guardrails
# --rounds N --seconds S --idle-conns N --streams N --sr-workers N --guard-rounds N
# --no-results-file;
# BENCH_CLAVIS_BIN=path runs another clavis binary.
# See bench/README.md.
#
# Installs what it needs (apt: nginx, openssl, python3-venv, build tools;
# PyPI: mitmproxy into bench/.venv; crates.io: oha into bench/.tools), builds
# the SSE origin and the hudsucker peer (bench/.target-peers) and clavis
# (cargo build --release),
# then runs bench/lib/harness.py, which prints the table and writes
# bench/RESULTS.md. All traffic stays on 127.0.0.1.
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$BENCH")"
say() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- system packages (apt-get update once, only when something is missing)
pkgs=()
command -v nginx >/dev/null 2>&1 || pkgs+=(nginx)
command -v openssl >/dev/null 2>&1 || pkgs+=(openssl)
command -v taskset >/dev/null 2>&1 || pkgs+=(util-linux)
command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || pkgs+=(python3-venv)
command -v cc >/dev/null 2>&1 || pkgs+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || pkgs+=(pkg-config)
command -v git >/dev/null 2>&1 || pkgs+=(git)
if ((${#pkgs[@]})); then
  say "apt-get install ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  say "cargo (Rust stable) is required: it builds clavis, oha and the hudsucker peer"
  exit 1
fi

# The peers are installed and built only when --targets names them.
targets="direct,clavis,mitmproxy,hudsucker"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --targets=*) targets="${args[i]#--targets=}" ;;
    --targets) targets="${args[i + 1]:-}" ;;
  esac
done
wants() { [[ ",$targets," == *",$1,"* ]]; }

# --- mitmproxy (PyPI) into bench/.venv (the venv also runs the harness)
if [[ ! -x "$BENCH/.venv/bin/python" ]]; then
  python3 -m venv "$BENCH/.venv"
fi
if wants mitmproxy && [[ ! -x "$BENCH/.venv/bin/mitmdump" ]]; then
  say "installing mitmproxy into bench/.venv"
  python3 -m venv "$BENCH/.venv"
  "$BENCH/.venv/bin/pip" install -q --disable-pip-version-check -r "$BENCH/requirements.txt"
fi

# --- oha (crates.io) into bench/.tools
if [[ ! -x "$BENCH/.tools/bin/oha" ]]; then
  say "cargo install oha (a few minutes, once)"
  nice -n 15 cargo install oha --locked --root "$BENCH/.tools" --quiet
fi

# --- the SSE origin every target's streams come from (Rust: it shares the
# load core, where a Python origin took a third of the core at 10,000 events/s)
say "building the SSE origin"
nice -n 15 cargo build --release --quiet --locked \
  --manifest-path "$BENCH/peers/sse-origin/Cargo.toml" \
  --target-dir "$BENCH/.target-peers"

# --- the hudsucker peer
if wants hudsucker; then
  say "building the hudsucker peer"
  nice -n 15 cargo build --release --quiet --locked \
    --manifest-path "$BENCH/peers/hudsucker-inject/Cargo.toml" \
    --target-dir "$BENCH/.target-peers"
fi

# --- clavis itself
say "building clavis (cargo build --release)"
if ! (cd "$REPO" && nice -n 15 cargo build --release --quiet --bin clavis); then
  say "clavis did not build: it is reported as failed, the peers still run"
  export BENCH_CLAVIS_BUILD_FAILED=1
fi

exec "$BENCH/.venv/bin/python" "$BENCH/lib/harness.py" "$@"
