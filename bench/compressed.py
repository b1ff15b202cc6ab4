#!/usr/bin/env python3
"""What scanning compressed answers costs (SPEC §3.1): the bench's /large
(50 MiB of random bytes) and a 50 MiB compressible JSON body, each served
identity and gzip-encoded (`Content-Encoding: gzip`, pre-compressed, so
nginx spends nothing), fetched through one clavis binary.

    python3 bench/compressed.py [BINARY] [--runs 20]

Identity is the path clavis had before (the scrubber's SIMD anchor scan
only); gzip adds decoding every byte (the agent then receives the decoded
body). Per body: the median wall time of a curl download through clavis,
clavis's CPU (utime + stime from /proc, averaged over the runs) per MiB
the upstream sent, and
bytes received by the client. Reuses bench/lib/harness.py (certificates,
nginx, the clavis config); needs nginx and curl.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
import harness as h  # noqa: E402

BODIES = ["large", "large.gz", "json", "json.gz"]


def make_data(data: Path) -> None:
    h.ensure_large(data)
    if not (data / "large.gz").exists():
        with open(data / "large", "rb") as src, gzip.open(data / "large.gz", "wb", compresslevel=6) as dst:
            dst.write(src.read())
    if not (data / "json").exists():
        rows = [{"id": i, "object": "chat.completion", "model": "gpt-bench",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer {i % 977} " * 6}}]}
                for i in range(200_000)]
        text = json.dumps(rows).encode()[: h.LARGE_BYTES]
        (data / "json").write_bytes(text)
        with gzip.open(data / "json.gz", "wb", compresslevel=6) as dst:
            dst.write(text)


def nginx_conf(d: Path, port: int, data: Path) -> Path:
    check = f'if ($http_authorization != "Bearer {h.REAL_KEY}") {{ return 401; }}'
    locations = ""
    for name in BODIES:
        encoding = 'add_header Content-Encoding gzip;' if name.endswith(".gz") else ""
        locations += f"""
        location = /{name} {{
            {check}
            default_type application/octet-stream;
            {encoding}
            root {data};
        }}"""
    conf = f"""
user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
daemon off;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {d}/nginx-tmp/body;
    proxy_temp_path {d}/nginx-tmp/proxy;
    fastcgi_temp_path {d}/nginx-tmp/fastcgi;
    uwsgi_temp_path {d}/nginx-tmp/uwsgi;
    scgi_temp_path {d}/nginx-tmp/scgi;
    access_log off;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name {h.HOST};
        ssl_certificate {d}/upstream.pem;
        ssl_certificate_key {d}/upstream.key;
        {locations}
    }}
}}
"""
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (d / "nginx-tmp" / sub).mkdir(parents=True, exist_ok=True)
    path = d / "nginx.conf"
    path.write_text(conf)
    return path


def fetch(t: h.Target, name: str) -> tuple[float, int, float]:
    """(seconds, bytes received, clavis CPU seconds) for one download."""
    before = h.cpu_ticks(t.pid)
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{time_total} %{size_download} %{http_code}",
         "-x", f"http://{h.AGENT}:{h.AGENT_TOKEN}@127.0.0.1:{t.proxy_port}", "--cacert", t.cacert,
         "-H", "Authorization: Bearer placeholder", "-H", "Accept-Encoding: gzip",
         f"https://{h.HOST}/{name}"],
        capture_output=True, text=True, check=True).stdout.split()
    cpu = (h.cpu_ticks(t.pid) - before) / h.CLK_TCK
    if out[2] != "200":
        raise RuntimeError(f"/{name}: HTTP {out[2]}")
    return float(out[0]), int(out[1]), cpu


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("binary", nargs="?", default=str(h.CLAVIS))
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    h.CLAVIS = Path(args.binary).resolve()
    d = h.BENCH / ".run" / ("compressed-" + time.strftime("%Y%m%d-%H%M%S"))
    d.mkdir(parents=True)
    data = h.BENCH / ".run" / "data"
    h.make_certs(d)
    make_data(data)
    pinned = len(os.sched_getaffinity(0)) >= 2
    if pinned:
        os.sched_setaffinity(0, {h.LOAD_CORE})
    else:
        h.PROXY_CORE = h.LOAD_CORE = None  # type: ignore[assignment]
    procs = h.Procs()
    try:
        port = h.free_port()
        ng = procs.start("nginx", ["nginx", "-p", str(d), "-c", str(nginx_conf(d, port, data)),
                                   "-e", str(d / "nginx-error.log")], d / "nginx.out", h.LOAD_CORE)
        h.wait_port(port, ng)
        t = h.start_clavis(procs, d, port)
        sizes = {n: (data / n).stat().st_size for n in BODIES}
        rows = {}
        for name in BODIES:
            fetch(t, name)  # warm: pooled connection, leaf
            runs = [fetch(t, name) for _ in range(args.runs)]
            secs = statistics.median(r[0] for r in runs)
            # Summed over the runs: /proc counts in 10 ms ticks.
            cpu = sum(r[2] for r in runs) / len(runs)
            rows[name] = (secs, runs[0][1], cpu)
        print(f"clavis {t.version}, {args.runs} runs each, medians; proxy pinned: {pinned}")
        print(f"{'body':10} {'upstream MiB':>12} {'client MiB':>10} {'wall s':>7} {'MiB/s (upstream)':>16} {'clavis CPU s':>12} {'CPU ms/MiB up':>13}")
        for name in BODIES:
            secs, received, cpu = rows[name]
            up = sizes[name] / 2**20
            print(f"{'/' + name:10} {up:12.1f} {received / 2**20:10.1f} {secs:7.3f} {up / secs:16.1f} {cpu:12.3f} {cpu * 1000 / up:13.1f}")
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
