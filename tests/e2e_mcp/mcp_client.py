#!/usr/bin/env python3
"""MCP client checks for tests/e2e_mcp/run.sh, with the official Python SDK.

Usage: mcp_client.py CHECK [MODE|ARG]

CHECK is one of connect, tools, calls, totp, errors (each takes MODE: legacy,
auto or 2026-07-28), no-token, origin, upstream-record, audit, scrubbed,
log-clean LOGFILE. Exits 0 when the check holds; prints what it saw.

The environment (set by run.sh) names the server and the secrets:
MCP_URL, CLAVIS_ADMIN, UPSTREAM_RECORD, ADMIN_TOKEN, PLAIN_TOKEN,
REVEALER_TOKEN, KEY_OPENAI, KEY_BRAVE, KEY_GITHUB, TOTP_ALPHA, TOTP_BETA,
SENSITIVE_VALUE.
"""
import asyncio
import json
import os
import sys
import time

import httpx2
import pyotp
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

ENV = os.environ
URL = ENV["MCP_URL"]
ADMIN = ENV["CLAVIS_ADMIN"]
ADMIN_TOKEN = ENV["ADMIN_TOKEN"]
PLAIN = ENV["PLAIN_TOKEN"]
REVEALER = ENV["REVEALER_TOKEN"]
KEY_OPENAI = ENV["KEY_OPENAI"]
KEY_BRAVE = ENV["KEY_BRAVE"]
KEY_GITHUB = ENV["KEY_GITHUB"]
TOTP_ALPHA = ENV["TOTP_ALPHA"]
TOTP_BETA = ENV["TOTP_BETA"]
SENSITIVE = ENV["SENSITIVE_VALUE"]

BASE_TOOLS = ["list_services", "search_entries", "get_totp", "proxy_request", "wait_for_approval", "get_budgets", "generate_password"]
INVALID_PARAMS = -32602


def secrets() -> list[str]:
    beta_seed = pyotp.parse_uri(TOTP_BETA).secret
    return [KEY_OPENAI, KEY_BRAVE, KEY_GITHUB, TOTP_ALPHA, beta_seed, SENSITIVE]


def no_secret(what: str, value) -> None:
    text = value if isinstance(value, str) else json.dumps(value)
    for s in secrets():
        assert s not in text, f"{what} leaks a secret ({s[:6]}...): {text[:500]}"


class Check(AssertionError):
    pass


def http(token: str | None, extra: dict | None = None) -> httpx2.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(extra or {})
    return httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=60.0))


class Session:
    """`async with Session(token, mode) as c:` an entered mcp.Client."""

    def __init__(self, token: str | None, mode: str, extra_headers: dict | None = None):
        self.http = http(token, extra_headers)
        self.client = Client(
            streamable_http_client(URL, http_client=self.http, terminate_on_close=False),
            mode=mode,
            cache=None,
            read_timeout_seconds=60,
        )

    async def __aenter__(self) -> Client:
        await self.http.__aenter__()
        try:
            return await self.client.__aenter__()
        except BaseException:
            await self.http.__aexit__(None, None, None)
            raise

    async def __aexit__(self, *exc):
        try:
            await self.client.__aexit__(*exc)
        finally:
            await self.http.__aexit__(None, None, None)


def structured(result, what: str) -> dict:
    """A successful tool result's structured content, checked against its text."""
    assert not result.is_error, f"{what}: isError: {result.content}"
    sc = result.structured_content
    assert isinstance(sc, dict), f"{what}: no structured content: {result}"
    texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
    assert texts, f"{what}: no text content: {result}"
    assert json.loads(texts[0]) == sc, f"{what}: text and structured content differ"
    return sc


async def tool_names(c: Client) -> list[str]:
    result = await c.list_tools()
    for t in result.tools:
        assert t.description, t
        assert t.input_schema.get("type") == "object", t
    return [t.name for t in result.tools]


# ------------------------------------------------------------------ checks


async def check_connect(mode: str) -> None:
    async with Session(PLAIN, mode) as c:
        version = c.protocol_version
        info = c.server_info
        print(f"mode={mode}: negotiated {version}, server {info}")
        if mode == "legacy":
            assert version < "2026", version
        elif mode == "2026-07-28":
            assert version == "2026-07-28", version
        if info is not None:
            assert info.name == "clavis", info
        elif mode == "legacy":
            raise Check("legacy initialize must carry serverInfo")
        if mode != "2026-07-28":
            # A pinned modern version adopts a synthesized discover result
            # (no round trip), so only the other modes learn capabilities.
            assert c.server_capabilities.tools is not None, c.server_capabilities
        else:
            assert version == "2026-07-28", version
        assert await tool_names(c) == BASE_TOOLS


