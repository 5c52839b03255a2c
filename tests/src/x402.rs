//! Paying like an x402 client: an EIP-3009 TransferWithAuthorization signed
//! with alloy for an offer from RunGate's 402, as the v2 PAYMENT-SIGNATURE
//! header value.

use alloy_primitives::{B256, U256};
use alloy_signer::SignerSync;
use alloy_signer_local::PrivateKeySigner;
use alloy_sol_types::{Eip712Domain, SolCall, SolStruct, sol};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rungate_billing::x402::exact_evm::TransferWithAuthorization;
use serde_json::{Value, json};

/// The v2 PaymentRequired in a 402's `PAYMENT-REQUIRED` header.
pub fn payment_required(headers: &http::HeaderMap) -> anyhow::Result<Value> {
    let header = headers
        .get("payment-required")
        .ok_or_else(|| anyhow::anyhow!("no PAYMENT-REQUIRED header"))?;
    Ok(serde_json::from_slice(
        &STANDARD.decode(header.as_bytes())?,
    )?)
}

/// A PAYMENT-SIGNATURE for the first offer of `required`, valid for
/// `valid_for` seconds from `now`, with a random nonce.
pub fn pay(
    payer: &PrivateKeySigner,
    required: &Value,
    now: u64,
    valid_for: u64,
) -> anyhow::Result<String> {
    Ok(signed(payer, required, now, valid_for)?.header)
}

/// A signed payment: its header, and the calldata that would settle it
/// on chain directly (`transferWithAuthorization(..., v, r, s)`).
pub struct Signed {
    pub header: String,
    pub calldata: String,
    /// The authorization's nonce, 0x-hex.
    pub nonce: String,
}

sol! {
    function transferWithAuthorization(
        address from, address to, uint256 value, uint256 validAfter, uint256 validBefore,
        bytes32 nonce, uint8 v, bytes32 r, bytes32 s);
}

pub fn signed(
    payer: &PrivateKeySigner,
    required: &Value,
    now: u64,
    valid_for: u64,
) -> anyhow::Result<Signed> {
    let offer = &required["accepts"][0];
    let field = |key: &str| {
        offer[key]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("offer has no {key}"))
    };
    let message = TransferWithAuthorization {
        from: payer.address(),
        to: field("payTo")?.parse()?,
        value: U256::from_str_radix(field("amount")?, 10)?,
        validAfter: U256::ZERO,
        validBefore: U256::from(now + valid_for),
        nonce: B256::from(rand::random::<[u8; 32]>()),
    };
    let chain_id: u64 = field("network")?.trim_start_matches("eip155:").parse()?;
    let domain = Eip712Domain::new(
        Some(
            offer["extra"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
                .into(),
        ),
        Some(
            offer["extra"]["version"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
                .into(),
        ),
        Some(U256::from(chain_id)),
        Some(field("asset")?.parse()?),
        None,
    );
    let signature = payer.sign_hash_sync(&message.eip712_signing_hash(&domain))?;
    let payment = json!({
        "x402Version": 2,
        "resource": required["resource"],
        "accepted": offer,
        "payload": {
            "signature": format!("0x{}", alloy_primitives::hex::encode(signature.as_bytes())),
            "authorization": {
                "from": message.from.to_checksum(None),
                "to": message.to.to_checksum(None),
                "value": message.value.to_string(),
                "validAfter": "0",
                "validBefore": message.validBefore.to_string(),
                "nonce": message.nonce.to_string(),
            },
        },
    });
    let call = transferWithAuthorizationCall {
        from: message.from,
        to: message.to,
        value: message.value,
        validAfter: message.validAfter,
        validBefore: message.validBefore,
        nonce: message.nonce,
        v: 27 + u8::from(signature.v()),
        r: signature.r().into(),
        s: signature.s().into(),
    };
    Ok(Signed {
        header: STANDARD.encode(payment.to_string()),
        calldata: format!("0x{}", alloy_primitives::hex::encode(call.abi_encode())),
        nonce: message.nonce.to_string(),
    })
}
