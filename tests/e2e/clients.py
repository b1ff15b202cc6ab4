#!/usr/bin/env python3
"""Client steps of the clavis end-to-end test: real SDKs, placeholder keys.

Usage: clients.py STEP      (exit 0 = pass; the reason is printed on failure)
       clients.py --list

Every step talks to the real API host name (https://api.openai.com, ...) and
relies on the environment only, as an agent would: HTTPS_PROXY points at
clavis, SSL_CERT_FILE / REQUESTS_CA_BUNDLE at clavis's CA bundle. The keys the
clients hold are placeholders; clavis must swap in the real ones (checked later
by run.sh against the fake upstream's record).

Debug mode without clavis: E2E_DIRECT=<fake upstream TLS port> makes every
connection to port 443 go straight to the fake upstream (set SSL_CERT_FILE and
REQUESTS_CA_BUNDLE to the test CA and unset the proxy variables), which checks
that the fake upstream's answers parse in each SDK.
"""
import os
import socket
import sys
import time

PLACEHOLDER = "placeholder"
EXPECTED_TEXT = "Hello from the fake upstream."
MIN_SPREAD = 0.3  # seconds between first and last streamed chunk (upstream sends them ~200 ms apart)
TIMEOUT = 30.0


class StepFailed(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise StepFailed(msg)


def check_stream_timing(times, what):
    check(len(times) >= 3, f"{what}: expected >= 3 streamed chunks, got {len(times)}")
    spread = times[-1] - times[0]
    check(spread >= MIN_SPREAD,
          f"{what}: {len(times)} chunks arrived within {spread * 1000:.0f} ms "
          f"(want >= {MIN_SPREAD * 1000:.0f} ms): the stream was buffered")
    print(f"{what}: {len(times)} chunks over {spread * 1000:.0f} ms")


# -- OpenAI --------------------------------------------------------------------
def _openai():
    import openai
    return openai.OpenAI(api_key=PLACEHOLDER, max_retries=0, timeout=TIMEOUT)


def step_openai_plain():
    r = _openai().chat.completions.create(model="gpt-e2e", messages=[{"role": "user", "content": "hi"}])
    check(r.choices[0].message.content == EXPECTED_TEXT, f"unexpected completion: {r!r}")
    check(r.usage is not None and r.usage.total_tokens == 13, f"unexpected usage: {r.usage!r}")


def step_openai_stream():
    stream = _openai().chat.completions.create(
        model="gpt-e2e", messages=[{"role": "user", "content": "hi"}], stream=True)
    times, text = [], ""
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            times.append(time.monotonic())
            text += chunk.choices[0].delta.content
    check(text == EXPECTED_TEXT, f"streamed text {text!r} != {EXPECTED_TEXT!r}")
    check_stream_timing(times, "openai stream")


# -- Anthropic -----------------------------------------------------------------
def _anthropic(**kw):
    import anthropic
    return anthropic.Anthropic(max_retries=0, timeout=TIMEOUT, **kw)


def _anthropic_create(client):
    r = client.messages.create(model="claude-e2e", max_tokens=32, messages=[{"role": "user", "content": "hi"}])
    check(r.content and r.content[0].text == EXPECTED_TEXT, f"unexpected message: {r!r}")
    check(r.stop_reason == "end_turn", f"unexpected stop_reason {r.stop_reason!r}")


def step_anthropic_plain():
    _anthropic_create(_anthropic(api_key=PLACEHOLDER))


def step_anthropic_stream():
    client = _anthropic(api_key=PLACEHOLDER)
    times, text = [], ""
    with client.messages.stream(model="claude-e2e", max_tokens=32,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        for delta in stream.text_stream:
            times.append(time.monotonic())
            text += delta
        final = stream.get_final_message()
    check(text == EXPECTED_TEXT, f"streamed text {text!r} != {EXPECTED_TEXT!r}")
    check(final.stop_reason == "end_turn", f"final message stop_reason {final.stop_reason!r}")
    check_stream_timing(times, "anthropic stream")


def step_anthropic_auth_token():
    # auth_token= is sent as Authorization: Bearer (OAuth-style tokens).
    _anthropic_create(_anthropic(auth_token=PLACEHOLDER))


# Marks the request of step_anthropic_both_headers, for check_record.py's
# anthropic-both-headers check on what the upstream received.
BOTH_HEADERS_MARK = ("X-E2E-Step", "anthropic-both-headers")


def step_anthropic_both_headers():
    # Older SDK releases (and the API docs) send the key as X-Api-Key, newer ones
    # as Authorization: Bearer, and some releases sent both when api_key and
    # auth_token were set (current ones refuse that combination). Send both
    # headers at once, whichever the installed SDK puts api_key in, so clavis
    # must strip both before it injects x-api-key.
    import anthropic
    sent = []  # the requests as the SDK put them on the wire (to clavis)
    client = _anthropic(
        api_key=PLACEHOLDER,
        default_headers={"X-Api-Key": PLACEHOLDER, "Authorization": "Bearer " + PLACEHOLDER,
                         BOTH_HEADERS_MARK[0]: BOTH_HEADERS_MARK[1]},
        http_client=anthropic.DefaultHttpxClient(event_hooks={"request": [sent.append]}),
    )
    _anthropic_create(client)
    check(len(sent) == 1, f"want one request, the SDK sent {len(sent)}")
    headers = sent[0].headers
    for name, want in (("x-api-key", PLACEHOLDER), ("authorization", "Bearer " + PLACEHOLDER)):
        got = headers.get_list(name)
        check(got == [want], f"the SDK sent {name}: {got!r}, want [{want!r}]")
    print("sent x-api-key and authorization, both with the placeholder")


# -- GitHub / Stripe -----------------------------------------------------------
def step_pygithub():
    from github import Auth, Github
    gh = Github(auth=Auth.Token(PLACEHOLDER), timeout=int(TIMEOUT), retry=None)
    login = gh.get_user().login  # GET /user with "Authorization: token placeholder"
    check(login == "e2e-octocat", f"unexpected login {login!r}")


def step_stripe():
    import stripe
    stripe.api_key = "sk_test_" + PLACEHOLDER
    stripe.max_network_retries = 0
    # stripe-python ships its own CA file and ignores REQUESTS_CA_BUNDLE: point it at clavis's bundle.
    stripe.ca_bundle_path = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ["SSL_CERT_FILE"]
    bal = stripe.Balance.retrieve()
    check(bal.object == "balance", f"unexpected object {bal!r}")
    check(bal.available[0].amount == 1234, f"unexpected balance {bal!r}")


# -- plain HTTP libraries -------------------------------------------------------
def step_requests():
    # requests/urllib3 send CONNECT as HTTP/1.0.
    import requests
    r = requests.get("https://api.openai.com/v1/models",
                     headers={"Authorization": "Bearer " + PLACEHOLDER}, timeout=TIMEOUT)
    check(r.status_code == 200, f"status {r.status_code}: {r.text[:300]}")
    check(r.json()["data"][0]["id"] == "gpt-e2e", f"unexpected body {r.text[:300]}")


def step_httpx():
    import httpx
    r = httpx.get("https://api.stripe.com/v1/balance",
                  headers={"Authorization": "Bearer sk_test_" + PLACEHOLDER}, timeout=TIMEOUT)
    check(r.status_code == 200, f"status {r.status_code}: {r.text[:300]}")
    check(r.json()["object"] == "balance", f"unexpected body {r.text[:300]}")


STEPS = {name[len("step_"):].replace("_", "-"): fn for name, fn in globals().items() if name.startswith("step_")}


def _direct_mode(port: int) -> None:
    real = socket.getaddrinfo

    def fake(host, p, *a, **kw):
        if str(p) == "443":
            return real("127.0.0.1", port, *a, **kw)
        return real(host, p, *a, **kw)

    socket.getaddrinfo = fake


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
    if os.environ.get("E2E_DIRECT"):
        _direct_mode(int(os.environ["E2E_DIRECT"]))
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
