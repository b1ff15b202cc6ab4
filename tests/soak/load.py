#!/usr/bin/env python3
"""The soak test's load: STREAMS concurrent SSE streams (restarted when
done) and RPS small requests per second through clavis, asking the fake
upstream (upstream.py) for a fault on FAULT_RATE of them: a reset, a stall
or, through a host resolved to a closed port, a refused connection.

Usage: load.py --proxy URL --bundle PEM --seconds S --pid CLAVIS_PID --summary FILE
Env:   SOAK_KEYS  the real credentials, comma-separated: none may reach a response

Every answer must be what its fault predicts (200; reset or refused: 502;
stall: 504); every byte received is searched for the real keys. Writes a
JSON summary (counts, errors by kind, RSS at 30 s and at the end); exits 1
on a leaked key, 0 otherwise (the caller judges the numbers).
"""
import argparse
import asyncio
import base64
import collections
import json
import os
import random
import ssl
import time
from urllib.parse import urlsplit

OK_HOST = "api.openai.com"  # a service of clavis, on the fake upstream
REFUSED_HOST = "api.anthropic.com"  # a service whose upstream refuses
SSE_EVENTS = 50  # 5 s per stream at one event per 100 ms
STREAM_READ_TIMEOUT = 3.0  # a stalled stream is given up after this
ANSWER_TIMEOUT = 15.0  # any answer head, through clavis
WORKERS = 48  # keep-alive connections the small requests share


