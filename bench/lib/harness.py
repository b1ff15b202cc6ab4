"""clavis benchmark harness (driven by bench/run.sh; standard library only).

Starts a local TLS upstream (nginx + a tiny SSE origin) for api.openai.com,
the proxies under test (clavis, mitmproxy, a hudsucker program), and measures
every scenario for every target, alternating targets, then writes a Markdown
table to stdout and bench/RESULTS.md. See bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HOST = "api.openai.com"
REAL_KEY = "sk-bench-REAL"
PLACEHOLDER = "Bearer sk-placeholder-not-a-key"
AGENT, AGENT_TOKEN = "bench", "bench-token"
LARGE_BYTES = 50 * 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")

BENCH = Path(__file__).resolve().parent.parent
REPO = BENCH.parent
OHA = BENCH / ".tools" / "bin" / "oha"
VENV_PY = BENCH / ".venv" / "bin" / "python"
MITMDUMP = BENCH / ".venv" / "bin" / "mitmdump"
HUDSUCKER = BENCH / ".target-peers" / "release" / "hudsucker-inject"
SSE_ORIGIN = BENCH / ".target-peers" / "release" / "sse-origin"
# BENCH_CLAVIS_BIN: another clavis binary (an A/B of two builds on the same setup)
CLAVIS = Path(os.environ.get("BENCH_CLAVIS_BIN") or REPO / "target" / "release" / "clavis")

PROXY_CORE, LOAD_CORE = 0, 1

# One-off scenarios (once per target and run, after the rounds).
IDLE_CONNS, IDLE_CONNS_QUICK = 10000, 2000  # idle MITM'd connections held open
IDLE_CONCURRENCY = 200  # connections being opened at a time
IDLE_DEADLINE = 60.0  # s for the open phase; a proxy that needs longer is not measured
IDLE_HOLD = 2.0  # s all connections stay idle before the proxy's RSS is read
CONN_LIMIT = 20000  # clavis limits.max_connections / max_tunnels, nginx worker_connections
NOFILE = 65536  # RLIMIT_NOFILE for the harness and everything it starts
MINT_DOMAIN = "mint.bench.test"  # claimed by the bench's user-defined connector `mintbench`
MINT_HOSTS = 20  # never-seen hosts for the cold-handshake samples
MINT_BURST = 64  # concurrent CONNECT + handshakes to one new host
MINT_MT_WORKERS, MINT_MT_BURSTS = 4, 5  # the burst again on a second clavis with 4 tokio workers
# Stream then request: an SSE stream read to its end, then at once a small
# request on the same client connection (an agent's streamed completion and
# its next call), through a proxy instance of its own.
STREAMREQ_SEQS, STREAMREQ_SEQS_QUICK = 200, 50
STREAMREQ_EVENTS = 3
STREAMREQ_SSE = f"/sse?n={STREAMREQ_EVENTS}&ms=10"
# A thousand streams (one-off): concurrent SSE streams, one event every
# STREAMS_MS, for STREAMS_SECONDS (--quick: STREAMS_SECONDS_QUICK).
STREAMS_N = 1000
STREAMS_MS = 100
STREAMS_SECONDS, STREAMS_SECONDS_QUICK = 30, 10
STREAMS_OPEN_CONCURRENCY = 100
# Guardrails (one-off): the keep-alive workload and an SSE chat stream
# through two more clavis instances, one without guardrails and one with a
# 100-rule policy and a token budget on the service, taking turns.
GUARD_ROUNDS, GUARD_ROUNDS_QUICK = 5, 2
GUARD_EVENTS, GUARD_EVENT_MS = 50, 20
GUARD_SSE = f"/v1/chat/completions?n={GUARD_EVENTS}&ms={GUARD_EVENT_MS}"
GUARD_CHAT = json.dumps({"model": "gpt-4o-mini", "stream": True, "max_tokens": 64,
                         "messages": [{"role": "user", "content": "Say hello."}]}).encode()


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def first_line(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        out = (p.stdout or p.stderr).strip().splitlines()
        return out[0].strip() if out else "?"
    except (OSError, subprocess.SubprocessError):
        return "unavailable"


# ---------------------------------------------------------------- /proc probes


def cpu_split(pid: int) -> tuple[int, int]:
    """(user, kernel) CPU ticks of a process: utime and stime (fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def cpu_ticks(pid: int) -> int:
    return sum(cpu_split(pid))


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def proc_stat() -> dict[str, list[int]]:
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu"):
            parts = line.split()
            out[parts[0]] = [int(x) for x in parts[1:]]
    return out


def busy_and_steal(a: dict, b: dict, cpu: str) -> tuple[float, float]:
    da = [y - x for x, y in zip(a[cpu], b[cpu])]
    total = sum(da[:8]) or 1
    idle = da[3] + da[4]
    return 100.0 * (total - idle) / total, 100.0 * da[7] / total


class RssSampler:
    """Max VmRSS of a process, sampled every 50 ms while running."""

    def __init__(self, pid: int | None):
        self.pid, self.max_kib, self._stop = pid, 0, threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.max_kib = max(self.max_kib, status_kib(self.pid, "VmRSS"))
            except OSError:
                return
            self._stop.wait(0.05)

    def __enter__(self):
        if self.pid:
            self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.pid:
            self._t.join()
            self.max_kib = max(self.max_kib, status_kib(self.pid, "VmRSS"))


# ---------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    proxy_port: int | None = None  # None: direct to nginx
    cacert: str = ""
    proc: subprocess.Popen | None = None
    error: str | None = None
    idle_rss_kib: int | None = None
    version: str = ""
    admin_port: int | None = None  # clavis only: /metrics

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def auth(self) -> str:
        # The agent holds a placeholder behind a proxy, the real key only direct.
        return PLACEHOLDER if self.proxy_port else f"Bearer {REAL_KEY}"


def proxy_basic() -> str:
    return "Basic " + base64.b64encode(f"{AGENT}:{AGENT_TOKEN}".encode()).decode()


# ---------------------------------------------------------------- raw HTTPS client (SSE, sanity)


def connect_request(host: str) -> bytes:
    return (f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n"
            f"Proxy-Authorization: {proxy_basic()}\r\n\r\n").encode()


def read_connect_reply(s: socket.socket) -> None:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("proxy closed the connection during CONNECT")
        head += chunk
    status = head.split(b"\r\n", 1)[0]
    if b" 200" not in status:
        raise RuntimeError(f"CONNECT answered {status.decode(errors='replace')}")


def open_tunnel(proxy_port: int, host: str = HOST) -> socket.socket:
    """A TCP connection to the proxy after `CONNECT host:443` was answered 200."""
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=15)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(connect_request(host))
        read_connect_reply(s)
    except BaseException:
        s.close()
        raise
    return s


class Conn:
    """One HTTP/1.1-over-TLS connection to api.openai.com, via a target."""

    def __init__(self, t: Target, nginx_port: int):
        if t.proxy_port:
            s = open_tunnel(t.proxy_port)
        else:
            s = socket.create_connection(("127.0.0.1", nginx_port), timeout=15)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctx = ssl.create_default_context(cafile=t.cacert)
        ctx.set_alpn_protocols(["http/1.1"])
        self.s = ctx.wrap_socket(s, server_hostname=HOST)
        self.buf = b""

    def close(self) -> None:
        try:
            self.s.close()
        except OSError:
            pass

    def _fill(self) -> bool:
        chunk = self.s.recv(262144)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def request(self, path: str, auth: str, tag: str, method: str = "GET",
                body: bytes = b"") -> tuple[int, dict]:
        """Sends a request (a GET unless told; a body as JSON) and reads the
        response head; `self.sent_at` and `self.first_byte_at`
        (perf_counter) time it to its first byte."""
        framing = (f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                   if body or method != "GET" else "")
        self.sent_at = time.perf_counter()
        self.s.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {auth}\r\n"
            f"Accept: */*\r\nX-Bench-Run: {tag}\r\n{framing}\r\n".encode() + body
        )
        if not self.buf and not self._fill():
            raise RuntimeError("connection closed before response headers")
        self.first_byte_at = time.perf_counter()
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise RuntimeError("connection closed before response headers")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return status, headers

    def body(self, headers: dict):
        """Yield body pieces as they arrive (chunked, length or until close)."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                while b"\r\n" not in self.buf:
                    if not self._fill():
                        return
                size_line, rest = self.buf.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                self.buf = rest
                if size == 0:
                    while b"\r\n" not in self.buf:
                        if not self._fill():
                            return
                    self.buf = self.buf.split(b"\r\n", 1)[1]
                    return
                remaining = size
                while remaining:
                    if not self.buf and not self._fill():
                        return
                    piece = self.buf[:remaining]
                    self.buf = self.buf[len(piece):]
                    remaining -= len(piece)
                    yield piece
                while len(self.buf) < 2:
                    if not self._fill():
                        return
                self.buf = self.buf[2:]
        elif "content-length" in headers:
            remaining = int(headers["content-length"])
            while remaining:
                if not self.buf and not self._fill():
                    return
                piece = self.buf[:remaining]
                self.buf = self.buf[len(piece):]
                remaining -= len(piece)
                yield piece
        else:
            while True:
                if self.buf:
                    piece, self.buf = self.buf, b""
                    yield piece
                if not self._fill():
                    return


def sse_events(conn: Conn, headers: dict):
    """Yield (arrival_ns, event_json) for each complete SSE event."""
    pending = b""
    for piece in conn.body(headers):
        now = time.monotonic_ns()  # the origin stamps with the same clock
        pending += piece
        while b"\n\n" in pending:
            ev, pending = pending.split(b"\n\n", 1)
            for line in ev.split(b"\n"):
                if line.startswith(b"data:"):
                    yield now, json.loads(line[5:])


def sse_first_event(conn: Conn, t: Target, path: str, tag: str, t0: float) -> float:
    status, headers = conn.request(path, t.auth, tag)
    if status != 200:
        raise RuntimeError(f"/sse answered {status}")
    first = None
    for _arrival, _ev in sse_events(conn, headers):
        if first is None:
            first = time.perf_counter() - t0
    if first is None:
        raise RuntimeError("no SSE event received")
    return first


def measure_sse(t: Target, nginx_port: int, tag: str, samples: int) -> dict:
    """Time to first event: `samples` cold (new connection), 4 × `samples`
    warm (sub-millisecond figures whose round medians are compared between
    proxies need more samples than the cold ones); then one 20-event stream."""
    cold, warm = [], []
    for _ in range(samples):
        t0 = time.perf_counter()
        c = Conn(t, nginx_port)
        try:
            cold.append(sse_first_event(c, t, "/sse?n=1", tag, t0))
        finally:
            c.close()
    c = Conn(t, nginx_port)
    try:
        sse_first_event(c, t, "/sse?n=1", tag, time.perf_counter())  # warm the path
        for _ in range(4 * samples):
            t0 = time.perf_counter()
            warm.append(sse_first_event(c, t, "/sse?n=1", tag, t0))
        status, headers = c.request("/sse?n=20&ms=100", t.auth, tag)
        if status != 200:
            raise RuntimeError(f"/sse answered {status}")
        lat = [(arr - ev["t"]) / 1e9 for arr, ev in sse_events(c, headers)]
    finally:
        c.close()
    if len(lat) != 20:
        raise RuntimeError(f"SSE stream delivered {len(lat)} of 20 events")
    return {
        "ttfe_cold_p50": statistics.median(cold),
        "ttfe_warm_p50": statistics.median(warm),
        "event_p50": statistics.median(lat),
        "event_max": max(lat),
        "requests": 5 * samples + 2,
    }


def stream_then_request(c: Conn, t: Target, tag: str) -> float:
    """One streamed response read to its last chunk, then at once a small
    request on the same connection: the follow-up's time to first byte."""
    status, headers = c.request(STREAMREQ_SSE, t.auth, tag)
    if status != 200:
        raise RuntimeError(f"/sse answered {status}")
    got = sum(1 for _ in sse_events(c, headers))
    if got != STREAMREQ_EVENTS:
        raise RuntimeError(f"SSE stream delivered {got} of {STREAMREQ_EVENTS} events")
    status, headers = c.request("/small", t.auth, tag)
    ttfb = c.first_byte_at - c.sent_at
    body = b"".join(c.body(headers))
    if status != 200:
        raise RuntimeError(f"follow-up /small answered {status}: {body[:200]!r}")
    return ttfb


