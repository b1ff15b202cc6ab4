#!/usr/bin/env python3
"""The four management-API calls that existing clients make, sent with httpx
byte for byte as the issue writes them, against a running clavis.

Usage: calls.py --admin URL --token ADMIN_TOKEN --openai-key KEY \
                --reveal-token T --plain-agent-token T

Prints one `PASS name` / `FAIL name: why` line per check; exits 1 if any
failed. The service it registers (my-openai) is deleted again at the end, so
the curl half of run.sh can make the same calls.
"""
import argparse
import json
import sys

import httpx

PASSED = 0
FAILED = 0


def check(name: str, ok: bool, why: str = "") -> bool:
    global PASSED, FAILED
    if ok:
        PASSED += 1
        print(f"PASS  httpx: {name}")
    else:
        FAILED += 1
        print(f"FAIL  httpx: {name}: {why}")
    return ok


def describe(r: httpx.Response) -> str:
    return f"{r.status_code} {r.text[:300]!r}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--admin", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--openai-key", required=True)
    ap.add_argument("--reveal-token", required=True)
    ap.add_argument("--plain-agent-token", required=True)
    a = ap.parse_args()

    admin = {"Authorization": f"Bearer {a.token}", "Content-Type": "application/json"}
    # trust_env=False: no HTTPS_PROXY / NO_PROXY from the environment.
    with httpx.Client(base_url=a.admin, timeout=30, trust_env=False) as c:
        # 1. POST /v1/services
        body = b'{"name": "my-openai", "connector_name": "openai"}'
        r = c.post("/v1/services", content=body, headers=admin)
        created = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        if not check(
            'POST /v1/services {"name": "my-openai", "connector_name": "openai"} -> 201',
            r.status_code == 201
            and created.get("name") == "my-openai"
            and created.get("connector_name") == "openai"
            and str(created.get("id", "")) != ""
            and str(created.get("created_at", "")).endswith("Z"),
            describe(r),
        ):
            return finish(c, admin)
        sid = created["id"]

        # 2. POST /v1/services/{id}/credentials
        body = ('{"token_type": "api_key", "data": {"api_key": "%s"}}' % a.openai_key).encode()
        r = c.post(f"/v1/services/{sid}/credentials", content=body, headers=admin)
        check(
            "POST /v1/services/{id}/credentials {\"token_type\": \"api_key\", ...} -> 200 stored",
            r.status_code == 200 and r.json().get("status") == "stored" and "validated" in r.json(),
            describe(r),
        )
        check(
            "the credentials answer does not echo the key",
            a.openai_key not in r.text,
            describe(r),
        )

        # 3. GET /v1/services/my-openai/token: admin, reveal agent, non-reveal agent
        for who, token in (("admin", a.token), ("reveal agent", a.reveal_token)):
            r = c.get("/v1/services/my-openai/token", headers={"Authorization": f"Bearer {token}"})
            ok = r.status_code == 200
            if ok:
                t = r.json()
                ok = t.get("access_token") == a.openai_key and "token_type" in t and "expires_at" in t
            check(f"GET /v1/services/my-openai/token as {who} -> 200 {{\"access_token\": \"sk-...\", ...}}", ok,
                  describe(r))
        r = c.get("/v1/services/my-openai/token", headers={"Authorization": f"Bearer {a.plain_agent_token}"})
        ok = r.status_code == 403 and a.openai_key not in r.text
        if ok:
            err = r.json().get("error", {})
            ok = str(err.get("type", "")).startswith("clavis_") and isinstance(err.get("message"), str)
        check("GET /v1/services/my-openai/token as a non-reveal agent -> 403 clavis error", ok, describe(r))
        r = c.get("/v1/services/my-openai", headers=admin)
        check(
            "GET /v1/services/my-openai shows has_credentials and no secret",
            r.status_code == 200 and r.json().get("has_credentials") is True and a.openai_key not in r.text,
            describe(r),
        )

        # 4. POST /v1/proxy/my-anthropic
        body = (
            b'{"method": "POST", "path": "/v1/messages", "body": {"model": "claude-e2e", '
            b'"max_tokens": 8, "messages": [{"role": "user", "content": "hi from httpx"}]}}'
        )
        r = c.post("/v1/proxy/my-anthropic", content=body, headers=admin)
        ok = r.status_code == 200
        if ok:
            try:
                ok = r.json().get("type") == "message"
            except json.JSONDecodeError:
                ok = False
        check('POST /v1/proxy/my-anthropic {"method": "POST", "path": "/v1/messages", ...} -> 200 message', ok,
              describe(r))
        return finish(c, admin)


def finish(c: httpx.Client, admin: dict) -> int:
    r = c.delete("/v1/services/my-openai", headers=admin)
    check("DELETE /v1/services/my-openai (clean up for the curl run)", r.status_code == 200, describe(r))
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
