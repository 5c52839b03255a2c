//! The `payload` of a batch-settlement payment, as the official clients send
//! it (`type`: deposit, voucher or refund), decoded into typed values. Shape
//! only: signatures and amounts are checked in `verify` and by the channel.

use alloy_primitives::{Address, B256, Bytes, U256, aliases::U40};
use serde::Deserialize;
use serde_json::Value;

use super::BatchReason;
use super::eip712::ChannelConfig;

/// A signed cumulative voucher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedVoucher {
    pub channel_id: B256,
    pub max_claimable: u128,
    pub signature: Bytes,
}

/// EIP-3009 `receiveWithAuthorization` for a deposit (the collector rebuilds
/// `from`, `to`, `value` and the nonce from the channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepositAuthorization {
    pub amount: u128,
    pub valid_after: U256,
    pub valid_before: U256,
    pub salt: U256,
    pub signature: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchPayload {
    /// Opens or tops up the channel; its voucher pays this call.
    Deposit {
        config: ChannelConfig,
        voucher: SignedVoucher,
        deposit: DepositAuthorization,
    },
    /// Pays this call from the channel.
    Voucher {
        config: ChannelConfig,
        voucher: SignedVoucher,
    },
    /// Asks for the unspent deposit back (all of it, or `amount`); its voucher
    /// charges nothing more.
    Refund {
        config: ChannelConfig,
        voucher: SignedVoucher,
        amount: Option<u128>,
    },
}

impl BatchPayload {
    pub fn config(&self) -> &ChannelConfig {
        match self {
            Self::Deposit { config, .. }
            | Self::Voucher { config, .. }
            | Self::Refund { config, .. } => config,
        }
    }

