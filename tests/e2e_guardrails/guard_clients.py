#!/usr/bin/env python3
"""Client steps of the guardrails end-to-end test (SPEC §9–§11): real SDKs
through clavis, against tests/e2e/fake_upstream.py.

Usage: guard_clients.py STEP      (exit 0 = pass; the reason is printed on failure)
       guard_clients.py --list

Environment (set by run.sh):
  HTTPS_PROXY, SSL_CERT_FILE, REQUESTS_CA_BUNDLE   clavis as the agent's proxy
  E2E_ADMIN        clavis's admin port (http://127.0.0.1:N)
  E2E_ADMIN_TOKEN  its admin token, to read GET /v1/budgets
  E2E_RECORD       the fake upstream's record (one JSON line per request)
  E2E_FLEET        for the fleet steps: the two proxy URLs, space-separated
  E2E_ADMIN_B      the second fleet clavis's admin port

Every refusal step checks three things: what clavis answered (status,
Clavis-Error, the problem document), that the fake upstream recorded nothing
for it, and that the SDK's exception carries the problem's `detail`, which is
what an agent reads.
"""
import json
import os
import sys
import time
import urllib.request

PLACEHOLDER = "placeholder"
TIMEOUT = 30.0
MIN_SPREAD = 0.3  # the fake streams events ~200 ms apart


