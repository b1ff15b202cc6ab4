"""Hold N server-sent-event streams open at once through a proxy (or direct).

Started by harness.py (pinned to the load core) for the thousand-streams
scenario; standard library only (asyncio + ssl). Each stream: TCP connect to
the proxy, `CONNECT host:443` with Proxy-Authorization (or straight to nginx
for direct), TLS with SNI `host` verified against the proxy's CA (or the
bench CA), then one `GET /sse?n=EVENTS&ms=MS` read to its end. Every event
carries the origin's send time; its latency is arrival time − that stamp
(reported for the events that arrive once every stream is open: the open
phase's handshakes would otherwise dominate the tail). At most
`--concurrency` streams are being opened at a time.

Protocol with the harness, one JSON line each on stdout:
1. when every stream has its response head (or the open phase gave up):
   `opened`, `failed`, `errors`, `open_s`;
2. when the first stream has received its last event (so until then every
   opened stream was running): `mark` with the events received since line 1;
3. when every stream has ended (or the deadline passed): the totals and the
   latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import socket
import ssl
import sys
import time

STAMP = re.compile(rb'"t": (\d+)')


class Stream:
    __slots__ = ("events", "last", "max_gap", "done", "error")

    def __init__(self):
        self.events = 0
        self.last = None  # arrival (ns) of the previous event
        self.max_gap = 0  # ns between two events of this stream
        self.done = False
        self.error = None


class Run:
    def __init__(self, a):
        self.a = a
        self.lat: list[int] = []  # ns, every event received once all streams were open
        self.lat_all_max = 0  # ns, the largest of all, open phase included
        self.counting = False
        self.since_open = 0
        self.first_done = asyncio.Event()
        self.heads = 0
        self.all_heads = asyncio.Event()


async def open_stream(a, ctx: ssl.SSLContext):
    if a.port:
        r, w = await asyncio.open_connection("127.0.0.1", a.port)
    else:
        r, w = await asyncio.open_connection("127.0.0.1", a.nginx_port)
    try:
        sock = w.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if a.port:
            w.write(f"CONNECT {a.host}:443 HTTP/1.1\r\nHost: {a.host}:443\r\n"
                    f"Proxy-Authorization: {a.proxy_auth}\r\n\r\n".encode())
            head = await r.readuntil(b"\r\n\r\n")
            status = head.split(b"\r\n", 1)[0]
            if b" 200" not in status:
                raise RuntimeError(f"CONNECT answered {status.decode(errors='replace')}")
        await w.start_tls(ctx, server_hostname=a.host)
        w.write(f"GET /sse?n={a.events}&ms={a.ms} HTTP/1.1\r\nHost: {a.host}\r\n"
                f"Authorization: {a.auth}\r\nAccept: text/event-stream\r\n"
                f"X-Bench-Run: {a.tag}\r\n\r\n".encode())
        head = await r.readuntil(b"\r\n\r\n")
        code = int(head.split(b" ", 2)[1])
        if code != 200:
            raise RuntimeError(f"GET /sse answered {code}")
        if b"chunked" not in head.lower():
            raise RuntimeError("SSE response not chunked")
        return r, w
    except BaseException:
        w.transport.abort()
        raise


async def read_stream(run: Run, r: asyncio.StreamReader, w, st: Stream) -> None:
    """Reads the chunked body to its last chunk; the chunk framing is skipped
    by looking only at whole events (`\\n\\n`-terminated)."""
    pending = b""
    try:
        while True:
            piece = await r.read(65536)
            now = time.monotonic_ns()  # the origin stamps with the same clock
            if not piece:
                st.error = "closed before the last chunk"
                return
            pending += piece
            cut = pending.rfind(b"\n\n")
            if cut >= 0:
                whole, pending = pending[:cut], pending[cut + 2:]
                for m in STAMP.finditer(whole):
                    lat = now - int(m.group(1))
                    st.events += 1
                    if lat > run.lat_all_max:
                        run.lat_all_max = lat
                    if run.counting:
                        run.since_open += 1
                        run.lat.append(lat)
                    if st.last is not None and now - st.last > st.max_gap:
                        st.max_gap = now - st.last
                    st.last = now
            if pending.endswith(b"\r\n0\r\n\r\n"):  # the last chunk
                st.done = True
                if st.events >= run.a.events and not run.first_done.is_set():
                    run.first_done.set()
                return
    except (OSError, asyncio.IncompleteReadError, ssl.SSLError) as e:
        st.error = f"{type(e).__name__}: {e}"[:160]
    finally:
        w.transport.abort()


def pct(sorted_vals: list[int], q: float) -> float | None:
    if not sorted_vals:
        return None
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))] / 1e9


async def main_async(a) -> None:
    ctx = ssl.create_default_context(cafile=a.cacert)
    ctx.set_alpn_protocols(["http/1.1"])
    run = Run(a)
    sem = asyncio.Semaphore(a.concurrency)
    streams = [Stream() for _ in range(a.n)]
    readers: list[asyncio.Task] = []
    errors: dict[str, int] = {}

    async def start(st: Stream):
        async with sem:
            try:
                r, w = await asyncio.wait_for(open_stream(a, ctx), timeout=30)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - counted and reported
                k = f"{type(e).__name__}: {e}"[:160]
                errors[k] = errors.get(k, 0) + 1
                st.error = k
                return
            readers.append(asyncio.create_task(read_stream(run, r, w, st)))

    t0 = time.perf_counter()
    openers = [asyncio.create_task(start(st)) for st in streams]
    _done, pending = await asyncio.wait(openers, timeout=a.open_deadline)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    open_s = time.perf_counter() - t0
    run.counting = True
    print(json.dumps({"opened": len(readers), "failed": sum(errors.values()), "errors": errors,
                      "open_s": open_s, "timed_out": bool(pending),
                      "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}), flush=True)
    stream_s = a.events * a.ms / 1000.0
    if readers:
        try:
            await asyncio.wait_for(run.first_done.wait(), timeout=stream_s + 30)
        except asyncio.TimeoutError:
            pass
    print(json.dumps({"mark": "first_done", "events_since_open": run.since_open,
                      "since_open_s": time.perf_counter() - t0 - open_s}), flush=True)
    if readers:
        _done, late = await asyncio.wait(readers, timeout=stream_s + 60)
        for t in late:
            t.cancel()
    lat = sorted(run.lat)
    complete = sum(1 for st in streams if st.done and st.events == a.events)
    events = sum(st.events for st in streams)
    gaps = sorted(st.max_gap for st in streams if st.events > 1)
    stream_errors: dict[str, int] = {}
    for st in streams:
        if st.error and st.events:
            stream_errors[st.error] = stream_errors.get(st.error, 0) + 1
    print(json.dumps({
        "streams": a.n, "opened": len(readers), "complete": complete,
        "incomplete": len(readers) - complete, "stream_errors": stream_errors,
        "events": events, "events_expected": len(readers) * a.events,
        # latency of the events received once every stream was open (the
        # open phase's handshakes keep the load core busy)
        "lat_events": len(lat),
        "lat_p50": pct(lat, 0.50), "lat_p99": pct(lat, 0.99), "lat_p999": pct(lat, 0.999),
        "lat_max": lat[-1] / 1e9 if lat else None,
        "lat_all_max": run.lat_all_max / 1e9,
        # the largest gap between two events of one stream (the origin sends one every `ms`)
        "gap_max": gaps[-1] / 1e9 if gaps else None,
        "gap_p99": pct(gaps, 0.99),
        "stalled": sum(1 for g in gaps if g > a.stall_ms * 1e6),
        "total_s": time.perf_counter() - t0,
    }), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=0, help="the proxy's port on 127.0.0.1 (0: direct)")
    ap.add_argument("--nginx-port", type=int, default=0, help="nginx's port, for direct")
    ap.add_argument("--cacert", required=True)
    ap.add_argument("--host", required=True)
    ap.add_argument("--n", type=int, required=True, help="concurrent streams")
    ap.add_argument("--events", type=int, default=300)
    ap.add_argument("--ms", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=100, help="streams being opened at a time")
    ap.add_argument("--open-deadline", type=float, default=60.0)
    ap.add_argument("--stall-ms", type=float, default=1000.0,
                    help="a gap between two events of a stream above this is a stall")
    ap.add_argument("--proxy-auth", default="")
    ap.add_argument("--auth", required=True)
    ap.add_argument("--tag", default="streams")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    asyncio.run(main_async(a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