async def check_tools(mode: str) -> None:
    async with Session(PLAIN, mode) as c:
        plain = await tool_names(c)
    async with Session(REVEALER, mode) as c:
        revealer = await tool_names(c)
    async with Session(ADMIN_TOKEN, mode) as c:
        admin = await tool_names(c)
    print("plain:", plain)
    print("revealer:", revealer)
    print("admin:", admin)
    assert plain == BASE_TOOLS, plain
    assert revealer == BASE_TOOLS + ["get_token"], revealer
    assert admin == BASE_TOOLS + ["get_token"], admin


async def check_calls(mode: str) -> None:
    async with Session(PLAIN, mode) as c:
        await tool_names(c)
        sc = structured(await c.call_tool("list_services", {}), "list_services")
        names = sorted(s["name"] for s in sc["services"])
        print("list_services:", names)
        assert names == ["alpha-mail", "gamma-code"], names
        alpha = next(s for s in sc["services"] if s["name"] == "alpha-mail")
        assert alpha["fields"]["recovery_code"] == {"value": "[REDACTED]", "l2": True}, alpha
        assert alpha["fields"]["region"]["value"] == "eu-west-quokka", alpha
        no_secret("list_services", sc)

        sc = structured(await c.call_tool("search_entries", {"query": "zEpHyR"}), "search_entries")
        print("search_entries zEpHyR:", [e["name"] for e in sc["entries"]])
        assert [e["name"] for e in sc["entries"]] == ["alpha-mail"], sc
        for q in ["orion", "beta", "quasar", KEY_OPENAI[:12]]:
            sc = structured(await c.call_tool("search_entries", {"query": q}), "search_entries")
            assert sc["entries"] == [], f"search {q!r} found {sc}"

        sc = structured(await c.call_tool("get_totp", {"service": "alpha-mail"}), "get_totp")
        print("get_totp:", {k: v for k, v in sc.items() if k != "code"})
        assert sc["period"] == 30 and len(sc["code"]) == 6, sc

        probe = f"/e2e/mcp-probe/{mode}"
        sc = structured(
            await c.call_tool(
                "proxy_request",
                {
                    "service": "alpha-mail",
                    "method": "POST",
                    "path": probe,
                    "params": {"mode": mode, "n": 3},
                    "headers": {"x-probe": mode},
                    "body": {"hello": "world"},
                },
            ),
            "proxy_request",
        )
        print("proxy_request:", json.dumps(sc)[:300])
        assert sc["status"] == 200, sc
        assert isinstance(sc["headers"], dict) and "json" in sc["headers"].get("content-type", ""), sc
        body = sc["body"]
        assert body["echo"] is True and body["host"] == "api.openai.com", body
        assert body["method"] == "POST" and body["path"].startswith(probe + "?"), body
        assert "n=3" in body["path"] and f"mode={mode}" in body["path"], body
        no_secret("proxy_request", sc)

        sc = structured(
            await c.call_tool("proxy_request", {"service": "alpha-mail", "path": "/v1/models"}), "proxy_request"
        )
        assert sc["status"] == 200 and sc["body"]["data"][0]["id"] == "gpt-e2e", sc
        sc = structured(
            await c.call_tool("proxy_request", {"service": "gamma-code", "path": "/user"}), "proxy_request"
        )
        assert sc["status"] == 200 and sc["body"].get("login"), sc
        no_secret("proxy_request", sc)

        sc = structured(
            await c.call_tool("generate_password", {"length": 24, "symbols": False}), "generate_password"
        )
        assert len(sc["password"]) == 24 and sc["password"].isalnum(), sc
        sc = structured(await c.call_tool("generate_password", {}), "generate_password")
        assert len(sc["password"]) == 32, sc
        print("generate_password: ok")

    async with Session(REVEALER, mode) as c:
        await tool_names(c)
        sc = structured(await c.call_tool("get_token", {"service": "beta-search"}), "get_token")
        assert sc["access_token"] == KEY_BRAVE, "get_token did not return the real key"
        sc = structured(await c.call_tool("get_token", {"service": "alpha-mail"}), "get_token")
        assert sc["access_token"] == KEY_OPENAI, "get_token did not return the real key"
        print("get_token (revealer): ok")


def totp_ok(totp: pyotp.TOTP, code: str, before: float, after: float) -> bool:
    return code in {totp.at(before), totp.at(after), totp.at(before - 1)}


