"""x402 batch-settlement with the official PyPI client (x402 2.25
BatchSettlementEvmScheme, unmodified) against `cargo xtask dev`: one deposit,
then a voucher per call, streamed and not, through x402HttpxClient and the
OpenAI SDK; one claim and one sweep collect exactly what was served; the
client resyncs through the corrective 402 when its state is lost; a payer's
withdrawal is claimed before it can finalize; a refund returns exactly the
unspent deposit. Receipts and the chain agree to the unit."""
import asyncio
import time

import grpc
import openai
from eth_account import Account
from x402 import x402Client
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme
from x402.mechanisms.evm.batch_settlement.constants import BATCH_SETTLEMENT_ADDRESS
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
from x402.mechanisms.evm.signers import EthAccountSignerWithRPC

import dev_chain
from dev_chain import PAY_TO, balance, calldata, fund, rpc
from x402_helpers import MODEL, receipt, required

NETWORK = "eip155:8453"
QUESTION = [{"role": "user", "content": "Say hi."}]
ONE_USDC = 1_000_000


def batch_client(account, chain_url, storage=None):
    """The official x402 client paying with batch-settlement only (and
    trusting the dev chain's token, which is not Base's USDC)."""
    signer = EthAccountSignerWithRPC(account, rpc_url=chain_url)
    scheme = BatchSettlementEvmScheme(signer)
    client = x402Client().set_spend_controls(
        {"allowed_assets": [{"network": NETWORK, "asset": dev_chain.TOKEN}]}
    )
    client.register(NETWORK, scheme)
    return client, scheme


def collect(billing_url):
    """Billing's Collect RPC (claim every due channel and sweep now), over
    plain gRPC: both messages' fields are read by number."""
    target = billing_url.removeprefix("http://")
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            "/rungate.billing.v1.BillingService/Collect",
            request_serializer=lambda _: b"",
            response_deserializer=lambda raw: raw,
        )
        raw = call(None, timeout=60)
    return decode_collect(raw)


