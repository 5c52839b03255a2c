"""Paying for chat completions with x402 against `cargo xtask dev` (deferred
settlement) and a second cluster settling in sync: the official PyPI x402
client (v2) and the OpenAI SDK over it pay; money moves exactly once on the
dev chain; the ledger's receipt shows the settlement; refused payments get
their reason and move nothing."""
import asyncio
import concurrent.futures
import json
import subprocess
import sys
import time
import urllib.request

import openai
import pytest
from eth_account import Account
from x402.http.clients import x402HttpxClient

from conftest import paying_client
from dev_chain import PAY_TO, balance, fund, nonce_used, send_as, calldata, transfers
from x402_helpers import (BODY, MODEL, assert_pays_to, b64json, pay, post, receipt, required,
                          settled_receipt, unb64json, v2_payment)

ELSEWHERE = "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc"
FRANCE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


def test_an_unpaid_call_gets_402_with_v1_body_and_v2_header(edge_url):
    status, headers, v1 = post(edge_url)
    assert status == 402
    assert headers["Cache-Control"] == "no-store"
    assert v1["x402Version"] == 1 and v1["error"]
    [offer] = v1["accepts"]
    assert offer["scheme"] == "exact" and offer["network"] == "base"
    assert offer["maxAmountRequired"] == "1"  # the list price: 0.000001 USDC a call
    assert offer["payTo"] == PAY_TO and offer["extra"] == {"name": "USD Coin", "version": "2"}
    assert offer["resource"].endswith("/v1/chat/completions")
    v2 = unb64json(headers["PAYMENT-REQUIRED"])
    assert v2["x402Version"] == 2 and v2["resource"]["url"] == offer["resource"]
    assert v2["accepts"][0]["network"] == "eip155:8453" and v2["accepts"][0]["amount"] == "1"
    for exposed in ("payment-required", "payment-response", "x-payment-response"):
        assert exposed in headers["Access-Control-Expose-Headers"]


def test_the_same_request_gets_the_same_quote(edge_url):
    assert required(edge_url) == required(edge_url)


def test_bad_requests_are_reported_before_payment_is_asked(edge_url):
    assert post(edge_url, {"model": MODEL})[0] == 400
    status, _, body = post(edge_url, {**BODY, "model": "no-such-model"})
    assert status == 404 and body["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("header", ["not base64!", b64json("[1]")[:-2], "e30"])
def test_a_malformed_payment_header_is_400(edge_url, header):
    status, _, body = post(edge_url, headers={"X-PAYMENT": header})
    assert status == 400, body
    assert "X-PAYMENT" in body["error"]["message"] or "x-payment" in body["error"]["message"]


def check_paid(chain_url, edge_url, payer, before, headers, version=2):
    """What a payer checks after a paid call: the response header says
    success, the receipt shows the settlement, the chain moved the quote once."""
    name = "PAYMENT-RESPONSE" if version == 2 else "X-PAYMENT-RESPONSE"
    settle = unb64json(headers[name])
    assert settle["success"] is True and settle["payer"] == payer.address
    assert settle["network"] == ("eip155:8453" if version == 2 else "base")
    request_id = headers["x-rungate-receipt"]
    found = settled_receipt(edge_url, request_id)
    assert found["settlement"]["status"] == "settled", found
    assert found["payer"] == payer.address.lower() and found["amount"] == "1"
    tx = found["settlement"]["transaction"]
    assert_pays_to(transfers(chain_url, tx), payer.address, 1)
    assert balance(chain_url, payer.address) == before - 1
    return settle, found


@pytest.mark.parametrize("stream", [False, True])
def test_the_x402_httpx_client_pays_through_the_openai_sdk(chain_url, edge_url, stream):
    payer = fund(chain_url, 100)

    async def ask():
        async with x402HttpxClient(paying_client(payer.key.hex(), sync=False), timeout=120) as http:
            client = openai.AsyncOpenAI(base_url=edge_url + "/v1", api_key="unused", http_client=http, max_retries=0)
            raw = await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=FRANCE, max_tokens=16, temperature=0, stream=stream)
            parsed = raw.parse()
            if stream:
                text = "".join([c.choices[0].delta.content or "" async for c in parsed if c.choices])
            else:
                text = parsed.choices[0].message.content
            return raw, text

    raw, text = asyncio.run(ask())
    assert "Paris" in text
    check_paid(chain_url, edge_url, payer, 100, raw.headers)


