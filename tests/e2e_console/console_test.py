#!/usr/bin/env python3
"""Browser test of the clavis console (GET /console on the admin port).

Playwright for Python (sync API) driving Debian's Chromium. Backend-neutral:
everything goes through the page and the public admin API, except what only
the backend can do, which a *driver* provides:

  create_approval(agent, service, method, url, body_preview) -> id
      make a pending approval (real clavis: send a request that meets an
      `approve` rule through the proxy, in the background);
  push_audit(event) -> the audit event as the backend recorded it
      (real clavis: perform an audited action that carries event["detail"]);
  approval(id) -> the record (default: GET /v1/approvals/{id});
  held_result(id) -> {"status", "headers", "body"} (optional: real clavis) the
      answer of the request held on approval id, once decided;
  supports_raw_sse, push_raw_sse(text, cuts)  (optional: mock only; cuts are
      byte offsets where the stream is cut into separate chunks);
  supports_drop_streams, drop_streams()  (optional: cut the open audit streams).

Drivers: "mock" (mock_admin.py's hooks, dev.sh) and clavis_driver.py:ClavisDriver
(real clavis, run.sh). A check that needs what a driver lacks is reported
"N/A" and not run (the mock pass of run.sh runs those); a check that raises
SkipCheck is a failure under CI=true, where nothing may go unchecked.

  console_test.py --base-url http://127.0.0.1:PORT --token TOKEN \
                  [--driver mock | path/to/driver.py:ClassName] [--out DIR]

ClassName(base_url, token) is the driver. Prints PASS/FAIL per check and ends
with "N passed, M failed"; exits 1 on any failure. Screenshots go to --out
(default: a new temp dir), printed at the end.
"""
import argparse
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
import uuid
from urllib.parse import urlsplit

from playwright.sync_api import expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAYLOAD_SCRIPT = "<script>window.__pwned=1</script>"
PAYLOAD_IMG = '<img src=x onerror="window.__pwned=1">'
CSP_DIRECTIVES = {
    "default-src": "'self'", "script-src": "'self'", "style-src": "'self'", "img-src": "'self'",
    "connect-src": "'self'", "frame-ancestors": "'none'", "base-uri": "'none'", "form-action": "'none'",
}
# Collects CSP violations in every document (init scripts run outside the page's CSP).
INIT_SCRIPT = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));
"""


# ------------------------------------------------------------------ drivers
class ApiDriver:
    """The parts any backend shares: reading through the admin API."""

    supports_raw_sse = False
    supports_drop_streams = False

    def __init__(self, base_url, token):
        self.base = base_url.rstrip("/")
        self.token = token

    def call(self, method, path, body=None, auth=True):
        req = urllib.request.Request(self.base + path, method=method)
        if auth:
            req.add_header("Authorization", "Bearer " + self.token)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, data=data, timeout=10) as res:
                return res.status, dict(res.headers), self.parse(res.read(), res.headers)
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), self.parse(e.read(), e.headers)

    @staticmethod
    def parse(raw, headers):
        if "json" in (headers.get("Content-Type") or ""):
            return json.loads(raw) if raw else None
        return raw.decode(errors="replace")

    def approval(self, aid):
        status, _, rec = self.call("GET", "/v1/approvals/" + aid)
        assert status == 200, f"GET /v1/approvals/{aid}: {status} {rec}"
        return rec

    def create_approval(self, **fields):
        raise NotImplementedError

    def push_audit(self, event):
        raise NotImplementedError

    def push_raw_sse(self, text, cuts=None):
        raise NotImplementedError

    def drop_streams(self):
        raise NotImplementedError


class MockDriver(ApiDriver):
    """tests/e2e_console/mock_admin.py's /_test hooks."""

    supports_raw_sse = True
    supports_drop_streams = True

    def hook(self, path, body):
        status, _, out = self.call("POST", path, body, auth=False)
        assert status < 300, f"{path}: {status} {out}"
        return out

    def create_approval(self, **fields):
        return self.hook("/_test/approval", fields)["id"]

    def push_audit(self, event):
        return self.hook("/_test/audit", event)

    def push_raw_sse(self, text, cuts=None):
        return self.hook("/_test/sse_raw", {"data": text, "cuts": cuts})

    def drop_streams(self):
        return self.hook("/_test/drop_streams", {})