class StepFailed(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise StepFailed(msg)


# -- the fake upstream's record and clavis's admin port ---------------------------
def record():
    with open(os.environ["E2E_RECORD"], encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def header(entry, name):
    return [v for k, v in entry["headers"] if k == name]


def admin_get(path):
    req = urllib.request.Request(os.environ["E2E_ADMIN"] + path,
                                 headers={"Authorization": "Bearer " + os.environ["E2E_ADMIN_TOKEN"]})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=10) as r:
        return json.load(r)


def budget(name):
    for b in admin_get("/v1/budgets"):
        if b["name"] == name:
            return b
    raise StepFailed(f"GET /v1/budgets has no budget {name!r}")


def settled(name, deadline=10.0):
    """The budget once nothing is reserved: settlement runs after the answer's
    last byte, so poll (with a deadline) rather than read once."""
    end = time.monotonic() + deadline
    while True:
        b = budget(name)
        if b["reserved"] == 0:
            return b
        if time.monotonic() > end:
            raise StepFailed(f"budget {name!r} still holds a reservation after {deadline} s: {b}")
        time.sleep(0.05)


def settled_change(name, before, deadline=10.0):
    """`used` once it moved from `before` and nothing is reserved."""
    end = time.monotonic() + deadline
    while True:
        b = budget(name)
        if b["reserved"] == 0 and b["used"] != before:
            return b
        if time.monotonic() > end:
            raise StepFailed(f"budget {name!r} did not settle away from used={before} within {deadline} s: {b}")
        time.sleep(0.05)


def problem_of(status, headers, body, kind):
    """Checks clavis's own refusal: status, Clavis-Error, a problem document
    of `kind`; returns the document."""
    ctype = headers.get("content-type", "")
    check(ctype.startswith("application/problem+json"), f"content-type {ctype!r}, want application/problem+json")
    check(headers.get("clavis-error") == kind, f"Clavis-Error {headers.get('clavis-error')!r}, want {kind!r}")
    doc = json.loads(body)
    check(doc.get("type") == f"urn:clavis:problem:{kind}", f"problem type {doc.get('type')!r}")
    check(doc.get("status") == status, f"problem status {doc.get('status')!r}, want {status}")
    check(isinstance(doc.get("detail"), str) and doc["detail"], f"problem without a detail: {doc}")
    check(doc.get("error", {}).get("message") == doc["detail"], f"error.message differs from detail: {doc}")
    return doc


def carries_detail(sdk, exc, detail, attr_value, attr_name):
    """The agent sees the detail: in str(exc) and in the SDK's message attribute."""
    text = str(exc)
    check(detail in text, f"{sdk}: str(exc) does not carry the problem's detail.\n"
                          f"  detail:    {detail!r}\n  str(exc):  {text!r}")
    check(isinstance(attr_value, str) and detail in attr_value,
          f"{sdk}: exc.{attr_name} does not carry the problem's detail: {attr_value!r}")
    print(f"{sdk}: {type(exc).__name__}; str(exc) and exc.{attr_name} carry the detail: {detail[:120]}...")


# -- OpenAI ------------------------------------------------------------------------
LLM_BUDGET = "e2e-llm"


def _openai(sent=None):
    import openai
    kw = {}
    if sent is not None:
        kw["http_client"] = openai.DefaultHttpxClient(event_hooks={"request": [sent.append]})
    return openai.OpenAI(api_key=PLACEHOLDER, max_retries=0, timeout=TIMEOUT, **kw)


def _last_llm_request(path, since):
    got = [e for e in record()[since:] if e["path"] == path]
    check(len(got) == 1, f"the fake recorded {len(got)} requests to {path}, want 1")
    return got[0]


def step_openai_plain_usage():
    before = settled(LLM_BUDGET)["used"]
    n = len(record())
    r = _openai().chat.completions.create(model="gpt-e2e", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=64)
    reported = r.usage.prompt_tokens + r.usage.completion_tokens
    after = settled_change(LLM_BUDGET, before)["used"]
    check(after - before == reported,
          f"used went {before} -> {after}; the fake reported {r.usage.prompt_tokens}+{r.usage.completion_tokens}")
    seen = _last_llm_request("/v1/chat/completions", n)
    check(header(seen, "accept-encoding") == ["identity"],
          f"a metered call must ask for an uncompressed answer; upstream saw {header(seen, 'accept-encoding')}")
    body = json.loads(seen["body"])
    check(body.get("max_tokens") == 64 and "max_completion_tokens" not in body,
          f"a request with its own cap is sent as it is: {body}")
    print(f"used {before} -> {after} = prompt {r.usage.prompt_tokens} + completion {r.usage.completion_tokens}")


def step_openai_cap_set():
    b = settled(LLM_BUDGET)
    left = b["limit"] - b["used"]
    sent = []
    n = len(record())
    r = _openai(sent).chat.completions.create(model="gpt-e2e", messages=[{"role": "user", "content": "no cap"}])
    check(len(sent) == 1, f"the SDK sent {len(sent)} requests, want 1")
    asked = json.loads(sent[0].content)
    check("max_tokens" not in asked and "max_completion_tokens" not in asked, f"the SDK set a cap: {asked}")
    # What clavis reserves for the input is the body's size in bytes; the cap
    # is what the budget leaves after it, at most limits.budget_output_cap.
    want = int(min(16384, left - len(sent[0].content)))
    seen = json.loads(_last_llm_request("/v1/chat/completions", n)["body"])
    check(seen.get("max_completion_tokens") == want,
          f"the upstream got max_completion_tokens={seen.get('max_completion_tokens')!r}, want {want} "
          f"({left} left - {len(sent[0].content)} input bytes)")
    check("max_tokens" not in seen, f"clavis also set max_tokens: {seen}")
    check(r.choices[0].message.content, "no completion")
    settled_change(LLM_BUDGET, b["used"])
    print(f"{left} tokens left, {len(sent[0].content)}-byte body: max_completion_tokens={want} sent upstream")


def step_openai_stream_usage():
    before = settled(LLM_BUDGET)["used"]
    n = len(record())
    stream = _openai().chat.completions.create(model="gpt-e2e", messages=[{"role": "user", "content": "hi"}],
                                               stream=True, max_tokens=64)
    times, text, usage = [], "", None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            times.append(time.monotonic())
            text += chunk.choices[0].delta.content
        if chunk.usage is not None:
            usage = chunk.usage
    check(text == "Hello from the fake upstream.", f"streamed text {text!r}")
    check(len(times) >= 3 and times[-1] - times[0] >= MIN_SPREAD,
          f"the stream was buffered: {len(times)} chunks within {(times[-1] - times[0]) * 1000:.0f} ms")
    seen = json.loads(_last_llm_request("/v1/chat/completions", n)["body"])
    check(seen.get("stream_options") == {"include_usage": True},
          f"clavis must ask the stream for its usage; upstream got stream_options={seen.get('stream_options')!r}")
    check(usage is not None, "the stream ended without its usage chunk")
    reported = usage.prompt_tokens + usage.completion_tokens
    after = settled_change(LLM_BUDGET, before)["used"]
    check(after - before == reported,
          f"used went {before} -> {after}; the final usage chunk said {usage.prompt_tokens}+{usage.completion_tokens}")
    print(f"stream: include_usage added; used {before} -> {after} = {usage.prompt_tokens}+{usage.completion_tokens}")


def step_openai_over_budget():
    import openai
    b = settled(LLM_BUDGET)
    n = len(record())
    try:
        _openai().chat.completions.create(model="gpt-e2e", messages=[{"role": "user", "content": "too much"}],
                                          max_tokens=int(b["limit"]))
    except openai.RateLimitError as e:
        exc = e
    else:
        raise StepFailed("a call whose cap exceeds what is left went through")
    check(len(record()) == n, f"the refused call reached the upstream: {record()[n:]}")
    resp = exc.response
    check(resp.status_code == 429, f"status {resp.status_code}")
    doc = problem_of(429, resp.headers, resp.text, "budget-exceeded")
    retry = resp.headers.get("retry-after", "")
    check(retry.isdigit() and int(retry) > 0, f"Retry-After {retry!r}")
    policy, now = resp.headers.get("ratelimit-policy", ""), resp.headers.get("ratelimit", "")
    check(policy.startswith(f'"{LLM_BUDGET}";q={int(b["limit"])};w='), f"RateLimit-Policy {policy!r}")
    check(now.startswith(f'"{LLM_BUDGET}";r=') and ";t=" in now, f"RateLimit {now!r}")
    check(LLM_BUDGET in doc["detail"], f"the detail does not name the budget: {doc['detail']!r}")
    check(settled(LLM_BUDGET)["used"] == b["used"], "a refused call changed the budget")
    carries_detail("openai", exc, doc["detail"], exc.message, "message")
    print(f"429 Retry-After: {retry}; RateLimit-Policy: {policy}; RateLimit: {now}")


# -- Anthropic ---------------------------------------------------------------------
CLAUDE_BUDGET = "e2e-claude"


def _anthropic():
    import anthropic
    return anthropic.Anthropic(api_key=PLACEHOLDER, max_retries=0, timeout=TIMEOUT)


def step_anthropic_stream_usage():
    before = settled(CLAUDE_BUDGET)["used"]
    n = len(record())
    times, text = [], ""
    with _anthropic().messages.stream(model="claude-e2e", max_tokens=64,
                                      messages=[{"role": "user", "content": "hi"}]) as stream:
        for delta in stream.text_stream:
            times.append(time.monotonic())
            text += delta
        final = stream.get_final_message()
    check(text == "Hello from the fake upstream.", f"streamed text {text!r}")
    check(len(times) >= 3 and times[-1] - times[0] >= MIN_SPREAD, "the stream was buffered")
    u = final.usage
    # Input as message_start reported it (prompt-cache reads and writes are
    # input the model processed), output as message_delta's final count.
    reported = (u.input_tokens + (u.cache_creation_input_tokens or 0) + (u.cache_read_input_tokens or 0)
                + u.output_tokens)
    check(u.output_tokens != 1, "the SDK kept message_start's placeholder output count")
    after = settled_change(CLAUDE_BUDGET, before)["used"]
    check(after - before == reported,
          f"used went {before} -> {after}; the stream reported input {u.input_tokens} + cache "
          f"{u.cache_creation_input_tokens}/{u.cache_read_input_tokens} + output {u.output_tokens}")
    seen = _last_llm_request("/v1/messages", n)
    check(header(seen, "accept-encoding") == ["identity"], f"accept-encoding {header(seen, 'accept-encoding')}")
    print(f"used {before} -> {after} = {u.input_tokens} in + {u.cache_read_input_tokens} cached + "
          f"{u.output_tokens} out")


def step_anthropic_over_budget():
    import anthropic
    b = settled(CLAUDE_BUDGET)
    n = len(record())
    try:
        _anthropic().messages.create(model="claude-e2e", max_tokens=int(b["limit"]) + 1,
                                     messages=[{"role": "user", "content": "too much"}])
    except anthropic.RateLimitError as e:
        exc = e
    else:
        raise StepFailed("a call whose max_tokens exceeds the budget went through")
    check(len(record()) == n, "the refused call reached the upstream")
    doc = problem_of(429, exc.response.headers, exc.response.text, "budget-exceeded")
    check(exc.response.headers.get("retry-after", "").isdigit(), "no Retry-After")
    carries_detail("anthropic", exc, doc["detail"], exc.message, "message")


# -- Stripe ------------------------------------------------------------------------
def _stripe():
    import stripe
    stripe.api_key = "sk_test_" + PLACEHOLDER
    stripe.max_network_retries = 0
    # stripe-python ships its own CA file and ignores REQUESTS_CA_BUNDLE.
    stripe.ca_bundle_path = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ["SSL_CERT_FILE"]
    return stripe


def _refunds_seen(since):
    return [e for e in record()[since:] if e["method"] == "POST" and e["path"] == "/v1/refunds"]


def step_stripe_refund_under_limit():
    stripe = _stripe()
    n = len(record())
    r = stripe.Refund.create(charge="ch_e2e", amount=4000)
    check(r.object == "refund" and r.amount == 4000, f"unexpected refund {r!r}")
    seen = _refunds_seen(n)
    check(len(seen) == 1 and "amount=4000" in seen[0]["body"], f"the upstream saw {seen}")


def step_stripe_refund_over_limit():
    stripe = _stripe()
    n = len(record())
    try:
        stripe.Refund.create(charge="ch_e2e", amount=6000)
    except stripe.error.PermissionError as e:
        exc = e
    else:
        raise StepFailed("a 6000 refund went through a policy that allows 5000")
    check(_refunds_seen(n) == [], f"the refused refund reached the upstream: {_refunds_seen(n)}")
    check(exc.http_status == 403, f"status {exc.http_status}")
    doc = problem_of(403, {k.lower(): v for k, v in exc.headers.items()}, exc.http_body, "policy-denied")
    check('"stripe-refunds"' in doc["detail"] and '"large"' in doc["detail"],
          f"the detail does not name the policy and rule: {doc['detail']!r}")
    carries_detail("stripe", exc, doc["detail"], exc.user_message, "user_message")


# -- GitHub ------------------------------------------------------------------------
def _github():
    from github import Auth, Github
    return Github(auth=Auth.Token(PLACEHOLDER), timeout=int(TIMEOUT), retry=None)


def step_pygithub_triage_allows():
    repo = _github().get_repo("acme/web")
    check(repo.full_name == "acme/web", f"repo {repo.full_name!r}")
    issue = repo.get_issue(3)
    comment = issue.create_comment("triaged by an agent")
    check(comment.body == "triaged by an agent", f"comment {comment.body!r}")
    print("GET repo, GET issue, POST comment: allowed")


def step_pygithub_delete_denied():
    from github import GithubException
    repo = _github().get_repo("acme/web")
    n = len(record())
    try:
        repo.delete()
    except GithubException as e:
        exc = e
    else:
        raise StepFailed("repo.delete() went through a policy that denies deletes")
    deletes = [e for e in record()[n:] if e["method"] == "DELETE"]
    check(deletes == [], f"the DELETE reached the upstream: {deletes}")
    check(exc.status == 403, f"status {exc.status}")
    headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
    doc = problem_of(403, headers, json.dumps(exc.data), "policy-denied")
    check("deletes" in str(exc), f"the rule's name is not in the exception text: {str(exc)!r}")
    carries_detail("PyGithub", exc, doc["detail"], exc.message, "message")


# -- a fleet on one Redis ----------------------------------------------------------
def step_fleet_flood():
    """200 concurrent requests, half through each of two clavis sharing a
    Redis budget of 100 requests: exactly 100 pass, the rest are refused."""
    import asyncio
    import ssl
    import httpx

    proxies = os.environ["E2E_FLEET"].split()
    ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    n = len(record())

    async def flood():
        clients = [httpx.AsyncClient(proxy=p, verify=ctx, timeout=60,
                                     limits=httpx.Limits(max_connections=200, max_keepalive_connections=0))
                   for p in proxies]
        try:
            calls = [clients[i % 2].get(f"https://api.github.com/fleet/{i}",
                                        headers={"Authorization": "token " + PLACEHOLDER})
                     for i in range(200)]
            return await asyncio.gather(*calls)
        finally:
            for c in clients:
                await c.aclose()

    answers = asyncio.run(flood())
    ok = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code == 429]
    other = sorted({r.status_code for r in answers} - {200, 429})
    check(not other, f"unexpected statuses {other}: {[r.text[:200] for r in answers if r.status_code in other][:3]}")
    for r in refused:
        problem_of(429, r.headers, r.text, "budget-exceeded")
    arrived = [e for e in record()[n:] if e["path"].startswith("/fleet/")]
    check(len(ok) == 100 and len(refused) == 100, f"{len(ok)} passed and {len(refused)} refused, want 100/100")
    check(len(arrived) == 100, f"the upstream got {len(arrived)} requests, want exactly 100")
    per_clavis = [sum(1 for i, r in enumerate(answers) if i % 2 == k and r.status_code == 200) for k in (0, 1)]
    b = settled("fleet")
    check(b["used"] == 100, f"GET /v1/budgets says used {b['used']}, want 100")
    print(f"100 passed ({per_clavis[0]} via clavis A, {per_clavis[1]} via B), 100 refused; the upstream got 100")


