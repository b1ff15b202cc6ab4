#!/usr/bin/env python3
"""The official Coinbase and Kalshi Python SDKs, each holding a throw-away
(but valid) key, calling the real API host names.

Usage: clients.py STEP
  coinbase-get | coinbase-post | kalshi-get | kalshi-post
      through clavis (HTTPS_PROXY, REQUESTS_CA_BUNDLE / SSL_CERT_FILE = the
      clavis bundle): must succeed, the upstream having verified the signature.
  coinbase-direct | kalshi-direct
      straight to the fake upstream (host names resolved to 127.0.0.1:
      $E2E_UPSTREAM_PORT, trusting $E2E_UPSTREAM_CA): the SDK's own signature
      must be refused with 401.

Env: AGENT_CB_NAME, AGENT_CB_PEM (file), AGENT_KALSHI_ID, AGENT_KALSHI_PEM (file),
     E2E_PROXY_USER, E2E_PROXY_PASS (for the Kalshi SDK, which ignores HTTPS_PROXY),
     E2E_REAL_KALSHI_ID (direct mode only: the key id is right, the signature is not).
Exit 0 on the expected outcome; prints what happened.
"""
import json
import os
import socket
import sys

KALSHI_BASE = "https://external-api.kalshi.com/trade-api/v2"
HOSTS = {"api.coinbase.com", "external-api.kalshi.com"}


def read(path):
    with open(path) as f:
        return f.read()


def direct_resolution():
    """Resolve the API host names to the fake upstream, bypassing clavis."""
    port = int(os.environ["E2E_UPSTREAM_PORT"])
    real = socket.getaddrinfo

    def fake(host, p, *args, **kwargs):
        if host in HOSTS:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, p, *args, **kwargs)

    socket.getaddrinfo = fake
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        os.environ.pop(name, None)
    os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"] = os.environ["E2E_UPSTREAM_CA"]


def coinbase_client():
    from coinbase.rest import RESTClient

    return RESTClient(api_key=os.environ["AGENT_CB_NAME"], api_secret=read(os.environ["AGENT_CB_PEM"]), timeout=20)


def kalshi_client(direct=False):
    import urllib3
    from kalshi_python_sync import Configuration, KalshiClient

    config = Configuration(host=KALSHI_BASE)
    if direct:
        config.ssl_ca_cert = os.environ["E2E_UPSTREAM_CA"]
    else:
        config.ssl_ca_cert = os.environ["SSL_CERT_FILE"]
        # urllib3 (the SDK's transport) does not read HTTPS_PROXY itself.
        config.proxy = os.environ["HTTPS_PROXY"]
        config.proxy_headers = urllib3.make_headers(
            proxy_basic_auth=f"{os.environ['E2E_PROXY_USER']}:{os.environ['E2E_PROXY_PASS']}"
        )
    # The SDK's documented set-up (its ApiClient.set_kalshi_auth is broken in
    # 3.2.0: NameError on KalshiAuth).
    config.api_key_id = os.environ["AGENT_KALSHI_ID"]
    config.private_key_pem = read(os.environ["AGENT_KALSHI_PEM"])
    return KalshiClient(config)


def expect_verified(payload):
    marker = payload.get("clavis_e2e") if isinstance(payload, dict) else None
    if not marker or marker.get("verified") is not True:
        raise SystemExit(f"upstream did not confirm verification: {payload!r}")
    return marker


def coinbase_get():
    client = coinbase_client()
    accounts = client.get_accounts(limit=5)
    print("get_accounts:", accounts.to_dict() if hasattr(accounts, "to_dict") else accounts)
    expect_verified(accounts.to_dict() if hasattr(accounts, "to_dict") else dict(accounts))


def coinbase_post():
    client = coinbase_client()
    order = client.market_order_buy(client_order_id="e2e-client-1", product_id="BTC-USD", quote_size="10")
    data = order.to_dict() if hasattr(order, "to_dict") else dict(order)
    print("market_order_buy:", data)
    marker = expect_verified(data)
    sent = json.loads(marker["body"])
    assert sent["product_id"] == "BTC-USD" and sent["client_order_id"] == "e2e-client-1", sent
    assert data["success"] is True, data


def kalshi_get():
    api = kalshi_client()
    raw = api.get_orders_without_preload_content(limit=5, status="resting")
    payload = json.loads(raw.data)
    print("get_orders:", raw.status, payload)
    assert raw.status == 200, raw.status
    expect_verified(payload)
    # The typed call (deserialising into the SDK's models) works too.
    typed = api.get_orders(limit=5, status="resting")
    print("get_orders (typed):", typed)


def kalshi_post():
    from kalshi_python_sync import CreateOrderRequest

    api = kalshi_client()
    request = CreateOrderRequest(
        ticker="KXBTC-25DEC31-T100000", client_order_id="e2e-k-1", side="yes", action="buy", count=3, type="limit", yes_price=42
    )
    raw = api.create_order_without_preload_content(request)
    payload = json.loads(raw.data)
    print("create_order:", raw.status, payload)
    assert raw.status in (200, 201), raw.status
    marker = expect_verified(payload)
    sent = json.loads(marker["body"])
    assert sent["ticker"] == "KXBTC-25DEC31-T100000" and sent["count"] == 3, sent


def coinbase_direct():
    from requests.exceptions import HTTPError

    direct_resolution()
    try:
        coinbase_client().get_accounts(limit=5)
    except HTTPError as e:
        status = e.response.status_code if e.response is not None else None
        print("refused:", status, e.response.text if e.response is not None else e)
        if status == 401:
            return
        raise SystemExit(f"expected 401, got {status}")
    raise SystemExit("the upstream accepted the SDK's throw-away key")


def kalshi_direct():
    from kalshi_python_sync import ApiException

    direct_resolution()
    # The real key id with the throw-away key: only the signature can fail.
    os.environ["AGENT_KALSHI_ID"] = os.environ["E2E_REAL_KALSHI_ID"]
    try:
        kalshi_client(direct=True).get_orders(limit=5)
    except ApiException as e:
        print("refused:", e.status, e.body)
        if e.status == 401:
            return
        raise SystemExit(f"expected 401, got {e.status}")
    raise SystemExit("the upstream accepted the SDK's throw-away key")


STEPS = {
    "coinbase-get": coinbase_get,
    "coinbase-post": coinbase_post,
    "kalshi-get": kalshi_get,
    "kalshi-post": kalshi_post,
    "coinbase-direct": coinbase_direct,
    "kalshi-direct": kalshi_direct,
}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in STEPS:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    STEPS[sys.argv[1]]()