async def check_totp(mode: str) -> None:
    alpha = pyotp.TOTP(TOTP_ALPHA)
    beta = pyotp.parse_uri(TOTP_BETA)
    async with Session(REVEALER, mode) as c:
        await tool_names(c)
        for service, ref, digits, period in [("alpha-mail", alpha, 6, 30), ("beta-search", beta, 8, 60)]:
            before = time.time()
            sc = structured(await c.call_tool("get_totp", {"service": service}), "get_totp")
            after = time.time()
            print(f"{service}: period {sc['period']}, expires_in {sc['expires_in']}, {len(sc['code'])} digits")
            assert sc["period"] == period, sc
            assert len(sc["code"]) == digits and sc["code"].isdigit(), sc
            assert 1 <= sc["expires_in"] <= period, sc
            assert totp_ok(ref, sc["code"], before, after), f"{service}: clavis {sc['code']} != pyotp {ref.at(after)}"
    # The same codes over REST, for the same secret.
    async with http(REVEALER) as h:
        before = time.time()
        r = await h.get(f"{ADMIN}/api/ext/totp/alpha-mail")
        after = time.time()
        assert r.status_code == 200, r.text
        assert totp_ok(alpha, r.json()["code"], before, after), r.text


async def expect_mcp_error(c: Client, tool: str, args: dict, code: int = INVALID_PARAMS) -> None:
    try:
        result = await c.call_tool(tool, args)
    except MCPError as e:
        assert e.code == code, f"{tool} {args}: error {e.code} {e}, want {code}"
        print(f"{tool} {json.dumps(args)}: MCPError {e.code} {str(e)[:100]}")
        return
    raise Check(f"{tool} {args}: want a JSON-RPC error {code}, got a result: {result}")


async def expect_tool_error(c: Client, tool: str, args: dict) -> None:
    result = await c.call_tool(tool, args)
    assert result.is_error, f"{tool} {args}: want isError, got {result}"
    text = " ".join(getattr(x, "text", "") for x in result.content)
    no_secret(f"{tool} error", text)
    print(f"{tool} {json.dumps(args)}: isError {text[:120]}")


async def check_errors(mode: str) -> None:
    async with Session(PLAIN, mode) as c:
        await tool_names(c)
        await expect_mcp_error(c, "no_such_tool", {})
        await expect_mcp_error(c, "get_token", {"service": "alpha-mail"})  # not a tool without reveal
        await expect_mcp_error(c, "get_totp", {})
        await expect_mcp_error(c, "get_totp", {"service": 42})
        await expect_mcp_error(c, "search_entries", {"q": "x"})
        await expect_mcp_error(c, "generate_password", {"length": "long"})
        await expect_mcp_error(c, "proxy_request", {"path": "/v1/models"})
        await expect_mcp_error(c, "proxy_request", {"service": "alpha-mail", "path": "/", "bogus": 1})
        # Out of scope, or without a TOTP secret: tool errors.
        await expect_tool_error(c, "get_totp", {"service": "beta-search"})
        await expect_tool_error(c, "get_totp", {"service": "gamma-code"})
        await expect_tool_error(c, "get_totp", {"service": "no-such-service"})
        await expect_tool_error(c, "proxy_request", {"service": "beta-search", "path": "/res/v1/web/search"})
        # The session is still usable afterwards.
        assert await tool_names(c) == BASE_TOOLS
    async with Session(REVEALER, mode) as c:
        await tool_names(c)
        await expect_tool_error(c, "get_token", {"service": "gamma-code"})
        await expect_mcp_error(c, "get_token", {"service": "alpha-mail", "extra": True})


async def raw_post(headers: dict, token: str | None) -> httpx2.Response:
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "e2e", "version": "1"}}}
    async with http(token, headers) as h:
        return await h.post(URL, json=body, headers={"Accept": "application/json, text/event-stream"})