def decode_collect(raw):
    """CollectResponse: 1 channels_claimed (varint), 2 claims, 3 sweeps (strings)."""
    out, i = {"channels": 0, "claims": [], "sweeps": []}, 0
    while i < len(raw):
        tag = raw[i]
        i += 1
        field, kind = tag >> 3, tag & 7
        value, shift = 0, 0
        while True:
            byte = raw[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        if kind == 0:
            out["channels"] = value
        else:
            text = raw[i:i + value].decode()
            i += value
            out["claims" if field == 2 else "sweeps"].append(text)
    return out


def escrow_state(chain_url, channel_id):
    """The channel on the escrow: (balance, totalClaimed)."""
    data = calldata("channels(bytes32)", ["bytes32"], [bytes.fromhex(channel_id[2:])])
    out = rpc(chain_url, "eth_call", [{"to": BATCH_SETTLEMENT_ADDRESS, "data": data}, "latest"])
    return int(out[2:66], 16), int(out[66:130], 16)


def deposits_by(chain_url, payer, after_block):
    """Token transfers out of `payer` after `after_block` (deposits go payer -> collector)."""
    if block_number(chain_url) <= after_block:
        return []
    logs = rpc(chain_url, "eth_getLogs", [{
        "address": dev_chain.TOKEN, "fromBlock": hex(after_block + 1), "toBlock": "latest",
        "topics": [dev_chain.TRANSFER_TOPIC, "0x" + "0" * 24 + payer[2:].lower()],
    }])
    return [int(log["data"], 16) for log in logs]


async def pay_many(edge_url, client, calls, stream_every=2):
    """`calls` completions through the OpenAI SDK over the x402 httpx client; their receipt ids."""
    ids = []
    async with x402HttpxClient(client, timeout=120) as http:
        sdk = openai.AsyncOpenAI(base_url=edge_url + "/v1", api_key="unused", http_client=http, max_retries=0)
        for n in range(calls):
            if n % stream_every == 0:
                stream = await sdk.chat.completions.with_raw_response.create(
                    model=MODEL, messages=QUESTION, max_tokens=1, temperature=0, stream=True)
                ids.append(stream.headers["x-rungate-receipt"])
                async for _ in stream.parse():
                    pass
            else:
                raw = await sdk.chat.completions.with_raw_response.create(
                    model=MODEL, messages=QUESTION, max_tokens=1, temperature=0)
                assert raw.parse().choices[0].message.content is not None
                ids.append(raw.headers["x-rungate-receipt"])
    return ids


def stored_receipt(edge_url, request_id, timeout=5):
    """The call's receipt, once its coalesced write is in (milliseconds after the answer)."""
    import urllib.error
    deadline = time.time() + timeout
    while True:
        try:
            return receipt(edge_url, request_id)
        except urllib.error.HTTPError as error:
            if error.code != 404 or time.time() > deadline:
                raise
            time.sleep(0.05)


def block_number(chain_url):
    return int(rpc(chain_url, "eth_blockNumber", []), 16)


def our_channel(edge_url, account):
    """The channel id the official client computes for this payer and our offer."""
    _, v2 = required(edge_url)
    offer = next(a for a in v2["accepts"] if a["scheme"] == "batch-settlement")
    from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
    config = ChannelConfig(
        payer=account.address, payer_authorizer=account.address, receiver=offer["payTo"],
        receiver_authorizer=offer["extra"]["receiverAuthorizer"], token=offer["asset"],
        withdraw_delay=offer["extra"]["withdrawDelay"], salt="0x" + "00" * 32,
    )
    return compute_channel_id(config, NETWORK)


def test_the_402_offers_batch_settlement_next_to_exact(edge_url):
    _, v2 = required(edge_url)
    schemes = [a["scheme"] for a in v2["accepts"]]
    assert schemes == ["exact", "batch-settlement"]
    offer = v2["accepts"][1]
    assert offer["amount"] == "1" and offer["payTo"] == PAY_TO
    assert offer["extra"]["minDeposit"] == str(ONE_USDC)
    assert offer["extra"]["withdrawDelay"] == 900
    assert offer["extra"]["receiverAuthorizer"] == "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc"


def test_200_calls_from_one_deposit_then_one_claim_and_one_sweep(cluster):
    account = fund(cluster.chain_url, 5 * ONE_USDC)
    start = block_number(cluster.chain_url)
    client, _ = batch_client(account, cluster.chain_url)
    ids = asyncio.run(pay_many(cluster.edge_url, client, 200))
    assert len(ids) == 200

    # Exactly one deposit moved money out of the payer: the 1 USDC minDeposit.
    assert deposits_by(cluster.chain_url, account.address, start) == [ONE_USDC]
    channel = our_channel(cluster.edge_url, account)
    assert escrow_state(cluster.chain_url, channel) == (ONE_USDC, 0)
    assert balance(cluster.chain_url, account.address) == 4 * ONE_USDC

    time.sleep(0.5)  # the coalesced voucher write
    before = balance(cluster.chain_url, PAY_TO)
    done = collect(cluster.billing_url)
    assert len(done["claims"]) == 1 and len(done["sweeps"]) == 1
    assert balance(cluster.chain_url, PAY_TO) - before == 200, "exactly 200 calls x 1"
    assert escrow_state(cluster.chain_url, channel) == (ONE_USDC, 200)

    # Every receipt names the channel and its running total; the last is collected.
    first, last = receipt(cluster.edge_url, ids[0]), receipt(cluster.edge_url, ids[-1])
    assert first["amount"] == "1" and first["settlement"]["cumulative"] == "1"
    assert last["settlement"]["channel"] == channel.lower()
    assert last["settlement"]["cumulative"] == "200"
    assert last["settlement"]["status"] == "settled"
    assert last["settlement"]["claim_transaction"] == done["claims"][0]
    assert last["settlement"]["transaction"] == done["sweeps"][0]
    assert sum(int(receipt(cluster.edge_url, i)["amount"]) for i in ids[::20]) == 10


def test_a_client_that_lost_its_state_is_brought_back_in_step(cluster):
    account = fund(cluster.chain_url, 2 * ONE_USDC)
    client, _ = batch_client(account, cluster.chain_url)
    asyncio.run(pay_many(cluster.edge_url, client, 3))
    start = block_number(cluster.chain_url)
    # A new client (empty channel storage, same key): it reads the chain
    # (nothing claimed yet), signs a voucher behind ours, gets the corrective
    # 402 with our latest voucher, checks it is its own signature, resyncs
    # and pays; never a second deposit, never charged twice.
    fresh, _ = batch_client(account, cluster.chain_url)
    ids = asyncio.run(pay_many(cluster.edge_url, fresh, 2, stream_every=3))
    assert deposits_by(cluster.chain_url, account.address, start) == []
    assert stored_receipt(cluster.edge_url, ids[-1])["settlement"]["cumulative"] == "5"


def test_a_withdrawal_is_claimed_before_it_can_finalize_and_a_refund_returns_the_rest(time_travel_cluster):
    cluster = time_travel_cluster
    account = fund(cluster.chain_url, 2 * ONE_USDC)
    client, scheme = batch_client(account, cluster.chain_url)
    asyncio.run(pay_many(cluster.edge_url, client, 4))
    channel = our_channel(cluster.edge_url, account)
    _, v2 = required(cluster.edge_url)
    offer = next(a for a in v2["accepts"] if a["scheme"] == "batch-settlement")
    config = (account.address, account.address, offer["payTo"], offer["extra"]["receiverAuthorizer"],
              offer["asset"], 900, bytes(32))
    config_type = "(address,address,address,address,address,uint40,bytes32)"
    # The payer starts a timed withdrawal of half its deposit.
    start = calldata(f"initiateWithdraw({config_type},uint128)", [config_type, "uint128"], [config, ONE_USDC // 2])
    assert dev_chain.send_as(cluster.chain_url, account, start, to=BATCH_SETTLEMENT_ADDRESS)
    # Billing sees it and claims what the channel earned right away.
    deadline = time.time() + 30
    while escrow_state(cluster.chain_url, channel)[1] != 4:
        assert time.time() < deadline, "the pending withdrawal was not claimed"
        time.sleep(0.2)
    # After the delay the payer gets what it asked for; the earned part stayed claimed.
    rpc(cluster.chain_url, "evm_increaseTime", [901])
    rpc(cluster.chain_url, "evm_mine", [])
    before = balance(cluster.chain_url, account.address)
    finish = calldata(f"finalizeWithdraw({config_type})", [config_type], [config])
    assert dev_chain.send_as(cluster.chain_url, account, finish, to=BATCH_SETTLEMENT_ADDRESS)
    assert balance(cluster.chain_url, account.address) - before == ONE_USDC // 2
    assert escrow_state(cluster.chain_url, channel) == (ONE_USDC // 2, 4)

    # The official client's refund: exactly the unspent rest comes back.
    before = balance(cluster.chain_url, account.address)
    settled = scheme.refund(cluster.edge_url + "/v1/chat/completions")
    assert settled.success
    assert balance(cluster.chain_url, account.address) - before == ONE_USDC // 2 - 4
    assert escrow_state(cluster.chain_url, channel) == (4, 4)


def test_the_official_js_client_pays_many_calls_from_one_deposit(cluster):
    import json
    import os
    import subprocess
    account = fund(cluster.chain_url, 2 * ONE_USDC)
    start = block_number(cluster.chain_url)
    js = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "js")
    key = "0x" + bytes(account.key).hex()
    run = subprocess.run(["node", "batch.mjs", cluster.edge_url, key, dev_chain.TOKEN, cluster.chain_url, "20"],
                         cwd=js, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert [r["status"] for r in results] == [200] * 21, results
    # The first call deposited (its response names the transaction); the rest were vouchers.
    assert results[0]["payment"]["transaction"]
    assert all(r["payment"]["transaction"] == "" for r in results[1:])
    assert results[-1]["payment"]["extra"]["channelState"]["chargedCumulativeAmount"] == "21"
    assert deposits_by(cluster.chain_url, account.address, start) == [ONE_USDC]
    last = stored_receipt(cluster.edge_url, results[-1]["receipt"])
    assert last["settlement"]["cumulative"] == "21" and last["amount"] == "1"


def test_the_readme_batch_settlement_example_runs_as_printed(cluster):
    import os
    import subprocess
    import sys
    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "README.md")).read()
    section = readme[readme.index("### Paying with batch-settlement"):]
    code = section[section.index("```python\n") + len("```python\n"):section.index("\n```\n")]
    account = fund(cluster.chain_url, 2 * ONE_USDC)
    code = (code.replace("KEY", repr("0x" + bytes(account.key).hex()))
                .replace("http://127.0.0.1:8080", cluster.edge_url)
                .replace("http://127.0.0.1:8545", cluster.chain_url))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Paris" in run.stdout, run.stdout
    assert "success=True" in run.stdout, run.stdout
    # Two calls paid, the rest of the deposit back: the payer is out exactly 2.
    assert balance(cluster.chain_url, account.address) == 2 * ONE_USDC - 2
