"""console_test.py's driver for a real clavis (tests/e2e_console/run.sh).

What the mock does with test hooks, this does with real actions:

  create_approval  sends the request through the proxy port as the agent, in a
                   background thread (an `approve` rule holds it), and returns
                   the id of the approval clavis made for it;
  held_result      that request's answer once it is decided (or its hold ends);
  push_audit       sends a GET through the proxy (every use of a credential is
                   audited) to the event's host and path, the note appended as
                   a last segment when it is a plain token; a note with
                   markup becomes the reason of a denial (an approval made
                   and denied), as an operator may type it; returns the
                   event as clavis streamed it on GET /v1/audit/stream;
  drop_streams     cuts the console's audit stream (tests/e2e_console/forward.py
                   stands between the browser and the admin port).

Environment (run.sh sets it): CLAVIS_ADMIN_URL (the admin port itself, not
the forwarder), CLAVIS_PROXY (host:port), CLAVIS_AGENT (name:token),
CLAVIS_CA_BUNDLE, FORWARD_PID.
"""
import base64
import hashlib
import http.client
import json
import os
import re
import signal
import ssl
import threading
import time
import urllib.request
from urllib.parse import quote, unquote, urlsplit

from console_test import ApiDriver

# The placeholder each connector's SDK would send (clavis strips it).
PLACEHOLDERS = {
    "api.stripe.com": ("Authorization", "Bearer sk_test_placeholder"),
    "api.github.com": ("Authorization", "token placeholder"),
    "api.openai.com": ("Authorization", "Bearer placeholder"),
}
# What a request-target may hold as it is (RFC 3986; clavis, like any HTTP
# server, refuses a literal "<" with 400); the rest is percent-encoded, as
# every client does. Markup from an agent reaches the console in bodies.
SAFE = "/?&=:;,+$@!*'()[]%~-._"


class ClavisDriver(ApiDriver):
    supports_raw_sse = False
    supports_drop_streams = True
    cuts_streams_abruptly = True  # forward.py drops the TCP connection mid-body

    def __init__(self, base_url, token):
        super().__init__(base_url, token)
        self.admin = os.environ["CLAVIS_ADMIN_URL"].rstrip("/")
        host, port = os.environ["CLAVIS_PROXY"].rsplit(":", 1)
        self.proxy = (host, int(port))
        self.proxy_auth = "Basic " + base64.b64encode(os.environ["CLAVIS_AGENT"].encode()).decode()
        self.tls = ssl.create_default_context(cafile=os.environ["CLAVIS_CA_BUNDLE"])
        self.held = {}  # approval id -> (thread, result dict)
        self.known = set()
        self.agents_route = None

    # ---------------------------------------------------------------- the agent
    def send(self, method, url, body, timeout=120):
        """One request through the proxy: {"status", "headers", "body"}."""
        u = urlsplit(url)
        target = quote(u.path or "/", safe=SAFE) + ("?" + quote(u.query, safe=SAFE) if u.query else "")
        conn = http.client.HTTPSConnection(*self.proxy, context=self.tls, timeout=timeout)
        conn.set_tunnel(u.hostname, 443, headers={"Proxy-Authorization": self.proxy_auth})
        name, value = PLACEHOLDERS.get(u.hostname, ("Authorization", "Bearer placeholder"))
        headers = {name: value}
        if body:
            headers["Content-Type"] = ("application/json" if body.lstrip().startswith("{")
                                       else "application/x-www-form-urlencoded")
        try:
            conn.request(method, target, body=body.encode() if body else None, headers=headers)
            res = conn.getresponse()
            return {"status": res.status, "headers": {k.lower(): v for k, v in res.getheaders()},
                    "body": res.read().decode(errors="replace"), "target": target}
        finally:
            conn.close()

    def admin_get(self, path):
        req = urllib.request.Request(self.admin + path, headers={"Authorization": "Bearer " + self.token})
        with urllib.request.urlopen(req, timeout=10) as res:
            return json.loads(res.read())

    def create_approval(self, **fields):
        method, url, body = fields["method"], fields["url"], fields.get("body_preview", "")
        result = {}

        def run():
            try:
                result.update(self.send(method, url, body))
            except Exception as e:  # noqa: BLE001 - reported by held_result
                result["error"] = repr(e)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        digest = hashlib.sha256(body.encode()).hexdigest()
        path = unquote(urlsplit(url).path)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for rec in self.admin_get("/v1/approvals?status=pending"):
                if (rec["id"] not in self.known and rec["method"] == method and rec["body_sha256"] == digest
                        and unquote(urlsplit(rec["url"]).path) == path):
                    self.known.add(rec["id"])
                    self.held[rec["id"]] = (thread, result)
                    return rec["id"]
            if not thread.is_alive():
                raise AssertionError(f"{method} {url} was answered, not held: {result}")
            time.sleep(0.05)
        raise AssertionError(f"no pending approval for {method} {url} within 20 s")

    def held_result(self, aid, timeout=20):
        thread, result = self.held[aid]
        thread.join(timeout)
        assert not thread.is_alive(), f"the request held on {aid} is still waiting after {timeout} s"
        assert "error" not in result, result
        return result

    # ---------------------------------------------------------------- audit
    def push_audit(self, event):
        detail = event.get("detail") or {}
        host = detail.get("host") or "api.openai.com"
        path = detail.get("path") or "/"
        note = detail.get("note") or ""
        if note and not re.fullmatch(r"[\w.-]+", note):
            return self.denial_event(host, path, note)
        if note:
            path = path.rstrip("/") + "/" + note
        url = "https://" + host + path
        want = unquote(quote(path, safe=SAFE))
        return self.streamed(lambda ev: unquote(ev.get("detail", {}).get("path", "")) == want,
                             lambda: self.expect_status(self.send("GET", url, "", timeout=30), 200, url))

    def denial_event(self, host, path, reason):
        """An approval for POST host+path, denied with `reason`: its audit event."""
        aid = self.create_approval(method="POST", url="https://" + host + path, body_preview="amount=1")

        def deny():
            status, _, out = self.call("POST", f"/v1/approvals/{aid}/deny", {"reason": reason})
            assert status == 200, (status, out)

        ev = self.streamed(lambda e: e.get("action") == "approval_denied" and aid in e["detail"].get("note", ""),
                           deny)
        self.expect_status(self.held_result(aid), 403, path)
        return ev

    @staticmethod
    def expect_status(answer, status, what):
        assert answer["status"] == status, f"{what}: {answer}"

    def streamed(self, match, action):
        """Runs `action` while reading GET /v1/audit/stream; the first event that matches."""
        got, ready = [], threading.Event()

        def listen():
            req = urllib.request.Request(self.admin + "/v1/audit/stream",
                                         headers={"Authorization": "Bearer " + self.token})
            with urllib.request.urlopen(req, timeout=15) as res:
                data = []
                for raw in res:
                    line = raw.decode(errors="replace").rstrip("\r\n")
                    if line.startswith(": connected"):
                        ready.set()
                    elif line.startswith("data:"):
                        data.append(line[5:].lstrip())
                    elif line == "" and data:
                        ev = json.loads("\n".join(data))
                        data = []
                        if match(ev):
                            got.append(ev)
                            return

        thread = threading.Thread(target=listen, daemon=True)
        thread.start()
        assert ready.wait(10), "the audit stream did not open"
        action()
        thread.join(10)
        assert got, "the expected audit event did not come on the stream"
        return got[0]

    # ---------------------------------------------------------------- streams
    def drop_streams(self):
        os.kill(int(os.environ["FORWARD_PID"]), signal.SIGUSR1)
