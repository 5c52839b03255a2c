//! The facilitator API's `exact` side: a seller's EIP-3009 payment checked
//! (always against the chain: balance and nonce) and settled with one
//! `transferWithAuthorization`.

use alloy_primitives::U256;
use serde_json::{Value, json};

use std::sync::Arc;

use crate::chain::{Chain, Outcome, SettleAuthorization};
use crate::payments::Payments;
use crate::x402::InvalidReason;
use crate::x402::exact_evm::{self, ExactEvmPayload, Expected, Verified};
use crate::x402::payment::matches_offer;
use rungate_common::clock::now;

/// A verified payment, on the chain it pays on.
struct Checked<'a> {
    chain: &'a Arc<Chain>,
    verified: Verified,
    network: String,
}

fn check_request<'a>(payments: &'a Payments, body: &Value) -> Result<Checked<'a>, InvalidReason> {
    let payload = body.get("paymentPayload").ok_or(InvalidReason::Payload)?;
    let requirements = body
        .get("paymentRequirements")
        .ok_or(InvalidReason::Requirements)?;
    let version = match payload
        .get("x402Version")
        .or_else(|| body.get("x402Version"))
        .and_then(Value::as_u64)
    {
        Some(1) => 1,
        Some(2) => 2,
        _ => return Err(InvalidReason::Version),
    };
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    if text(requirements, "scheme").as_deref() != Some("exact") {
        return Err(InvalidReason::Scheme);
    }
    let network = text(requirements, "network").ok_or(InvalidReason::Network)?;
    let chain = payments
        .chains
        .iter()
        .find(|c| c.network.name_for(version) == network)
        .ok_or(InvalidReason::Network)?;
    let chosen_matches = if version == 1 {
        text(payload, "scheme") == text(requirements, "scheme")
            && text(payload, "network") == Some(network.clone())
    } else {
        payload
            .get("accepted")
            .is_some_and(|accepted| matches_offer(requirements, accepted))
    };
    if !chosen_matches {
        return Err(InvalidReason::Requirements);
    }
    let amount = text(requirements, "amount")
        .or_else(|| text(requirements, "maxAmountRequired"))
        .and_then(|a| U256::from_str_radix(&a, 10).ok())
        .ok_or(InvalidReason::Requirements)?;
    let address = |key: &str| {
        text(requirements, key)
            .and_then(|a| a.parse().ok())
            .ok_or(InvalidReason::Requirements)
    };
    let extra = requirements.get("extra");
    let domain = |key: &str| {
        extra
            .and_then(|e| e.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or(InvalidReason::Requirements)
    };
    let expected = Expected {
        pay_to: address("payTo")?,
        amount,
        domain_separator: exact_evm::domain_separator(
            &domain("name")?,
            &domain("version")?,
            chain.network.chain_id,
            address("asset")?,
        ),
    };
    let exact: ExactEvmPayload = payload
        .get("payload")
        .cloned()
        .and_then(|p| serde_json::from_value(p).ok())
        .ok_or(InvalidReason::Payload)?;
    let verified = exact_evm::verify(&exact, &expected, now())?;
    Ok(Checked {
        chain,
        verified,
        network,
    })
}

async fn check<'a>(payments: &'a Payments, body: &Value) -> Result<Checked<'a>, InvalidReason> {
    let checked = check_request(payments, body)?;
    let message = &checked.verified.message;
    let (balance, used) = tokio::join!(
        checked
            .chain
            .balance_of(message.from, requirements_asset(body)),
        checked
            .chain
            .nonce_used_on(message.from, message.nonce, requirements_asset(body)),
    );
    if used.map_err(|_| InvalidReason::Unexpected)? {
        return Err(InvalidReason::NonceUsed);
    }
    if balance.map_err(|_| InvalidReason::Unexpected)? < message.value {
        return Err(InvalidReason::InsufficientFunds);
    }
    Ok(checked)
}

fn requirements_asset(body: &Value) -> alloy_primitives::Address {
    body.pointer("/paymentRequirements/asset")
        .and_then(Value::as_str)
        .and_then(|a| a.parse().ok())
        .unwrap_or_default()
}

pub async fn verify(payments: &Payments, body: &Value) -> Value {
    match check(payments, body).await {
        Ok(checked) => json!({
            "isValid": true,
            "payer": checked.verified.payer.to_checksum(None),
        }),
        Err(reason) => json!({
            "isValid": false,
            "invalidReason": reason.as_str(),
            "payer": body.pointer("/paymentPayload/payload/authorization/from"),
        }),
    }
}

pub async fn settle(payments: &Payments, body: &Value) -> Value {
    let checked = match check(payments, body).await {
        Ok(checked) => checked,
        Err(reason) => {
            return json!({
                "success": false,
                "errorReason": reason.as_str(),
                "transaction": "",
                "network": body.pointer("/paymentRequirements/network"),
            });
        }
    };
    let message = &checked.verified.message;
    let auth = SettleAuthorization {
        asset: requirements_asset(body),
        from: message.from,
        to: message.to,
        value: message.value,
        valid_after: message.validAfter,
        valid_before: message.validBefore,
        nonce: message.nonce,
        signature: checked.verified.signature,
    };
    let payer = checked.verified.payer.to_checksum(None);
    match checked.chain.settle(&auth).await {
        Outcome::Settled { tx_hash, .. } => json!({
            "success": true, "payer": payer, "transaction": tx_hash.to_string(),
            "network": checked.network, "amount": message.value.to_string(),
        }),
        Outcome::Failed { reason } => json!({
            "success": false, "errorReason": "transaction_failed", "errorMessage": reason,
            "payer": payer, "transaction": "", "network": checked.network,
        }),
        Outcome::Expired => json!({
            "success": false, "errorReason": "invalid_exact_evm_payload_authorization_valid_before",
            "payer": payer, "transaction": "", "network": checked.network,
        }),
        Outcome::Unknown { error } => json!({
            "success": false, "errorReason": "unexpected_settle_error", "errorMessage": error,
            "payer": payer, "transaction": "", "network": checked.network,
        }),
    }
}
