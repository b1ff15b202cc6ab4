#!/usr/bin/env python3
"""The agent's side of an approval, with the official Stripe SDK.

    agent.py refund CHARGE AMOUNT

Creates a refund the way an agent would (placeholder key; HTTPS_PROXY and
REQUESTS_CA_BUNDLE from the environment point at clavis) and prints one JSON
line: {"ok": true, "id", "amount", "charge"} on success, else
{"ok": false, "status", "error_class", "text", "approval_id", "clavis_error",
"json_approval_id"} from the SDK's exception, so the caller can check what an
agent (or a person reading its logs) gets to see. Exit 0 on success, 3 on a
Stripe error.
"""
import json
import os
import sys

import stripe


def refund(charge: str, amount: int) -> int:
    stripe.api_key = "sk_test_placeholder"
    stripe.max_network_retries = 0
    # stripe-python ships its own CA file and ignores REQUESTS_CA_BUNDLE.
    stripe.ca_bundle_path = os.environ["REQUESTS_CA_BUNDLE"]
    try:
        r = stripe.Refund.create(charge=charge, amount=amount)
    except stripe.StripeError as e:
        headers = {k.lower(): v for k, v in (e.headers or {}).items()}
        body = e.json_body if isinstance(e.json_body, dict) else {}
        print(json.dumps({
            "ok": False,
            "status": e.http_status,
            "error_class": type(e).__name__,
            "text": str(e),
            "approval_id": headers.get("clavis-approval"),
            "clavis_error": headers.get("clavis-error"),
            "json_approval_id": body.get("approval_id"),
        }))
        return 3
    print(json.dumps({"ok": True, "id": r.id, "amount": r.amount, "charge": r.charge}))
    return 0


def main() -> int:
    if len(sys.argv) != 4 or sys.argv[1] != "refund":
        print(__doc__, file=sys.stderr)
        return 2
    return refund(sys.argv[2], int(sys.argv[3]))


if __name__ == "__main__":
    sys.exit(main())
