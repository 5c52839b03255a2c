"""The dev chain `cargo xtask dev` starts: anvil as Base (chain id 8453) with
our EIP-3009 USDC deployed and the demo payer funded. A payer's signed
TransferWithAuthorization moves money exactly once, through either overload;
a signature over the wrong domain moves nothing."""
import json
import os
import time
import urllib.request

import pytest
from eth_abi import encode
from eth_account import Account
from eth_utils import keccak

TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"  # first deployment of anvil's account 0
PAYER_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
PAYER = Account.from_key(PAYER_KEY).address
RECIPIENT = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
RELAYER = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"  # pays gas, holds no USDC


def rpc(url, method, params):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    request = urllib.request.Request(url, body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        reply = json.load(r)
    if "error" in reply:
        raise RuntimeError(reply["error"].get("message", reply["error"]))
    return reply["result"]


def selector(signature):
    return keccak(text=signature)[:4]


def call(url, signature, types, args):
    data = "0x" + (selector(signature) + encode(types, args)).hex()
    return int(rpc(url, "eth_call", [{"to": TOKEN, "data": data}, "latest"]), 16)


def balance(url, who):
    return call(url, "balanceOf(address)", ["address"], [who])


def send(url, data):
    """Submits from the relayer; returns True if mined successfully, False if reverted."""
    try:
        tx = rpc(url, "eth_sendTransaction", [{"from": RELAYER, "to": TOKEN, "data": "0x" + data.hex()}])
    except RuntimeError:
        return False  # rejected at gas estimation: it would revert
    for _ in range(100):
        receipt = rpc(url, "eth_getTransactionReceipt", [tx])
        if receipt:
            return receipt["status"] == "0x1"
        time.sleep(0.05)
    raise AssertionError("no receipt")


def authorization(value, name="USD Coin"):
    message = {
        "from": PAYER, "to": RECIPIENT, "value": value, "validAfter": 0,
        "validBefore": int(time.time()) + 3600, "nonce": os.urandom(32),
    }
    signed = Account.sign_typed_data(
        PAYER_KEY,
        domain_data={"name": name, "version": "2", "chainId": 8453, "verifyingContract": TOKEN},
        message_types={"TransferWithAuthorization": [
            {"name": "from", "type": "address"}, {"name": "to", "type": "address"},
            {"name": "value", "type": "uint256"}, {"name": "validAfter", "type": "uint256"},
            {"name": "validBefore", "type": "uint256"}, {"name": "nonce", "type": "bytes32"},
        ]},
        message_data=message,
    )
    return message, signed


def with_vrs(message, signed):
    return selector(
        "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)"
    ) + encode(
        ["address", "address", "uint256", "uint256", "uint256", "bytes32", "uint8", "bytes32", "bytes32"],
        [message["from"], message["to"], message["value"], message["validAfter"], message["validBefore"],
         message["nonce"], signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")],
    )


def with_bytes(message, signed):
    return selector(
        "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)"
    ) + encode(
        ["address", "address", "uint256", "uint256", "uint256", "bytes32", "bytes"],
        [message["from"], message["to"], message["value"], message["validAfter"], message["validBefore"],
         message["nonce"], bytes(signed.signature)],
    )


def test_the_demo_payer_is_funded_on_chain_8453(chain_url):
    assert int(rpc(chain_url, "eth_chainId", []), 16) == 8453
    assert balance(chain_url, PAYER) >= 1  # spent by other tests, funded with 1,000 USDC


@pytest.mark.parametrize("encoding", [with_vrs, with_bytes])
def test_an_authorization_moves_the_exact_amount_once(chain_url, encoding):
    payer_before, recipient_before = balance(chain_url, PAYER), balance(chain_url, RECIPIENT)
    message, signed = authorization(1234)
    data = encoding(message, signed)
    assert send(chain_url, data)
    assert balance(chain_url, PAYER) == payer_before - 1234
    assert balance(chain_url, RECIPIENT) == recipient_before + 1234
    used = call(chain_url, "authorizationState(address,bytes32)", ["address", "bytes32"], [PAYER, message["nonce"]])
    assert used == 1
    assert not send(chain_url, data), "a replayed authorization must not move money"
    assert balance(chain_url, PAYER) == payer_before - 1234


def test_a_signature_over_the_wrong_domain_moves_nothing(chain_url):
    payer_before = balance(chain_url, PAYER)
    message, signed = authorization(1, name="USDC")  # Base Sepolia's name, not ours
    assert not send(chain_url, with_vrs(message, signed))
    assert balance(chain_url, PAYER) == payer_before
