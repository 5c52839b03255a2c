"""Billing as a batch-settlement facilitator for another x402 seller, driven
by the official x402 SDK's own parts: the seller's HTTPFacilitatorClientSync
(verify, settle, supported), the payer's BatchSettlementEvmScheme client, and
the SDK's payload types for the seller's claim, settle and refund actions.
A deposit is checked and submitted, vouchers are checked against the chain,
our receiverAuthorizer signs the seller's claim and refund, and the chain
shows exactly what was paid, collected and returned."""
import asyncio

import pytest
from eth_account import Account
from x402 import x402Client
from x402.http import FacilitatorConfig, HTTPFacilitatorClientSync
from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme
from x402.mechanisms.evm.batch_settlement.client.channel import update_channel_from_settle
from x402.mechanisms.evm.batch_settlement.client.config import BatchSettlementEvmSchemeOptions
from x402.mechanisms.evm.batch_settlement.client.storage import InMemoryClientChannelStorage
from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
from x402.mechanisms.evm.batch_settlement.types import (ChannelConfig, ClaimPayload, EnrichedRefundPayload,
                                                        SettlePayload, VoucherClaim)
from x402.mechanisms.evm.signers import EthAccountSignerWithRPC
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements

import dev_chain
from dev_chain import TOKEN, balance, fund
from test_batch_settlement import escrow_state

NETWORK = "eip155:8453"
PRICE = 10
DEPOSIT = 1000
SELLER = Account.create().address  # another x402 seller, not RunGate


def requirements(authorizer, pay_to=SELLER):
    return PaymentRequirements.model_validate({
        "scheme": "batch-settlement", "network": NETWORK, "asset": TOKEN, "amount": str(PRICE), "payTo": pay_to,
        "maxTimeoutSeconds": 60, "extra": {"receiverAuthorizer": authorizer, "withdrawDelay": 900,
                                           "name": "USD Coin", "version": "2", "minDeposit": str(DEPOSIT)}})


class Payer:
    """The official batch-settlement client, told what the seller charged
    (a seller's PAYMENT-RESPONSE would tell it)."""

    def __init__(self, chain_url, amount):
        self.account = fund(chain_url, amount)
        self.signer = EthAccountSignerWithRPC(self.account, rpc_url=chain_url)
        self.storage = InMemoryClientChannelStorage()
        self.scheme = BatchSettlementEvmScheme(self.signer, BatchSettlementEvmSchemeOptions(storage=self.storage))
        self.client = x402Client().set_spend_controls({"allowed_assets": [{"network": NETWORK, "asset": TOKEN}]})
        self.client.register(NETWORK, self.scheme)

    def pay(self, offer):
        return asyncio.run(self.client.create_payment_payload(PaymentRequired(accepts=[offer])))

    def charged(self, payload, offer):
        local = {"channel_id": payload.payload.get("voucher", {}).get("channelId"), "request_amount": offer.amount}
        if payload.payload["type"] == "deposit":
            local["deposit_amount"] = payload.payload["deposit"]["amount"]
        update_channel_from_settle(self.storage, {"server": {"charged_amount": offer.amount}, "local": local})


@pytest.fixture(scope="module")
def seller(cluster):
    facilitator = HTTPFacilitatorClientSync(FacilitatorConfig(url=cluster.billing_url))
    [kind] = [k for k in facilitator.get_supported().kinds if k.scheme == "batch-settlement"]
    assert kind.network == NETWORK and kind.x402_version == 2
    yield facilitator, kind.extra["receiverAuthorizer"]
    facilitator.close()


def action(offer, payload):
    """A seller's settle action, as the SDK's server wraps it for its facilitator."""
    return PaymentPayload(x402_version=2, accepted=offer, payload=payload.to_dict())


