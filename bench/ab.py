#!/usr/bin/env python3
"""A/B of two clavis binaries on the bench setup, one after the other.

    bench/.venv/bin/python bench/ab.py OLD_BINARY NEW_BINARY [--rounds 5] [--seconds 6]
                                       [--requests 3000] [--no-callgrind]

Answers "did this change cost anything?" for a refactor or an optimization:

- CPU per keep-alive request: `oha -c 16 /small` for `--seconds`, the proxy
  pinned to core 0 (load and nginx on core 1), utime + stime of the proxy
  from /proc ÷ requests; rounds alternate which binary goes first; medians.
- Instructions: the same keep-alive load for exactly `--requests` requests
  through each binary running under `valgrind --tool=callgrind` (counts are
  repeatable on a noisy machine; the whole process, start-up included, so a
  run without traffic is subtracted).

Reuses bench/lib/harness.py (certificates, nginx, the clavis config) and
bench/.tools/bin/oha (`bench/run.sh` installs both).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
import harness as h  # noqa: E402


def start(procs: h.Procs, d: Path, nginx_port: int, binary: Path, name: str,
          wrapper: list[str] | None = None) -> h.Target:
    """One clavis from `binary` (optionally under `wrapper`, e.g. valgrind)."""
    if wrapper:
        script = d / f"{name}-run.sh"
        script.write_text("#!/bin/sh\nexec " + " ".join(wrapper) + f" {binary} \"$@\"\n")
        script.chmod(0o755)
        h.CLAVIS = script
    else:
        h.CLAVIS = binary
    return h.start_clavis(procs, d, nginx_port, name=name)


def stop(t: h.Target) -> None:
    t.proc.send_signal(signal.SIGTERM)
    t.proc.wait(timeout=120)


def cpu_per_request(t: h.Target, nginx_port: int, seconds: float, tag: str) -> float:
    before = h.cpu_ticks(t.pid)
    r = h.oha_numbers(h.oha(t, nginx_port, "/small", 16, seconds, tag))
    return (h.cpu_ticks(t.pid) - before) / h.CLK_TCK * 1e6 / max(1, r["ok"])


def oha_n(t: h.Target, n: int) -> None:
    cmd = [str(h.OHA), "--no-tui", "-n", str(n), "-c", "16", "--cacert", t.cacert,
           "-H", f"Authorization: {t.auth}", "--no-pre-lookup",
           "-x", f"http://127.0.0.1:{t.proxy_port}",
           "--proxy-header", f"Proxy-Authorization: {h.proxy_basic()}",
           f"https://{h.HOST}/small"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)


def instructions(out: Path) -> int:
    text = out.read_text()
    m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    if not m:
        raise RuntimeError(f"no totals in {out}")
    return int(m.group(1))


def callgrind(procs: h.Procs, d: Path, nginx_port: int, binary: Path, name: str,
              requests: int) -> int:
    out = d / f"{name}.callgrind"
    wrapper = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "-q"]
    t = start(procs, d, nginx_port, binary, name, wrapper)
    if requests:
        oha_n(t, 64)  # warm-up: leaf minted, pool filled (counted in both runs alike)
        oha_n(t, requests)
    else:
        oha_n(t, 64)
    stop(t)
    return instructions(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--no-callgrind", action="store_true")
    a = ap.parse_args()
    if not h.OHA.exists():
        print(f"{h.OHA} is missing: run bench/run.sh once (it installs oha)", file=sys.stderr)
        return 2
    binaries = {"old": a.old.resolve(), "new": a.new.resolve()}
    try:
        os.nice(-20 - os.nice(0))
    except OSError:
        pass
    pinned = len(os.sched_getaffinity(0)) >= 2
    if pinned:
        os.sched_setaffinity(0, {h.LOAD_CORE})
    else:
        h.PROXY_CORE = h.LOAD_CORE = None
    d = Path(tempfile.mkdtemp(prefix="clavis-ab-"))
    h.make_certs(d)
    procs = h.Procs()
    cpu: dict[str, list[float]] = {"old": [], "new": []}
    instr: dict[str, int] = {}
    try:
        nginx_port = h.free_port()
        conf = h.write_nginx_conf(d, nginx_port, h.free_port(), d / "data")
        ng = procs.start("nginx", ["nginx", "-p", str(d), "-c", str(conf), "-e", str(d / "nginx-error.log")],
                         d / "nginx.out", h.LOAD_CORE)
        h.wait_port(nginx_port, ng)
        for rnd in range(a.rounds):
            order = ["old", "new"] if rnd % 2 == 0 else ["new", "old"]
            for which in order:
                t = start(procs, d, nginx_port, binaries[which], f"{which}-{rnd}")
                h.oha(t, nginx_port, "/small", 64, 1.0, "warmup")
                cpu[which].append(cpu_per_request(t, nginx_port, a.seconds, f"{which}.{rnd}"))
                stop(t)
                print(f"round {rnd + 1}: {which} {cpu[which][-1]:.2f} µs/request", flush=True)
        if not a.no_callgrind and shutil.which("valgrind"):
            for which in ("old", "new"):
                base = callgrind(procs, d, nginx_port, binaries[which], f"{which}-idle", 0)
                full = callgrind(procs, d, nginx_port, binaries[which], f"{which}-load", a.requests)
                instr[which] = full - base
                print(f"callgrind: {which} {instr[which] / 1e6:.1f} M instructions for "
                      f"{a.requests} requests", flush=True)
    finally:
        procs.stop_all()
    print()
    print(f"| binary | CPU µs/request (median of {a.rounds} × {a.seconds:g} s) | rounds | "
          f"instructions for {a.requests} requests |")
    print("|---|---|---|---|")
    for which in ("old", "new"):
        rounds = " / ".join(f"{x:.2f}" for x in cpu[which])
        ins = f"{instr[which] / 1e6:.1f} M ({instr[which] / a.requests / 1e3:.1f} k/request)" \
            if which in instr else "—"
        print(f"| {which}: {binaries[which]} | {statistics.median(cpu[which]):.2f} | {rounds} | {ins} |")
    ratio = statistics.median(cpu["new"]) / statistics.median(cpu["old"])
    line = f"\nnew ÷ old: CPU {ratio:.3f}×"
    if len(instr) == 2:
        line += f", instructions {instr['new'] / instr['old']:.3f}×"
    print(line)
    print(f"(pinned: {pinned}; logs in {d})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
