#!/usr/bin/env python3
"""A TCP forwarder in front of clavis's admin port, for the console test.

The browser talks to clavis through it, byte for byte. On SIGUSR1 it cuts
every connection that carried `GET /v1/audit/stream`, as a network drop
would, so the test can watch the console reconnect to the real stream and
fill the gap from the real history (the mock does the same with a hook).

Usage: forward.py --to 127.0.0.1:PORT --ready-file FILE
Writes {"port": N} to FILE once it listens on 127.0.0.1:N (N picked by the kernel).
"""
import argparse
import json
import signal
import socket
import threading

STREAM = b"GET /v1/audit/stream"
LOCK = threading.Lock()
STREAMS = set()  # (client, upstream) pairs that carry the audit stream


def pipe(src, dst, pair, watch):
    seen = b""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if watch:
                seen = (seen + data)[-4096:]
                if STREAM in seen:
                    with LOCK:
                        STREAMS.add(pair)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in pair:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with LOCK:
            STREAMS.discard(pair)


def cut(_sig, _frame):
    with LOCK:
        pairs = list(STREAMS)
    for pair in pairs:
        for s in pair:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--to", required=True)
    ap.add_argument("--ready-file", required=True)
    args = ap.parse_args()
    host, port = args.to.rsplit(":", 1)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    signal.signal(signal.SIGUSR1, cut)
    with open(args.ready_file, "w") as f:
        json.dump({"port": listener.getsockname()[1]}, f)
    while True:
        client, _ = listener.accept()
        try:
            upstream = socket.create_connection((host, int(port)))
        except OSError:
            client.close()
            continue
        pair = (client, upstream)
        threading.Thread(target=pipe, args=(client, upstream, pair, True), daemon=True).start()
        threading.Thread(target=pipe, args=(upstream, client, pair, False), daemon=True).start()


if __name__ == "__main__":
    main()
