"""Plain-HTTP server-sent-events origin that nginx fronts as /sse.

Each event carries the origin's send time (CLOCK_MONOTONIC, ns, which every
process on the machine shares and which, unlike the wall clock, this VM
never steps) so that a client on the same machine can measure per-event
latency exactly:
    data: {"i": 3, "t": 1712345678901234567}

Query: n (events, default 20), ms (interval, default 100). nginx also sends
POST /v1/chat/completions here (the guardrails scenario); its body is read
and ignored. The first event
is sent as soon as the headers are, then one every `ms` milliseconds.
"""

import asyncio
import sys
import time
import urllib.parse


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        target = head.split(b" ", 2)[1].decode()
        # A POST (the guardrails scenario's chat completions): read its body,
        # so closing the connection cannot reset what is still unread.
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and int(value) > 0:
                await reader.readexactly(int(value))
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
        n = min(int(q.get("n", ["20"])[0]), 1000)
        ms = min(float(q.get("ms", ["100"])[0]), 1000.0)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\nConnection: close\r\n\r\n"
        )
        start = time.monotonic()
        for i in range(n):
            due = start + i * ms / 1000.0
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(b'data: {"i": %d, "t": %d}\n\n' % (i, time.monotonic_ns()))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
        pass
    finally:
        writer.close()


async def main() -> None:
    port = int(sys.argv[1])
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
