"""The dev chain as `cargo xtask dev` sets it up (anvil as Base, chain id
8453, our EIP-3009 USDC), and what tests do on it: read balances, fund fresh
payers, sign EIP-3009 authorizations, send transactions, read receipts."""
import json
import os
import time
import urllib.request

from eth_abi import encode
from eth_account import Account
from eth_utils import keccak

CHAIN_ID = 8453
TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"  # first deployment of anvil's account 0
DEPLOYER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"  # owns the token (mints)
DEMO_PAYER_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
PAY_TO = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"  # where RunGate's payments go
RELAYER = "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65"  # a gas payer that is not billing's
TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
EIP3009_TYPES = {"TransferWithAuthorization": [
    {"name": "from", "type": "address"}, {"name": "to", "type": "address"},
    {"name": "value", "type": "uint256"}, {"name": "validAfter", "type": "uint256"},
    {"name": "validBefore", "type": "uint256"}, {"name": "nonce", "type": "bytes32"},
]}


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


def calldata(signature, types, args):
    return "0x" + (selector(signature) + encode(types, args)).hex()


def call(url, signature, types, args):
    return int(rpc(url, "eth_call", [{"to": TOKEN, "data": calldata(signature, types, args)}, "latest"]), 16)


def balance(url, who):
    return call(url, "balanceOf(address)", ["address"], [who])


def nonce_used(url, who, nonce):
    return call(url, "authorizationState(address,bytes32)", ["address", "bytes32"], [who, nonce]) == 1


def receipt(url, tx, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = rpc(url, "eth_getTransactionReceipt", [tx])
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no receipt for {tx}")


def transact(url, sender, data, to=TOKEN):
    """Sends from an unlocked anvil account; True if mined, False if it would revert."""
    try:
        tx = rpc(url, "eth_sendTransaction", [{"from": sender, "to": to, "data": data}])
    except RuntimeError:
        return False  # refused at gas estimation: it would revert
    return receipt(url, tx)["status"] == "0x1"


def fund(url, amount):
    """A fresh payer holding `amount` atomic USDC (and some ETH it never needs
    for x402, but uses to move its USDC in tests)."""
    account = Account.create()
    if amount:
        assert transact(url, DEPLOYER, calldata("mint(address,uint256)", ["address", "uint256"], [account.address, amount]))
    rpc(url, "anvil_setBalance", [account.address, hex(10**18)])
    return account


def send_as(url, account, data, to=TOKEN):
    """Signs and sends a transaction from `account` (not unlocked on anvil)."""
    tx = {
        "to": to, "data": data, "value": 0, "chainId": CHAIN_ID, "gas": 200_000,
        "nonce": int(rpc(url, "eth_getTransactionCount", [account.address, "pending"]), 16),
        "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9,
    }
    raw = account.sign_transaction(tx).raw_transaction
    return receipt(url, rpc(url, "eth_sendRawTransaction", ["0x" + raw.hex()]))["status"] == "0x1"


def sign(account, to, value, valid_after=0, valid_before=None, nonce=None, name="USD Coin"):
    """An EIP-3009 TransferWithAuthorization signed by `account`."""
    message = {
        "from": account.address, "to": to, "value": value, "validAfter": valid_after,
        "validBefore": valid_before if valid_before is not None else int(time.time()) + 300,
        "nonce": nonce or os.urandom(32),
    }
    signed = Account.sign_typed_data(
        account.key,
        domain_data={"name": name, "version": "2", "chainId": CHAIN_ID, "verifyingContract": TOKEN},
        message_types=EIP3009_TYPES,
        message_data=message,
    )
    return message, signed


def transfers(url, tx):
    """The token's Transfer events in transaction `tx`: [(from, to, value)]."""
    out = []
    for log in receipt(url, tx)["logs"]:
        if log["address"].lower() == TOKEN.lower() and log["topics"][0] == TRANSFER_TOPIC:
            out.append(("0x" + log["topics"][1][-40:], "0x" + log["topics"][2][-40:], int(log["data"], 16)))
    return out
