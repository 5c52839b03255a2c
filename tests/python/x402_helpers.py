"""Building x402 payments by hand (for the refusal tests) and reading what
RunGate answers: 402 requirements, payment response headers, receipts."""
import base64
import json
import time
import urllib.error
import urllib.request

from dev_chain import PAY_TO, sign

MODEL = "smollm2-135m-instruct"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}


def b64json(value):
    return base64.b64encode(json.dumps(value).encode()).decode()


def unb64json(text):
    return json.loads(base64.b64decode(text))


def post(url, body=BODY, headers=None):
    """POSTs JSON; returns (status, headers, parsed body)."""
    request = urllib.request.Request(
        url + "/v1/chat/completions", json.dumps(body).encode(),
        {"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, r.headers, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read() or b"null")


def required(url, body=BODY):
    """The 402 for `body`: (v1 body, v2 PaymentRequired from the header)."""
    status, headers, v1 = post(url, body)
    assert status == 402, v1
    return v1, unb64json(headers["PAYMENT-REQUIRED"])


def v2_payment(account, url, body=BODY, accepted=None, **fields):
    """A v2 PAYMENT-SIGNATURE for the first offer, signed by `account`;
    `fields` override the signed authorization's (to, value, valid_after,
    valid_before, nonce, name)."""
    _, v2 = required(url, body)
    offer = v2["accepts"][0]
    args = {"to": offer["payTo"], "value": int(offer["amount"]), **fields}
    message, signed = sign(account, **args)
    payload = {
        "x402Version": 2,
        "resource": v2["resource"],
        "accepted": accepted if accepted is not None else offer,
        "payload": {
            "signature": "0x" + bytes(signed.signature).hex(),
            "authorization": {
                "from": message["from"], "to": message["to"], "value": str(message["value"]),
                "validAfter": str(message["validAfter"]), "validBefore": str(message["validBefore"]),
                "nonce": "0x" + message["nonce"].hex(),
            },
        },
    }
    return payload


def pay(url, payload, body=BODY, header="PAYMENT-SIGNATURE"):
    return post(url, body, {header: b64json(payload)})


def receipt(url, request_id):
    with urllib.request.urlopen(f"{url}/v1/receipts/{request_id}", timeout=10) as r:
        return json.load(r)


def settled_receipt(url, request_id, timeout=30):
    """Waits for the call's settlement to reach a final state."""
    deadline = time.time() + timeout
    while True:
        found = receipt(url, request_id)
        if found.get("settlement", {}).get("status") in ("settled", "failed", "voided", "expired"):
            return found
        if time.time() > deadline:
            raise AssertionError(f"not settled in {timeout}s: {found}")
        time.sleep(0.2)


def assert_pays_to(transfers, payer, amount):
    """The settlement transaction moved exactly `amount` from payer to payTo, once."""
    assert transfers == [(payer.lower(), PAY_TO.lower(), amount)], transfers
