"""Every service but Postgres runs as two processes (`cargo xtask dev
--replicas 2`: two edges, two billing, two inference and two ledger on one
Postgres; each edge balances over every replica of the others). Paid
traffic from the official x402 clients goes through both edges; afterwards
every served `exact` call was recorded once and settled once with both
billing replicas' settlement workers running, and a batch-settlement
channel paid through both edges was served by one billing replica and
collected exactly."""
import asyncio
import time

import httpx
import openai
import pytest
from eth_account import Account

from conftest import PayingTransport, paying_client, run_cluster, wait_for_line
from dev_chain import DEMO_PAYER_KEY, PAY_TO, balance, fund, transfers
from test_batch_settlement import (ONE_USDC, batch_client, collect, deposits_by, block_number, escrow_state,
                                   our_channel, pay_many)
from test_metrics import labelled, scrape
from x402_helpers import MODEL, settled_receipt


@pytest.fixture(scope="module")
def replicas():
    for cluster in run_cluster("--replicas", "2", "--claim-interval", "30m"):
        def listed(name):
            return wait_for_line(cluster.log, name).split()[-2:]
        cluster.edges = listed("edge (OpenAI HTTP)")
        cluster.billings = ["http://" + b for b in listed("billing (gRPC)")]
        yield cluster


def test_paid_calls_through_both_edges_are_recorded_and_settled_once(replicas):
    payer = paying_client(DEMO_PAYER_KEY)
    ids = []
    for n in range(12):
        edge = replicas.edges[n % 2]
        http = httpx.Client(transport=PayingTransport(payer), timeout=120)
        sdk = openai.OpenAI(base_url=edge + "/v1", api_key="unused", max_retries=0, http_client=http)
        raw = sdk.chat.completions.with_raw_response.create(
            model=MODEL, max_tokens=2, temperature=0, messages=[{"role": "user", "content": f"Hi {n}"}])
        assert raw.parse().choices[0].message.content is not None
        ids.append(raw.headers["x-rungate-receipt"])

    # Each call settled once: the settlement transactions (the worker packs
    # several authorizations into one) hold exactly one transfer per call.
    settled = [settled_receipt(replicas.edges[0], i, timeout=90) for i in ids]
    assert [r["settlement"]["status"] for r in settled] == ["settled"] * 12
    payer_address = Account.from_key(DEMO_PAYER_KEY).address.lower()
    moved = [t for tx in {r["settlement"]["transaction"] for r in settled}
             for t in transfers(replicas.chain_url, tx) if t[0] == payer_address]
    assert len(moved) == 12 and {to for _, to, _ in moved} == {PAY_TO.lower()}
    assert sum(amount for *_, amount in moved) == sum(int(r["amount"]) for r in settled)
    # Both edges served, and both billing replicas' settlement workers run
    # (each reads the backlog every pass) and took the payments between them.
    for edge in replicas.edges:
        _, _, series = scrape(edge)
        [served] = labelled(series, "http_server_request_duration_count", http_route="/v1/chat/completions",
                            http_request_method="POST", http_response_status_code="200")
        assert served >= 6
    authorized = 0
    for billing in replicas.billings:
        _, _, series = scrape(billing)
        assert "rungate_settlement_backlog" in series, billing
        authorized += sum(labelled(series, "rungate_payments_authorized_total", scheme="exact"))
    assert authorized == 12


def test_a_channel_paid_through_both_edges_is_served_by_one_billing_and_collected_exactly(replicas):
    chain = replicas.chain_url
    account = fund(chain, 2 * ONE_USDC)
    start = block_number(chain)
    client, _ = batch_client(account, chain)
    ids = []
    for edge in replicas.edges * 2:
        ids += asyncio.run(pay_many(edge, client, 5))
    assert len(ids) == 20
    assert deposits_by(chain, account.address, start) == [ONE_USDC]

    # One replica served every call of the channel (the other sent them there).
    earned = []
    for billing in replicas.billings:
        _, _, series = scrape(billing)
        earned.append(sum(labelled(series, "rungate_earned_total", scheme="batch-settlement")))
    assert sorted(earned) == [0, 20], earned

    time.sleep(0.5)  # the coalesced voucher write
    before = balance(chain, PAY_TO)
    for billing in replicas.billings:
        collect(billing)
    assert balance(chain, PAY_TO) - before == 20, "exactly 20 calls x 1"
    assert escrow_state(chain, our_channel(replicas.edges[0], account)) == (ONE_USDC, 20)
