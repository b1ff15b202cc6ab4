"""Open N fully MITM'd keep-alive connections through a proxy and hold them idle.

Started by harness.py (pinned to the load core) for the idle-connections
scenario; standard library only (asyncio + ssl). Each connection:
TCP connect to the proxy, `CONNECT host:443` with Proxy-Authorization, TLS
handshake with SNI `host` verified against the proxy's CA, one keep-alive
`GET /small` whose whole response is read (so the tunnel is MITM'd and has
done an upstream exchange). At most `--concurrency` connections are being
opened at a time; the open phase ends after `--deadline` seconds at the latest.

Protocol with the harness: when the open phase is over, one JSON line on
stdout (`opened`, `failed`, `errors`, `open_s`, `timed_out`); then the
connections stay open and idle until a line (or EOF) arrives on stdin; then
one more JSON line (`still_open`: how many the proxy had not closed) and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import ssl
import sys
import time


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def open_one(a, ctx: ssl.SSLContext):
    r, w = await asyncio.open_connection("127.0.0.1", a.port)
    try:
        sock = w.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        w.write(f"CONNECT {a.host}:443 HTTP/1.1\r\nHost: {a.host}:443\r\n"
                f"Proxy-Authorization: {a.proxy_auth}\r\n\r\n".encode())
        head = await r.readuntil(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 200" not in status:
            raise RuntimeError(f"CONNECT answered {status.decode(errors='replace')}")
        await w.start_tls(ctx, server_hostname=a.host)
        w.write(f"GET /small HTTP/1.1\r\nHost: {a.host}\r\nAuthorization: {a.auth}\r\n"
                f"Accept: */*\r\nX-Bench-Run: {a.tag}\r\n\r\n".encode())
        head = await r.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        code = int(lines[0].split()[1])
        length = None
        for line in lines[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == "content-length":
                length = int(v.strip())
            elif k.strip().lower() == "transfer-encoding":
                raise RuntimeError("chunked response (the bench upstream sends Content-Length)")
        if length is None:
            raise RuntimeError("response without Content-Length")
        await r.readexactly(length)
        if code != 200:
            raise RuntimeError(f"GET /small answered {code}")
        return r, w
    except BaseException:
        w.transport.abort()
        raise


def error_key(e: BaseException) -> str:
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        return "timed out (30 s per connection)"
    msg = str(e) or repr(e)
    return f"{type(e).__name__}: {msg}"[:160]


async def main_async(a) -> None:
    ctx = ssl.create_default_context(cafile=a.cacert)
    ctx.set_alpn_protocols(["http/1.1"])
    sem = asyncio.Semaphore(a.concurrency)
    conns: list = []
    errors: dict[str, int] = {}

    async def worker():
        async with sem:
            try:
                conns.append(await asyncio.wait_for(open_one(a, ctx), timeout=30))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - counted and reported
                k = error_key(e)
                errors[k] = errors.get(k, 0) + 1

    t0 = time.perf_counter()
    tasks = [asyncio.create_task(worker()) for _ in range(a.n)]
    _done, pending = await asyncio.wait(tasks, timeout=a.deadline)
    timed_out = bool(pending)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    open_s = time.perf_counter() - t0
    print(json.dumps({
        "opened": len(conns), "failed": sum(errors.values()), "errors": errors,
        "open_s": open_s, "timed_out": timed_out, "unattempted": a.n - len(conns) - sum(errors.values()),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }), flush=True)

    # hold: idle until the harness says so (a line or EOF on stdin)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    still_open = sum(1 for r, w in conns if not r.at_eof() and not w.transport.is_closing())
    for _r, w in conns:
        w.transport.abort()
    print(json.dumps({"still_open": still_open}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True, help="the proxy's port on 127.0.0.1")
    ap.add_argument("--cacert", required=True, help="the proxy's CA (PEM)")
    ap.add_argument("--host", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--deadline", type=float, default=60.0, help="seconds for the open phase")
    ap.add_argument("--proxy-auth", required=True, help="Proxy-Authorization value")
    ap.add_argument("--auth", required=True, help="the agent's Authorization value")
    ap.add_argument("--tag", default="idle", help="X-Bench-Run header")
    a = ap.parse_args()
    raise_nofile()
    asyncio.run(main_async(a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