def step_fleet_shared_rate():
    """A rate limit in Redis is one bucket for the fleet: 10 concurrent
    requests, 5 through each clavis, against a burst of 5: exactly 5 pass."""
    import asyncio
    import ssl
    import httpx

    proxies = os.environ["E2E_FLEET"].split()
    ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    n = len(record())

    async def burst():
        clients = [httpx.AsyncClient(proxy=p, verify=ctx, timeout=60) for p in proxies]
        try:
            calls = [clients[i % 2].get("https://api.stripe.com/v1/balance",
                                        headers={"Authorization": "Bearer sk_test_" + PLACEHOLDER})
                     for i in range(10)]
            return await asyncio.gather(*calls)
        finally:
            for c in clients:
                await c.aclose()

    answers = asyncio.run(burst())
    codes = sorted(r.status_code for r in answers)
    check(codes == [200] * 5 + [429] * 5, f"statuses {codes}, want five 200 and five 429")
    for r in answers:
        if r.status_code == 429:
            problem_of(429, r.headers, r.text, "rate-limited")
            retry = r.headers.get("retry-after", "")
            check(retry.isdigit() and 1 <= int(retry) <= 60, f"Retry-After {retry!r}")
    arrived = [e for e in record()[n:] if e["path"] == "/v1/balance"]
    check(len(arrived) == 5, f"the upstream got {len(arrived)} requests, want 5")
    print("burst of 5 shared by both clavis: 5 passed, 5 rate-limited")


