#!/usr/bin/env python3
"""The soak test's fake TLS upstream (asyncio, HTTP/1.1 keep-alive).

Usage: upstream.py --cert PEM --key KEY --ready-file FILE

Routes (any host; clavis reaches it through upstream.resolve):
  GET /v1/sse?events=N   text/event-stream, chunked: N events, one every
                         100 ms; every 10th echoes the Authorization header
                         it received (clavis must mask it).
  GET /v1/small          a small JSON answer; one in ten echoes Authorization.

The client asks for faults with `x-soak-fault` (it keeps the count):
  reset   small: RST before any answer; sse: RST after a few events
  stall   small: no answer for 30 s (clavis's upstream.request_timeout
          answers 504 first); sse: stops sending mid-stream (the client's
          read timeout gives up, clavis must drop both sides)
Writes {"port": P} to the ready file.
"""
import argparse
import asyncio
import json
import os
import socket
import ssl
import struct

STALL_SECONDS = 30


def reset(writer: asyncio.StreamWriter) -> None:
    """Closes with RST (SO_LINGER 0), as a crashed peer or a middlebox would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


async def read_head(reader: asyncio.StreamReader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0") or 0)
    if length:
        await reader.readexactly(length)
    return method, target, headers


async def small(writer, headers, n):
    fault = headers.get("x-soak-fault", "")
    if fault == "reset":
        reset(writer)
        return False
    if fault == "stall":
        await asyncio.sleep(STALL_SECONDS)
        reset(writer)
        return False
    body = {"ok": True, "n": n}
    if n % 10 == 0:
        body["echo"] = headers.get("authorization", "")
    data = json.dumps(body).encode()
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
        % (len(data), data)
    )
    await writer.drain()
    return True


async def sse(writer, headers, target):
    fault = headers.get("x-soak-fault", "")
    events = 50
    if "events=" in target:
        try:
            events = int(target.split("events=", 1)[1].split("&", 1)[0])
        except ValueError:
            pass
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    )
    auth = headers.get("authorization", "")
    for i in range(events):
        if fault and i == 3:
            if fault == "reset":
                reset(writer)
                return False
            await asyncio.sleep(STALL_SECONDS)
            reset(writer)
            return False
        payload = {"i": i}
        if i % 10 == 9:
            payload["echo"] = auth
        event = b"data: " + json.dumps(payload).encode() + b"\n\n"
        writer.write(b"%x\r\n%s\r\n" % (len(event), event))
        await writer.drain()
        await asyncio.sleep(0.1)
    done = b"data: [DONE]\n\n"
    writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
    await writer.drain()
    return True


async def handle(reader, writer):
    n = 0
    try:
        while True:
            try:
                method, target, headers = await read_head(reader)
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, ValueError):
                break
            n += 1
            if target.startswith("/v1/sse"):
                ok = await sse(writer, headers, target)
            else:
                ok = await small(writer, headers, n)
            if not ok:
                return
    except (ConnectionError, ssl.SSLError, asyncio.CancelledError):
        pass
    finally:
        if not writer.transport.is_closing():
            writer.close()


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ready-file", required=True)
    a = p.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    ctx.set_alpn_protocols(["http/1.1"])
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    with open(a.ready_file + ".tmp", "w") as f:
        json.dump({"port": port}, f)
    os.replace(a.ready_file + ".tmp", a.ready_file)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