def measure_streamreq(targets: list[Target], nginx_port: int, rnd: int, seqs: int) -> dict[str, dict]:
    """`seqs` stream-then-request sequences per target, each on one client
    connection, through proxy instances that serve nothing else (so a pool
    holds only what these sequences leave in it). The targets take turns
    sequence by sequence (in a rotating order), so a stall of the machine
    hits them alike: a p99 of 200 samples is two samples, and on a shared
    core a few milliseconds' stall decides it. One unmeasured sequence each
    first (after a pause longer than the pool's idle timeout it dials again).
    Returns each target's figures (or {"failed": ...}) by name."""
    conns: dict[str, Conn] = {}
    out: dict[str, dict] = {}
    ttfb: dict[str, list[float]] = {}
    dials0: dict[str, float | None] = {}
    try:
        for t in targets:
            try:
                c = conns[t.name] = Conn(t, nginx_port)
                stream_then_request(c, t, f"{t.name}.srwarm.{rnd}")
                dials0[t.name] = clavis_metric(t, "clavis_upstream_dials_total") if t.admin_port else None
                ttfb[t.name] = []
            except Exception as e:  # noqa: BLE001
                out[t.name] = {"failed": str(e)}
                conns.pop(t.name, None)
        live = [t for t in targets if t.name in ttfb]
        for i in range(seqs):
            k = i % max(1, len(live))
            for t in live[k:] + live[:k]:
                if t.name in out:
                    continue
                try:
                    ttfb[t.name].append(stream_then_request(conns[t.name], t, f"{t.name}.streamreq.{rnd}"))
                except Exception as e:  # noqa: BLE001
                    out[t.name] = {"failed": str(e)}
    finally:
        for c in conns.values():
            c.close()
    for t in live:
        if t.name in out:
            continue
        xs = sorted(ttfb[t.name])
        r = {
            "ttfb_p50": statistics.median(xs),
            "ttfb_p99": xs[min(len(xs) - 1, int(0.99 * len(xs)))],
            "ttfb_max": xs[-1],
            "requests": 2 * len(xs), "ok": 2 * len(xs), "bad": 0,
        }
        if dials0.get(t.name) is not None:
            dials1 = clavis_metric(t, "clavis_upstream_dials_total")
            r["dials"] = None if dials1 is None else dials1 - dials0[t.name]
        out[t.name] = r
    return out


def sanity(t: Target, nginx_port: int) -> None:
    c = Conn(t, nginx_port)
    try:
        status, headers = c.request("/small", t.auth, f"{t.name}.sanity.0")
        body = b"".join(c.body(headers))
    finally:
        c.close()
    if status != 200:
        raise RuntimeError(f"GET /small through {t.name} answered {status}: {body[:200]!r}")


# ---------------------------------------------------------------- oha


def oha(t: Target, nginx_port: int, path: str, conns: int, seconds: float, tag: str,
        keepalive: bool = True, finish: bool = False) -> dict:
    cmd = [
        str(OHA), "--no-tui", "--output-format", "json", "-z", f"{seconds}s", "-c", str(conns),
        "--cacert", t.cacert, "-H", f"Authorization: {t.auth}", "-H", f"X-Bench-Run: {tag}",
    ]
    if not keepalive:
        cmd.append("--disable-keepalive")
    if finish:  # let the request in flight at the deadline complete (and count)
        cmd.append("--wait-ongoing-requests-after-deadline")
    if t.proxy_port:
        cmd += ["--no-pre-lookup", "-x", f"http://127.0.0.1:{t.proxy_port}",
                "--proxy-header", f"Proxy-Authorization: {proxy_basic()}"]
    else:
        cmd += ["--connect-to", f"{HOST}:443:127.0.0.1:{nginx_port}"]
    cmd.append(f"https://{HOST}{path}")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if p.returncode != 0:
        raise RuntimeError(f"oha failed ({p.returncode}): {p.stderr.strip()[:300]}")
    return json.loads(p.stdout)


def oha_numbers(j: dict) -> dict:
    s = j["summary"]
    codes = {int(k): v for k, v in (j.get("statusCodeDistribution") or {}).items()}
    ok = codes.get(200, 0)
    errors = {k: v for k, v in (j.get("errorDistribution") or {}).items()
              if "deadline" not in k.lower()}
    lp = j.get("latencyPercentiles") or {}
    total = s.get("total") or 1
    return {
        "rps": ok / total,
        "p50": lp.get("p50"),
        "p99": lp.get("p99"),
        "ok": ok,
        "bad": sum(v for k, v in codes.items() if k != 200) + sum(errors.values()),
        "errors": errors,
        "codes": codes,
        "total_s": total,
        "size_per_sec": s.get("sizePerSec"),
    }


# ---------------------------------------------------------------- setup


