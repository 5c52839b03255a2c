"""Billing as a standard x402 facilitator (POST /verify, POST /settle,
GET /supported on its port), for any seller's requirements on its networks."""
import json
import urllib.request

from dev_chain import PAY_TO, TOKEN, balance, fund, sign, transfers

SELLER = "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc"  # some other x402 seller


def call(url, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.load(r)


def requirements(amount):
    return {"scheme": "exact", "network": "eip155:8453", "amount": str(amount), "asset": TOKEN,
            "payTo": SELLER, "maxTimeoutSeconds": 60, "extra": {"name": "USD Coin", "version": "2"}}


def request(payer, amount, offered=None, **fields):
    offered = offered or requirements(amount)
    message, signed = sign(payer, to=fields.pop("to", SELLER), value=fields.pop("value", amount), **fields)
    payload = {
        "x402Version": 2, "accepted": offered,
        "payload": {"signature": "0x" + bytes(signed.signature).hex(), "authorization": {
            "from": message["from"], "to": message["to"], "value": str(message["value"]),
            "validAfter": str(message["validAfter"]), "validBefore": str(message["validBefore"]),
            "nonce": "0x" + message["nonce"].hex()}},
    }
    return {"x402Version": 2, "paymentPayload": payload, "paymentRequirements": offered}


def test_supported_lists_exact_on_the_configured_network(cluster):
    supported = call(cluster.billing_url, "/supported")
    assert {"x402Version": 2, "scheme": "exact", "network": "eip155:8453"} in supported["kinds"]
    assert {"x402Version": 1, "scheme": "exact", "network": "base"} in supported["kinds"]
    assert supported["signers"]["eip155:8453"], supported


def test_verify_then_settle_moves_the_sellers_amount_once(cluster):
    payer = fund(cluster.chain_url, 50)
    body = request(payer, 7)
    verdict = call(cluster.billing_url, "/verify", body)
    assert verdict == {"isValid": True, "payer": payer.address}
    assert balance(cluster.chain_url, payer.address) == 50, "verifying moves nothing"
    settled = call(cluster.billing_url, "/settle", body)
    assert settled["success"] is True and settled["network"] == "eip155:8453", settled
    assert transfers(cluster.chain_url, settled["transaction"]) == [(payer.address.lower(), SELLER.lower(), 7)]
    again = call(cluster.billing_url, "/settle", body)
    assert again["success"] is False and again["errorReason"] == "invalid_exact_evm_nonce_already_used"
    assert balance(cluster.chain_url, payer.address) == 43


def test_verify_gives_the_reason_for_a_bad_payment(cluster):
    payer = fund(cluster.chain_url, 5)
    for body, reason in [
        (request(payer, 7), "insufficient_funds"),
        (request(payer, 3, value=2), "invalid_exact_evm_payload_authorization_value"),
        (request(payer, 3, to=PAY_TO), "invalid_exact_evm_payload_recipient_mismatch"),
        ({**request(payer, 3), "paymentRequirements": {**requirements(3), "network": "eip155:1"}},
         "invalid_network"),
    ]:
        verdict = call(cluster.billing_url, "/verify", body)
        assert verdict["isValid"] is False and verdict["invalidReason"] == reason, (reason, verdict)
    assert balance(cluster.chain_url, payer.address) == 5


def test_an_external_facilitator_verifies_and_settles_paid_calls(facilitated_cluster):
    """Billing switched to an external facilitator (here: billing's own
    facilitator API over HTTP, as any other would be reached)."""
    from x402_helpers import BODY, assert_pays_to, pay, receipt, unb64json, v2_payment
    url, chain = facilitated_cluster.edge_url, facilitated_cluster.chain_url
    payer = fund(chain, 10)
    status, headers, body = pay(url, v2_payment(payer, url))
    assert status == 200, body
    settle = unb64json(headers["PAYMENT-RESPONSE"])
    assert settle["success"] is True and settle["transaction"].startswith("0x"), settle
    assert_pays_to(transfers(chain, settle["transaction"]), payer.address, 1)
    assert receipt(url, headers["x-rungate-receipt"])["settlement"]["status"] == "settled"
    broke = fund(chain, 0)
    status, _, body = pay(url, v2_payment(broke, url))
    assert status == 402 and body["error"] == "insufficient_funds", body
    assert balance(chain, payer.address) == 9


def test_an_external_facilitator_submits_batch_settlement_deposits(facilitated_cluster):
    """With `--facilitator-url`, a batch-settlement deposit goes through the
    facilitator's /settle (here billing's own API over HTTP) and the calls
    it pays are served as usual."""
    import asyncio
    from test_batch_settlement import (ONE_USDC, batch_client, block_number, deposits_by, escrow_state,
                                       our_channel, pay_many)
    url, chain = facilitated_cluster.edge_url, facilitated_cluster.chain_url
    account = fund(chain, 2 * ONE_USDC)
    start = block_number(chain)
    client, _ = batch_client(account, chain)
    assert len(asyncio.run(pay_many(url, client, 3))) == 3
    assert deposits_by(chain, account.address, start) == [ONE_USDC]
    assert escrow_state(chain, our_channel(url, account)) == (ONE_USDC, 0)
    assert any("facilitator: deposit submitted" in line for line in facilitated_cluster.log)
