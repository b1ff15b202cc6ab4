#!/usr/bin/env python3
"""Fake Coinbase and Kalshi upstream that checks request signatures the way
the real APIs do, with the REAL keys' public halves (the ones clavis signs
with). A request signed with anything else (e.g. the SDK's throw-away key)
gets 401.

Usage: upstream.py --cert PEM --key PEM --ready-file PATH --record PATH
                   --coinbase-pub PEM --coinbase-key-name NAME
                   --kalshi-pub PEM --kalshi-key-id ID

Writes {"port": N} to --ready-file once listening; appends one JSON line per
request to --record: {host, method, path, ok, reason, headers}.
"""
import argparse
import base64
import http.server
import json
import ssl
import sys
import threading
import time
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

COINBASE_HOST = "api.coinbase.com"
KALSHI_HOSTS = {
    "external-api.kalshi.com",
    "api.elections.kalshi.com",
    "external-api.demo.kalshi.co",
    "demo-api.kalshi.co",
}


class Reject(Exception):
    pass


def b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def header_values(headers, name):
    return [v for k, v in headers if k.lower() == name.lower()]


def check_coinbase(cfg, method, path, headers):
    for name in ("cb-access-key", "cb-access-sign", "cb-access-timestamp"):
        if header_values(headers, name):
            raise Reject(f"unexpected {name} header")
    auth = header_values(headers, "authorization")
    if len(auth) != 1 or not auth[0].startswith("Bearer "):
        raise Reject(f"expected one Authorization: Bearer, got {len(auth)}")
    parts = auth[0][len("Bearer "):].split(".")
    if len(parts) != 3:
        raise Reject("not a JWT")
    head = json.loads(b64url(parts[0]))
    claims = json.loads(b64url(parts[1]))
    signature = b64url(parts[2])
    signed = f"{parts[0]}.{parts[1]}".encode()
    key = cfg.coinbase_pub
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            if head.get("alg") != "ES256" or len(signature) != 64:
                raise Reject(f"alg {head.get('alg')} / signature length {len(signature)}")
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
        else:
            if head.get("alg") != "EdDSA":
                raise Reject(f"alg {head.get('alg')}")
            key.verify(signature, signed)
    except InvalidSignature:
        raise Reject("JWT signature does not verify with the real key")
    if head.get("kid") != cfg.coinbase_key_name or claims.get("sub") != cfg.coinbase_key_name:
        raise Reject(f"kid/sub {head.get('kid')!r}/{claims.get('sub')!r}")
    if claims.get("iss") != "cdp":
        raise Reject(f"iss {claims.get('iss')!r}")
    want_uri = f"{method} {COINBASE_HOST}{urlsplit(path).path}"
    if claims.get("uri") != want_uri:
        raise Reject(f"uri {claims.get('uri')!r} != {want_uri!r}")
    now = time.time()
    nbf, exp = claims.get("nbf"), claims.get("exp")
    if not isinstance(nbf, int) or not isinstance(exp, int):
        raise Reject("nbf/exp not integers")
    if nbf > now + 5 or exp < now or exp - nbf != 120:
        raise Reject(f"nbf {nbf} exp {exp} now {now}")


def check_kalshi(cfg, method, path, headers):
    if header_values(headers, "authorization"):
        raise Reject("unexpected Authorization header")
    values = {}
    for name in ("kalshi-access-key", "kalshi-access-timestamp", "kalshi-access-signature"):
        v = header_values(headers, name)
        if len(v) != 1:
            raise Reject(f"{name}: expected one, got {len(v)}")
        values[name] = v[0]
    if values["kalshi-access-key"] != cfg.kalshi_key_id:
        raise Reject(f"key id {values['kalshi-access-key']!r}")
    ts = values["kalshi-access-timestamp"]
    if not ts.isdigit() or abs(int(ts) - time.time() * 1000) > 60_000:
        raise Reject(f"timestamp {ts!r}")
    message = (ts + method + urlsplit(path).path).encode()
    signature = base64.b64decode(values["kalshi-access-signature"], validate=True)
    try:
        if isinstance(cfg.kalshi_pub, ed25519.Ed25519PublicKey):
            cfg.kalshi_pub.verify(signature, message)
        else:
            cfg.kalshi_pub.verify(
                signature,
                message,
                padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH),
                hashes.SHA256(),
            )
    except InvalidSignature:
        raise Reject(f"signature does not verify with the real key over {message!r}")


def answer_for(host, method, path):
    p = urlsplit(path).path
    if host == COINBASE_HOST:
        if p.endswith("/accounts"):
            return {"accounts": [], "has_next": False, "cursor": "", "size": 0}
        if p.endswith("/orders"):
            return {
                "success": True,
                "success_response": {
                    "order_id": "e2e-order-1",
                    "product_id": "BTC-USD",
                    "side": "BUY",
                    "client_order_id": "e2e-client-1",
                },
            }
    else:
        if p.endswith("/portfolio/orders") and method == "GET":
            return {"orders": [], "cursor": ""}
        if p.endswith("/portfolio/balance"):
            return {"balance": 1234, "portfolio_value": 1234, "updated_ts": int(time.time())}
    return {}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    cfg = None
    lock = threading.Lock()

    def log_message(self, fmt, *args):
        sys.stderr.write("upstream: " + (fmt % args) + "\n")

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        headers = list(self.headers.items())
        ok, reason = True, "verified"
        try:
            if any(k.lower().startswith("proxy-") for k, _ in headers):
                raise Reject("a Proxy-* header reached the upstream")
            if host == COINBASE_HOST:
                check_coinbase(self.cfg, self.command, self.path, headers)
            elif host in KALSHI_HOSTS:
                check_kalshi(self.cfg, self.command, self.path, headers)
            else:
                raise Reject(f"unknown host {host!r}")
        except Reject as e:
            ok, reason = False, str(e)
        except Exception as e:  # malformed input is a rejection too
            ok, reason = False, f"{type(e).__name__}: {e}"
        record = {
            "host": host,
            "method": self.command,
            "path": self.path,
            "ok": ok,
            "reason": reason,
            "body": body.decode("utf-8", "replace"),
            "headers": headers,
        }
        with self.lock, open(self.cfg.record, "a") as f:
            f.write(json.dumps(record) + "\n")
        if ok:
            status, payload = (201 if self.command == "POST" and host in KALSHI_HOSTS else 200), answer_for(
                host, self.command, self.path
            )
            payload = dict(payload, clavis_e2e={"verified": True, "body": record["body"]})
        else:
            status, payload = 401, {"error": {"code": "authentication_error", "message": reason}}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any


def load_public(path):
    with open(path, "rb") as f:
        data = f.read()
    try:
        return serialization.load_pem_public_key(data)
    except ValueError:
        return serialization.load_pem_private_key(data, password=None).public_key()


def main():
    ap = argparse.ArgumentParser()
    for name in ("cert", "key", "ready-file", "record", "coinbase-pub", "coinbase-key-name", "kalshi-pub", "kalshi-key-id"):
        ap.add_argument("--" + name, required=True)
    args = ap.parse_args()
    args.coinbase_pub = load_public(args.coinbase_pub)
    args.kalshi_pub = load_public(args.kalshi_pub)
    Handler.cfg = args
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["http/1.1"])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    with open(args.ready_file + ".tmp", "w") as f:
        json.dump({"port": server.server_address[1]}, f)
    import os

    os.replace(args.ready_file + ".tmp", args.ready_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