def test_a_v1_x_payment_is_answered_with_x_payment_response(chain_url, edge_url):
    payer = fund(chain_url, 10)
    payment = v2_payment(payer, edge_url)
    v1 = {"x402Version": 1, "scheme": "exact", "network": "base", "payload": payment["payload"]}
    status, headers, body = pay(edge_url, v1, header="X-PAYMENT")
    assert status == 200, body
    assert "PAYMENT-RESPONSE" not in headers
    check_paid(chain_url, edge_url, payer, 10, headers, version=1)


def refused(edge_url, chain_url, payer, payment, reason, before):
    status, headers, body = pay(edge_url, payment)
    assert status == 402, body
    assert body["error"] == reason, body
    assert unb64json(headers["PAYMENT-REQUIRED"])["error"] == reason
    assert body["accepts"], "a refused payment is answered with what would be accepted"
    time.sleep(0.6)  # past a settlement pass of the worker
    assert balance(chain_url, payer.address) == before, "a refused payment moves no money"


def test_unsupported_versions_schemes_networks_and_offers_are_refused(chain_url, edge_url):
    payer = fund(chain_url, 10)
    payment = v2_payment(payer, edge_url)
    refused(edge_url, chain_url, payer, {**payment, "x402Version": 3}, "invalid_x402_version", 10)
    for field, value, reason in [
        ("scheme", "upto", "unsupported_scheme"),
        ("network", "eip155:84532", "invalid_network"),
        ("amount", "0", "invalid_payment_requirements"),
        ("payTo", payer.address, "invalid_payment_requirements"),
    ]:
        accepted = {**payment["accepted"], field: value}
        refused(edge_url, chain_url, payer, {**payment, "accepted": accepted}, reason, 10)
    refused(edge_url, chain_url, payer, {**payment, "payload": {"signature": "0x"}}, "invalid_payload", 10)


@pytest.mark.parametrize("fields,reason", [
    ({"name": "USDC"}, "invalid_exact_evm_payload_signature"),
    ({"to": ELSEWHERE}, "invalid_exact_evm_payload_recipient_mismatch"),
    ({"valid_after": int(time.time()) + 3600}, "invalid_exact_evm_payload_authorization_valid_after"),
    ({"valid_before": int(time.time()) + 3}, "invalid_exact_evm_payload_authorization_valid_before"),
    ({"value": 2}, "invalid_exact_evm_payload_authorization_value"),
])
def test_each_authorization_check_gives_its_reason(chain_url, edge_url, fields, reason):
    payer = fund(chain_url, 10)
    refused(edge_url, chain_url, payer, v2_payment(payer, edge_url, **fields), reason, 10)


def test_a_signature_by_someone_else_is_refused(chain_url, edge_url):
    payer, thief = fund(chain_url, 10), Account.create()
    payment = v2_payment(thief, edge_url)
    payment["payload"]["authorization"]["from"] = payer.address
    refused(edge_url, chain_url, payer, payment, "invalid_exact_evm_payload_signature", 10)


def test_a_high_s_copy_of_a_valid_signature_is_refused(chain_url, edge_url):
    payer = fund(chain_url, 10)
    payment = v2_payment(payer, edge_url)
    sig = bytes.fromhex(payment["payload"]["signature"][2:])
    n = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141
    r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
    payment["payload"]["signature"] = "0x" + (r + (n - s).to_bytes(32, "big") + bytes([55 - v])).hex()
    refused(edge_url, chain_url, payer, payment, "invalid_exact_evm_payload_signature", 10)


def test_a_payer_without_the_funds_is_refused(chain_url, edge_url):
    payer = fund(chain_url, 0)
    refused(edge_url, chain_url, payer, v2_payment(payer, edge_url), "insufficient_funds", 0)


def test_a_nonce_used_once_is_refused_after(chain_url, edge_url):
    payer = fund(chain_url, 10)
    payment = v2_payment(payer, edge_url)
    status, headers, _ = pay(edge_url, payment)
    assert status == 200
    settled_receipt(edge_url, headers["x-rungate-receipt"])
    refused(edge_url, chain_url, payer, payment, "invalid_exact_evm_nonce_already_used", 9)