    pub fn voucher(&self) -> &SignedVoucher {
        match self {
            Self::Deposit { voucher, .. }
            | Self::Voucher { voucher, .. }
            | Self::Refund { voucher, .. } => voucher,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigJson {
    payer: String,
    payer_authorizer: String,
    receiver: String,
    receiver_authorizer: String,
    token: String,
    withdraw_delay: Value,
    salt: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VoucherJson {
    channel_id: String,
    max_claimable_amount: Value,
    signature: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DepositJson {
    amount: Value,
    authorization: DepositAuthorizationJson,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DepositAuthorizationJson {
    erc3009_authorization: Option<Erc3009Json>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Erc3009Json {
    valid_after: Value,
    valid_before: Value,
    salt: String,
    signature: String,
}

/// A decimal amount, as a string (the wire form) or a JSON number.
pub fn amount(value: &Value) -> Option<U256> {
    match value {
        Value::String(text) => U256::from_str_radix(text, 10).ok(),
        Value::Number(n) => n.as_u64().map(U256::from),
        _ => None,
    }
}

fn amount_u128(value: &Value) -> Option<u128> {
    amount(value).and_then(|a| u128::try_from(a).ok())
}

fn hex_bytes(text: &str) -> Option<Bytes> {
    alloy_primitives::hex::decode(text).ok().map(Bytes::from)
}

/// 0x + 64 hex digits exactly: anything else is not a channel id.
fn channel_id(text: &str) -> Result<B256, BatchReason> {
    let digits = text
        .strip_prefix("0x")
        .ok_or(BatchReason::ChannelIdInvalid)?;
    if digits.len() != 64 {
        return Err(BatchReason::ChannelIdInvalid);
    }
    text.parse().map_err(|_| BatchReason::ChannelIdInvalid)
}

fn config(json: ConfigJson, bad: BatchReason) -> Result<ChannelConfig, BatchReason> {
    let address = |text: &str| text.parse::<Address>().map_err(|_| bad);
    let delay = amount(&json.withdraw_delay)
        .and_then(|d| u64::try_from(d).ok())
        .filter(|d| *d < (1u64 << 40))
        .ok_or(bad)?;
    Ok(ChannelConfig {
        payer: address(&json.payer)?,
        payerAuthorizer: address(&json.payer_authorizer)?,
        receiver: address(&json.receiver)?,
        receiverAuthorizer: address(&json.receiver_authorizer)?,
        token: address(&json.token)?,
        withdrawDelay: U40::from(delay),
        salt: json.salt.parse().map_err(|_| bad)?,
    })
}

fn voucher(json: VoucherJson, bad: BatchReason) -> Result<SignedVoucher, BatchReason> {
    Ok(SignedVoucher {
        channel_id: channel_id(&json.channel_id)?,
        max_claimable: amount_u128(&json.max_claimable_amount).ok_or(bad)?,
        signature: hex_bytes(&json.signature).ok_or(bad)?,
    })
}

fn field<T: serde::de::DeserializeOwned>(
    payload: &Value,
    name: &str,
    bad: BatchReason,
) -> Result<T, BatchReason> {
    let value = payload.get(name).ok_or(bad)?;
    T::deserialize(value).map_err(|_| bad)
}

pub fn parse(payload: &Value) -> Result<BatchPayload, BatchReason> {
    let kind = payload.get("type").and_then(Value::as_str);
    let bad = match kind {
        Some("deposit") => BatchReason::DepositPayload,
        Some("voucher") => BatchReason::VoucherPayload,
        Some("refund") => BatchReason::RefundPayload,
        _ => return Err(BatchReason::PayloadType),
    };
    let config = config(field(payload, "channelConfig", bad)?, bad)?;
    let voucher = voucher(field(payload, "voucher", bad)?, bad)?;
    Ok(match kind {
        Some("deposit") => {
            let deposit: DepositJson = field(payload, "deposit", bad)?;
            // Permit2 deposits are not offered (assetTransferMethod eip3009).
            let auth = deposit.authorization.erc3009_authorization.ok_or(bad)?;
            BatchPayload::Deposit {
                config,
                voucher,
                deposit: DepositAuthorization {
                    amount: amount_u128(&deposit.amount).filter(|a| *a > 0).ok_or(bad)?,
                    valid_after: amount(&auth.valid_after).ok_or(bad)?,
                    valid_before: amount(&auth.valid_before).ok_or(bad)?,
                    salt: auth.salt.parse().map_err(|_| bad)?,
                    signature: hex_bytes(&auth.signature).ok_or(bad)?,
                },
            }
        }
        Some("voucher") => BatchPayload::Voucher { config, voucher },
        _ => BatchPayload::Refund {
            config,
            voucher,
            amount: match payload.get("amount") {
                None | Some(Value::Null) => None,
                Some(value) => Some(
                    amount_u128(value)
                        .filter(|a| *a > 0)
                        .ok_or(BatchReason::RefundAmountInvalid)?,
                ),
            },
        },
    })
}

/// A deposit payload in its wire form (what the payer sent), for a
/// facilitator that submits it.
pub fn deposit_json(
    config: &ChannelConfig,
    voucher: &SignedVoucher,
    deposit: &DepositAuthorization,
) -> Value {
    serde_json::json!({
        "type": "deposit",
        "channelConfig": {
            "payer": config.payer.to_checksum(None),
            "payerAuthorizer": config.payerAuthorizer.to_checksum(None),
            "receiver": config.receiver.to_checksum(None),
            "receiverAuthorizer": config.receiverAuthorizer.to_checksum(None),
            "token": config.token.to_checksum(None),
            "withdrawDelay": config.withdrawDelay.to::<u64>(),
            "salt": config.salt.to_string(),
        },
        "voucher": {
            "channelId": voucher.channel_id.to_string(),
            "maxClaimableAmount": voucher.max_claimable.to_string(),
            "signature": voucher.signature.to_string(),
        },
        "deposit": {
            "amount": deposit.amount.to_string(),
            "authorization": {"erc3009Authorization": {
                "validAfter": deposit.valid_after.to_string(),
                "validBefore": deposit.valid_before.to_string(),
                "salt": B256::from(deposit.salt).to_string(),
                "signature": deposit.signature.to_string(),
            }},
        },
    })
}

/// One channel's claim a seller hands its facilitator: the channel, the
/// voucher (amount and signature) and the total to claim with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SellerClaim {
    pub config: ChannelConfig,
    pub max_claimable: u128,
    pub signature: Bytes,
    pub total_claimed: u128,
}

/// What a seller asks its facilitator to do on `/settle`, beyond a deposit
/// (which is a payer's payload, parsed by `parse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SellerAction {
    /// `claimWithSignature` over these claims; signed by the facilitator's
    /// receiverAuthorizer when the seller sends no signature.
    Claim {
        claims: Vec<SellerClaim>,
        signature: Option<Bytes>,
    },
    /// `settle(receiver, token)`: what was claimed goes to the receiver.
    Sweep { receiver: Address, token: Address },
    /// `refundWithSignature`, after the refund's claims.
    Refund(Box<SellerRefund>),
}

/// A refund the seller completed: `amount` at the channel's refund `nonce`,
/// after `claims` (what was earned is claimed first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SellerRefund {
    pub config: ChannelConfig,
    pub voucher: SignedVoucher,
    pub amount: u128,
    pub nonce: U256,
    pub claims: Vec<SellerClaim>,
    pub refund_signature: Option<Bytes>,
    pub claim_signature: Option<Bytes>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimJson {
    voucher: ClaimVoucherJson,
    signature: String,
    total_claimed: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimVoucherJson {
    channel: ConfigJson,
    max_claimable_amount: Value,
}

fn claims(payload: &Value, bad: BatchReason) -> Result<Vec<SellerClaim>, BatchReason> {
    let claims: Vec<ClaimJson> = match payload.get("claims") {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => Vec::deserialize(value).map_err(|_| bad)?,
    };
    claims
        .into_iter()
        .map(|claim| {
            Ok(SellerClaim {
                config: config(claim.voucher.channel, bad)?,
                max_claimable: amount_u128(&claim.voucher.max_claimable_amount).ok_or(bad)?,
                signature: hex_bytes(&claim.signature).ok_or(bad)?,
                total_claimed: amount_u128(&claim.total_claimed).ok_or(bad)?,
            })
        })
        .collect()
}

fn signature(payload: &Value, name: &str, bad: BatchReason) -> Result<Option<Bytes>, BatchReason> {
    match payload.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.is_empty() => Ok(None),
        Some(Value::String(text)) => hex_bytes(text).map(Some).ok_or(bad),
        Some(_) => Err(bad),
    }
}

/// A seller's `/settle` action: `claim`, `settle`, or a `refund` the seller
/// completed with the amount and the channel's refund nonce. None: not one
/// of these (a payer's payload, or unknown).
pub fn seller_action(payload: &Value) -> Option<Result<SellerAction, BatchReason>> {
    match payload.get("type").and_then(Value::as_str)? {
        "claim" => Some((|| {
            let bad = BatchReason::ClaimPayload;
            let claims = claims(payload, bad)?;
            if claims.is_empty() {
                return Err(bad);
            }
            Ok(SellerAction::Claim {
                claims,
                signature: signature(payload, "claimAuthorizerSignature", bad)?,
            })
        })()),
        "settle" => Some((|| {
            let bad = BatchReason::SettlePayload;
            let address = |name: &str| {
                payload
                    .get(name)
                    .and_then(Value::as_str)
                    .and_then(|a| a.parse::<Address>().ok())
                    .ok_or(bad)
            };
            Ok(SellerAction::Sweep {
                receiver: address("receiver")?,
                token: address("token")?,
            })
        })()),
        "refund" if payload.get("refundNonce").is_some() => Some((|| {
            let bad = BatchReason::RefundPayload;
            Ok(SellerAction::Refund(Box::new(SellerRefund {
                config: config(field(payload, "channelConfig", bad)?, bad)?,
                voucher: voucher(field(payload, "voucher", bad)?, bad)?,
                amount: payload
                    .get("amount")
                    .and_then(amount_u128)
                    .filter(|a| *a > 0)
                    .ok_or(BatchReason::RefundAmountInvalid)?,
                nonce: payload.get("refundNonce").and_then(amount).ok_or(bad)?,
                claims: claims(payload, bad)?,
                refund_signature: signature(payload, "refundAuthorizerSignature", bad)?,
                claim_signature: signature(payload, "claimAuthorizerSignature", bad)?,
            })))
        })()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config() -> Value {
        json!({"payer": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
            "payerAuthorizer": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
            "receiver": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
            "receiverAuthorizer": "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
            "token": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
            "withdrawDelay": 900, "salt": format!("0x{}", "00".repeat(32))})
    }

    fn voucher(id: &str) -> Value {
        json!({"channelId": id, "maxClaimableAmount": "7", "signature": format!("0x{}", "11".repeat(65))})
    }

    #[test]
    fn each_payload_type_decodes_and_bad_shapes_give_their_reason() {
        let id = format!("0x{}", "ab".repeat(32));
        let paid =
            parse(&json!({"type": "voucher", "channelConfig": config(), "voucher": voucher(&id)}))
                .expect("voucher");
        assert_eq!(paid.voucher().max_claimable, 7);
        assert_eq!(paid.config().withdrawDelay, U40::from(900u64));
        let refund = json!({"type": "refund", "channelConfig": config(), "voucher": voucher(&id), "amount": "3"});
        assert!(matches!(
            parse(&refund),
            Ok(BatchPayload::Refund {
                amount: Some(3),
                ..
            })
        ));
        let deposit = json!({"type": "deposit", "channelConfig": config(), "voucher": voucher(&id),
            "deposit": {"amount": "1000", "authorization": {"erc3009Authorization": {
                "validAfter": "0", "validBefore": "99", "salt": format!("0x{}", "01".repeat(32)),
                "signature": format!("0x{}", "22".repeat(65))}}}});
        assert!(matches!(parse(&deposit), Ok(BatchPayload::Deposit { .. })));

        assert_eq!(
            parse(&json!({"type": "claim"})),
            Err(BatchReason::PayloadType)
        );
        let short =
            json!({"type": "voucher", "channelConfig": config(), "voucher": voucher("0x12")});
        assert_eq!(parse(&short), Err(BatchReason::ChannelIdInvalid));
        let no_config = json!({"type": "voucher", "voucher": voucher(&id)});
        assert_eq!(parse(&no_config), Err(BatchReason::VoucherPayload));
        let zero = json!({"type": "refund", "channelConfig": config(), "voucher": voucher(&id), "amount": "0"});
        assert_eq!(parse(&zero), Err(BatchReason::RefundAmountInvalid));
        let no_auth = json!({"type": "deposit", "channelConfig": config(), "voucher": voucher(&id),
            "deposit": {"amount": "1000", "authorization": {}}});
        assert_eq!(parse(&no_auth), Err(BatchReason::DepositPayload));
    }

    #[test]
    fn a_sellers_claim_sweep_and_refund_actions_decode_and_bad_ones_give_their_reason() {
        let id = format!("0x{}", "ab".repeat(32));
        let signature = format!("0x{}", "11".repeat(65));
        let claim = json!({"voucher": {"channel": config(), "maxClaimableAmount": "60"},
            "signature": signature, "totalClaimed": "60"});
        let Some(Ok(SellerAction::Claim {
            claims,
            signature: None,
        })) = seller_action(&json!({"type": "claim", "claims": [claim]}))
        else {
            panic!("a claim");
        };
        assert_eq!((claims[0].max_claimable, claims[0].total_claimed), (60, 60));
        let sweep = json!({"type": "settle", "receiver": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
            "token": "0x5FbDB2315678afecb367f032d93F642f64180aa3"});
        assert!(matches!(
            seller_action(&sweep),
            Some(Ok(SellerAction::Sweep { .. }))
        ));
        let refund = json!({"type": "refund", "channelConfig": config(), "voucher": voucher(&id),
            "amount": "940", "refundNonce": "0", "claims": []});
        assert!(matches!(
            seller_action(&refund),
            Some(Ok(SellerAction::Refund(refund))) if refund.amount == 940
        ));

        // A payer's payloads are not a seller's actions.
        let payers = json!({"type": "refund", "channelConfig": config(), "voucher": voucher(&id)});
        assert_eq!(seller_action(&payers), None);
        assert_eq!(seller_action(&json!({"type": "voucher"})), None);
        for (bad, reason) in [
            (
                json!({"type": "claim", "claims": []}),
                BatchReason::ClaimPayload,
            ),
            (
                json!({"type": "claim", "claims": [{"signature": "0x"}]}),
                BatchReason::ClaimPayload,
            ),
            (
                json!({"type": "settle", "receiver": "nobody"}),
                BatchReason::SettlePayload,
            ),
            (
                json!({"type": "refund", "channelConfig": config(), "voucher": voucher(&id),
                "amount": "0", "refundNonce": "0"}),
                BatchReason::RefundAmountInvalid,
            ),
        ] {
            assert_eq!(seller_action(&bad), Some(Err(reason)), "{bad}");
        }
    }
}
