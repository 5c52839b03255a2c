"""The dev chain `cargo xtask dev` starts: anvil as Base (chain id 8453) with
our EIP-3009 USDC deployed and the demo payer funded. A payer's signed
TransferWithAuthorization moves money exactly once, through either overload;
a signature over the wrong domain moves nothing."""
import pytest
from eth_abi import encode
from eth_account import Account

from dev_chain import (CHAIN_ID, DEMO_PAYER_KEY, RELAYER, balance, fund, nonce_used, rpc, selector,
                       sign, transact)

RECIPIENT = "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc"  # not RunGate's payTo


def with_vrs(message, signed):
    return "0x" + (selector(
        "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)"
    ) + encode(
        ["address", "address", "uint256", "uint256", "uint256", "bytes32", "uint8", "bytes32", "bytes32"],
        [message["from"], message["to"], message["value"], message["validAfter"], message["validBefore"],
         message["nonce"], signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")],
    )).hex()


def with_bytes(message, signed):
    return "0x" + (selector(
        "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)"
    ) + encode(
        ["address", "address", "uint256", "uint256", "uint256", "bytes32", "bytes"],
        [message["from"], message["to"], message["value"], message["validAfter"], message["validBefore"],
         message["nonce"], bytes(signed.signature)],
    )).hex()


def test_the_demo_payer_is_funded_on_chain_8453(chain_url):
    assert int(rpc(chain_url, "eth_chainId", []), 16) == CHAIN_ID
    assert balance(chain_url, Account.from_key(DEMO_PAYER_KEY).address) >= 1  # funded with 1,000 USDC


@pytest.mark.parametrize("encoding", [with_vrs, with_bytes])
def test_an_authorization_moves_the_exact_amount_once(chain_url, encoding):
    payer = fund(chain_url, 5_000)
    recipient_before = balance(chain_url, RECIPIENT)
    message, signed = sign(payer, RECIPIENT, 1234)
    data = encoding(message, signed)
    assert transact(chain_url, RELAYER, data)
    assert balance(chain_url, payer.address) == 5_000 - 1234
    assert balance(chain_url, RECIPIENT) == recipient_before + 1234
    assert nonce_used(chain_url, payer.address, message["nonce"])
    assert not transact(chain_url, RELAYER, data), "a replayed authorization must not move money"
    assert balance(chain_url, payer.address) == 5_000 - 1234


def test_a_signature_over_the_wrong_domain_moves_nothing(chain_url):
    payer = fund(chain_url, 10)
    message, signed = sign(payer, RECIPIENT, 1, name="USDC")  # Base Sepolia's name, not ours
    assert not transact(chain_url, RELAYER, with_vrs(message, signed))
    assert balance(chain_url, payer.address) == 10