def test_a_seller_takes_a_deposit_and_vouchers_then_claims_sweeps_and_refunds_through_us(cluster, seller):
    facilitator, authorizer = seller
    chain = cluster.chain_url
    offer = requirements(authorizer)
    payer = Payer(chain, 5000)

    deposit = payer.pay(offer)
    assert deposit.payload["type"] == "deposit"
    verdict = facilitator.verify(deposit, offer)
    assert verdict.is_valid, verdict
    assert balance(chain, payer.account.address) == 5000, "verifying moves nothing"
    settled = facilitator.settle(deposit, offer)
    assert settled.success and settled.transaction, settled
    channel = deposit.payload["voucher"]["channelId"]
    assert escrow_state(chain, channel) == (DEPOSIT, 0)
    assert balance(chain, payer.account.address) == 5000 - DEPOSIT
    payer.charged(deposit, offer)

    for n in range(2, 7):
        voucher = payer.pay(offer)
        assert voucher.payload["type"] == "voucher"
        assert voucher.payload["voucher"]["maxClaimableAmount"] == str(n * PRICE)
        verdict = facilitator.verify(voucher, offer)
        assert verdict.is_valid, verdict
        assert verdict.extra["balance"] == str(DEPOSIT)
        payer.charged(voucher, offer)
    latest = voucher.payload

    # The seller claims the latest voucher (our authorizer signs), then sweeps.
    config = ChannelConfig.from_dict(latest["channelConfig"])
    earned = latest["voucher"]["maxClaimableAmount"]
    claim = ClaimPayload(claims=[VoucherClaim(channel=config, max_claimable_amount=earned,
                                              signature=latest["voucher"]["signature"], total_claimed=earned)])
    claimed = facilitator.settle(action(offer, claim), offer)
    assert claimed.success, claimed
    assert escrow_state(chain, channel) == (DEPOSIT, 6 * PRICE)
    swept = facilitator.settle(action(offer, SettlePayload(receiver=SELLER, token=TOKEN)), offer)
    assert swept.success, swept
    assert balance(chain, SELLER) == 6 * PRICE

    # The payer asks for the rest back: the seller hands us the refund to sign and submit.
    refund = EnrichedRefundPayload(channel_config=config, voucher=sign_voucher(payer.signer, channel, earned, NETWORK),
                                   amount=str(DEPOSIT - 6 * PRICE), refund_nonce="0")
    refunded = facilitator.settle(action(offer, refund), offer)
    assert refunded.success, refunded
    assert balance(chain, payer.account.address) == 5000 - 6 * PRICE
    assert escrow_state(chain, channel) == (6 * PRICE, 6 * PRICE)
    # The same refund again is refused by the escrow (its nonce moved on): nothing moves twice.
    again = facilitator.settle(action(offer, refund), offer)
    assert not again.success and again.error_reason == "invalid_batch_settlement_evm_refund_transaction_failed"
    assert balance(chain, payer.account.address) == 5000 - 6 * PRICE


def test_verify_gives_the_schemes_reason_and_nothing_moves(cluster, seller):
    facilitator, authorizer = seller
    chain = cluster.chain_url
    offer = requirements(authorizer)
    payer = Payer(chain, 2000)
    deposit = payer.pay(offer)
    assert facilitator.settle(deposit, offer).success
    payer.charged(deposit, offer)
    voucher = payer.pay(offer)
    channel = voucher.payload["voucher"]["channelId"]

    def refused(payload, reason, against=offer):
        verdict = facilitator.verify(payload, against)
        assert not verdict.is_valid and verdict.invalid_reason == reason, verdict

    forged = voucher.model_copy(deep=True)
    forged.payload["voucher"] = sign_voucher(EthAccountSignerWithRPC(Account.create(), rpc_url=chain), channel,
                                             2 * PRICE, NETWORK).to_dict()
    refused(forged, "invalid_batch_settlement_evm_voucher_signature")
    too_much = voucher.model_copy(deep=True)
    too_much.payload["voucher"] = sign_voucher(payer.signer, channel, DEPOSIT + 1, NETWORK).to_dict()
    refused(too_much, "invalid_batch_settlement_evm_cumulative_exceeds_balance")
    elsewhere = requirements(authorizer, pay_to=Account.create().address)
    refused(voucher.model_copy(update={"accepted": elsewhere}), "invalid_batch_settlement_evm_receiver_mismatch",
            against=elsewhere)

    # A claim for a channel that names someone else's authorizer is not ours to sign.
    other = requirements(Account.create().address)
    config = ChannelConfig.from_dict({**voucher.payload["channelConfig"], "receiverAuthorizer": other.extra["receiverAuthorizer"]})
    claim = ClaimPayload(claims=[VoucherClaim(channel=config, max_claimable_amount="10",
                                              signature=voucher.payload["voucher"]["signature"], total_claimed="10")])
    denied = facilitator.settle(action(other, claim), other)
    assert not denied.success and denied.error_reason == "invalid_batch_settlement_evm_authorizer_address_mismatch"
    # RunGate's own channels are billing's to collect (claims before any
    # refund): the facilitator signs no refund for one.
    ours = ChannelConfig.from_dict({**voucher.payload["channelConfig"], "receiver": dev_chain.PAY_TO})
    ours_id = compute_channel_id(ours, NETWORK)
    refund = EnrichedRefundPayload(channel_config=ours, voucher=sign_voucher(payer.signer, ours_id, 0, NETWORK),
                                   amount="1", refund_nonce="0")
    rungate = requirements(authorizer, pay_to=dev_chain.PAY_TO)
    denied = facilitator.settle(action(rungate, refund), rungate)
    assert not denied.success and denied.error_reason == "invalid_batch_settlement_evm_receiver_mismatch"
    assert escrow_state(chain, channel) == (DEPOSIT, 0)
    assert balance(chain, SELLER) in (0, 6 * PRICE)  # only the other test's sweep, if it ran first