def leaf(e: BaseException) -> BaseException:
    """The first non-group exception inside (anyio task groups wrap errors)."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e


async def sdk_refused(token: str | None, extra: dict | None = None) -> str:
    for mode in ("legacy", "2026-07-28"):
        try:
            async with Session(token, mode, extra) as c:
                names = await tool_names(c)
        except Exception as e:  # the SDK reports the HTTP failure its own way
            e = leaf(e)
            print(f"mode={mode}: refused: {type(e).__name__}: {str(e)[:160]}")
            continue
        raise Check(f"mode={mode}: the SDK connected and listed {names}")
    return "ok"


async def check_no_token() -> None:
    for token in (None, "wrong-token"):
        r = await raw_post({}, token)
        print(f"token={token!r}: HTTP {r.status_code}")
        assert r.status_code == 401, r.text
        assert "list_services" not in r.text
    await sdk_refused(None)


async def check_origin() -> None:
    for origin in ("https://evil.example", "http://127.0.0.1.evil.example", "null"):
        r = await raw_post({"Origin": origin}, PLAIN)
        print(f"Origin {origin}: HTTP {r.status_code}")
        assert r.status_code == 403, r.text
    r = await raw_post({"Host": "rebind.evil.example"}, PLAIN)
    print(f"Host rebind.evil.example: HTTP {r.status_code}")
    assert r.status_code == 403, r.text
    await sdk_refused(PLAIN, {"Origin": "https://evil.example"})
    # A loopback Origin (a local inspector page) is fine.
    r = await raw_post({"Origin": "http://localhost:6274"}, PLAIN)
    assert r.status_code == 200, r.text


def check_upstream_record() -> None:
    with open(ENV["UPSTREAM_RECORD"], encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    probes = [r for r in records if r["path"].startswith("/e2e/mcp-probe/")]
    print(f"{len(records)} upstream requests, {len(probes)} proxy_request probes")
    assert probes, "no proxy_request probe reached the upstream"
    for r in records:
        auth = [v for k, v in r["headers"] if k == "authorization"]
        if r["host"] == "api.openai.com":
            assert auth == [f"Bearer {KEY_OPENAI}"], f"{r['path']}: authorization {len(auth)} value(s), not the real key"
        if r["host"] == "api.github.com":
            assert auth == [f"Bearer {KEY_GITHUB}"], f"{r['path']}: not the real key"
        assert r["host"] != "api.search.brave.com", "an out-of-scope call reached brave"
        assert "placeholder" not in json.dumps(r["headers"]), f"{r['path']}: the agent's value survived"
        assert r["scheme"] == "https" and r["sni"] == r["host"], r
    for r in probes:
        headers = dict(r["headers"])
        assert headers.get("x-probe"), r
        assert json.loads(r["body"]) == {"hello": "world"}, r["body"]


async def check_audit() -> None:
    async with http(ADMIN_TOKEN) as h:
        plain = (await h.get(f"{ADMIN}/v1/audit", params={"actor": "mcp:plain", "limit": 1000})).json()
        revealer = (await h.get(f"{ADMIN}/v1/audit", params={"actor": "mcp:revealer", "limit": 1000})).json()
        everything = (await h.get(f"{ADMIN}/v1/audit", params={"limit": 1000})).json()
    actions = sorted({e["action"] for e in plain})
    print("mcp:plain actions:", actions, "mcp:revealer actions:", sorted({e["action"] for e in revealer}))
    for a in ("read", "search", "totp", "proxy"):
        assert a in actions, f"no {a} for mcp:plain"
    assert any(e["action"] == "search" and "zEpHyR" in (e["detail"].get("note") or "") for e in plain), plain[:5]
    assert any(e["action"] == "proxy" and e["entry"] == "alpha-mail" for e in plain)
    assert any(e["action"] == "reveal" and e["entry"] == "beta-search" for e in revealer)
    assert any(e["action"] == "totp" and e["entry"] == "beta-search" for e in revealer)
    assert all(e["actor"] == "mcp:plain" for e in plain)
    # Searches for a secret's prefix are recorded as the query: only the full
    # values must be absent.
    no_secret("audit", everything)


async def check_scrubbed() -> None:
    """SPEC §3.1: an upstream echo of the injected key comes back [REDACTED]."""
    async with Session(PLAIN, "2026-07-28") as c:
        await tool_names(c)
        sc = structured(
            await c.call_tool("proxy_request", {"service": "alpha-mail", "path": "/e2e/echo-headers"}),
            "proxy_request",
        )
    echoed = dict(sc["body"]["headers"])
    assert "authorization" in echoed, f"the upstream echoed no authorization header: {sc}"
    print("echoed authorization:", "real key" if KEY_OPENAI in echoed.get("authorization", "") else
          echoed.get("authorization"))
    no_secret("proxy_request echo", sc)
    # The key must come back masked, not merely absent (never injected, or cut).
    assert "[REDACTED]" in echoed["authorization"], f"echoed authorization not masked: {echoed['authorization']!r}"


def check_log_clean(path: str) -> None:
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    print(f"{len(text.splitlines())} log lines")
    # Every tool call is logged at info: a log without one is not this run's.
    assert "mcp tool call" in text, "no 'mcp tool call' line: the log does not cover the MCP calls"
    no_secret("clavis log", text)


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    check, arg = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
    fns = {
        "connect": lambda: check_connect(arg),
        "tools": lambda: check_tools(arg),
        "calls": lambda: check_calls(arg),
        "totp": lambda: check_totp(arg),
        "errors": lambda: check_errors(arg),
        "no-token": check_no_token,
        "origin": check_origin,
        "audit": check_audit,
        "scrubbed": check_scrubbed,
    }
    try:
        if check == "upstream-record":
            check_upstream_record()
        elif check == "log-clean":
            check_log_clean(arg)
        elif check in fns:
            asyncio.run(fns[check]())
        else:
            print(f"unknown check {check!r}", file=sys.stderr)
            return 2
    except AssertionError as e:
        print(f"check failed: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
