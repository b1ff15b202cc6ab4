#!/usr/bin/env python3
"""Checks on what the fake upstreams recorded (tests/e2e_agents/run.sh).

  check.py auth RECORD HOST PATH_RE HEADER VALUE [--since N]
      every request to HOST whose path matches PATH_RE (and there is at
      least one) carried HEADER exactly once, equal to VALUE
  check.py none RECORD
      no request header or recorded body holds a placeholder ("clavis:"),
      and no Proxy-* header reached an upstream
  check.py hosts RECORD HOST...
      every recorded request went to one of HOST
  check.py absent SECRET -- PATH...
      no file under PATH (files or directories) contains SECRET
"""
import json
import os
import re
import sys


def load(path, since=0):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f.readlines()[since:] if line.strip()]


def headers(entry, name):
    return [v for k, v in entry["headers"] if k == name]


def auth(args):
    record, host, path_re, header, value = args[:5]
    since = int(args[args.index("--since") + 1]) if "--since" in args else 0
    hits = [e for e in load(record, since) if e["host"] == host and re.search(path_re, e["path"])]
    if not hits:
        print(f"no request to {host} matching {path_re!r} was recorded")
        return 1
    bad = [e for e in hits if headers(e, header.lower()) != [value]]
    for e in bad:
        got = headers(e, header.lower())
        shown = ["(the expected value)" if g == value else g[:60] for g in got]
        print(f"{e['method']} {host}{e['path']}: {header} = {shown}")
    print(f"{len(hits) - len(bad)}/{len(hits)} requests to {host} {path_re!r} carried the expected {header}")
    return 1 if bad else 0


def none(args):
    record = args[0]
    problems = []
    for e in load(record):
        for k, v in e["headers"]:
            if k.startswith("proxy-"):
                problems.append(f"{e['host']}{e['path']}: {k} reached the upstream")
            if "clavis:" in v:
                problems.append(f"{e['host']}{e['path']}: a placeholder in {k}")
        if "clavis:" in e.get("body", ""):
            problems.append(f"{e['host']}{e['path']}: a placeholder in the body")
    print("\n".join(problems) or "no placeholder and no Proxy-* header reached an upstream")
    return 1 if problems else 0


def hosts(args):
    record, allowed = args[0], set(args[1:])
    seen = {e["host"] for e in load(record)}
    extra = seen - allowed
    print(f"hosts seen: {sorted(seen)}")
    return 1 if extra else 0


def absent(args):
    split = args.index("--")
    secrets, paths = args[:split], args[split + 1:]
    found = []
    for root in paths:
        files = [root] if os.path.isfile(root) else [
            os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
        for path in files:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            for s in secrets:
                if s.encode() in data:
                    found.append(f"{path} holds a real key")
    print("\n".join(sorted(set(found))) or f"no real key in {len(paths)} path(s)")
    return 1 if found else 0


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    return {"auth": auth, "none": none, "hosts": hosts, "absent": absent}[cmd](args)


if __name__ == "__main__":
    sys.exit(main())
