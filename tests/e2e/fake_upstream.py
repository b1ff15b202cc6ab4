#!/usr/bin/env python3
"""Fake upstream for the clavis end-to-end test.

One TLS server (HTTP/1.1, a certificate for every test host) and one plain-HTTP
server, both on 127.0.0.1 with ports picked by the kernel. Every request is
appended as one JSON line to the record file:

    {"scheme", "sni", "host", "method", "path", "version",
     "headers": [[lowercase-name, value], ...], "body"}

and answered in a shape the official SDKs parse (OpenAI, Anthropic, GitHub,
Stripe's balance and refunds); streaming answers are server-sent events sent one by one, ~200 ms
apart, each flushed on its own HTTP/1.1 chunk, so a buffering proxy is caught by
the clients' timing checks. Anything else gets a 200 echo JSON.

Usage as the real APIs report it, for budget tests: an OpenAI chat completion
carries `usage`, and an OpenAI stream asked for it
(`stream_options.include_usage`) ends with a usage chunk (`choices: []`, the
other chunks `"usage": null`), as OpenAI sends it; an Anthropic stream reports
input (and cache) tokens in `message_start` and the output count in
`message_delta`, with a `ping` between, as Anthropic sends it. GitHub answers a
repository, an issue and a new comment (`acme/web`, issue 3); Stripe a refund
with the amount asked for.

Usage: fake_upstream.py --cert C --key K --record FILE --ready-file FILE
The ready file receives {"tls_port": N, "plain_port": M} once both listen.
"""
import argparse
import json
import os
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EVENT_GAP = 0.2  # seconds between streamed events
RECORD_LOCK = threading.Lock()
RECORD_PATH = ""


def record(entry: dict) -> None:
    line = json.dumps(entry, sort_keys=True)
    with RECORD_LOCK:
        with open(RECORD_PATH, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()


def openai_completion(model: str) -> dict:
    return {
        "id": "chatcmpl-e2e0001",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_e2e",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the fake upstream.", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 6, "total_tokens": 13},
    }


# What a stream reports when asked for its usage (differs from the plain
# answer's, so a test can tell which one was counted).
OPENAI_STREAM_USAGE = {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}


def openai_chunks(model: str, include_usage: bool = False):
    words = ["Hello", " from", " the", " fake", " upstream", "."]
    created = int(time.time())
    base = {"id": "chatcmpl-e2e0002", "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_e2e"}
    if include_usage:
        base["usage"] = None
    yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                "finish_reason": None}]}
    for w in words:
        yield {**base, "choices": [{"index": 0, "delta": {"content": w}, "logprobs": None, "finish_reason": None}]}
    yield {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}
    if include_usage:
        yield {**base, "choices": [], "usage": dict(OPENAI_STREAM_USAGE)}


def anthropic_message(model: str) -> dict:
    return {
        "id": "msg_e2e0001",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "Hello from the fake upstream."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 7, "output_tokens": 6},
    }