class Closed(Exception):
    """The connection ended where an answer was due (reset, EOF)."""


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Load:
    def __init__(self, a):
        self.a = a
        self.keys = [k for k in os.environ.get("SOAK_KEYS", "").split(",") if k]
        self.rng = random.Random(a.seed)
        self.counts = collections.Counter()
        self.errors = collections.Counter()  # unexpected outcomes, by kind
        self.faults = collections.Counter()
        self.leaks = []
        self.ctx = ssl.create_default_context(cafile=a.bundle)
        proxy = urlsplit(a.proxy)
        self.proxy = (proxy.hostname, proxy.port)
        cred = f"{proxy.username}:{proxy.password}".encode()
        self.proxy_auth = base64.b64encode(cred).decode()
        self.queue = asyncio.Queue()

    def check(self, data: bytes, where: str) -> None:
        for k in self.keys:
            if k.encode() in data:
                self.leaks.append(where)

    def fault(self) -> str:
        if self.rng.random() >= self.a.fault_rate:
            return ""
        return self.rng.choice(["reset", "stall", "refused"])

    async def tunnel(self, host: str):
        """A TLS connection to HOST through clavis (CONNECT, then TLS with clavis's leaf)."""
        r, w = await asyncio.wait_for(asyncio.open_connection(*self.proxy), ANSWER_TIMEOUT)
        w.write(
            f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n"
            f"Proxy-Authorization: Basic {self.proxy_auth}\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), ANSWER_TIMEOUT)
        if not head.startswith(b"HTTP/1.1 200"):
            w.close()
            raise Closed(f"CONNECT answered {head[:12]!r}")
        await asyncio.wait_for(w.start_tls(self.ctx, server_hostname=host), ANSWER_TIMEOUT)
        return r, w

    async def answer_head(self, r, timeout: float):
        try:
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), timeout)
        except asyncio.IncompleteReadError as e:
            raise Closed("closed before the answer") from e
        self.check(head, "response head")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        return status, headers

    async def body(self, r, headers, timeout: float, on_data=None) -> bytes:
        """The whole body (Content-Length or chunked); on_data sees each piece."""
        out = bytearray()
        if "content-length" in headers:
            data = await asyncio.wait_for(r.readexactly(int(headers["content-length"])), timeout)
            out += data
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = await asyncio.wait_for(r.readuntil(b"\r\n"), timeout)
                size = int(size_line.split(b";")[0], 16)
                data = await asyncio.wait_for(r.readexactly(size + 2), timeout)
                if size == 0:
                    break
                out += data[:-2]
                if on_data:
                    on_data(data[:-2])
        self.check(bytes(out), "response body")
        return bytes(out)

    def request(self, path: str, fault: str, extra: str = "", host: str = OK_HOST) -> bytes:
        head = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer placeholder\r\n"
            f"x-api-key: placeholder\r\n{extra}"
        )
        if fault in ("reset", "stall"):
            head += f"x-soak-fault: {fault}\r\n"
        return (head + "\r\n").encode()

    async def small_worker(self) -> None:
        conn = None
        while True:
            fault = await self.queue.get()
            if fault is None:
                break
            self.counts["requests"] += 1
            if fault:
                self.faults["small-" + fault] += 1
            want = {"": 200, "reset": 502, "stall": 504, "refused": 502}[fault]
            kind = "small" + ("-" + fault if fault else "")
            try:
                if fault == "refused":
                    r, w = await self.tunnel(REFUSED_HOST)
                    one_off = True
                else:
                    if conn is None:
                        conn = await self.tunnel(OK_HOST)
                    r, w = conn
                    one_off = False
                w.write(self.request("/v1/small", fault, host=REFUSED_HOST if one_off else OK_HOST))
                status, headers = await self.answer_head(r, ANSWER_TIMEOUT)
                await self.body(r, headers, ANSWER_TIMEOUT)
                if status == want:
                    self.counts["requests-as-expected"] += 1
                else:
                    self.errors[f"{kind}: status {status}, want {want}"] += 1
                if one_off or status != 200 or headers.get("connection", "").lower() == "close":
                    w.close()
                    if not one_off:
                        conn = None
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, Closed, ValueError) as e:
                self.errors[f"{kind}: {type(e).__name__}"] += 1
                if conn is not None:
                    conn[1].close()
                conn = None
        if conn is not None:
            conn[1].close()

    async def stream_once(self, conn):
        """One SSE stream; returns the connection if it may be reused."""
        fault = self.fault()
        if fault == "refused":
            fault = "reset"  # a stream to a refused host is a small request's case
        if fault:
            self.faults["stream-" + fault] += 1
        self.counts["streams"] += 1
        events = 0

        def seen(data: bytes) -> None:
            nonlocal events
            events += data.count(b"data: ")

        try:
            if conn is None:
                conn = await self.tunnel(OK_HOST)
            r, w = conn
            w.write(self.request(f"/v1/sse?events={SSE_EVENTS}", fault, "Accept: text/event-stream\r\n"))
            status, headers = await self.answer_head(r, ANSWER_TIMEOUT)
            if status != 200:
                self.errors[f"stream: status {status}"] += 1
                await self.body(r, headers, ANSWER_TIMEOUT)
                w.close()
                return None
            await self.body(r, headers, STREAM_READ_TIMEOUT, seen)
            self.counts["events"] += events
            if fault:
                self.errors[f"stream-{fault}: ended cleanly after {events} events"] += 1
            elif events != SSE_EVENTS + 1:
                self.errors[f"stream: {events} events, want {SSE_EVENTS + 1}"] += 1
            else:
                self.counts["streams-complete"] += 1
            return conn
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, Closed, ValueError) as e:
            self.counts["events"] += events
            cut = isinstance(e, (asyncio.IncompleteReadError, ConnectionError, Closed))
            if (fault == "reset" and cut) or (fault == "stall" and isinstance(e, asyncio.TimeoutError)):
                self.counts["streams-fault-as-expected"] += 1
            else:
                self.errors[f"stream{'-' + fault if fault else ''}: {type(e).__name__}"] += 1
            if conn is not None:
                conn[1].close()
            return None

    async def streams(self, deadline: float, index: int) -> None:
        await asyncio.sleep(index * 5.0 / max(self.a.streams, 1))  # staggered start
        conn = None
        while time.monotonic() < deadline:
            conn = await self.stream_once(conn)
        if conn is not None:
            conn[1].close()

    async def requests(self, deadline: float) -> None:
        workers = [asyncio.create_task(self.small_worker()) for _ in range(WORKERS)]
        interval = 1.0 / self.a.rps
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            next_at += interval
            if self.queue.qsize() > self.a.rps * 5:
                self.errors["small: not sent, the client fell 5 s behind"] += 1
            else:
                self.queue.put_nowait(self.fault())
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        for _ in workers:
            self.queue.put_nowait(None)
        await asyncio.gather(*workers)

    async def sample_rss(self, start: float) -> None:
        await asyncio.sleep(max(0.0, start + 30 - time.monotonic()))
        self.rss30 = rss_kib(self.a.pid)

    async def run(self) -> dict:
        start = time.monotonic()
        deadline = start + self.a.seconds
        self.rss30 = 0
        rss_start = rss_kib(self.a.pid)
        tasks = [asyncio.create_task(self.streams(deadline, i)) for i in range(self.a.streams)]
        tasks.append(asyncio.create_task(self.requests(deadline)))
        sampler = asyncio.create_task(self.sample_rss(start))
        await asyncio.gather(*tasks)
        sampler.cancel()
        rss_end = rss_kib(self.a.pid)
        return {
            "seconds": round(time.monotonic() - start, 1),
            "counts": dict(self.counts),
            "faults_injected": dict(self.faults),
            "errors": dict(self.errors),
            "leaks": self.leaks[:20],
            "rss_kib": {"start": rss_start, "at_30s": self.rss30, "end": rss_end},
        }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--proxy", required=True)
    p.add_argument("--bundle", required=True)
    p.add_argument("--seconds", type=float, default=180)
    p.add_argument("--streams", type=int, default=50)
    p.add_argument("--rps", type=float, default=100)
    p.add_argument("--fault-rate", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--summary", required=True)
    a = p.parse_args()
    summary = asyncio.run(Load(a).run())
    with open(a.summary, "w") as f:
        json.dump(summary, f, indent=1)
    return 1 if summary["leaks"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