def make_certs(d: Path) -> None:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(["openssl", "req", "-x509", *ec, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"),
         "-days", "2", "-subj", "/CN=clavis bench test CA (throw-away)",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    run(["openssl", "req", "-new", *ec, "-keyout", str(d / "upstream.key"),
         "-out", str(d / "upstream.csr"), "-subj", f"/CN={HOST}"])
    (d / "upstream.ext").write_text(
        f"subjectAltName=DNS:{HOST}\nextendedKeyUsage=serverAuth\n"
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n")
    run(["openssl", "x509", "-req", "-in", str(d / "upstream.csr"), "-CA", str(d / "ca.pem"),
         "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2", "-sha256",
         "-extfile", str(d / "upstream.ext"), "-out", str(d / "upstream.pem")])
    for k in ("ca.key", "upstream.key"):
        os.chmod(d / k, 0o600)


def small_json() -> str:
    items = ",".join(f'{{"index":{i},"object":"embedding","score":0.{i:04d}}}' for i in range(40))
    body = f'{{"object":"list","model":"bench-small","data":[{items}]'
    body += ',"pad":"' + "x" * max(0, 1022 - len(body) - 8) + '"}'
    return body


def write_nginx_conf(d: Path, port: int, sse_port: int, data: Path, nofile: int = NOFILE) -> Path:
    check = f'if ($http_authorization != "Bearer {REAL_KEY}") {{ return 401 \'{{"error":"credential not injected"}}\'; }}'
    conf = f"""
user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
daemon off;
worker_rlimit_nofile {nofile};
events {{ worker_connections {min(CONN_LIMIT, nofile)}; }}
http {{
    client_body_temp_path {d}/nginx-tmp/body;
    proxy_temp_path {d}/nginx-tmp/proxy;
    fastcgi_temp_path {d}/nginx-tmp/fastcgi;
    uwsgi_temp_path {d}/nginx-tmp/uwsgi;
    scgi_temp_path {d}/nginx-tmp/scgi;
    log_format bench '$connection $connection_requests $status $http_x_bench_run $request_length $bytes_sent "$http_transfer_encoding" "$http_content_length" "$http_connection" "$http_user_agent"';
    access_log {d}/access.log bench buffer=256k flush=1s;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server_tokens off;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name {HOST};
        ssl_certificate {d}/upstream.pem;
        ssl_certificate_key {d}/upstream.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        default_type application/json;
        location = /small {{
            {check}
            return 200 '{small_json()}';
        }}
        location = /large {{
            {check}
            default_type application/octet-stream;
            root {data};
        }}
        location = /sse {{
            {check}
            proxy_pass http://127.0.0.1:{sse_port};
            proxy_buffering off;
            proxy_read_timeout 60s;
        }}
        location = /v1/chat/completions {{
            {check}
            proxy_pass http://127.0.0.1:{sse_port}/sse$is_args$args;
            proxy_buffering off;
            proxy_read_timeout 60s;
        }}
        location / {{ return 404 '{{"error":"not found"}}'; }}
    }}
}}
"""
    path = d / "nginx.conf"
    path.write_text(conf)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (d / "nginx-tmp" / sub).mkdir(parents=True, exist_ok=True)
    return path


def ensure_large(data: Path) -> None:
    f = data / "large"
    if f.exists() and f.stat().st_size == LARGE_BYTES:
        return
    data.mkdir(parents=True, exist_ok=True)
    with open(f, "wb") as out:
        for _ in range(LARGE_BYTES // (1 << 20)):
            out.write(os.urandom(1 << 20))
    os.chmod(f, 0o644)


class Procs:
    def __init__(self):
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], logfile: Path, core: int | set[int] | None,
              env: dict | None = None) -> subprocess.Popen:
        def pin():
            # No setsid: children stay in the harness's process group (Ctrl-C
            # reaches them) and its scheduler autogroup (see main()).
            if core is not None:
                os.sched_setaffinity(0, {core} if isinstance(core, int) else core)

        out = open(logfile, "wb")
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             preexec_fn=pin, env={**os.environ, **(env or {})})
        self.procs.append((name, p))
        return p

    def stop_all(self) -> None:
        for _name, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _name, p in reversed(self.procs):
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def start_clavis(procs: Procs, d: Path, nginx_port: int, name: str = "clavis",
                 core: int | set[int] | None = -1, env: dict | None = None,
                 service_extra: str = "", extra: str = "") -> Target:
    """The clavis under test; `name`/`core`/`env` start another instance
    (own directory, CA and ports), e.g. with more tokio workers;
    `service_extra` adds keys to the bench-openai service, `extra` adds
    top-level sections (the guardrails scenario's policy and budget)."""
    if core == -1:
        core = PROXY_CORE
    if os.environ.get("BENCH_CLAVIS_BUILD_FAILED"):
        raise RuntimeError("`cargo build --release` failed (see run.sh output)")
    if not CLAVIS.exists():
        raise RuntimeError(f"{CLAVIS} does not exist")
    port, admin = free_port(), free_port()
    cd = d / name
    cd.mkdir()
    cfg = cd / "clavis.yaml"
    cfg.write_text(f"""proxy:
  listen: 127.0.0.1:{port}
admin:
  listen: 127.0.0.1:{admin}
ca:
  cert: {cd}/clavis-ca.pem
  key: {cd}/clavis-ca.key
  bundle: {cd}/clavis-ca-bundle.pem
upstream:
  extra_ca: ["{d}/ca.pem"]
  resolve: {{"{HOST}:443": "127.0.0.1:{nginx_port}"}}
limits:  # defaults 4096 / 2048 / 256: raised so the idle connections and the thousand streams fit
  max_connections: {CONN_LIMIT}
  max_tunnels: {CONN_LIMIT}
  max_upstream_requests: {CONN_LIMIT}  # in flight per agent and service: the streams are one agent's
connectors:  # leaf-mint scenario: any <x>.{MINT_DOMAIN} is intercepted (no upstream needed)
  - name: mintbench
    hosts: ["*.{MINT_DOMAIN}"]
    inject:
      headers: {{X-Api-Key: "{{api_key}}"}}
    fields: [api_key]
services:
  - name: bench-openai
    connector: openai
    credentials: {{api_key: "{REAL_KEY}"}}
{service_extra}  - name: bench-mint
    connector: mintbench
    credentials: {{api_key: "mint-bench-dummy"}}
agents:
  - name: {AGENT}
    token: {AGENT_TOKEN}
    services: ["*"]
{extra}""")
    t = Target(name, port, str(cd / "clavis-ca.pem"), admin_port=admin)
    t.version = first_line([str(CLAVIS), "--version"])
    t.proc = procs.start(name, [str(CLAVIS), "serve", "--config", str(cfg)], d / f"{name}.log",
                         core, {"RUST_LOG": os.environ.get("BENCH_CLAVIS_LOG", "warn"), **(env or {})})
    deadline = time.monotonic() + 30
    while True:
        if t.proc.poll() is not None:
            raise RuntimeError(f"clavis exited with {t.proc.returncode}; see {d}/{name}.log")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("clavis /readyz not 200 within 30 s")
        time.sleep(0.05)
    return t


def start_mitmproxy(procs: Procs, d: Path, nginx_port: int, name: str = "mitmproxy") -> Target:
    port = free_port()
    conf = d / name
    conf.mkdir()
    (conf / "mitmproxy-ca.pem").write_text((d / "ca.key").read_text() + (d / "ca.pem").read_text())
    t = Target(name, port, str(d / "ca.pem"))
    t.version = first_line([str(MITMDUMP), "--version"])
    t.proc = procs.start(name, [
        str(MITMDUMP), "-q", "--listen-host", "127.0.0.1", "--listen-port", str(port),
        "--set", f"confdir={conf}", "--set", f"ssl_verify_upstream_trusted_ca={d}/ca.pem",
        "--set", f"proxyauth={AGENT}:{AGENT_TOKEN}", "-s", str(BENCH / "lib" / "mitm_addon.py"),
        "--set", f"bench_host={HOST}", "--set", f"bench_resolve=127.0.0.1:{nginx_port}",
        "--set", f"bench_auth=Bearer {REAL_KEY}",
    ], d / f"{name}.log", PROXY_CORE)
    wait_port(port, t.proc)
    return t


def start_hudsucker(procs: Procs, d: Path, nginx_port: int, name: str = "hudsucker",
                    core: int | set[int] | None = -1, env: dict | None = None) -> Target:
    if core == -1:
        core = PROXY_CORE
    port = free_port()
    t = Target(name, port, str(d / "ca.pem"))
    t.proc = procs.start(name, [
        str(HUDSUCKER), "--listen", f"127.0.0.1:{port}", "--ca-cert", f"{d}/ca.pem",
        "--ca-key", f"{d}/ca.key", "--upstream-ca", f"{d}/ca.pem",
        "--resolve", f"{HOST}:443=127.0.0.1:{nginx_port}", "--host", HOST,
        "--auth-header", f"Bearer {REAL_KEY}", "--proxy-auth", f"{AGENT}:{AGENT_TOKEN}",
    ], d / f"{name}.log", core, env)
    wait_port(port, t.proc)
    return t


# ---------------------------------------------------------------- the run


SCENARIOS = ["ka16", "ka64", "newconn", "large", "sse", "streamreq"]


def measure(t: Target, scen: str, rnd: int, nginx_port: int, nginx_pid: int,
            secs: float, sse_samples: int) -> dict:
    tag = f"{t.name}.{scen}.{rnd}"
    before = cpu_split(t.pid) if t.pid else None
    ng_before = cpu_ticks(nginx_pid)
    st_before = proc_stat()
    with RssSampler(t.pid) as rss:
        if scen == "ka16":
            r = oha_numbers(oha(t, nginx_port, "/small", 16, secs, tag))
        elif scen == "ka64":
            r = oha_numbers(oha(t, nginx_port, "/small", 64, secs, tag))
        elif scen == "newconn":
            r = oha_numbers(oha(t, nginx_port, "/small", 16, secs, tag, keepalive=False))
        elif scen == "large":
            r = oha_numbers(oha(t, nginx_port, "/large", 1, secs, tag, finish=True))
            r["mbps"] = r["ok"] * LARGE_BYTES / r["total_s"] / 1e6
        elif scen == "sse":
            r = measure_sse(t, nginx_port, tag, sse_samples)
            r["ok"], r["bad"] = r["requests"], 0
        else:
            raise ValueError(f"unknown scenario {scen}")
    r["rss_max_kib"] = rss.max_kib if t.pid else None
    st_after = proc_stat()
    if before is not None:
        user, kernel = (y - x for x, y in zip(before, cpu_split(t.pid)))
        proxy_ticks = user + kernel
        per_req = 1e6 / CLK_TCK / max(1, r["ok"])
        r["cpu_us_per_req"] = proxy_ticks * per_req
        r["cpu_user_us_per_req"] = user * per_req
        r["cpu_kernel_us_per_req"] = kernel * per_req
        if PROXY_CORE is not None and f"cpu{PROXY_CORE}" in st_before:
            d = [y - x for x, y in zip(st_before[f"cpu{PROXY_CORE}"], st_after[f"cpu{PROXY_CORE}"])]
            total, busy = sum(d[:8]) or 1, d[0] + d[1] + d[2]
            # user+nice+system time on the proxy's core not spent by the proxy:
            # other jobs (irq/softirq from the bench's own traffic is left out)
            r["foreign_proxy_core_pct"] = max(0.0, 100.0 * (busy - proxy_ticks) / total)
    r["nginx_cpu_us_per_req"] = (cpu_ticks(nginx_pid) - ng_before) / CLK_TCK * 1e6 / max(1, r["ok"])
    return r


# ---------------------------------------------------------------- one-off scenarios


def clavis_metric(t: Target, name: str) -> float | None:
    """One sample from clavis's `/metrics` (admin port, no auth)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{t.admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def certs_issued(t: Target) -> int:
    v = clavis_metric(t, "clavis_certs_issued_total")
    if v is None:
        raise RuntimeError("clavis_certs_issued_total missing from /metrics")
    return int(v)


def handshake_s(t: Target, host: str, ctx: ssl.SSLContext) -> float:
    """TCP connect + CONNECT + a full TLS handshake (no resumption) for `host`."""
    t0 = time.perf_counter()
    s = open_tunnel(t.proxy_port, host)
    try:
        tls = ctx.wrap_socket(s, server_hostname=host)
    except BaseException:
        s.close()
        raise
    elapsed = time.perf_counter() - t0
    tls.close()
    return elapsed


def handshake_burst(t: Target, host: str, n: int) -> tuple[int, float, list[str]]:
    """n CONNECTs to one host sent back to back, then n ClientHellos back to
    back (prepared beforehand with memory BIOs), then every handshake is
    finished. Returns (handshakes completed, seconds from the first CONNECT, errors)."""
    ctx = ssl.create_default_context(cafile=t.cacert)
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", t.proxy_port), timeout=15)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks.append(s)
        req = connect_request(host)
        tls = []
        for s in socks:  # the TLS objects and their ClientHellos, before the clock starts
            inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
            obj = ctx.wrap_bio(inc, out, server_hostname=host)
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            tls.append((obj, inc, out, out.read()))
        t0 = time.perf_counter()
        for s in socks:
            s.sendall(req)
        for s in socks:
            read_connect_reply(s)
        for s, (_obj, _inc, _out, hello) in zip(socks, tls):
            s.sendall(hello)
        ok, errors = 0, []
        for s, (obj, inc, out, _hello) in zip(socks, tls):
            try:
                while True:
                    try:
                        obj.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        pending = out.read()
                        if pending:
                            s.sendall(pending)
                        chunk = s.recv(65536)
                        if not chunk:
                            raise RuntimeError("proxy closed the connection during the handshake")
                        inc.write(chunk)
                pending = out.read()
                if pending:
                    s.sendall(pending)
                ok += 1
            except (OSError, ssl.SSLError, RuntimeError) as e:
                errors.append(str(e))
        return ok, time.perf_counter() - t0, errors
    finally:
        for s in socks:
            s.close()


def measure_mint(t: Target) -> dict:
    """Leaf minting in clavis: cold vs warm handshakes, and a burst to one new host."""
    ctx = ssl.create_default_context(cafile=t.cacert)
    for _ in range(2):  # first use of the connector's code paths, not measured
        handshake_s(t, f"warmup.{MINT_DOMAIN}", ctx)
    issued0 = certs_issued(t)
    cold, warm = [], []
    for i in range(MINT_HOSTS):
        host = f"h{i}.{MINT_DOMAIN}"
        cold.append(handshake_s(t, host, ctx))  # never seen: a leaf is minted
        warm.append(handshake_s(t, host, ctx))  # the same host again: leaf cached
    issued1 = certs_issued(t)
    ok, burst_s, errors = handshake_burst(t, f"burst.{MINT_DOMAIN}", MINT_BURST)
    time.sleep(0.2)
    issued2 = certs_issued(t)
    r = {
        "cold_p50": statistics.median(cold),
        "warm_p50": statistics.median(warm),
        "cold_issued": issued1 - issued0,
        "burst_issued": issued2 - issued1,
        "burst_ok": ok,
        "burst_s": burst_s,
        "burst_errors": errors[:5],
    }
    r["mint_cost"] = r["cold_p50"] - r["warm_p50"]
    return r


def measure_burst_multiworker(procs: Procs, d: Path, nginx_port: int) -> dict:
    """The burst against a second clavis with several tokio workers on both
    cores: the bench clavis, pinned to one core, runs one worker, where
    handshakes for one host cannot race at all."""
    cores = {PROXY_CORE, LOAD_CORE} if PROXY_CORE is not None else None
    mt = start_clavis(procs, d, nginx_port, name="clavis-mt", core=cores,
                      env={"TOKIO_WORKER_THREADS": str(MINT_MT_WORKERS)})
    try:
        ctx = ssl.create_default_context(cafile=mt.cacert)
        for _ in range(2):
            handshake_s(mt, f"warmup.{MINT_DOMAIN}", ctx)
        issued, oks = [], []
        for i in range(MINT_MT_BURSTS):
            before = certs_issued(mt)
            ok, _secs, errors = handshake_burst(mt, f"burst-mt{i}.{MINT_DOMAIN}", MINT_BURST)
            time.sleep(0.2)
            issued.append(certs_issued(mt) - before)
            oks.append(ok)
    finally:
        mt.proc.terminate()
        try:
            mt.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            mt.proc.kill()
            mt.proc.wait()
    return {"mt_burst_issued": max(issued), "mt_issued": issued, "mt_ok": oks}


def read_json_line(p: subprocess.Popen, timeout: float, what: str) -> dict:
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError(f"idle-connections client: no {what} within {timeout:.0f} s")
    line = p.stdout.readline()
    if not line:
        raise RuntimeError(f"idle-connections client exited ({p.wait()}) before its {what}")
    return json.loads(line)


def fd_usage(pid: int) -> tuple[int, int | None]:
    """(open file descriptors, soft RLIMIT_NOFILE) of a process."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    m = re.search(r"^Max open files\s+(\d+)", Path(f"/proc/{pid}/limits").read_text(), re.M)
    return fds, int(m.group(1)) if m else None


def measure_idle(t: Target, n: int, d: Path) -> dict:
    """n fully MITM'd keep-alive connections held idle; the proxy's RSS then."""
    rss0 = status_kib(t.pid, "VmRSS")
    cpu0 = cpu_ticks(t.pid)
    cmd = [sys.executable, str(BENCH / "lib" / "idle_conns.py"), "--port", str(t.proxy_port),
           "--cacert", t.cacert, "--host", HOST, "--n", str(n),
           "--concurrency", str(IDLE_CONCURRENCY), "--deadline", str(IDLE_DEADLINE),
           "--proxy-auth", proxy_basic(), "--auth", t.auth, "--tag", f"{t.name}.idle.0"]

    def pin():
        if LOAD_CORE is not None:
            os.sched_setaffinity(0, {LOAD_CORE})

    with open(d / f"idle-client-{t.name}.log", "wb") as err:
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                             text=True, preexec_fn=pin)
        try:
            with RssSampler(t.pid) as rss:
                o = read_json_line(p, IDLE_DEADLINE + 60, "report of the open phase")
                cpu1 = cpu_ticks(t.pid)
                time.sleep(IDLE_HOLD)
                if t.proc.poll() is not None:
                    raise RuntimeError(f"{t.name} exited with {t.proc.returncode} holding the connections")
                held = status_kib(t.pid, "VmRSS")
                fds, fd_limit = fd_usage(t.pid)
                tunnels = clavis_metric(t, "clavis_tunnels_active") if t.admin_port else None
                p.stdin.write("close\n")
                p.stdin.flush()
                fin = read_json_line(p, 60, "final report")
        finally:
            if p.poll() is None:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    info = {
        "n": n, "opened": o["opened"], "conn_failed": o["failed"], "errors": o["errors"],
        "open_s": o["open_s"], "still_open": fin.get("still_open"), "tunnels_active": tunnels,
        "rss_before_kib": rss0, "rss_open_max_kib": rss.max_kib,
        "cpu_us_per_conn": (cpu1 - cpu0) / CLK_TCK * 1e6 / max(1, o["opened"] + o["failed"]),
        "client_nofile": o.get("nofile"), "proxy_fds": fds, "proxy_nofile": fd_limit,
    }
    if o["timed_out"]:
        return {"skipped": f"not measured: {o['opened']} of {n} connections open after the "
                           f"{IDLE_DEADLINE:.0f} s bound for the open phase", "partial": {**info, "rss_held_kib": held}}
    if o["opened"] == 0:
        raise RuntimeError(f"no connection opened: {o['errors']}")
    return {**info, "rss_held_kib": held, "rss_inc_kib": held - rss0,
            "rss_per_conn_kib": (held - rss0) / o["opened"]}