def load_driver(spec, base, token):
    if spec == "mock":
        return MockDriver(base, token)
    path, _, cls = spec.rpartition(":")
    mod_spec = importlib.util.spec_from_file_location("console_driver", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return getattr(mod, cls)(base, token)


# ------------------------------------------------------------------ results
class SkipCheck(Exception):
    """Raised by a check the driver cannot support."""


class Results:
    def __init__(self):
        self.passed, self.failed, self.skipped, self.failures = 0, 0, 0, []

    def check(self, name, fn, *args):
        try:
            fn(*args)
        except SkipCheck as e:
            if in_ci():
                self.failed += 1
                self.failures.append(name)
                print(f"FAIL  {name}")
                print(f"      skipped under CI=true, which must run every check: {e}")
                return False
            self.skipped += 1
            print(f"SKIP  {name}")
            return True
        except Exception as e:  # noqa: BLE001 - any failure is a failed check
            self.failed += 1
            self.failures.append(name)
            print(f"FAIL  {name}")
            detail = "".join(traceback.format_exception_only(type(e), e)).strip()
            for line in detail[:1500].splitlines()[:25]:
                print("      " + line)
            if os.environ.get("E2E_VERBOSE"):
                traceback.print_exc()
            return False
        self.passed += 1
        print(f"PASS  {name}")
        return True


def in_ci():
    ci = os.environ.get("CI", "")
    return ci not in ("", "false", "0")


def css_str(s):
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def wait_for(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


# ------------------------------------------------------------------ the test
class ConsoleTest:
    def __init__(self, base, token, driver, out):
        self.base, self.token, self.driver, self.out = base.rstrip("/"), token, driver, out
        self.origin = "{0.scheme}://{0.netloc}".format(urlsplit(self.base))
        self.r = Results()
        self.requests, self.bad_auth, self.console, self.page_errors = [], [], [], []
        self.screenshots = []
        self.agents_missing = False
        self.streams_cut = False
        self.live_mark = None

    # -------------------------------------------------------------- helpers
    def card(self, aid):
        return self.page.locator(f"article.approval[data-approval-id={css_str(aid)}]")

    def tab(self, name):
        self.page.locator(f'#nav button[data-view="{name}"]').click()
        expect(self.page.locator(f"#view-{name}")).to_be_visible()

    def marker(self):
        return self.page.evaluate("window.__sameDocument")

    def new_approval(self, **fields):
        base = {"agent": "codex", "service": "stripe", "method": "POST",
                "url": "https://api.stripe.com/v1/refunds",
                "body_preview": '{"charge": "ch_3Nx", "amount": 1200, "reason": "requested_by_customer"}'}
        base.update(fields)
        aid = self.driver.create_approval(**base)
        return aid, self.driver.approval(aid)

    def shot(self, name):
        path = os.path.join(self.out, name + ".png")
        self.page.screenshot(path=path, full_page=True)
        self.screenshots.append(path)

    # -------------------------------------------------------------- checks
    def check_headers(self):
        status, headers, _ = self.driver.call("GET", "/console", auth=False)
        h = {k.lower(): v for k, v in headers.items()}
        assert status == 200, status
        assert "text/html" in h.get("content-type", ""), h.get("content-type")
        csp = h.get("content-security-policy")
        assert csp, "no Content-Security-Policy header"
        got = {}
        for part in csp.split(";"):
            words = part.split()
            if words:
                got[words[0].lower()] = " ".join(words[1:])
        for k, v in CSP_DIRECTIVES.items():
            assert got.get(k) == v, f"CSP {k}: {got.get(k)!r}, want {v!r} (CSP: {csp})"
        assert h.get("x-frame-options", "").upper() == "DENY", h.get("x-frame-options")
        assert h.get("x-content-type-options", "").lower() == "nosniff"
        assert h.get("referrer-policy", "").lower() == "no-referrer"
        assert "no-store" in h.get("cache-control", "")
        for path, ctype in (("/console/console.js", "javascript"), ("/console/console.css", "text/css")):
            s, hh, _ = self.driver.call("GET", path, auth=False)
            hh = {k.lower(): v for k, v in hh.items()}
            assert s == 200 and ctype in hh.get("content-type", ""), (path, s, hh.get("content-type"))
            assert hh.get("content-security-policy"), path + " without CSP"

    def check_wrong_token(self):
        p = self.page
        p.goto(self.base + "/console")
        expect(p.locator("#signin-form")).to_be_visible()
        p.fill("#token", "not-the-" + self.token)
        p.click("#signin-form button[type=submit]")
        expect(p.locator("#signin-msg")).to_contain_text("Wrong token")
        expect(p.locator("#nav")).to_be_hidden()
        expect(p.locator("#view-approvals")).to_be_hidden()
        assert p.evaluate("sessionStorage.length") == 0, "a refused token was kept"
        self.shot("signin-1280")

    def check_sign_in(self):
        p = self.page
        p.fill("#token", self.token)
        p.click("#signin-form button[type=submit]")
        expect(p.locator("#view-approvals")).to_be_visible()
        expect(p.locator("#nav")).to_be_visible()
        assert p.evaluate("Object.values(sessionStorage)") == [self.token]
        assert p.evaluate("localStorage.length") == 0, "something went to localStorage"
        assert p.evaluate("document.cookie") == "" and self.context.cookies() == [], "cookies were set"
        assert p.input_value("#token") == "", "the token stays in the input"
        p.evaluate("window.__sameDocument = 'yes'")

    def check_live_approval_and_approve(self):
        aid, rec = self.new_approval()
        t0 = time.monotonic()
        card = self.card(aid)
        expect(card).to_be_visible(timeout=12000)
        appeared = time.monotonic() - t0
        assert self.marker() == "yes", "the page reloaded"
        # The approval_requested audit event should bring it in at once; the 5 s poll is only the fallback.
        assert appeared < 4.5, f"took {appeared:.1f} s: the audit stream did not trigger a refresh"
        for text in (rec["agent"], rec["service"], rec["method"], rec["url"], rec["rule"], rec["body_sha256"][:12]):
            expect(card).to_contain_text(text)
        assert card.locator("pre").inner_text() == rec["body_preview"]
        expect(card.locator(".countdown")).to_have_text(re.compile(r"^\(in (\d+h )?\d+m \d\ds\)$"))
        expect(self.page.locator("#announcer")).to_contain_text(rec["url"])
        expect(self.page.locator("#pending-count")).not_to_have_text("0")
        card.get_by_role("button", name="Approve").click()
        # Approved; on a real clavis the held request takes it at once (used).
        wait_for(lambda: self.driver.approval(aid)["status"] in ("approved", "used"), 5, "status approved")
        expect(card).to_contain_text("Approved")
        expect(self.page.locator(f"#recent-list li[data-approval-id={css_str(aid)}]")).to_contain_text(
            re.compile("approved|used"))
        held = getattr(self.driver, "held_result", None)
        if held:  # the agent's held request went out and got the upstream's answer
            res = held(aid)
            assert res["status"] == 200, f"the held request got {res['status']}: {res['body'][:300]}"
            assert "clavis-error" not in res["headers"], res["headers"]
            print(f"      (held request answered {res['status']} by the upstream)")
        print(f"      (appeared after {appeared:.1f} s)")

    def check_deny_needs_reason(self):
        aid, _ = self.new_approval(method="DELETE", url="https://api.github.com/repos/acme/site")
        card = self.card(aid)
        expect(card).to_be_visible(timeout=12000)
        card.get_by_role("button", name="Deny").click()
        expect(card.locator(".msg")).to_contain_text("reason is required")
        assert card.locator("input").get_attribute("aria-invalid") == "true"
        time.sleep(0.3)
        assert self.driver.approval(aid)["status"] == "pending", "denied without a reason"
        reason = "Not on a Friday <b>bold</b> & more"
        card.get_by_label(re.compile("Reason")).fill(reason)
        card.get_by_role("button", name="Deny").click()
        wait_for(lambda: self.driver.approval(aid)["status"] == "denied", 5, "status denied")
        rec = self.driver.approval(aid)
        assert rec["reason"] == reason, rec["reason"]
        expect(card.locator(".msg")).to_contain_text("Denied by " + str(rec["decided_by"]) + ": " + reason)
        assert card.locator("b").count() == 0, "the reason became markup"
        expect(self.page.locator(f"#recent-list li[data-approval-id={css_str(aid)}]")).to_contain_text(reason)
        held = getattr(self.driver, "held_result", None)
        if held:  # the agent was told, with the reason
            res = held(aid)
            assert res["status"] == 403 and res["headers"].get("clavis-error") == "approval-denied", res
            assert reason in json.loads(res["body"])["detail"], res["body"][:300]

    def check_conflict_shown(self):
        aid, _ = self.new_approval(url="https://api.stripe.com/v1/payouts")
        card = self.card(aid)
        expect(card).to_be_visible(timeout=12000)
        body = json.dumps({"error": {"type": "clavis_conflict", "message": "approval is approved, no longer pending"}})
        route = lambda route: route.fulfill(status=409, content_type="application/json", body=body)  # noqa: E731
        pattern = re.compile(re.escape(f"/v1/approvals/{aid}/approve") + "$")
        self.page.route(pattern, route)
        try:
            card.get_by_role("button", name="Approve").click()
            expect(card.locator(".msg")).to_contain_text("409")
            expect(card.locator(".msg")).to_contain_text("no longer pending")
        finally:
            self.page.unroute(pattern)
            self.driver.call("POST", f"/v1/approvals/{aid}/deny", {"reason": "test cleanup"})

    def check_decided_elsewhere(self):
        aid, _ = self.new_approval(url="https://api.stripe.com/v1/transfers")
        card = self.card(aid)
        expect(card).to_be_visible(timeout=12000)
        status, _, _ = self.driver.call("POST", f"/v1/approvals/{aid}/approve", {"reason": "from the CLI"})
        assert status == 200, status
        expect(card).to_contain_text("No longer pending", timeout=8000)
        held = getattr(self.driver, "held_result", None)
        if held:
            assert held(aid)["status"] == 200

    def check_markup_is_text(self):
        p = self.page
        url = "https://api.stripe.com/v1/" + PAYLOAD_SCRIPT + "?q=" + PAYLOAD_IMG
        body = "subject=Refund&note=" + PAYLOAD_IMG + "\n  &memo=" + PAYLOAD_SCRIPT
        aid, rec = self.new_approval(agent="agent" + PAYLOAD_IMG, url=url, body_preview=body,
                                     rule="approve " + PAYLOAD_SCRIPT)
        assert PAYLOAD_SCRIPT in rec["body_preview"] and PAYLOAD_IMG in rec["body_preview"], \
            "the backend did not keep the payload in body_preview: " + repr(rec["body_preview"])
        card = self.card(aid)
        expect(card).to_be_visible(timeout=12000)
        assert card.locator("pre").inner_text() == rec["body_preview"]
        expect(card.locator("h3 .url")).to_have_text(rec["url"])
        expect(card).to_contain_text(rec["agent"])
        expect(card).to_contain_text(rec["rule"])
        ev = self.driver.push_audit({"action": "inject", "entry": "stripe" + PAYLOAD_IMG, "actor": "proxy:codex",
                                     "detail": {"method": "POST", "host": "api.stripe.com",
                                                "path": "/v1/" + PAYLOAD_SCRIPT, "status": 200,
                                                "note": "note " + PAYLOAD_IMG}})
        d = ev.get("detail") or {}
        shown = [v for v in (d.get("path"), d.get("note"), ev.get("entry"), ev.get("actor")) if v]
        assert any(PAYLOAD_SCRIPT in v or "<img" in v for v in shown), \
            "the recorded audit event holds no markup to test with: " + json.dumps(ev)
        self.tab("audit")
        row = p.locator("#audit-body tr", has_text=d.get("note") or d["path"]).first
        expect(row).to_be_visible(timeout=10000)
        for text in shown:
            expect(row).to_contain_text(text)
        self.tab("approvals")
        assert p.evaluate("typeof window.__pwned") == "undefined", "window.__pwned was set"
        assert p.locator('img[src="x"]').count() == 0, "an <img> from the data is in the DOM"
        scripts = p.evaluate("[...document.scripts].map(s => s.src)")
        assert scripts == [self.origin + "/console/console.js"], scripts
        self.xss_id = aid

    def check_live_audit(self):
        p = self.page
        self.tab("audit")
        expect(p.locator("#stream-state")).to_have_text("live", timeout=10000)
        mark = self.live_mark = "e2e-" + uuid.uuid4().hex[:8]
        ev = self.driver.push_audit({"action": "inject", "entry": "openai", "actor": "proxy:codex",
                                     "detail": {"method": "POST", "host": "api.openai.com",
                                                "path": "/v1/chat/completions", "status": 200, "note": mark}})
        row = p.locator("#audit-body tr", has_text=mark)
        expect(row).to_have_count(1, timeout=10000)
        d = ev["detail"]
        request = " ".join(str(d[k]) for k in ("method", "host", "path") if d.get(k))
        assert "api.openai.com /v1/chat/completions" in request, ev
        # As recorded: a credential's use is audited (and streamed) before the
        # upstream answers, so a real event may carry no status yet.
        for text in (ev["action"], ev["actor"], ev["entry"], request, str(d.get("status", ""))):
            expect(row).to_contain_text(text)
        expect(p.locator("#audit-body tr").first).to_contain_text(mark)  # newest on top
        # GET /v1/audit history was loaded too (the sign-in attempts, approvals above)
        assert p.locator("#audit-body tr").count() >= 3
        # The approvals decided above are in the log, by action, with who decided.
        for action in ("approval_requested", "approval_granted", "approval_denied"):
            expect(p.locator("#audit-body tr", has_text=action).first).to_be_visible()
        expect(p.locator("#audit-body tr", has_text="approval_denied").first).to_contain_text("admin")

    def check_sse_parser(self):
        p = self.page
        m1, m2, m3 = (uuid.uuid4().hex[:8] for _ in range(3))
        ev = lambda mark: {"time": "2030-01-01T00:00:00Z", "action": "raw", "entry": "svc",  # noqa: E731
                           "actor": "admin", "detail": {"note": mark}}
        j2 = json.dumps(ev("multi-" + m2), indent=1)  # spread over several data: lines
        raw = (": a comment\r\n"
               "event: audit\r\ndata: " + json.dumps(ev("crlf-" + m1)) + "\r\n\r\n"
               "event: audit\n" + "".join("data: " + ln + "\n" for ln in j2.split("\n")) + "\n"
               "event: other\ndata: " + json.dumps(ev("ignored-" + m3)) + "\n\n"
               "event:audit\rdata:" + json.dumps(ev("cr-é€-" + m3), ensure_ascii=False) + "\r\r")
        data = raw.encode()
        # cut between a CR and its LF (a stray LF would end the event early and lose its type),
        # inside a "data:" field name, and inside the UTF-8 of "€"
        cuts = [data.index(b"event: audit\r\n") + 13, data.index(b"data:") + 2, data.index("€".encode()) + 1]
        self.driver.push_raw_sse(raw, cuts)
        for mark in ("crlf-" + m1, "multi-" + m2, "cr-é€-" + m3):
            expect(p.locator("#audit-body tr", has_text=mark)).to_have_count(1, timeout=10000)
        expect(p.locator("#audit-body tr", has_text="ignored-" + m3)).to_have_count(0)

    def check_reconnect(self):
        p = self.page
        self.streams_cut = True
        mark_gap = "gap-" + uuid.uuid4().hex[:8]
        self.driver.drop_streams()
        expect(p.locator("#stream-state")).to_contain_text("reconnecting", timeout=5000)
        self.driver.push_audit({"action": "read", "entry": "openai", "actor": "admin", "detail": {"note": mark_gap}})
        expect(p.locator("#stream-state")).to_have_text("live", timeout=15000)
        expect(p.locator("#audit-body tr", has_text=mark_gap)).to_have_count(1, timeout=10000)
        mark = "after-" + uuid.uuid4().hex[:8]
        self.driver.push_audit({"action": "read", "entry": "openai", "actor": "admin", "detail": {"note": mark}})
        expect(p.locator("#audit-body tr", has_text=mark)).to_have_count(1, timeout=10000)
        # The history loaded after the reconnect holds events the stream had
        # shown before (real clavis: then without the upstream's status):
        # each is still one row.
        if getattr(self, "live_mark", None):
            expect(p.locator("#audit-body tr", has_text=self.live_mark)).to_have_count(1)

    def check_services_agents(self):
        p = self.page
        _, _, services = self.driver.call("GET", "/v1/services")
        status, _, agents = self.driver.call("GET", "/v1/agents")
        self.tab("services")
        if status == 404:
            # GET /v1/agents is not on this clavis yet (another branch adds it):
            # the services table must still show, the agents part says it failed.
            self.agents_missing = True
            expect(p.locator("#agents-error")).to_contain_text("404")
            print("      (GET /v1/agents answers 404 on this clavis: the agents table is not checked)")
            agents = []
        else:
            assert status == 200, (status, agents)
        assert services, "no services to check"
        for s in services:
            row = p.locator("#services-body tr", has=p.locator("strong", has_text=re.compile("^" + re.escape(s["name"]) + "$")))
            expect(row).to_have_count(1)
            expect(row).to_contain_text("stored" if s["has_credentials"] else "missing")
            expect(row).to_contain_text(s["connector_name"])
        for a in agents:
            row = p.locator("#agents-body tr", has=p.locator("strong", has_text=re.compile("^" + re.escape(a["name"]) + "$")))
            expect(row).to_have_count(1)
            expect(row).to_contain_text("yes" if a["reveal"] else "no")

    def check_budgets(self):
        p = self.page
        _, _, budgets = self.driver.call("GET", "/v1/budgets")
        self.tab("budgets")
        expect(p.locator("#budgets-list article")).to_have_count(len(budgets))
        for b in budgets:
            card = p.locator("#budgets-list article", has=p.locator("h3", has_text=re.compile("^" + re.escape(b["name"]) + "$")))
            expect(card).to_have_count(1)
            bar = card.get_by_role("meter")
            assert float(bar.get_attribute("aria-valuenow")) == float(b["used"]), bar.get_attribute("aria-valuenow")
            assert float(bar.get_attribute("aria-valuemax")) == float(b["limit"]), bar.get_attribute("aria-valuemax")
            expect(card).to_contain_text("shared" if b["agent"] is None else b["agent"])

    def check_screenshots(self):
        p = self.page
        self.new_approval(agent="codex", service="stripe", url="https://api.stripe.com/v1/refunds",
                          body_preview=json.dumps({"charge": "ch_3NxQ2b", "amount": 4999, "currency": "usd",
                                                   "metadata": {"ticket": "SUP-4412"}}, indent=2))
        for width, height in ((1280, 860), (390, 844)):
            p.set_viewport_size({"width": width, "height": height})
            for view in ("approvals", "audit", "services", "budgets"):
                self.tab(view)
                if view == "approvals":  # decided cards leave after a few seconds
                    expect(p.locator("article.approval:not(.decided)").first).to_be_visible(timeout=12000)
                    expect(p.locator("article.approval.decided")).to_have_count(0, timeout=12000)
                p.wait_for_timeout(300)
                self.shot(f"{view}-{width}")
                overflow = p.evaluate("document.documentElement.scrollWidth")
                assert overflow <= width, f"{view} at {width} px is {overflow} px wide"
        p.set_viewport_size({"width": 1280, "height": 860})
        self.tab("approvals")

    def check_reload_and_sign_out(self):
        p = self.page
        p.reload()
        expect(p.locator("#view-approvals")).to_be_visible()  # the token survives a reload of the tab
        p.click("#signout")
        expect(p.locator("#signin-form")).to_be_visible()
        expect(p.locator("#nav")).to_be_hidden()
        assert p.evaluate("sessionStorage.length") == 0, "sign out left the token"
        assert p.locator("article.approval").count() == 0, "approvals stay on the page after sign out"

    def check_same_origin_only(self):
        outside = sorted({u for u in self.requests if not u.startswith(self.origin + "/")})
        assert not outside, "requests outside the admin origin: " + ", ".join(outside)
        assert not self.bad_auth, "API requests without the bearer token: " + ", ".join(self.bad_auth[:5])
        assert any(u.startswith(self.origin + "/v1/audit/stream") for u in self.requests), "no stream request"

    def check_no_csp_or_page_errors(self):
        violations = self.page.evaluate("window.__csp || []")
        csp_console = [t for t, _ in self.console if "Content Security Policy" in t or "Content-Security-Policy" in t]
        assert not violations and not csp_console, f"CSP violations: {violations} {csp_console}"
        assert not self.page_errors, "page errors: " + "; ".join(self.page_errors)
        # The browser logs each 4xx answer as an error; those are expected (401 on purpose, 409 routed,
        # and 404 for GET /v1/agents where this clavis has no such route yet).
        def expected(text, url):
            if re.search(r"Failed to load resource: the server responded with a status of 40[19]", text):
                return True
            if self.streams_cut and getattr(self.driver, "cuts_streams_abruptly", False) \
                    and "net::ERR_INCOMPLETE_CHUNKED_ENCODING" in text:
                return True  # the browser's own word on the stream the test cut mid-body
            return self.agents_missing and "status of 404" in text and url.endswith("/v1/agents")
        others = [t for t, u in self.console if not expected(t, u)]
        assert not others, "console errors: " + "; ".join(others)

    # -------------------------------------------------------------- run
    def on_request(self, req):
        self.requests.append(req.url)
        if req.url.startswith(self.origin + "/v1/"):
            auth = req.headers.get("authorization", "")
            if auth != "Bearer " + self.token and not auth.startswith("Bearer not-the-"):
                self.bad_auth.append(req.url)

    def on_console(self, msg):
        if msg.type == "error":
            self.console.append((msg.text, (msg.location or {}).get("url", "")))

    def run(self):
        r = self.r
        r.check("security headers on /console (CSP, X-Frame-Options, nosniff, no-referrer, no-store)", self.check_headers)
        profile = tempfile.mkdtemp(prefix="clavis-console-profile-")
        expect.set_options(timeout=10000)
        with sync_playwright() as pw:
            self.context = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
                viewport={"width": 1280, "height": 860}, color_scheme="light", locale="en-US", timezone_id="UTC")
            self.context.add_init_script(INIT_SCRIPT)
            self.context.on("request", self.on_request)
            self.page = self.context.pages[0] if self.context.pages else self.context.new_page()
            self.page.on("console", self.on_console)
            self.page.on("pageerror", lambda e: self.page_errors.append(str(e)))
            ok = r.check("wrong token refused, stays signed out", self.check_wrong_token)
            ok = ok and r.check("sign in with the admin token (sessionStorage only, no cookies)", self.check_sign_in)
            if ok:
                steps = [
                    ("a pending approval appears without reload; Approve -> approved", self.check_live_approval_and_approve),
                    ("Deny needs a reason; Deny with reason -> denied, reason recorded and shown as text", self.check_deny_needs_reason),
                    ("a 409 on approve is shown as text", self.check_conflict_shown),
                    ("an approval decided elsewhere leaves the pending list", self.check_decided_elsewhere),
                    ("agent-controlled <script>/<img onerror> render as text, window.__pwned undefined", self.check_markup_is_text),
                    ("live audit shows pushed events (stream + history)", self.check_live_audit),
                    ("SSE parser: CRLF/CR/LF, comments, multi-line data, other event types, chunk splits", self.check_sse_parser,
                     "supports_raw_sse"),
                    ("audit stream reconnects and fills the gap", self.check_reconnect, "supports_drop_streams"),
                    ("services and agents tables with credential status", self.check_services_agents),
                    ("budgets with use bars", self.check_budgets),
                    ("screenshots at 1280 px and 390 px, no horizontal overflow", self.check_screenshots),
                    ("no CSP violation, no page error, no unexpected console error", self.check_no_csp_or_page_errors),
                    ("token survives reload; sign out clears it", self.check_reload_and_sign_out),
                ]
                for name, fn, *needs in steps:
                    lacking = [n for n in needs if not getattr(self.driver, n, False)]
                    if lacking:
                        print(f"N/A   {name} (the driver has no {', '.join(lacking)}: the mock runs it)")
                        continue
                    r.check(name, fn)
            r.check("every request went to the admin origin, API calls carried the bearer token", self.check_same_origin_only)
            self.context.close()
        shutil.rmtree(profile, ignore_errors=True)  # a browser profile per run: never left behind
        print()
        for s in self.screenshots:
            print("screenshot:", s)
        if r.failures:
            print("failed checks:")
            for f in r.failures:
                print("  - " + f)
        print(f"{r.passed} passed, {r.failed} failed" + (f", {r.skipped} skipped" if r.skipped else ""))
        return r.failed == 0


def main():
    ap = argparse.ArgumentParser(description="clavis console browser test")
    ap.add_argument("--base-url", required=True, help="the admin port, e.g. http://127.0.0.1:8081")
    ap.add_argument("--token", default=os.environ.get("CLAVIS_ADMIN_TOKEN"), help="the admin token")
    ap.add_argument("--driver", default="mock", help='"mock" or path/to/driver.py:ClassName')
    ap.add_argument("--out", default=None, help="directory for screenshots (default: a new temp dir)")
    args = ap.parse_args()
    if not args.token:
        ap.error("--token or CLAVIS_ADMIN_TOKEN is required")
    out = args.out or tempfile.mkdtemp(prefix="clavis-console-")
    os.makedirs(out, exist_ok=True)
    driver = load_driver(args.driver, args.base_url, args.token)
    ok = ConsoleTest(args.base_url, args.token, driver, out).run()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
