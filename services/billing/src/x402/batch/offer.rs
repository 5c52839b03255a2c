//! The batch-settlement offer next to `exact` in a v2 402, and the channel
//! snapshot a corrective 402 or a payment response carries.

use alloy_primitives::{Address, B256, Bytes};
use serde_json::{Value, json};

use super::SCHEME;
use crate::x402::networks::{Network, Offer};

/// What this deployment asks of channels (the same on every network).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchTerms {
    /// Our key that signs claims and refunds.
    pub receiver_authorizer: Address,
    pub withdraw_delay: u64,
    /// The deposit we suggest (clients deposit at least this much).
    pub min_deposit: u128,
}

/// The v2 `accepts[]` entry: `amount` is this call's price (the voucher's
/// increment); `extra` names the channel terms and the deposit to make.
pub fn requirement(network: &Network, offer: &Offer<'_>, terms: &BatchTerms) -> Value {
    json!({
        "scheme": SCHEME,
        "network": network.network,
        "amount": offer.amount.to_string(),
        "asset": network.asset.to_checksum(None),
        "payTo": network.pay_to.to_checksum(None),
        "maxTimeoutSeconds": network.max_timeout_seconds,
        "extra": {
            "receiverAuthorizer": terms.receiver_authorizer.to_checksum(None),
            "withdrawDelay": terms.withdraw_delay,
            "name": network.eip712_name,
            "version": network.eip712_version,
            "minDeposit": terms.min_deposit.max(offer.amount).to_string(),
            "assetTransferMethod": "eip3009",
        },
    })
}

/// Where a channel stands, as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub channel_id: B256,
    /// The escrow's balance for the channel (deposits less refunds).
    pub balance: u128,
    pub total_claimed: u128,
    pub withdraw_requested_at: u64,
    pub refund_nonce: u64,
    /// What served calls cost in all: the base of the next voucher.
    pub charged: u128,
    /// The latest voucher we hold.
    pub signed_max: u128,
    pub signature: Bytes,
}

impl Snapshot {
    /// `extra.channelState` (with the charged total, which clients resync from).
    pub fn channel_state(&self) -> Value {
        json!({
            "channelId": self.channel_id.to_string(),
            "balance": self.balance.to_string(),
            "totalClaimed": self.total_claimed.to_string(),
            "withdrawRequestedAt": self.withdraw_requested_at,
            "refundNonce": self.refund_nonce.to_string(),
            "chargedCumulativeAmount": self.charged.to_string(),
        })
    }

    /// `extra.voucherState`: the latest voucher, so a client that lost its
    /// state can check our claim against its own signature.
    pub fn voucher_state(&self) -> Value {
        json!({
            "signedMaxClaimable": self.signed_max.to_string(),
            "signature": self.signature.to_string(),
        })
    }
}

/// The corrective form of our requirement: the same offer with the channel's
/// state, for a client whose voucher was not in step with ours.
pub fn corrective(mut requirement: Value, snapshot: &Snapshot) -> Value {
    if let Some(extra) = requirement.get_mut("extra").and_then(Value::as_object_mut) {
        extra.insert("channelState".into(), snapshot.channel_state());
        extra.insert("voucherState".into(), snapshot.voucher_state());
    }
    requirement
}