def measure_streams(t: Target, n: int, seconds: float, nginx_port: int, d: Path) -> dict:
    """n concurrent SSE streams (one event every STREAMS_MS) held through the
    target; event latency, the proxy's RSS and CPU per event while all run."""
    events = int(seconds * 1000 / STREAMS_MS)
    cmd = [sys.executable, str(BENCH / "lib" / "many_streams.py"), "--port", str(t.proxy_port or 0),
           "--nginx-port", str(nginx_port), "--cacert", t.cacert, "--host", HOST, "--n", str(n),
           "--events", str(events), "--ms", str(STREAMS_MS),
           "--concurrency", str(STREAMS_OPEN_CONCURRENCY), "--open-deadline", "60",
           "--proxy-auth", proxy_basic(), "--auth", t.auth, "--tag", f"{t.name}.streams.0"]

    def pin():
        if LOAD_CORE is not None:
            os.sched_setaffinity(0, {LOAD_CORE})

    rss0 = status_kib(t.pid, "VmRSS") if t.pid else None
    cpu0 = cpu_ticks(t.pid) if t.pid else None
    with open(d / f"streams-client-{t.name}.log", "wb") as err:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                             text=True, preexec_fn=pin)
        try:
            with RssSampler(t.pid) as whole:
                o = read_json_line(p, 120, "report of the open phase")
                cpu1 = cpu_ticks(t.pid) if t.pid else None
                # RSS while every stream runs: sampled from here to the first stream's end
                with RssSampler(t.pid) as steady:
                    m = read_json_line(p, seconds + 60, "mark (first stream done)")
                cpu2 = cpu_ticks(t.pid) if t.pid else None
                fds = fd_usage(t.pid)[0] if t.pid else None
                fin = read_json_line(p, seconds + 120, "final report")
        finally:
            if p.poll() is None:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    if o["opened"] == 0:
        raise RuntimeError(f"no stream opened: {o['errors']}")
    r = {**fin, "open_s": o["open_s"], "open_failed": o["failed"], "open_errors": o["errors"],
         "steady_events": m["events_since_open"], "steady_s": m["since_open_s"]}
    if t.pid:
        r.update({
            "rss_before_kib": rss0, "rss_steady_max_kib": steady.max_kib, "rss_max_kib": whole.max_kib,
            "rss_per_stream_kib": (steady.max_kib - rss0) / o["opened"],
            "cpu_open_us_per_stream": (cpu1 - cpu0) / CLK_TCK * 1e6 / o["opened"],
            # over the window in which every stream ran (none if the open phase
            # outlasted the first stream, as mitmproxy's can in a --quick run)
            "cpu_us_per_event": ((cpu2 - cpu1) / CLK_TCK * 1e6 / m["events_since_open"]
                                 if m["since_open_s"] >= 1.0 and m["events_since_open"] else None),
            "proxy_fds": fds,
        })
    return r


