#!/usr/bin/env python3
"""A stand-in for clavis's admin port, for developing and testing the console.

Python stdlib only. Serves assets/console/ at /console with the security
headers clavis sends, and the admin routes the console calls, from memory:

  GET  /v1/approvals?status=pending|approved|denied|expired|used   (no status: all)
  GET  /v1/approvals/{id}
  POST /v1/approvals/{id}/approve  {"reason"?}     409 not pending, 404 unknown
  POST /v1/approvals/{id}/deny     {"reason"}      422 without a reason
  GET  /v1/audit?limit=N
  GET  /v1/audit/stream            text/event-stream, chunked, keep-alive comments
  GET  /v1/services, /v1/agents, /v1/budgets

Test hooks (no token needed; this is a mock):

  POST /_test/approval      {agent, service, method, url, rule, body_preview, ttl_s}
                            -> 201 the record; also emits approval_requested
  POST /_test/audit         an audit event (time defaults to now) -> 202 the event
  POST /_test/sse_raw       {"data": "...", "cuts"?: [byte offsets]}: raw text written
                            to every open stream, cut into chunks there
  POST /_test/drop_streams  closes every open stream -> {"dropped": n}

SSE writes are cut into a few chunks at random byte offsets (also inside UTF-8
sequences), so the console's parser meets chunk boundaries everywhere.

Usage: mock_admin.py [--port 0] [--token T] [--keepalive 15] [--assets DIR]
       (token also from CLAVIS_ADMIN_TOKEN, assets from CONSOLE_ASSETS). Prints "LISTENING <port>" when ready.
"""
import argparse
import hashlib
import hmac
import json
import os
import queue
import random
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ASSETS = Path(__file__).resolve().parent.parent.parent / "assets" / "console"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
ASSET_ROUTES = {
    "/console": ("index.html", "text/html; charset=utf-8"),
    "/console/": ("index.html", "text/html; charset=utf-8"),
    "/console/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console/console.css": ("console.css", "text/css; charset=utf-8"),
    "/console/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
STATUSES = ("pending", "approved", "denied", "expired", "used")


def now():
    return datetime.now(timezone.utc)


def rfc3339(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


class Store:
    def __init__(self):
        self.lock = threading.Lock()
        self.approvals = {}  # id -> record (dicts keep insertion order: oldest first)
        self.expiry = {}  # id -> datetime
        self.audit = []  # oldest first
        self.streams = set()  # queue.Queue per open stream
        self.seq = 0
        t = now()
        self.services = [
            {"id": "svc_01", "name": "openai", "connector_name": "openai", "created_at": rfc3339(t - timedelta(days=9)),
             "has_credentials": True, "validated_at": rfc3339(t - timedelta(days=2)), "default": True,
             "origin": "config", "hosts": ["api.openai.com"]},
            {"id": "svc_02", "name": "stripe", "connector_name": "stripe", "created_at": rfc3339(t - timedelta(days=5)),
             "has_credentials": True, "validated_at": None, "default": True, "origin": "api", "hosts": ["api.stripe.com"]},
            {"id": "svc_03", "name": "github-work", "connector_name": "github", "created_at": rfc3339(t - timedelta(days=1)),
             "has_credentials": False, "validated_at": None, "default": False, "origin": "api",
             "hosts": ["api.github.com", "github.com", "codeload.github.com"]},
        ]
        self.agents = [
            {"name": "codex", "services": ["openai", "stripe", "github-work"], "reveal": False,
             "policies": {"stripe": "refunds-need-approval", "github-work": "read-only"}},
            {"name": "ops-bot", "services": ["*"], "reveal": True, "policies": {}},
        ]
        day_end = (t + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        self.budgets = [
            {"name": "codex-llm", "agent": "codex", "service": "openai", "window": "1d", "unit": "tokens",
             "limit": 2000000, "used": 1312400, "reserved": 64000, "resets_at": rfc3339(day_end)},
            {"name": "codex-refund", "agent": "codex", "service": "stripe", "window": "1d", "unit": "spend",
             "limit": 20000, "used": 18950, "reserved": 0, "resets_at": rfc3339(day_end)},
            {"name": "shared-gh", "agent": None, "service": "github-work", "window": None, "unit": "requests",
             "limit": 20, "used": 3, "reserved": 1, "resets_at": None},
        ]

    # -- audit
    def emit(self, event):
        event.setdefault("time", rfc3339(now()))
        event.setdefault("entry", "")
        event.setdefault("actor", "admin")
        event.setdefault("detail", {})
        with self.lock:
            self.seq += 1
            event.setdefault("id", self.seq)  # as clavis: the SSE id, also in GET /v1/audit
            self.audit.append(event)
            del self.audit[:-5000]
            streams = list(self.streams)
        frame = f"id: {event['id']}\nevent: audit\ndata: " + json.dumps(event, separators=(",", ":")) + "\n\n"
        for q in streams:
            q.put(frame)
        return event

    def raw(self, text, cuts=None):
        with self.lock:
            streams = list(self.streams)
        for q in streams:
            q.put((text, cuts))
        return len(streams)

    def drop(self):
        with self.lock:
            streams = list(self.streams)
        for q in streams:
            q.put(None)
        return len(streams)

    # -- approvals
    def create(self, spec):
        t = now()
        body = spec.get("body_preview", "")
        rec = {
            "id": "apv_" + uuid.uuid4().hex[:20],
            "status": "pending",
            "agent": spec.get("agent", "codex"),
            "service": spec.get("service", "stripe"),
            "method": spec.get("method", "POST"),
            "url": spec.get("url", "https://api.stripe.com/v1/refunds"),
            "policy": spec.get("policy", "refunds-need-approval"),
            "rule": spec.get("rule", "approve POST /v1/refunds"),
            "body_sha256": hashlib.sha256(body.encode()).hexdigest(),
            "body_preview": body,
            "created_at": rfc3339(t),
            "expires_at": rfc3339(t + timedelta(seconds=float(spec.get("ttl_s", 900)))),
            "decided_at": None,
            "decided_by": None,
            "reason": None,
        }
        with self.lock:
            self.approvals[rec["id"]] = rec
            self.expiry[rec["id"]] = t + timedelta(seconds=float(spec.get("ttl_s", 900)))
        u = urlsplit(rec["url"])
        self.emit({"action": "approval_requested", "entry": rec["service"], "actor": "proxy:" + rec["agent"],
                   "detail": {"method": rec["method"], "host": u.hostname or "", "path": u.path or "/",
                              "note": f"approval {rec['id']} ({rec['rule']})"}})
        return dict(rec)

    def decide(self, aid, action, reason):
        with self.lock:
            rec = self.approvals.get(aid)
            if rec is None:
                return 404, None
            if rec["status"] != "pending":
                return 409, dict(rec)
            rec["status"] = "approved" if action == "approve" else "denied"
            rec["decided_at"] = rfc3339(now())
            rec["decided_by"] = "admin"
            rec["reason"] = reason
            out = dict(rec)
        self.emit({"action": "approval_granted" if action == "approve" else "approval_denied",
                   "entry": out["service"], "actor": "admin",
                   "detail": {"method": out["method"], "note": f"approval {aid}" + (f": {reason}" if reason else "")}})
        return 200, out

    def expire_due(self):
        t = now()
        expired = []
        with self.lock:
            for aid, rec in self.approvals.items():
                if rec["status"] == "pending" and self.expiry[aid] <= t:
                    rec["status"] = "expired"
                    expired.append(dict(rec))
        for rec in expired:
            self.emit({"action": "approval_expired", "entry": rec["service"], "actor": "clavis",
                       "detail": {"note": f"approval {rec['id']}"}})

    def list(self, status):
        with self.lock:
            recs = [dict(r) for r in self.approvals.values() if status is None or r["status"] == status]
        return recs[::-1]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "clavis-mock"
    store: Store = None
    token = ""
    keepalive = 15.0
    assets = ASSETS

    def log_message(self, fmt, *args):
        if os.environ.get("MOCK_VERBOSE"):
            sys.stderr.write("mock: " + fmt % args + "\n")

    # -- responses
    def send(self, status, body=b"", ctype="application/json", extra=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        self.send_response(status)
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        if body or status not in (204, 304):
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def error(self, status, kind, message, extra=None):
        self.send(status, {"error": {"type": "clavis_" + kind, "message": message}}, extra=extra)

    def body_json(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if not raw:
            return {}
        return json.loads(raw)

    def authorized(self):
        got = self.headers.get("Authorization", "")
        ok = got.startswith("Bearer ") and hmac.compare_digest(got[7:].encode(), self.token.encode())
        if not ok:
            self.store.emit({"action": "denied", "entry": "", "actor": "unknown",
                             "detail": {"method": self.command, "path": urlsplit(self.path).path, "status": 401,
                                        "note": "wrong or missing admin token"}})
            self.error(401, "unauthorized", "wrong or missing admin token")
        return ok

    # -- routing
    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urlsplit(self.path)
        path, qs = url.path, parse_qs(url.query)
        if path in ASSET_ROUTES:
            name, ctype = ASSET_ROUTES[path]
            return self.send(200, (self.assets / name).read_bytes(), ctype)
        if path == "/healthz":
            return self.send(200, {"status": "ok"})
        if not path.startswith("/v1/"):
            return self.error(404, "not_found", "no such route")
        if not self.authorized():
            return None
        if path == "/v1/approvals":
            status = qs.get("status", [None])[0]
            if status is not None and status not in STATUSES:
                return self.error(422, "invalid_request", "status: expected one of " + "|".join(STATUSES))
            return self.send(200, self.store.list(status))
        if path.startswith("/v1/approvals/") and path.count("/") == 3:
            rec = self.store.approvals.get(path.rsplit("/", 1)[1])
            return self.send(200, rec) if rec else self.error(404, "not_found", "no such approval")
        if path == "/v1/audit":
            try:
                limit = max(1, min(1000, int(qs.get("limit", ["100"])[0])))
            except ValueError:
                return self.error(422, "invalid_request", "limit: expected an integer")
            with self.store.lock:
                return self.send(200, self.store.audit[::-1][:limit])
        if path == "/v1/audit/stream":
            return self.stream()
        if path == "/v1/services":
            return self.send(200, self.store.services)
        if path == "/v1/agents":
            return self.send(200, self.store.agents)
        if path == "/v1/budgets":
            return self.send(200, self.store.budgets)
        return self.error(404, "not_found", "no such route")

    def do_POST(self):
        path = urlsplit(self.path).path
        try:
            body = self.body_json()
        except (ValueError, UnicodeDecodeError):
            return self.error(400, "invalid_json", "the body is not JSON")
        if path.startswith("/_test/"):
            return self.test_hook(path, body)
        if not self.authorized():
            return None
        parts = path.strip("/").split("/")
        if len(parts) == 4 and parts[:2] == ["v1", "approvals"] and parts[3] in ("approve", "deny"):
            if not isinstance(body, dict):
                return self.error(422, "invalid_request", "expected a JSON object")
            unknown = [k for k in body if k != "reason"]
            if unknown:
                return self.error(422, "invalid_request", f"unknown field: {unknown[0]}")
            reason = body.get("reason")
            if reason is not None and not isinstance(reason, str):
                return self.error(422, "invalid_request", "reason: expected a string")
            if parts[3] == "deny" and not (reason or "").strip():
                return self.error(422, "invalid_request", "reason: required to deny")
            status, rec = self.store.decide(parts[2], parts[3], reason or None)
            if status == 404:
                return self.error(404, "not_found", "no such approval")
            if status == 409:
                return self.error(409, "conflict", f"approval is {rec['status']}, no longer pending")
            return self.send(200, rec)
        return self.error(404, "not_found", "no such route")

    def test_hook(self, path, body):
        if path == "/_test/approval":
            return self.send(201, self.store.create(body))
        if path == "/_test/audit":
            return self.send(202, self.store.emit(dict(body)))
        if path == "/_test/sse_raw":
            return self.send(202, {"streams": self.store.raw(body.get("data", ""), body.get("cuts"))})
        if path == "/_test/drop_streams":
            return self.send(200, {"dropped": self.store.drop()})
        return self.error(404, "not_found", "no such hook")

    # -- Server-Sent Events, chunked
    def chunk(self, data: bytes):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def stream(self):
        self.send_response(200)
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        q = queue.Queue()
        with self.store.lock:
            self.store.streams.add(q)
        try:
            self.chunk(b": connected\n\n")
            while True:
                try:
                    item = q.get(timeout=self.keepalive)
                except queue.Empty:
                    self.chunk(b": keep-alive\n\n")
                    continue
                if item is None:
                    break
                text, cuts = item if isinstance(item, tuple) else (item, None)
                data = text.encode()
                if cuts is None:
                    cuts = random.sample(range(1, len(data)), min(2, len(data) - 1)) if len(data) > 1 else []
                cuts = sorted({c for c in cuts if 0 < c < len(data)})
                for a, b in zip([0] + cuts, cuts + [len(data)]):
                    self.chunk(data[a:b])
                    time.sleep(0.01)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        finally:
            with self.store.lock:
                self.store.streams.discard(q)
            self.close_connection = True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--token", default=os.environ.get("CLAVIS_ADMIN_TOKEN", ""))
    ap.add_argument("--keepalive", type=float, default=15.0, help="seconds between keep-alive comments")
    ap.add_argument("--assets", default=os.environ.get("CONSOLE_ASSETS", str(ASSETS)), help="the console's files")
    args = ap.parse_args()
    Handler.assets = Path(args.assets)
    if not args.token:
        ap.error("an admin token is needed: --token or CLAVIS_ADMIN_TOKEN")
    store = Store()
    Handler.store, Handler.token, Handler.keepalive = store, args.token, args.keepalive
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True

    def expirer():
        while True:
            time.sleep(0.5)
            store.expire_due()

    threading.Thread(target=expirer, daemon=True).start()
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