def test_one_payment_sent_twenty_times_at_once_is_served_and_settled_once(chain_url, edge_url):
    payer = fund(chain_url, 10)
    payment = v2_payment(payer, edge_url)
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: pay(edge_url, payment), range(20)))
    served = [r for r in results if r[0] == 200]
    rejected = [r for r in results if r[0] == 402]
    assert len(served) == 1 and len(rejected) == 19, [r[0] for r in results]
    assert all(r[2]["error"] == "invalid_exact_evm_nonce_already_used" for r in rejected)
    found = settled_receipt(edge_url, served[0][1]["x-rungate-receipt"])
    assert_pays_to(transfers(chain_url, found["settlement"]["transaction"]), payer.address, 1)
    time.sleep(1.0)
    assert balance(chain_url, payer.address) == 9


def stream_pay(url, payer, body, while_streaming=None):
    """Pays for a streamed call by hand; runs `while_streaming` after the first event."""
    payment = v2_payment(payer, url, body=body)
    request = urllib.request.Request(
        url + "/v1/chat/completions", json.dumps(body).encode(),
        {"content-type": "application/json", "PAYMENT-SIGNATURE": b64json(payment)})
    with urllib.request.urlopen(request, timeout=120) as r:
        text = r.readline().decode()
        if while_streaming:
            while_streaming()
        text += r.read().decode()
        assert text.rstrip().endswith("data: [DONE]"), text
        return r.status, r.headers, payment


def move_funds_away(chain_url, payer, amount):
    away = calldata("transfer(address,uint256)", ["address", "uint256"], [ELSEWHERE, amount])
    assert send_as(chain_url, payer, away)


def test_funds_moved_away_before_settlement_fail_it_once_and_move_nothing(chain_url, edge_url):
    """The payer empties its wallet while its call streams (authorized, not
    yet due): the deferred settlement fails, is recorded failed, moves nothing."""
    payer = fund(chain_url, 1)
    body = {**BODY, "stream": True}
    status, headers, payment = stream_pay(
        edge_url, payer, body, while_streaming=lambda: move_funds_away(chain_url, payer, 1))
    assert status == 200
    found = settled_receipt(edge_url, headers["x-rungate-receipt"])
    assert found["settlement"]["status"] == "failed", found
    assert balance(chain_url, payer.address) == 0
    nonce = bytes.fromhex(payment["payload"]["authorization"]["nonce"][2:])
    assert not nonce_used(chain_url, payer.address, nonce)


@pytest.mark.parametrize("stream", [False, True])
def test_sync_settlement_answers_with_the_transaction(sync_cluster, stream):
    url, chain = sync_cluster.edge_url, sync_cluster.chain_url
    payer = fund(chain, 10)
    body = {**BODY, "stream": stream}
    if stream:
        status, headers, _ = stream_pay(url, payer, body)
    else:
        status, headers, _ = pay(url, v2_payment(payer, url, body=body), body=body)
    assert status == 200
    settle = unb64json(headers["PAYMENT-RESPONSE"])
    assert settle["success"] is True and settle["transaction"].startswith("0x"), settle
    # Settled before the response was answered: the money already moved.
    assert balance(chain, payer.address) == 9
    assert_pays_to(transfers(chain, settle["transaction"]), payer.address, 1)
    found = receipt(url, headers["x-rungate-receipt"])
    assert found["settlement"] == {"scheme": "exact", "network": "eip155:8453", "status": "settled",
                                   "transaction": settle["transaction"]}


def test_a_failed_sync_settlement_is_402_and_moves_nothing(sync_cluster):
    """Billing's cached balance still shows funds the payer has moved away:
    the call is authorized, its sync settlement fails, and the answer is a
    402 carrying the failed PAYMENT-RESPONSE; nothing moves."""
    url, chain = sync_cluster.edge_url, sync_cluster.chain_url
    payer = fund(chain, 2)
    assert pay(url, v2_payment(payer, url))[0] == 200  # caches the balance
    move_funds_away(chain, payer, 1)
    status, headers, body = pay(url, v2_payment(payer, url))
    assert status == 402, body
    settle = unb64json(headers["PAYMENT-RESPONSE"])
    assert settle["success"] is False and settle["errorReason"] == "transaction_failed"
    assert balance(chain, payer.address) == 0
    assert "choices" not in body
    assert settled_receipt(url, headers["x-rungate-receipt"])["settlement"]["status"] == "failed"


def test_the_client_example_the_cluster_prints_runs_and_pays(cluster):
    """`cargo xtask dev` prints a ready-to-run paying client: it must work as printed."""
    lines = list(cluster.log)
    start = next(i for i, line in enumerate(lines) if line.startswith("python3 - <<'PY'"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == "PY")
    script = "".join(lines[start + 1:end])
    run = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Paris" in run.stdout, run.stdout
