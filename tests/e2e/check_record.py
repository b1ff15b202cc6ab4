#!/usr/bin/env python3
"""Assertions on what the fake upstream saw and on clavis's log.

Usage: check_record.py CHECK RECORD_FILE CLAVIS_LOG
with the real keys in the environment (E2E_KEY_OPENAI, E2E_KEY_ANTHROPIC,
E2E_KEY_GITHUB, E2E_KEY_STRIPE, E2E_KEY_BRAVE). CHECK is one of --list.
"""
import base64
import json
import os
import sys
import urllib.parse

KEYS = {
    "openai": os.environ.get("E2E_KEY_OPENAI", ""),
    "anthropic": os.environ.get("E2E_KEY_ANTHROPIC", ""),
    "github": os.environ.get("E2E_KEY_GITHUB", ""),
    "stripe": os.environ.get("E2E_KEY_STRIPE", ""),
    "brave": os.environ.get("E2E_KEY_BRAVE", ""),
}

# connector -> (host, header clavis must set, expected value, auth headers that must be absent)
EXPECT = {
    "openai": ("api.openai.com", "authorization", "Bearer " + KEYS["openai"], ["x-api-key"]),
    "anthropic": ("api.anthropic.com", "x-api-key", KEYS["anthropic"], ["authorization"]),
    "github": ("api.github.com", "authorization", "Bearer " + KEYS["github"], ["x-api-key"]),
    "stripe": ("api.stripe.com", "authorization", "Bearer " + KEYS["stripe"], ["x-api-key"]),
    "brave": ("api.search.brave.com", "x-subscription-token", KEYS["brave"], ["authorization", "x-api-key"]),
}


class Failed(Exception):
    pass


def load(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def values(rec, name):
    return [v for k, v in rec["headers"] if k == name]


def check_connector(name, records):
    host, header, want, absent = EXPECT[name]
    mine = [r for r in records if r["host"] == host]
    if not mine:
        raise Failed(f"the upstream saw no request for {host}")
    for r in mine:
        where = f"{r['method']} https://{host}{r['path']}"
        if r["scheme"] != "https":
            raise Failed(f"{where}: reached the upstream over {r['scheme']}")
        if r.get("sni") != host:
            raise Failed(f"{where}: upstream TLS SNI was {r.get('sni')!r}, want {host!r}")
        got = values(r, header)
        if got != [want]:
            shown = ["<the real key>" if v == want else v for v in got]
            raise Failed(f"{where}: want exactly one {header} header with the real key, got {shown}")
        for other in absent:
            if values(r, other):
                raise Failed(f"{where}: header {other} reached the upstream: {values(r, other)}")
        if name == "anthropic" and len(values(r, "anthropic-version")) != 1:
            raise Failed(f"{where}: want exactly one anthropic-version header, got {values(r, 'anthropic-version')}")
    print(f"{len(mine)} request(s) to {host} carried the real credential in {header}")


def check_anthropic_both_headers(records):
    """The request clients.py sent with both x-api-key and Authorization
    (marked X-E2E-Step: anthropic-both-headers) reached the upstream with the
    real key in x-api-key alone: both placeholders stripped, nothing else added."""
    mine = [r for r in records if values(r, "x-e2e-step") == ["anthropic-both-headers"]]
    if len(mine) != 1:
        raise Failed(f"want one request marked x-e2e-step: anthropic-both-headers at the upstream, got {len(mine)}")
    r = mine[0]
    where = f"{r['method']} https://{r['host']}{r['path']}"
    if r["host"] != "api.anthropic.com" or r.get("sni") != "api.anthropic.com":
        raise Failed(f"{where}: arrived for host {r['host']!r}, SNI {r.get('sni')!r}")
    keys = values(r, "x-api-key")
    if keys != [KEYS["anthropic"]]:
        shown = ["<the real key>" if v == KEYS["anthropic"] else v for v in keys]
        raise Failed(f"{where}: want exactly one x-api-key with the real key, got {shown}")
    if values(r, "authorization"):
        raise Failed(f"{where}: authorization reached the upstream: {values(r, 'authorization')}")
    print(f"{where}: x-api-key = the real key (once), no authorization")


def decoded_forms(value):
    yield value
    yield urllib.parse.unquote(value)
    parts = value.split(None, 1)
    if len(parts) == 2 and parts[0].lower() == "basic":
        try:
            yield base64.b64decode(parts[1] + "==").decode("utf-8", "replace")
        except ValueError:
            pass


def check_no_placeholder(records):
    for r in records:
        for k, v in r["headers"]:
            for form in decoded_forms(v):
                if "placeholder" in form.lower():
                    raise Failed(f"{r['method']} {r['host']}{r['path']}: header {k}: {v!r} still holds the placeholder")
    print(f"no placeholder in any header of {len(records)} recorded requests")


def check_no_proxy_headers(records):
    for r in records:
        for k, v in r["headers"]:
            if k.startswith("proxy-"):
                raise Failed(f"{r['method']} {r['host']}{r['path']}: {k} reached the upstream")
    print(f"no proxy-* header in {len(records)} recorded requests")


def check_tunnel(records):
    mine = [r for r in records if r["host"] == "plain.test.example"]
    if not mine:
        raise Failed("no request for plain.test.example reached the plain upstream")
    secrets = [v for v in KEYS.values() if v]
    for r in mine:
        if r["scheme"] != "http":
            raise Failed(f"plain.test.example request arrived over {r['scheme']}")
        for k, v in r["headers"]:
            if any(s in v for s in secrets):
                raise Failed(f"a credential was injected into the tunnelled request (header {k})")
    print(f"{len(mine)} tunnelled plain-HTTP request(s) reached plain.test.example untouched")


def check_log(log_path):
    with open(log_path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    if not text.strip():
        raise Failed("the clavis log is empty (was RUST_LOG=trace honoured?)")
    for name, key in KEYS.items():
        if not key:
            continue
        forms = {key, base64.b64encode(key.encode()).decode(), base64.b64encode((key + ":").encode()).decode()}
        for form in forms:
            if form in text:
                raise Failed(f"the clavis log contains the real {name} key (as {'raw' if form == key else 'base64'})")
    print(f"clavis log ({len(text.splitlines())} lines at trace level) holds none of the real keys")


def main():
    checks = list(EXPECT) + ["anthropic-both-headers", "no-placeholder", "no-proxy-headers", "tunnel", "log"]
    if len(sys.argv) == 2 and sys.argv[1] == "--list":
        print("\n".join(checks))
        return 0
    if len(sys.argv) != 4 or sys.argv[1] not in checks:
        print(__doc__)
        return 2
    check, record_path, log_path = sys.argv[1:]
    try:
        records = load(record_path)
        if check in EXPECT:
            if not KEYS[check]:
                raise Failed(f"E2E_KEY_{check.upper()} is not set")
            check_connector(check, records)
        elif check == "anthropic-both-headers":
            check_anthropic_both_headers(records)
        elif check == "no-placeholder":
            check_no_placeholder(records)
        elif check == "no-proxy-headers":
            check_no_proxy_headers(records)
        elif check == "tunnel":
            check_tunnel(records)
        elif check == "log":
            check_log(log_path)
    except Failed as e:
        print(f"FAIL: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