def anthropic_events(model: str):
    msg = anthropic_message(model)
    # Input (and prompt-cache) tokens come in message_start; the output count
    # there is a placeholder, message_delta carries the final one.
    msg.update({"id": "msg_e2e0002", "content": [], "stop_reason": None,
                "usage": {"input_tokens": 7, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4,
                          "output_tokens": 1}})
    yield "message_start", {"type": "message_start", "message": msg}
    yield "ping", {"type": "ping"}
    yield "content_block_start", {"type": "content_block_start", "index": 0,
                                  "content_block": {"type": "text", "text": ""}}
    for w in ["Hello", " from", " the", " fake", " upstream", "."]:
        yield "content_block_delta", {"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "text_delta", "text": w}}
    yield "content_block_stop", {"type": "content_block_stop", "index": 0}
    yield "message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                            "usage": {"output_tokens": 6}}
    yield "message_stop", {"type": "message_stop"}


GITHUB_USER = {
    "login": "e2e-octocat",
    "id": 4242,
    "node_id": "MDQ6VXNlcjQyNDI=",
    "avatar_url": "https://avatars.githubusercontent.com/u/4242?v=4",
    "url": "https://api.github.com/users/e2e-octocat",
    "html_url": "https://github.com/e2e-octocat",
    "type": "User",
    "site_admin": False,
    "name": "E2E Octocat",
    "company": None,
    "blog": "",
    "location": None,
    "email": None,
    "bio": None,
    "public_repos": 1,
    "public_gists": 0,
    "followers": 0,
    "following": 0,
    "created_at": "2020-01-01T00:00:00Z",
    "updated_at": "2020-01-01T00:00:00Z",
}

GITHUB_REPO = {
    "id": 1296269,
    "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5",
    "name": "web",
    "full_name": "acme/web",
    "owner": {"login": "acme", "id": 1, "type": "Organization", "url": "https://api.github.com/users/acme"},
    "private": False,
    "html_url": "https://github.com/acme/web",
    "url": "https://api.github.com/repos/acme/web",
    "default_branch": "main",
    "created_at": "2020-01-01T00:00:00Z",
    "updated_at": "2020-01-01T00:00:00Z",
}

GITHUB_ISSUE = {
    "id": 1,
    "node_id": "MDU6SXNzdWUx",
    "number": 3,
    "title": "e2e issue",
    "state": "open",
    "url": "https://api.github.com/repos/acme/web/issues/3",
    "repository_url": "https://api.github.com/repos/acme/web",
    "comments_url": "https://api.github.com/repos/acme/web/issues/3/comments",
    "html_url": "https://github.com/acme/web/issues/3",
    "user": {"login": "e2e-octocat", "id": 4242, "type": "User"},
    "comments": 0,
    "created_at": "2020-01-01T00:00:00Z",
    "updated_at": "2020-01-01T00:00:00Z",
}

STRIPE_BALANCE = {
    "object": "balance",
    "available": [{"amount": 1234, "currency": "usd", "source_types": {"card": 1234}}],
    "connect_reserved": [{"amount": 0, "currency": "usd"}],
    "livemode": False,
    "pending": [{"amount": 0, "currency": "usd", "source_types": {"card": 0}}],
}


REFUND_COUNT = [0]


def stripe_refund(body: bytes) -> dict:
    """A refund object for a form-encoded POST /v1/refunds (ids numbered in order)."""
    from urllib.parse import parse_qs
    form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
    with RECORD_LOCK:
        REFUND_COUNT[0] += 1
        n = REFUND_COUNT[0]
    return {"id": f"re_e2e{n:04d}", "object": "refund", "amount": int(form.get("amount", "0") or 0),
            "charge": form.get("charge"), "currency": "usd", "status": "succeeded",
            "created": int(time.time()), "metadata": {}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-upstream/1"
    timeout = 60  # idle keep-alive connections

    def log_message(self, fmt, *args):  # keep the test output quiet
        if os.environ.get("FAKE_UPSTREAM_VERBOSE"):
            sys.stderr.write("fake-upstream: " + (fmt % args) + "\n")

    # -- request plumbing -------------------------------------------------
    def _read_body(self) -> bytes:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = b""
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until the blank line
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        host = (self.headers.get("Host") or "").strip()
        hostname = host.rsplit(":", 1)[0] if not host.startswith("[") else host
        sni = getattr(self.connection, "e2e_sni", None)
        entry = {
            "scheme": "https" if isinstance(self.connection, ssl.SSLSocket) else "http",
            "sni": sni,
            "host": hostname.lower(),
            "method": self.command,
            "path": self.path,
            "version": self.request_version,
            "headers": [[k.lower(), v] for k, v in self.headers.items()],
            "body": body.decode("utf-8", "replace"),
        }
        record(entry)
        self._route(entry, body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle

    # -- responses --------------------------------------------------------
    def _json(self, obj, status: int = 200, extra_headers=None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _sse(self, events) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        first = True
        for ev in events:
            if not first:
                time.sleep(EVENT_GAP)
            first = False
            chunk = ev.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _route(self, entry: dict, body: bytes) -> None:
        host, method = entry["host"], self.command
        path = self.path.split("?", 1)[0]
        try:
            req = json.loads(body) if body and body[:1] in (b"{", b"[") else {}
        except ValueError:
            req = {}
        model = req.get("model", "e2e-model") if isinstance(req, dict) else "e2e-model"
        stream = isinstance(req, dict) and req.get("stream") is True

        if path == "/e2e/echo-headers":
            # Echoes every header value back: clavis must scrub the injected credential.
            return self._json({"headers": entry["headers"]})
        if host == "api.openai.com":
            if method == "POST" and path == "/v1/chat/completions":
                if stream:
                    options = req.get("stream_options") or {}
                    usage = isinstance(options, dict) and options.get("include_usage") is True
                    return self._sse([f"data: {json.dumps(c)}\n\n" for c in openai_chunks(model, usage)]
                                     + ["data: [DONE]\n\n"])
                return self._json(openai_completion(model))
            if method == "GET" and path == "/v1/models":
                return self._json({"object": "list", "data": [
                    {"id": "gpt-e2e", "object": "model", "created": 1700000000, "owned_by": "e2e"}]})
        if host == "api.anthropic.com":
            if method == "POST" and path == "/v1/messages":
                if stream:
                    return self._sse([f"event: {name}\ndata: {json.dumps(d)}\n\n"
                                      for name, d in anthropic_events(model)])
                return self._json(anthropic_message(model), extra_headers={"request-id": "req_e2e"})
        if host == "api.github.com" and method == "GET" and path == "/user":
            return self._json(GITHUB_USER, extra_headers={"X-OAuth-Scopes": "repo",
                                                          "X-GitHub-Api-Version-Selected": "2022-11-28"})
        if host == "api.github.com" and method == "GET" and path == "/repos/acme/web":
            return self._json(GITHUB_REPO)
        if host == "api.github.com" and method == "GET" and path == "/repos/acme/web/issues/3":
            return self._json(GITHUB_ISSUE)
        if host == "api.github.com" and method == "POST" and path == "/repos/acme/web/issues/3/comments":
            text = req.get("body", "") if isinstance(req, dict) else ""
            return self._json({"id": 77, "node_id": "MDEyOklzc3VlQ29tbWVudDc3", "body": text,
                               "url": "https://api.github.com/repos/acme/web/issues/comments/77",
                               "html_url": "https://github.com/acme/web/issues/3#issuecomment-77",
                               "issue_url": "https://api.github.com/repos/acme/web/issues/3",
                               "user": {"login": "e2e-octocat", "id": 4242, "type": "User"},
                               "created_at": "2020-01-01T00:00:00Z", "updated_at": "2020-01-01T00:00:00Z"},
                              status=201)
        if host == "api.github.com" and method == "DELETE" and path == "/repos/acme/web":
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if host == "api.stripe.com" and method == "GET" and path == "/v1/balance":
            return self._json(STRIPE_BALANCE, extra_headers={"Request-Id": "req_e2e"})
        if host == "api.stripe.com" and method == "POST" and path == "/v1/refunds":
            return self._json(stripe_refund(body), extra_headers={"Request-Id": "req_e2e_refund"})
        return self._json({"echo": True, "host": host, "method": method, "path": self.path,
                           "scheme": entry["scheme"]})


class TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # a proxy's burst of new connections is not refused

    def __init__(self, addr, handler, ctx: ssl.SSLContext):
        super().__init__(addr, handler)
        self.ctx = ctx

    def finish_request(self, request, client_address):
        # The handshake runs in the connection's own thread, never in accept().
        request.settimeout(30)
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            sys.stderr.write(f"fake-upstream: TLS handshake failed from {client_address}: {e}\n")
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass


class PlainServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


def main() -> int:
    global RECORD_PATH
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--record", required=True)
    ap.add_argument("--ready-file", required=True)
    args = ap.parse_args()
    RECORD_PATH = args.record
    open(RECORD_PATH, "a").close()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["http/1.1"])

    def on_sni(sslobj, name, _ctx):
        try:
            sslobj.e2e_sni = name
        except AttributeError:
            pass

    ctx.sni_callback = on_sni

    tls_srv = TLSServer(("127.0.0.1", 0), Handler, ctx)
    plain_srv = PlainServer(("127.0.0.1", 0), Handler)
    for srv in (tls_srv, plain_srv):
        threading.Thread(target=srv.serve_forever, daemon=True).start()

    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"tls_port": tls_srv.server_address[1], "plain_port": plain_srv.server_address[1]}, f)
    os.replace(tmp, args.ready_file)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