def step_fleet_tokens():
    """A token budget in Redis: the cap clavis A sets is what the shared
    budget leaves, the usage settles there, and clavis B sees it."""
    import openai

    proxy_a = os.environ["E2E_FLEET"].split()[0]
    os.environ["HTTPS_PROXY"] = os.environ["https_proxy"] = proxy_a
    b = settled("fleet-llm")
    sent = []
    n = len(record())
    client = openai.OpenAI(api_key=PLACEHOLDER, max_retries=0, timeout=TIMEOUT,
                           http_client=openai.DefaultHttpxClient(event_hooks={"request": [sent.append]}))
    r = client.chat.completions.create(model="gpt-e2e", messages=[{"role": "user", "content": "fleet"}])
    want = int(min(16384, b["limit"] - b["used"] - len(sent[0].content)))
    seen = json.loads(_last_llm_request("/v1/chat/completions", n)["body"])
    check(seen.get("max_completion_tokens") == want,
          f"max_completion_tokens {seen.get('max_completion_tokens')!r}, want {want}")
    after = settled_change("fleet-llm", b["used"])
    reported = r.usage.prompt_tokens + r.usage.completion_tokens
    check(after["used"] - b["used"] == reported, f"used {b['used']} -> {after['used']}, reported {reported}")
    os.environ["E2E_ADMIN"] = os.environ["E2E_ADMIN_B"]
    seen_by_b = settled("fleet-llm")
    check(seen_by_b["used"] == after["used"], f"clavis B sees used {seen_by_b['used']}, A {after['used']}")
    print(f"cap {want} set from the shared budget; used {after['used']} seen by both clavis")