def run_oneoffs(targets: list[Target], results: dict, d: Path, idle_n: int,
                procs: Procs, nginx_port: int, mint: bool = True, streams_n: int = 0,
                streams_s: float = STREAMS_SECONDS, starters: dict | None = None) -> None:
    """Leaf minting (clavis only), then the thousand streams for every target,
    each proxy a fresh instance of its own (the allocator caches that the
    streams leave would otherwise inflate the idle connections' RSS, and the
    idle connections' caches would hide the streams'), then the idle
    connections for every proxy."""
    for t in targets:
        if not mint or t.name != "clavis" or t.error or t.proc.poll() is not None:
            continue
        log("one-off  mint     clavis")
        try:
            r = measure_mint(t)
            log(f"one-off  mint     clavis-mt ({MINT_MT_WORKERS} tokio workers)")
            try:
                r.update(measure_burst_multiworker(procs, d, nginx_port))
            except Exception as e:  # noqa: BLE001
                log(f"  clavis-mt burst failed: {e}")
                r["mt_failed"] = str(e)
        except Exception as e:  # noqa: BLE001
            log(f"  clavis mint failed: {e}")
            r = {"failed": str(e)}
        results.setdefault(t.name, {})["mint"] = [r]
    if streams_n > 0:
        # mitmproxy last, as below
        for t in sorted(targets, key=lambda t: t.name == "mitmproxy"):
            if t.error or (t.proc and t.proc.poll() is not None):
                continue
            log(f"one-off  streams×{streams_n} {t.name} ({streams_s:g} s)")
            st = t
            try:
                if t.proxy_port and starters:
                    st = starters[t.name](procs, d, nginx_port, name=f"{t.name}-streams")
                    sanity(st, nginx_port)  # its leaf minted, its code paths warm
                    time.sleep(1.0)
                r = measure_streams(st, streams_n, streams_s, nginx_port, d)
            except Exception as e:  # noqa: BLE001
                r = {"failed": str(e)}
            finally:
                if st is not t and st.proc and st.proc.poll() is None:
                    st.proc.terminate()
                    try:
                        st.proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        st.proc.kill()
                        st.proc.wait()
            log(f"  {t.name} streams: " + ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in r.items() if k not in ("open_errors", "stream_errors")))
            results.setdefault(t.name, {})["streams"] = [r]
            time.sleep(2.0)
    if idle_n <= 0:
        return
    # mitmproxy last: it is the slowest to open them and stays busy after they close
    for t in sorted((t for t in targets if t.proxy_port), key=lambda t: t.name == "mitmproxy"):
        if t.error or t.proc.poll() is not None:
            continue
        log(f"one-off  idle×{idle_n} {t.name}")
        try:
            r = measure_idle(t, idle_n, d)
        except Exception as e:  # noqa: BLE001
            r = {"failed": str(e)}
        log(f"  {t.name} idle: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in r.items() if k != "errors"))
        results.setdefault(t.name, {})["idle"] = [r]
        time.sleep(2.0)


# ---------------------------------------------------------------- guardrails


def guard_policy_yaml() -> str:
    """A 100-rule policy for the bench service and a token budget on it.
    A realistic mix over OpenAI-shaped paths: method + path globs (`*`,
    `**`), query and body matchers (body rules on POST only, as the config
    requires: no body is read for a GET), regexes, deny and approve rules.
    The rules the workload meets are near the end: GET /small is allowed by
    rule 97 of 100, so a request walks 96 rules first; the chat stream by
    rule 98 (after a body rule with a regex on the model)."""
    resources = ["files", "assistants", "threads", "vector_stores", "batches", "fine_tuning/jobs",
                 "uploads", "images", "audio", "moderations", "realtime/sessions", "organization/projects"]
    rules = []
    for i in range(94):
        r, k = resources[i % len(resources)], i // len(resources)
        rules.append([
            f'{{ name: deny-delete-{i}, deny: {{ methods: [DELETE], path: "/v1/{r}/**" }} }}',
            f'{{ name: read-{i}, allow: {{ methods: [GET], path: "/v1/{r}/*/v{k}" }} }}',
            f'{{ name: list-{i}, allow: {{ methods: [GET], path: "/v1/{r}", query: {{ limit: {{ max: 100 }} }} }} }}',
            f'{{ name: create-{i}, allow: {{ methods: [POST], path: "/v1/{r}/{k}", '
            f'body: {{ purpose: {{ in: [batch, fine-tune, assistants] }} }} }} }}',
            f'{{ name: update-{i}, approve: {{ methods: [PATCH, PUT], path: "/v1/{r}/*/x{k}" }} }}',
            f'{{ name: deny-model-{i}, deny: {{ methods: [POST], path: "/v1/{r}/*", '
            f'body: {{ model: {{ regex: "o1-(preview|pro)-{k}.*" }} }} }} }}',
            f'{{ name: events-{i}, allow: {{ methods: [GET, HEAD], path: "/v1/{r}/*/events/**" }} }}',
            f'{{ name: cancel-{i}, allow: {{ methods: [POST], path: "/v1/{r}/*/cancel{k}" }} }}',
        ][i % 8])
    rules += [
        '{ name: no-o1-chat, deny: { methods: [POST], path: /v1/chat/completions, body: { model: { regex: "o1-.*" } } } }',
        '{ name: models, allow: { methods: [GET], path: "/v1/models/**" } }',
        '{ name: small, allow: { methods: [GET], path: /small } }',
        '{ name: chat, allow: { methods: [POST], path: /v1/chat/completions, '
        'body: { model: { in: [gpt-4o-mini, gpt-4.1-mini] }, max_tokens: { max: 4096 } } } }',
        '{ name: embeddings, allow: { methods: [POST], path: /v1/embeddings } }',
        '{ name: no-deletes, deny: { methods: [DELETE] } }',
    ]
    assert len(rules) == 100
    body = "\n".join(f"      - {r}" for r in rules)
    return f"""policies:
  - name: bench-guard
    default: deny
    rules:
{body}
budgets:
  - {{ name: bench-tokens, service: bench-openai, window: 1d, limit: {{ tokens: 1000000000000 }} }}
"""


def guard_sse(t: Target, nginx_port: int, tag: str) -> list[float]:
    """One streamed chat completion (POST, JSON body): each event's latency."""
    c = Conn(t, nginx_port)
    try:
        status, headers = c.request(GUARD_SSE, t.auth, tag, method="POST", body=GUARD_CHAT)
        if status != 200:
            raise RuntimeError(f"POST {GUARD_SSE} answered {status}: {b''.join(c.body(headers))[:300]!r}")
        lat = [(arr - ev["t"]) / 1e9 for arr, ev in sse_events(c, headers) if "t" in ev]
    finally:
        c.close()
    if len(lat) != GUARD_EVENTS:
        raise RuntimeError(f"the chat stream delivered {len(lat)} of {GUARD_EVENTS} events")
    return lat


def metric_sum(t: Target, name: str) -> float:
    """The sum of every series of one metric from clavis's `/metrics`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{t.admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def measure_guardrails(procs: Procs, d: Path, nginx_port: int, rounds: int, secs: float) -> dict:
    """The keep-alive workload (`oha -c 16`, GET /small) and a 50-event SSE
    chat stream through two clavis instances on the proxy core, one with
    the bench config and one that adds a 100-rule policy and a token budget
    to the service; they take turns, the order swapped every round."""
    plain = start_clavis(procs, d, nginx_port, name="clavis-plain")
    guard = start_clavis(procs, d, nginx_port, name="clavis-guard",
                         service_extra="    policy: bench-guard\n", extra=guard_policy_yaml())
    pair = [plain, guard]
    try:
        for t in pair:
            sanity(t, nginx_port)
            oha(t, nginx_port, "/small", 16, 1.0, f"{t.name}.warmup.0")
            guard_sse(t, nginx_port, f"{t.name}.warmup.0")
        # the guarded instance does judge: a DELETE is refused by its policy
        c = Conn(guard, nginx_port)
        try:
            st, hd = c.request("/v1/files/file-1", guard.auth, "clavis-guard.check.0", method="DELETE")
            b"".join(c.body(hd))
        finally:
            c.close()
        if st != 403:
            raise RuntimeError(f"clavis-guard answered a DELETE the policy refuses with {st}, not 403")
        decisions0 = metric_sum(guard, "clavis_policy_decisions_total")
        cpu: dict[str, list[float]] = {t.name: [] for t in pair}
        rps: dict[str, list[float]] = {t.name: [] for t in pair}
        lat: dict[str, list[float]] = {t.name: [] for t in pair}
        bad = 0
        for rnd in range(rounds):
            order = pair if rnd % 2 == 0 else pair[::-1]
            for t in order:
                log(f"one-off  guardrails round {rnd + 1}/{rounds} {t.name}")
                before = cpu_split(t.pid)
                r = oha_numbers(oha(t, nginx_port, "/small", 16, secs, f"{t.name}.guardrails.{rnd}"))
                ticks = sum(y - x for x, y in zip(before, cpu_split(t.pid)))
                cpu[t.name].append(ticks / CLK_TCK * 1e6 / max(1, r["ok"]))
                rps[t.name].append(r["rps"])
                bad += r["bad"]
                time.sleep(0.5)
            for t in order:
                lat[t.name] += guard_sse(t, nginx_port, f"{t.name}.guardsse.{rnd}")
        decisions = metric_sum(guard, "clavis_policy_decisions_total") - decisions0
        tokens_used = metric_sum(guard, "clavis_budget_used")
    finally:
        for t in pair:
            if t.proc and t.proc.poll() is None:
                t.proc.terminate()
                try:
                    t.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    t.proc.kill()
                    t.proc.wait()

    def pct(xs, q):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    out = {"rounds": rounds, "secs": secs, "bad": bad, "decisions": decisions, "tokens_used": tokens_used,
           "ratios": [g / p for p, g in zip(cpu[plain.name], cpu[guard.name])]}
    for key, t in (("plain", plain), ("guard", guard)):
        out[key] = {"cpu": statistics.median(cpu[t.name]), "cpu_rounds": cpu[t.name],
                    "rps": statistics.median(rps[t.name]),
                    "ev_p50": statistics.median(lat[t.name]), "ev_p99": pct(lat[t.name], 0.99),
                    "events": len(lat[t.name])}
    return out


def guard_notes(g: dict | None) -> list[str]:
    if not g:
        return []
    out = ["", "<!-- guardrails:begin -->", "## Guardrails: a 100-rule policy and a token budget", ""]
    if "failed" in g:
        return out + [f"- failed: {g['failed']}", "<!-- guardrails:end -->"]
    p, q = g["plain"], g["guard"]
    ratio = q["cpu"] / p["cpu"]
    out += [
        f"Two clavis instances besides the ones above, both pinned to the proxy core: `clavis-plain` (the bench "
        f"config) and `clavis-guard` (the same, plus `policy: bench-guard` on the service, a generated 100-rule "
        f"policy, and a `tokens` budget of 10¹² per day on the service). They take turns, the order swapped every "
        f"round, {g['rounds']} round(s): `oha -c 16` keep-alive GET /small for {g['secs']:g} s (CPU = the "
        f"instance's utime + stime from /proc ÷ requests answered 200), then one streamed chat completion each "
        f"(POST /v1/chat/completions with a JSON body, {GUARD_EVENTS} events {GUARD_EVENT_MS} ms apart; latency "
        f"of each event = arrival − the origin's send stamp). GET /small is allowed by rule 97 of 100 (96 rules "
        f"read first); the chat by rule 98 after a body rule with a regex; the budget reserves and settles every "
        f"request (the chat: its body read, `stream_options.include_usage` written in, its stream scanned for usage).",
        "",
        "| | no guardrails | 100 rules + token budget | ratio | target |",
        "|---|---|---|---|---|",
        f"| proxy CPU per request (µs), median of rounds | {p['cpu']:.2f} | {q['cpu']:.2f} | {ratio:.3f}× | "
        f"≤ 1.10× ({'met' if ratio <= 1.10 else '**not met**'}) |",
        f"| keep-alive req/s, median of rounds | {p['rps']:.0f} | {q['rps']:.0f} | {q['rps'] / p['rps']:.3f}× | |",
        f"| SSE per-event latency p50 (ms) | {p['ev_p50'] * 1e3:.3f} | {q['ev_p50'] * 1e3:.3f} | "
        f"{q['ev_p50'] / p['ev_p50']:.2f}× | unchanged |",
        f"| SSE per-event latency p99 (ms) | {p['ev_p99'] * 1e3:.3f} | {q['ev_p99'] * 1e3:.3f} | "
        f"{q['ev_p99'] / p['ev_p99']:.2f}× | unchanged |",
        "",
        f"- CPU per request by round (µs): no guardrails {', '.join(f'{x:.2f}' for x in p['cpu_rounds'])}; "
        f"guarded {', '.join(f'{x:.2f}' for x in q['cpu_rounds'])}; per-round ratios "
        f"{', '.join(f'{x:.3f}' for x in g['ratios'])}",
        f"- events per side: {p['events']} / {q['events']}; failed requests: {g['bad']}",
        f"- the guarded instance counted {g['decisions']:.0f} policy decisions over the measured part, refused a "
        f"DELETE its policy denies with 403 before it, and its budget gauges read {g['tokens_used']:.0f} "
        f"at the end (`clavis_budget_used`)",
        "<!-- guardrails:end -->",
    ]
    return out


def new_conns_from_log(access_log: Path) -> dict[tuple[str, str, int], int]:
    """Upstream connections first seen by nginx in each (target, scenario,
    round): the connections that target dialed there (nginx's `$connection`
    is a serial number; the log is in order of completed requests)."""
    seen: set[str] = set()
    out: dict[tuple[str, str, int], int] = {}
    for line in access_log.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[3].count(".") != 2:
            continue
        name, scen, rnd = parts[3].split(".")
        key = (name, scen, int(rnd) if rnd.isdigit() else 0)
        out.setdefault(key, 0)
        if parts[0] not in seen:
            seen.add(parts[0])
            out[key] += 1
    return out


def nginx_worker_pid(master: int) -> int:
    for _ in range(100):
        try:
            kids = Path(f"/proc/{master}/task/{master}/children").read_text().split()
            if kids:
                return int(kids[0])
        except OSError:
            pass
        time.sleep(0.05)
    return master


def reuse_from_log(access_log: Path) -> dict[tuple[str, str], float]:
    reqs: dict[tuple[str, str], int] = {}
    conns: dict[tuple[str, str], set] = {}
    for line in access_log.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[3].count(".") != 2:
            continue
        name, scen, _rnd = parts[3].split(".")
        key = (name, scen)
        reqs[key] = reqs.get(key, 0) + 1
        conns.setdefault(key, set()).add(parts[0])
    return {k: reqs[k] / len(conns[k]) for k in reqs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="1 round of ~3 s scenarios")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds of the load scenarios (0: only the one-off scenarios)")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--targets", default="direct,clavis,mitmproxy,hudsucker")
    ap.add_argument("--idle-conns", type=int, default=None,
                    help=f"connections for the idle scenario ({IDLE_CONNS}, --quick {IDLE_CONNS_QUICK}; 0 skips it)")
    ap.add_argument("--streams", type=int, default=None,
                    help=f"concurrent SSE streams for the thousand-streams scenario ({STREAMS_N}; 0 skips it)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS + list(ONEOFF_SCENARIOS)),
                    help="comma-separated subset of " + ", ".join(SCENARIOS + list(ONEOFF_SCENARIOS)))
    ap.add_argument("--sr-workers", type=int, default=1,
                    help="tokio workers of the stream-then-request instances of clavis and hudsucker "
                         "(1: pinned to the proxy core like the others; more: on both cores)")
    ap.add_argument("--guard-rounds", type=int, default=None,
                    help=f"rounds of the guardrails scenario ({GUARD_ROUNDS}, --quick {GUARD_ROUNDS_QUICK})")
    ap.add_argument("--no-results-file", action="store_true")
    a = ap.parse_args()
    chosen = {x.strip() for x in a.scenarios.split(",") if x.strip()}
    unknown = chosen - set(SCENARIOS) - set(ONEOFF_SCENARIOS)
    if unknown:
        ap.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    scens = [x for x in SCENARIOS if x in chosen]
    rounds = a.rounds if a.rounds is not None else (1 if a.quick else 3)
    idle_n = a.idle_conns if a.idle_conns is not None else (IDLE_CONNS_QUICK if a.quick else IDLE_CONNS)
    if "idle" not in chosen:
        idle_n = 0
    streams_n = a.streams if a.streams is not None else STREAMS_N
    if "streams" not in chosen:
        streams_n = 0
    streams_s = STREAMS_SECONDS_QUICK if a.quick else STREAMS_SECONDS
    sr_seqs = STREAMREQ_SEQS_QUICK if a.quick else STREAMREQ_SEQS
    secs = a.seconds or (3.0 if a.quick else 10.0)
    sse_samples = 5 if a.quick else 15
    wanted = [x.strip() for x in a.targets.split(",") if x.strip()]
    started = time.monotonic()

    # Shared machines: run every bench process (inherited by children) above
    # ordinary jobs, the same for every target. BENCH_NICE=0 turns it off.
    want_nice = int(os.environ.get("BENCH_NICE", "-20"))
    try:
        os.nice(want_nice - os.nice(0))
    except OSError:
        pass
    niceness = os.nice(0)
    # With kernel autogroups, nice only ranks processes within one session;
    # the session's autogroup has a nice of its own. Raise it for the run
    # (restored at the end) so other sessions' niced builds yield to the bench.
    autogroup = Path("/proc/self/autogroup")
    autogroup_before = None
    try:
        m = re.search(r"nice (-?\d+)", autogroup.read_text())
        if m:
            autogroup.write_text(str(want_nice))
            autogroup_before = m.group(1)
            import atexit
            atexit.register(lambda: autogroup.write_text(autogroup_before))
    except OSError:
        autogroup_before = None
    if autogroup_before is not None:
        niceness = f"{niceness} (and its session autogroup at nice {want_nice})"

    # The idle-connections scenario holds ~idle_n sockets in the client and
    # twice that in a proxy (client side + upstream for mitmproxy): raise the
    # fd limit that every process started from here inherits.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        want = NOFILE if hard == resource.RLIM_INFINITY else max(NOFILE, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError):  # not root: the hard limit is as far as it goes
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if idle_n and nofile < 2 * idle_n + 1000:
        log(f"RLIMIT_NOFILE is {nofile}: the idle scenario's {idle_n} connections may not all fit")

    cores = len(os.sched_getaffinity(0))
    pinned = cores >= 2
    global PROXY_CORE, LOAD_CORE
    if not pinned:
        PROXY_CORE = LOAD_CORE = None  # type: ignore[assignment]
    else:
        os.sched_setaffinity(0, {LOAD_CORE})  # this harness, oha, nginx, the SSE origin

    clock0 = clock1 = clock2 = time.time() - time.monotonic()
    mono0 = mono1 = mono2 = time.monotonic()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    d = BENCH / ".run" / stamp
    d.mkdir(parents=True)
    data = BENCH / ".run" / "data"
    log(f"run directory {d}")
    make_certs(d)
    ensure_large(data)

    procs = Procs()
    results: dict[str, dict[str, list[dict]]] = {}
    targets: list[Target] = []
    try:
        sse_port, nginx_port = free_port(), free_port()
        procs.start("sse-origin", [str(SSE_ORIGIN), str(sse_port)],
                    d / "sse-origin.log", LOAD_CORE)
        wait_port(sse_port, None)
        conf = write_nginx_conf(d, nginx_port, sse_port, data, nofile)
        ng = procs.start("nginx", ["nginx", "-p", str(d), "-c", str(conf), "-e", str(d / "nginx-error.log")],
                         d / "nginx.out", LOAD_CORE)
        wait_port(nginx_port, ng)
        nginx_pid = nginx_worker_pid(ng.pid)

        # the upstream refuses a request without the injected credential
        probe = Target("probe", None, str(d / "ca.pem"))
        c = Conn(probe, nginx_port)
        st, hd = c.request("/small", PLACEHOLDER, "probe.check.0")
        b"".join(c.body(hd))
        c.close()
        if st != 401:
            raise RuntimeError(f"nginx answered {st} without the credential; expected 401")

        starters = {"clavis": start_clavis, "mitmproxy": start_mitmproxy, "hudsucker": start_hudsucker}
        for name in wanted:
            if name == "direct":
                targets.append(Target("direct", None, str(d / "ca.pem"), version="(no proxy)"))
                continue
            try:
                log(f"starting {name}")
                t = starters[name](procs, d, nginx_port)
                time.sleep(1.0)
                t.idle_rss_kib = status_kib(t.pid, "VmRSS")
                targets.append(t)
            except Exception as e:  # noqa: BLE001 - a failing target is reported, not fatal
                log(f"{name} could not start: {e}")
                targets.append(Target(name, error=f"did not start: {e}"))
        if "hudsucker" in wanted:
            for t in targets:
                if t.name == "hudsucker":
                    t.version = "hudsucker " + hudsucker_crate_version()
        # stream then request: every proxy gets a second instance that serves
        # only that scenario, so its pool holds what those sequences leave in
        # it (the main instance keeps dozens of idle upstream connections from
        # the load scenarios, and any of them would serve the follow-up)
        sr_targets: dict[str, Target] = {}
        if "streamreq" in scens:
            for t in targets:
                if t.error:
                    continue
                if not t.proxy_port:
                    sr_targets[t.name] = t
                    continue
                try:
                    kw = {}
                    if a.sr_workers > 1 and t.name in ("clavis", "hudsucker"):
                        cores = {PROXY_CORE, LOAD_CORE} if PROXY_CORE is not None else None
                        kw = {"core": cores, "env": {"TOKIO_WORKER_THREADS": str(a.sr_workers)}}
                    sr_targets[t.name] = starters[t.name](procs, d, nginx_port, name=f"{t.name}-sr", **kw)
                except Exception as e:  # noqa: BLE001
                    log(f"{t.name}-sr could not start: {e}")
        for t in targets:
            if t.error:
                continue
            try:
                sanity(t, nginx_port)
            except Exception as e:  # noqa: BLE001
                t.error = f"sanity request failed: {e}"
                log(f"{t.name}: {t.error}")

        # warm-up (not measured): mint the leaf, fill pools, fault in memory
        for t in targets:
            if not t.error:
                try:
                    oha(t, nginx_port, "/small", 64, 1.0, f"{t.name}.warmup.0")
                except Exception as e:  # noqa: BLE001
                    t.error = f"warm-up failed: {e}"
                    log(f"{t.name}: {t.error}")
        bg0 = proc_stat()
        time.sleep(2.0)  # nothing of ours runs: what the rest of the machine uses
        bg1 = proc_stat()
        stat0, load0 = bg1, os.getloadavg()
        clock0, mono0 = time.time() - time.monotonic(), time.monotonic()
        live = [t for t in targets if not t.error]
        for rnd in range(rounds):
            for si, scen in enumerate(scens):
                k = (rnd * len(scens) + si) % max(1, len(live))
                order = live[k:] + live[:k]  # rotate so no target always goes first
                if scen == "streamreq":  # every target at once, taking turns
                    runs = [sr_targets[t.name] for t in order if not t.error and t.name in sr_targets
                            and not (sr_targets[t.name].proc and sr_targets[t.name].proc.poll() is not None)]
                    log(f"round {rnd + 1}/{rounds} {scen:8s} " + ", ".join(t.name for t in runs) + " in turns")
                    by_name = measure_streamreq(runs, nginx_port, rnd, sr_seqs)
                    for t in order:
                        if t.error:
                            continue
                        r = by_name.get(sr_targets[t.name].name if t.name in sr_targets else "",
                                        {"failed": f"no running {t.name}-sr instance"})
                        if "failed" in r:
                            log(f"  {t.name} {scen} failed: {r['failed']}")
                        results.setdefault(t.name, {}).setdefault(scen, []).append(r)
                    time.sleep(0.5)
                    continue
                for t in order:
                    if t.error:
                        continue
                    if t.proc and t.proc.poll() is not None:
                        t.error = f"exited with {t.proc.returncode} during the run"
                        continue
                    log(f"round {rnd + 1}/{rounds} {scen:8s} {t.name}")
                    try:
                        r = measure(t, scen, rnd, nginx_port, nginx_pid, secs, sse_samples)
                    except Exception as e:  # noqa: BLE001
                        log(f"  {t.name} {scen} failed: {e}")
                        r = {"failed": str(e)}
                    results.setdefault(t.name, {}).setdefault(scen, []).append(r)
                    if r.get("bad"):
                        log(f"  {t.name} {scen}: {r['bad']} failed requests {r.get('codes')} {r.get('errors')}")
                    time.sleep(0.5)
        stat1, load1 = proc_stat(), os.getloadavg()
        clock1, mono1 = time.time() - time.monotonic(), time.monotonic()
        for t in targets:
            if t.pid and t.proc.poll() is None:
                t_hwm = status_kib(t.pid, "VmHWM")
                results.setdefault(t.name, {})["_hwm_kib"] = t_hwm  # type: ignore[assignment]
        # once per target, after the rounds (and after VmHWM above, which the
        # idle connections would dominate)
        run_oneoffs(targets, results, d, idle_n, procs, nginx_port,
                    mint="mint" in chosen, streams_n=streams_n, streams_s=streams_s, starters=starters)
        guard = None
        if "guardrails" in chosen:
            g_rounds = a.guard_rounds or (GUARD_ROUNDS_QUICK if a.quick else GUARD_ROUNDS)
            log(f"one-off  guardrails: clavis-plain and clavis-guard, {g_rounds} round(s)")
            try:
                guard = measure_guardrails(procs, d, nginx_port, g_rounds, secs)
                log(f"  guardrails: CPU µs/request {guard['plain']['cpu']:.2f} → {guard['guard']['cpu']:.2f}")
            except Exception as e:  # noqa: BLE001
                log(f"  guardrails failed: {e}")
                guard = {"failed": str(e)}
        clock2, mono2 = time.time() - time.monotonic(), time.monotonic()
        time.sleep(1.5)  # nginx flushes its access log buffer every second
    finally:
        procs.stop_all()

    reuse = reuse_from_log(d / "access.log")
    for (name, scen, rnd), n in new_conns_from_log(d / "access.log").items():
        if scen != "streamreq":
            continue
        rs = results.get(name.removesuffix("-sr"), {}).get("streamreq", [])
        if rnd < len(rs) and "failed" not in rs[rnd]:
            rs[rnd]["new_conns"] = n
    for rs in results.values():
        for r in rs.get("streamreq", []) if isinstance(rs, dict) else []:
            if "failed" not in r:
                r.setdefault("new_conns", 0)
    # hundreds of MiB per full run: only the reuse figures above are kept
    (d / "access.log").unlink(missing_ok=True)
    elapsed = time.monotonic() - started
    noise = {
        "load_before": load0, "load_after": load1,
        "cpu": {c: busy_and_steal(stat0, stat1, c) for c in ("cpu", "cpu0", "cpu1") if c in stat0},
        "background": {c: busy_and_steal(bg0, bg1, c) for c in ("cpu0", "cpu1") if c in bg0},
        # wall clock minus monotonic clock: it grows when the VM is paused
        # (the monotonic clock stops) or the wall clock is stepped
        "clock_rounds_s": clock1 - clock0, "clock_oneoffs_s": clock2 - clock1,
        "mono_rounds_s": mono1 - mono0, "mono_oneoffs_s": mono2 - mono1,
    }
    (d / "results.json").write_text(json.dumps(
        {"results": results, "reuse": {f"{k[0]}.{k[1]}": v for k, v in reuse.items()},
         "noise": noise}, indent=1, default=str))
    oneoff = {"idle_n": idle_n, "nofile": nofile, "streams_n": streams_n, "streams_s": streams_s,
              "sr_seqs": sr_seqs, "sr_workers": a.sr_workers, "guardrails": guard}
    md = report(targets, results, reuse, noise, a.quick, rounds, secs, pinned, elapsed, niceness, oneoff)
    print(md)
    if not a.no_results_file:
        results_md = BENCH / "RESULTS.md"
        if chosen == {"guardrails"} and guard and results_md.exists():
            # only the guardrails scenario ran: replace its section, keep the rest
            section = "\n".join(guard_notes(guard)[1:]) + "\n"
            section = section.replace("## Guardrails", f"## Guardrails ({dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, "
                                      f"{'quick' if a.quick else 'full'} run of this scenario alone)", 1)
            old = results_md.read_text()
            m = re.search(r"<!-- guardrails:begin -->.*?<!-- guardrails:end -->\n?", old, re.S)
            new = old[:m.start()] + section + old[m.end():] if m else old.rstrip("\n") + "\n\n" + section
            results_md.write_text(new)
            log("wrote the guardrails section of bench/RESULTS.md")
        else:
            results_md.write_text(md)
            log("wrote bench/RESULTS.md")
    log(f"done in {elapsed:.0f} s; raw data in {d}")
    return 0


def hudsucker_crate_version() -> str:
    lock = BENCH / "peers" / "hudsucker-inject" / "Cargo.lock"
    m = re.search(r'name = "hudsucker"\nversion = "([^"]+)"', lock.read_text() if lock.exists() else "")
    return m.group(1) if m else "?"


# ---------------------------------------------------------------- report


ONEOFF_SCENARIOS = ("mint", "streams", "idle", "guardrails")


def oneoff_notes(targets, results, oneoff, reuse=None) -> list[str]:
    idle_n = oneoff.get("idle_n", 0)
    names = [t.name for t in targets]
    out = ["", "## One-off scenarios (once per target, after the rounds)", ""]
    if idle_n:
        out.append(
            f"- idle connections: `lib/idle_conns.py` (asyncio + ssl, pinned to the load core) opens {idle_n} "
            f"connections through each proxy, {IDLE_CONCURRENCY} at a time: `CONNECT {HOST}:443` with "
            "Proxy-Authorization, TLS with SNI against the proxy's CA, one keep-alive `GET /small` read in full; "
            f"all are then held idle {IDLE_HOLD:g} s and the proxy's VmRSS is read. Increase and per-connection "
            "figures are over the proxy's VmRSS just before the connections opened (after the rounds). "
            f"The open phase is bounded at {IDLE_DEADLINE:.0f} s; a proxy that needs longer is reported as not measured. "
            f"clavis's bench config raises `limits.max_connections` and `limits.max_tunnels` to {CONN_LIMIT} "
            f"(defaults 4096 and 2048); nginx has `worker_connections {min(CONN_LIMIT, oneoff.get('nofile') or CONN_LIMIT)}`; RLIMIT_NOFILE of the harness "
            f"and everything it starts: {oneoff.get('nofile')}.")
        for n in names:
            for r in results.get(n, {}).get("idle", []):
                if "skipped" in r:
                    pr = r.get("partial", {})
                    extra = ""
                    if pr.get("rss_held_kib"):
                        extra = (f" (at that point: {pr['rss_held_kib'] / 1024:.0f} MiB RSS, "
                                 f"{pr.get('cpu_us_per_conn', 0):.0f} µs of proxy CPU per connection, "
                                 f"{pr.get('proxy_fds')} fds of {pr.get('proxy_nofile')}, "
                                 f"{pr.get('conn_failed')} failed)")
                    out.append(f"  - {n}: {r['skipped']}{extra}")
                elif "failed" in r:
                    out.append(f"  - {n}: failed: {r['failed']}")
                else:
                    s = (f"  - {n}: {r['opened']} of {r['n']} opened in {r['open_s']:.1f} s"
                         f" ({r['cpu_us_per_conn']:.0f} µs of proxy CPU per connection opened);"
                         f" {r['rss_before_kib'] / 1024:.1f} → {r['rss_held_kib'] / 1024:.1f} MiB"
                         f" (max while opening {r['rss_open_max_kib'] / 1024:.1f} MiB);"
                         f" still open when released: {r['still_open']}")
                    if r.get("tunnels_active") is not None:
                        s += f"; clavis_tunnels_active while held: {r['tunnels_active']:.0f}"
                    per = (reuse or {}).get((n, "idle"))
                    if per:
                        s += f"; upstream connections used: {r['opened'] / per:.0f}"
                    s += f"; proxy fds while held: {r['proxy_fds']} (RLIMIT_NOFILE {r['proxy_nofile']})"
                    if r["conn_failed"]:
                        s += f"; **{r['conn_failed']} failed**: " + "; ".join(f"{k} ×{v}" for k, v in r["errors"].items())
                        if r["proxy_nofile"] and r["proxy_fds"] >= r["proxy_nofile"] - 50:
                            s += " (the proxy had used up its file descriptors)"
                    out.append(s)
    for r in results.get("clavis", {}).get("mint", []):
        out.append(
            f"- leaf mint (clavis only; the peers have no equivalent row): a user-defined connector `mintbench` claims "
            f"`*.{MINT_DOMAIN}`; the TLS handshake completes before clavis dials any upstream, so none is needed. "
            f"Cold: CONNECT + full TLS handshake (no resumption) to {MINT_HOSTS} never-seen hosts `h<i>.{MINT_DOMAIN}`, "
            "each followed by a warm one to the same host (leaf cached); medians. Burst: "
            f"{MINT_BURST} connections to one new host send their CONNECTs back to back, then their ClientHellos back "
            "to back; `clavis_certs_issued_total` from `/metrics` before and after.")
        if "failed" in r:
            out.append(f"  - failed: {r['failed']}")
        else:
            out.append(f"  - certs issued during the cold phase: {r['cold_issued']} (expected {MINT_HOSTS}); burst: "
                       f"{r['burst_ok']} of {MINT_BURST} handshakes completed in {r['burst_s'] * 1e3:.1f} ms, "
                       f"certs issued {r['burst_issued']}"
                       + (f"; errors: {'; '.join(r['burst_errors'])}" if r.get("burst_errors") else ""))
            if "mt_failed" in r:
                out.append(f"  - the burst on a second clavis with {MINT_MT_WORKERS} tokio workers failed: {r['mt_failed']}")
            elif "mt_issued" in r:
                out.append(f"  - the bench clavis, pinned to one core, runs tokio's single-threaded scheduler, so a burst cannot race "
                           f"inside it; a second clavis (same config, `TOKIO_WORKER_THREADS={MINT_MT_WORKERS}`, "
                           f"both cores) took {MINT_MT_BURSTS} bursts to new hosts: certs issued per burst "
                           f"{r['mt_issued']}, handshakes completed per burst {r['mt_ok']} of {MINT_BURST}")
    return out if len(out) > 3 else []


def per_round(results, name, scen, key):
    return [r[key] for r in results.get(name, {}).get(scen, [])
            if isinstance(r, dict) and r.get(key) is not None and "failed" not in r]


def stream_notes(targets, results, oneoff) -> list[str]:
    """Per-round figures behind the SSE and stream rows, and how they were taken."""
    names = [t.name for t in targets]
    out = ["", "## Streams: per round, and how they were measured", ""]

    def ms(v):
        return "—" if v is None else f"{v * 1e3:.3f}"

    if any(results.get(n, {}).get("sse") for n in names):
        out.append("- SSE warm first event, median of each round (ms): " + "; ".join(
            f"{n} " + " / ".join(ms(r.get("ttfe_warm_p50")) for r in results.get(n, {}).get("sse", []))
            for n in names if results.get(n, {}).get("sse")))
    if any(results.get(n, {}).get("streamreq") for n in names):
        out.append(
            f"- stream then request: each proxy has a second instance (`<name>-sr`, same config, same core) that "
            f"serves only this scenario, so its pool holds only what these sequences leave in it (the main "
            f"instance keeps idle upstream connections from the load scenarios, any of which would serve the "
            f"follow-up)"
            + (f"; clavis-sr and hudsucker-sr ran {oneoff['sr_workers']} tokio workers on both cores (`--sr-workers`)"
               if oneoff.get("sr_workers", 1) > 1 else "")
            + f". Per round and target: one new client connection (CONNECT + TLS), one unmeasured "
            f"sequence (after a round's pause the pool's idle timeout may have closed the connection), then "
            f"{oneoff.get('sr_seqs', STREAMREQ_SEQS)} sequences of `GET {STREAMREQ_SSE}` read to its last chunk "
            f"and at once `GET /small` on the same connection, the targets taking turns sequence by sequence "
            f"(so a stall of the machine hits them alike); time from sending the follow-up to its first "
            f"response byte. Dials: `clavis_upstream_dials_total` before and after the measured sequences; "
            f"nginx: connections whose first request in nginx's log is in those sequences.")
        for n in names:
            rs = results.get(n, {}).get("streamreq", [])
            if not rs:
                continue
            cells = []
            for r in rs:
                if "failed" in r:
                    cells.append(f"failed: {r['failed']}")
                    continue
                c = f"p50 {ms(r['ttfb_p50'])}, p99 {ms(r['ttfb_p99'])}, max {ms(r['ttfb_max'])} ms"
                if r.get("dials") is not None:
                    c += f", dials {r['dials']:.0f}"
                if r.get("new_conns") is not None and n != "direct":
                    c += f", new upstream conns {r['new_conns']}"
                cells.append(c)
            out.append(f"  - {n}: " + "; ".join(f"round {i + 1}: {c}" for i, c in enumerate(cells)))
    if oneoff.get("streams_n") and any(results.get(n, {}).get("streams") for n in names):
        n_, secs_ = oneoff["streams_n"], oneoff.get("streams_s", STREAMS_SECONDS)
        out.append(
            f"- {n_} streams (once per target, after the rounds, through a fresh instance of each proxy, same "
            f"config and core, started for it and stopped after it): "
            f"`lib/many_streams.py` (asyncio + ssl, pinned to the load core) opens {n_} connections, "
            f"{STREAMS_OPEN_CONCURRENCY} at a time (CONNECT, TLS, `GET /sse?n={int(secs_ * 1000 / STREAMS_MS)}&ms={STREAMS_MS}`), "
            f"and reads every stream to its end; an event's latency is its arrival time minus the origin's send "
            f"stamp (the events received once every stream is open). RSS: the proxy's max VmRSS sampled every 50 ms from the moment "
            f"every stream has its response head until the first stream ends (all run meanwhile), minus its "
            f"VmRSS before the scenario, ÷ streams. CPU per event: the proxy's utime + stime over that same "
            f"window ÷ the events delivered in it. A stall is a gap of more than 1 s between two events of one "
            f"stream (the origin sends one every {STREAMS_MS} ms). The load core also runs nginx and the SSE "
            f"origin, so for every target it carries the same {n_ * 1000 // STREAMS_MS} events/s.")
        for n in names:
            for r in results.get(n, {}).get("streams", []):
                if "failed" in r:
                    out.append(f"  - {n}: failed: {r['failed']}")
                    continue
                line = (f"  - {n}: {r['opened']} of {r['streams']} opened in {r['open_s']:.1f} s; "
                        f"{r['complete']} complete, {r['events']} of {r['events_expected']} events; "
                        f"latency p50 {ms(r['lat_p50'])}, p99 {ms(r['lat_p99'])}, p99.9 {ms(r['lat_p999'])}, "
                        f"max {ms(r['lat_max'])} ms; largest gap {ms(r['gap_max'])} ms; "
                        f"window with all running {r['steady_s']:.1f} s, {r['steady_events']} events")
                if r.get("rss_before_kib") is not None:
                    per_event = "—" if r["cpu_us_per_event"] is None else f"{r['cpu_us_per_event']:.1f}"
                    line += (f"; RSS {r['rss_before_kib'] / 1024:.1f} → {r['rss_steady_max_kib'] / 1024:.1f} MiB "
                             f"({r['rss_per_stream_kib']:.1f} KiB per stream), CPU {per_event} µs "
                             f"per event and {r['cpu_open_us_per_stream']:.0f} µs per stream opened, "
                             f"{r['proxy_fds']} fds open")
                errs = {**(r.get("open_errors") or {}), **(r.get("stream_errors") or {})}
                if errs:
                    line += "; errors: " + "; ".join(f"{k} ×{v}" for k, v in errs.items())
                out.append(line)
    return out if len(out) > 3 else []


def med(results, name, scen, key, agg="median"):
    vals = per_round(results, name, scen, key)
    if not vals:
        return None
    return sum(vals) if agg == "sum" else statistics.median(vals)


@dataclass
class Row:
    label: str
    scen: str
    key: str
    unit: str
    scale: float = 1.0
    higher_better: bool = True
    fmt: str = "{:.0f}"
    proxy_only: bool = False
    target: str = ""
    check: object = None  # fn(clavis, direct, peers) -> bool | None
    agg: str = "median"  # over rounds: "median" or "sum"
    values: dict = field(default_factory=dict)


def fmt_num(v, f):
    return "—" if v is None else f.format(v)


def report(targets, results, reuse, noise, quick, rounds, secs, pinned, elapsed, niceness=0,
           oneoff=None) -> str:
    names = [t.name for t in targets]
    oneoff = oneoff or {}
    idle_n = oneoff.get("idle_n", 0)

    def rtarget(ratio_min=None, ratio_max=None, abs_max=None, vs=None, vs_max=None):
        def chk(vals):
            c = vals.get("clavis")
            if c is None:
                return None
            ok = True
            dv = vals.get("direct")
            if ratio_min is not None:
                if dv is None:
                    return None
                ok &= c >= ratio_min * dv
            if ratio_max is not None:
                if dv is None:
                    return None
                ok &= c <= ratio_max * dv
            if abs_max is not None:
                ok &= c <= abs_max
            if vs is not None:
                pv = vals.get(vs)
                if pv is None:
                    return None
                ok &= c <= vs_max * pv
            return ok
        return chk

    def equals(want):
        def chk(vals):
            c = vals.get("clavis")
            return None if c is None else c == want
        return chk

    streams_n, streams_s = oneoff.get("streams_n", 0), oneoff.get("streams_s", STREAMS_SECONDS)
    sr_seqs = oneoff.get("sr_seqs", STREAMREQ_SEQS)

    def sse_vs_peer(vals, peer="hudsucker"):
        """Issue 18: clavis's median of round medians ≤ the peer's, and no
        round's median above 2× the peer's in the same round."""
        c = [r.get("ttfe_warm_p50") for r in results.get("clavis", {}).get("sse", [])]
        p = [r.get("ttfe_warm_p50") for r in results.get(peer, {}).get("sse", [])]
        pairs = [(x, y) for x, y in zip(c, p) if x is not None and y is not None]
        if not pairs:
            return None
        return (statistics.median(x for x, _ in pairs) <= statistics.median(y for _, y in pairs)
                and all(x <= 2 * y for x, y in pairs))

    idle = f"{idle_n} idle MITM'd conns" + (" (--quick)" if quick and idle_n == IDLE_CONNS_QUICK else "")
    rows = [
        Row("keep-alive /small, 16 conns: req/s", "ka16", "rps", "req/s", target="≥ 0.9× direct", check=rtarget(ratio_min=0.9)),
        Row("keep-alive /small, 16 conns: p50", "ka16", "p50", "ms", 1e3, False, "{:.3f}"),
        Row("keep-alive /small, 16 conns: p99", "ka16", "p99", "ms", 1e3, False, "{:.3f}", target="≤ 1.5× direct", check=rtarget(ratio_max=1.5)),
        Row("keep-alive /small, 64 conns: req/s", "ka64", "rps", "req/s", target="≥ 0.9× direct", check=rtarget(ratio_min=0.9)),
        Row("keep-alive /small, 64 conns: p50", "ka64", "p50", "ms", 1e3, False, "{:.3f}"),
        Row("keep-alive /small, 64 conns: p99", "ka64", "p99", "ms", 1e3, False, "{:.3f}"),
        Row("new connection + CONNECT per request (16 conc.): conn/s", "newconn", "rps", "conn/s", target="≥ 1.5× direct", check=rtarget(ratio_min=1.5)),
        Row("new connection per request: p50", "newconn", "p50", "ms", 1e3, False, "{:.3f}"),
        Row("new connection per request: p99", "newconn", "p99", "ms", 1e3, False, "{:.3f}"),
        Row("/large (50 MiB, 1 conn): throughput", "large", "mbps", "MB/s", target="≥ 0.95× direct", check=rtarget(ratio_min=0.95)),
        Row("SSE time to first event, cold (new conn)", "sse", "ttfe_cold_p50", "ms", 1e3, False, "{:.3f}"),
        Row("SSE time to first event, warm", "sse", "ttfe_warm_p50", "ms", 1e3, False, "{:.3f}", target="≤ 0.5 ms", check=rtarget(abs_max=0.5)),
        Row("SSE per-event latency p50", "sse", "event_p50", "ms", 1e3, False, "{:.3f}", target="≤ 1.2× direct", check=rtarget(ratio_max=1.2)),
        Row("SSE per-event latency max (of 20)", "sse", "event_max", "ms", 1e3, False, "{:.3f}"),
        Row(f"SSE warm first event: median of {rounds} round medians (issue 18)", "sse", "ttfe_warm_p50", "ms", 1e3, False, "{:.3f}",
            target="≤ hudsucker; no round > 2× hudsucker's", check=sse_vs_peer),
        Row(f"stream then request ({sr_seqs} per round): follow-up time to first byte p50", "streamreq", "ttfb_p50", "ms", 1e3, False, "{:.3f}"),
        Row(f"stream then request ({sr_seqs} per round): follow-up time to first byte p99", "streamreq", "ttfb_p99", "ms", 1e3, False, "{:.3f}",
            target="≤ hudsucker", check=rtarget(vs="hudsucker", vs_max=1.0)),
        Row(f"stream then request: new upstream dials, all {rounds} rounds (clavis_upstream_dials_total)", "streamreq", "dials", "dials", 1, False, "{:.0f}", True,
            "= 0", equals(0), agg="sum"),
        Row(f"stream then request: new upstream connections seen by nginx, all {rounds} rounds", "streamreq", "new_conns", "conns", 1, False, "{:.0f}", True, agg="sum"),
        Row("proxy CPU per request, keep-alive 16", "ka16", "cpu_us_per_req", "µs", 1, False, "{:.1f}", True, "≤ 20 µs and ≤ 0.7× hudsucker", rtarget(abs_max=20, vs="hudsucker", vs_max=0.7)),
        Row("proxy CPU per request, keep-alive 16: user space", "ka16", "cpu_user_us_per_req", "µs", 1, False, "{:.1f}", True),
        Row("proxy CPU per request, keep-alive 16: kernel", "ka16", "cpu_kernel_us_per_req", "µs", 1, False, "{:.1f}", True),
        Row("proxy CPU per request, keep-alive 64", "ka64", "cpu_us_per_req", "µs", 1, False, "{:.1f}", True),
        Row("proxy CPU per request, new conn each", "newconn", "cpu_us_per_req", "µs", 1, False, "{:.1f}", True),
        Row("upstream (nginx) CPU per request, keep-alive 16", "ka16", "nginx_cpu_us_per_req", "µs", 1, False, "{:.1f}"),
        Row("proxy RSS idle", "_idle", "", "MiB", 1 / 1024, False, "{:.1f}", True, "≤ 8 MiB", rtarget(abs_max=8)),
        Row("proxy RSS max during keep-alive 64", "ka64", "rss_max_kib", "MiB", 1 / 1024, False, "{:.1f}", True, "≤ 32 MiB", rtarget(abs_max=32)),
        Row("proxy RSS max during /large", "large", "rss_max_kib", "MiB", 1 / 1024, False, "{:.1f}", True),
        Row("proxy peak RSS (VmHWM, whole run)", "_hwm", "", "MiB", 1 / 1024, False, "{:.1f}", True),
        Row("upstream reuse (requests ÷ upstream conns), keep-alive 16", "_reuse_ka16", "", "×", 1, True, "{:.1f}"),
        Row("upstream reuse, new client conn per request", "_reuse_newconn", "", "×", 1, True, "{:.1f}"),
    ]
    if idle_n:
        rows += [
            Row(f"{idle}: opened", "idle", "opened", "conns", 1, True, "{:.0f}", True, f"= {idle_n}", equals(idle_n)),
            Row(f"{idle}: time to open all ({IDLE_CONCURRENCY} at a time)", "idle", "open_s", "s", 1, False, "{:.1f}", True),
            Row(f"{idle}: proxy RSS, all open and idle", "idle", "rss_held_kib", "MiB", 1 / 1024, False, "{:.1f}", True,
                "≤ 256 MiB" + (f" (at {IDLE_CONNS})" if idle_n != IDLE_CONNS else ""), rtarget(abs_max=256)),
            Row(f"{idle}: RSS increase over the idle proxy", "idle", "rss_inc_kib", "MiB", 1 / 1024, False, "{:.1f}", True),
            Row(f"{idle}: RSS per connection", "idle", "rss_per_conn_kib", "KiB", 1, False, "{:.1f}", True),
        ]
    if streams_n:
        S = f"{streams_n} SSE streams × {streams_s:g} s"
        rows += [
            Row(f"{S}: event latency p50", "streams", "lat_p50", "ms", 1e3, False, "{:.3f}"),
            Row(f"{S}: event latency p99", "streams", "lat_p99", "ms", 1e3, False, "{:.3f}", target="≤ 1.5× direct", check=rtarget(ratio_max=1.5)),
            Row(f"{S}: event latency max", "streams", "lat_max", "ms", 1e3, False, "{:.1f}"),
            Row(f"{S}: streams that got every event", "streams", "complete", "streams", 1, True, "{:.0f}", target=f"= {streams_n}", check=equals(streams_n)),
            Row(f"{S}: streams with a gap > 1 s between events", "streams", "stalled", "streams", 1, False, "{:.0f}", target="= 0", check=equals(0)),
            Row(f"{S}: largest gap between two events of one stream", "streams", "gap_max", "ms", 1e3, False, "{:.0f}"),
            Row(f"{S}: proxy RSS, max while all run", "streams", "rss_steady_max_kib", "MiB", 1 / 1024, False, "{:.1f}", True),
            Row(f"{S}: RSS per stream (over the proxy's RSS before)", "streams", "rss_per_stream_kib", "KiB", 1, False, "{:.1f}", True,
                "≤ hudsucker", rtarget(vs="hudsucker", vs_max=1.0)),
            Row(f"{S}: proxy CPU per event, all streams running", "streams", "cpu_us_per_event", "µs", 1, False, "{:.1f}", True),
            Row(f"{S}: proxy CPU per stream opened", "streams", "cpu_open_us_per_stream", "µs", 1, False, "{:.0f}", True),
        ]
    if "clavis" in names:
        rows += [
            Row(f"leaf mint: CONNECT + TLS handshake, new host, p50 of {MINT_HOSTS} (cold)", "mint", "cold_p50", "ms", 1e3, False, "{:.3f}", True),
            Row(f"leaf mint: CONNECT + TLS handshake, same host again, p50 of {MINT_HOSTS} (warm)", "mint", "warm_p50", "ms", 1e3, False, "{:.3f}", True),
            Row("leaf mint: cost ≈ cold − warm", "mint", "mint_cost", "ms", 1e3, False, "{:.3f}", True, "≤ 1 ms", rtarget(abs_max=1.0)),
            Row(f"leaf mint: certs issued for a burst of {MINT_BURST} concurrent handshakes to one new host", "mint", "burst_issued", "certs", 1, False, "{:.0f}", True, "= 1 (never twice)", equals(1)),
            Row(f"leaf mint: the same, most certs for one of {MINT_MT_BURSTS} bursts, clavis with {MINT_MT_WORKERS} tokio workers on both cores", "mint", "mt_burst_issued", "certs", 1, False, "{:.0f}", True, "= 1 (never twice)", equals(1)),
        ]
    tmap = {t.name: t for t in targets}
    for row in rows:
        for n in names:
            if row.scen == "_idle":
                v = tmap[n].idle_rss_kib
            elif row.scen == "_hwm":
                v = results.get(n, {}).get("_hwm_kib")
            elif row.scen.startswith("_reuse_"):
                v = reuse.get((n, row.scen[len("_reuse_"):]))
            else:
                v = med(results, n, row.scen, row.key, row.agg)
            if row.proxy_only and n == "direct":
                v = None
            row.values[n] = None if v is None else v * row.scale
    # scenarios left out with --scenarios leave no row (a failed one keeps its row)
    rows = [row for row in rows if any(v is not None for v in row.values.values())
            or any(results.get(n, {}).get(row.scen) for n in names)]

    peers = [n for n in names if n not in ("direct", "clavis")]
    head = ["metric", *names]
    if "clavis" in names:
        head += [f"clavis ÷ {p}" for p in peers] + ["clavis target", "met?"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.label if row.label.endswith(row.unit) else f"{row.label} ({row.unit})"]
        dv = row.values.get("direct")
        for n in names:
            v = row.values.get(n)
            s = fmt_num(v, row.fmt)
            if v is not None and dv and n != "direct" and not row.scen.startswith("_reuse"):
                s += f" ({v / dv:.2f}×)"
            cells.append(s)
        if "clavis" in names:
            c = row.values.get("clavis")
            for p in peers:
                pv = row.values.get(p)
                cells.append("—" if c is None or not pv else f"{c / pv:.2f}×")
            cells.append(row.target or "")
            ok = row.check(row.values) if row.check else None
            cells.append("" if row.check is None else ("—" if ok is None else ("yes" if ok else "**no**")))
        lines.append("| " + " | ".join(cells) + " |")

    errs = []
    for t in targets:
        if t.error:
            errs.append(f"- **{t.name}**: {t.error}")
        for scen, rs in results.get(t.name, {}).items():
            if not isinstance(rs, list):
                continue
            for i, r in enumerate(rs):
                when = "(once per run)" if scen in ONEOFF_SCENARIOS else f"round {i + 1}"
                if "failed" in r:
                    errs.append(f"- {t.name} {scen} {when} failed: {r['failed']}")
                elif r.get("bad"):
                    errs.append(f"- {t.name} {scen} round {i + 1}: {r['bad']} failed requests "
                                f"(status {r.get('codes')}, errors {r.get('errors')})")

    try:
        commit = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).stdout.strip()
    except subprocess.CalledProcessError:
        commit = "(no commit yet)"
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
                           capture_output=True, text=True).stdout.strip()
    versions = [
        f"clavis: {tmap['clavis'].version if 'clavis' in tmap else 'not run'}"
        + (f" (BENCH_CLAVIS_BIN={CLAVIS}, not necessarily the commit above)" if os.environ.get("BENCH_CLAVIS_BIN") else ""),
        f"mitmproxy: {tmap['mitmproxy'].version if 'mitmproxy' in tmap else 'not run'}",
        f"hudsucker peer: {tmap['hudsucker'].version if 'hudsucker' in tmap else 'not run'} (bench/peers/hudsucker-inject)",
        f"oha: {first_line([str(OHA), '--version'])}",
        f"nginx: {first_line(['nginx', '-v'])}",
        f"openssl: {first_line(['openssl', 'version'])}",
        f"rustc: {first_line(['rustc', '--version'])}",
        f"python: {platform.python_version()}",
        f"kernel: {platform.release()}",
    ]
    cpu = noise["cpu"]
    mode = "quick (--quick)" if quick else "full"
    out = [
        "# clavis benchmark results",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- commit: {commit}{' (with uncommitted changes in src/)' if dirty else ''}",
        f"- mode: {mode}: {rounds} round(s), {secs:g} s per load scenario, targets alternating; "
        f"figures are medians over rounds; the whole run took {elapsed / 60:.1f} min",
        f"- pinning: {'proxy on core 0; oha, nginx, the SSE origin and the SSE client on core 1 (taskset / sched_setaffinity)' if pinned else 'none (fewer than 2 cores available)'}; every bench process at nice {niceness}",
        f"- machine: {os.cpu_count()} cores, {platform.machine()}",
        "- tools: " + "; ".join(versions),
        "",
        "Each proxy MITMs `api.openai.com` with a minted leaf, replaces the agent's placeholder with "
        f"`Authorization: Bearer {REAL_KEY}`, and forwards over TLS verified against the bench test CA "
        "to a local nginx (HTTP/1.1), which answers 401 unless the header arrived. "
        "`value (r×)`: r = ratio to direct. Latencies in ms, lower is better.",
        "",
        *lines,
        "",
        "## Machine noise",
        "",
        f"- load average before: {' '.join(f'{x:.2f}' for x in noise['load_before'])}; after: "
        f"{' '.join(f'{x:.2f}' for x in noise['load_after'])}",
    ]
    out.append("- background before the run (2 s with every bench process idle): " + ", ".join(
        f"{c} busy {b:.1f}% steal {st:.2f}%" for c, (b, st) in noise["background"].items()))
    for c, (busy, steal) in cpu.items():
        out.append(f"- {c if c != 'cpu' else 'all cpus'}: busy {busy:.1f}%, steal {steal:.2f}% over the measured part (/proc/stat)")
    foreign = {t.name: [r["foreign_proxy_core_pct"] for rs in results.get(t.name, {}).values()
                        if isinstance(rs, list) for r in rs if "foreign_proxy_core_pct" in r]
               for t in targets}
    foreign = {k: v for k, v in foreign.items() if v}
    if foreign:
        out.append("- CPU used on the proxy's core by other processes while a proxy was measured "
                   "(user+system time of the core − the proxy's): " + "; ".join(
                       f"{k} median {statistics.median(v):.1f}%, max {max(v):.1f}%" for k, v in foreign.items()))
    if "clock_rounds_s" in noise:
        out.append(f"- wall clock minus monotonic clock: +{noise['clock_rounds_s']:.2f} s over the rounds "
                   f"({noise['mono_rounds_s']:.0f} s), +{noise['clock_oneoffs_s']:.2f} s over the one-off scenarios "
                   f"({noise['mono_oneoffs_s']:.0f} s); the two clocks drift apart steadily here (~0.5 %), a jump "
                   "well beyond that means the VM was paused (event latencies use the monotonic clock, which a pause stops)")
    out.append("- other processes on the machine (e.g. compilers) add noise; compare ratios measured in the same run, not absolute figures across runs")
    out += oneoff_notes(targets, results, oneoff, reuse)
    out += stream_notes(targets, results, oneoff)
    out += guard_notes(oneoff.get("guardrails"))
    if errs:
        out += ["", "## Failures and errors", "", *errs]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