def step_fleet_store_down():
    import ssl
    import httpx

    ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    n = len(record())
    for proxy in os.environ["E2E_FLEET"].split():
        with httpx.Client(proxy=proxy, verify=ctx, timeout=30) as c:
            r = c.get("https://api.github.com/fleet/after-redis", headers={"Authorization": "token " + PLACEHOLDER})
        check(r.status_code == 503, f"status {r.status_code}: {r.text[:300]}")
        doc = problem_of(503, r.headers, r.text, "budget-store-unavailable")
        print(f"503 budget-store-unavailable: {doc['detail']}")
    check(len(record()) == n, f"requests reached the upstream while the budget store was down: {record()[n:]}")


def step_fleet_store_back():
    """Redis is back (empty: it kept nothing): each clavis serves again,
    within a deadline, without a restart."""
    import ssl
    import httpx

    ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    for proxy in os.environ["E2E_FLEET"].split():
        end = time.monotonic() + 20
        with httpx.Client(proxy=proxy, verify=ctx, timeout=30) as c:
            while True:
                r = c.get("https://api.github.com/fleet/redis-back", headers={"Authorization": "token " + PLACEHOLDER})
                if r.status_code == 200:
                    break
                check(r.status_code == 503 and r.headers.get("clavis-error") == "budget-store-unavailable",
                      f"while Redis comes back: {r.status_code} {r.text[:300]}")
                check(time.monotonic() < end, "still 503 budget-store-unavailable 20 s after Redis came back")
                time.sleep(0.1)
    b = settled("fleet")
    check(b["used"] == 2, f"the new Redis counts {b['used']} requests, want the 2 just made")
    print("both clavis serve again; the new Redis counts 2 requests")


STEPS = {name[len("step_"):].replace("_", "-"): fn for name, fn in globals().items() if name.startswith("step_")}


def main() -> int:
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return 2
    if sys.argv[1] == "--list":
        print("\n".join(STEPS))
        return 0
    fn = STEPS.get(sys.argv[1])
    if fn is None:
        print(f"unknown step {sys.argv[1]!r}; known: {', '.join(STEPS)}")
        return 2
    try:
        fn()
    except StepFailed as e:
        print(f"FAIL: {e}")
        return 1
    except Exception as e:  # an SDK error is a failed step, with its message
        print(f"FAIL: {type(e).__name__}: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
