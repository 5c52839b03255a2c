//! Paying like an x402 batch-settlement client, in Rust: a channel config
//! from RunGate's offer, a deposit (EIP-3009 ReceiveWithAuthorization to
//! the collector) with the first voucher, then a cumulative voucher per
//! call, and a refund request. For the tests that need to step out of line
//! (wrong amounts, replays, stale vouchers) and the payment benchmark; the
//! official clients are tested from Python and JS.

use alloy_primitives::{Address, B256, U256, aliases::U40};
use alloy_signer::SignerSync;
use alloy_signer_local::PrivateKeySigner;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rungate_billing::x402::batch::ERC3009_COLLECTOR;
use rungate_billing::x402::batch::eip712::{self, ChannelConfig, Escrow, ReceiveWithAuthorization};
use serde_json::{Value, json};

/// The batch-settlement entry of a 402's v2 `accepts`.
pub fn batch_offer(required: &Value) -> anyhow::Result<Value> {
    required["accepts"]
        .as_array()
        .and_then(|all| all.iter().find(|a| a["scheme"] == "batch-settlement"))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no batch-settlement offer in {required}"))
}

pub struct BatchPayer {
    pub signer: PrivateKeySigner,
    pub config: ChannelConfig,
    pub channel_id: B256,
    escrow: Escrow,
    chain_id: u64,
}

impl BatchPayer {
    /// The channel this payer would open for `offer` (salt zero, as the official clients use by default).
    pub fn new(signer: PrivateKeySigner, offer: &Value) -> anyhow::Result<Self> {
        let address = |key: &str| -> anyhow::Result<Address> {
            let text = offer[key]
                .as_str()
                .or_else(|| offer["extra"][key].as_str())
                .ok_or_else(|| anyhow::anyhow!("offer has no {key}"))?;
            Ok(text.parse()?)
        };
        let chain_id: u64 = offer["network"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("eip155:")
            .parse()?;
        let delay = offer["extra"]["withdrawDelay"].as_u64().unwrap_or(900);
        let config = ChannelConfig {
            payer: signer.address(),
            payerAuthorizer: signer.address(),
            receiver: address("payTo")?,
            receiverAuthorizer: address("receiverAuthorizer")?,
            token: address("asset")?,
            withdrawDelay: U40::from(delay),
            salt: B256::ZERO,
        };
        let escrow = Escrow::new(chain_id);
        Ok(Self {
            channel_id: escrow.channel_id(&config),
            escrow,
            signer,
            config,
            chain_id,
        })
    }

    fn config_json(&self) -> Value {
        let c = &self.config;
        json!({
            "payer": c.payer.to_checksum(None),
            "payerAuthorizer": c.payerAuthorizer.to_checksum(None),
            "receiver": c.receiver.to_checksum(None),
            "receiverAuthorizer": c.receiverAuthorizer.to_checksum(None),
            "token": c.token.to_checksum(None),
            "withdrawDelay": c.withdrawDelay.to::<u64>(),
            "salt": c.salt.to_string(),
        })
    }

    /// A voucher for a cumulative `max`, signed by `signer` (normally the payer).
    pub fn voucher_signed_by(&self, signer: &PrivateKeySigner, max: u128) -> anyhow::Result<Value> {
        let digest = self.escrow.voucher_digest(self.channel_id, max);
        let signature = signer.sign_hash_sync(&digest)?;
        Ok(json!({
            "channelId": self.channel_id.to_string(),
            "maxClaimableAmount": max.to_string(),
            "signature": format!("0x{}", alloy_primitives::hex::encode(signature.as_bytes())),
        }))
    }

    pub fn voucher(&self, max: u128) -> anyhow::Result<Value> {
        self.voucher_signed_by(&self.signer, max)
    }

    fn header(accepted: &Value, resource: &Value, payload: Value) -> String {
        let payment = json!({
            "x402Version": 2,
            "resource": resource,
            "accepted": accepted,
            "payload": payload,
        });
        STANDARD.encode(payment.to_string())
    }

    /// PAYMENT-SIGNATURE paying with the voucher `max`.
    pub fn pay(&self, required: &Value, max: u128) -> anyhow::Result<String> {
        self.pay_with(required, self.voucher(max)?)
    }

    /// PAYMENT-SIGNATURE paying with the given voucher JSON.
    pub fn pay_with(&self, required: &Value, voucher: Value) -> anyhow::Result<String> {
        let accepted = batch_offer(required)?;
        let payload =
            json!({"type": "voucher", "channelConfig": self.config_json(), "voucher": voucher});
        Ok(Self::header(&accepted, &required["resource"], payload))
    }

    /// PAYMENT-SIGNATURE depositing `amount` into the channel, valid for
    /// `valid_for` seconds from `now`, with the voucher `max`.
    pub fn deposit(
        &self,
        required: &Value,
        amount: u128,
        max: u128,
        now: u64,
        valid_for: u64,
    ) -> anyhow::Result<String> {
        let accepted = batch_offer(required)?;
        let salt = U256::from_be_bytes(rand::random::<[u8; 32]>());
        let token_domain = rungate_billing::x402::exact_evm::domain_separator(
            accepted["extra"]["name"].as_str().unwrap_or_default(),
            accepted["extra"]["version"].as_str().unwrap_or_default(),
            self.chain_id,
            self.config.token,
        );
        let message = ReceiveWithAuthorization {
            from: self.signer.address(),
            to: ERC3009_COLLECTOR,
            value: U256::from(amount),
            validAfter: U256::ZERO,
            validBefore: U256::from(now + valid_for),
            nonce: eip712::deposit_nonce(self.channel_id, salt),
        };
        let signature = self
            .signer
            .sign_hash_sync(&eip712::receive_digest(token_domain, &message))?;
        let payload = json!({
            "type": "deposit",
            "channelConfig": self.config_json(),
            "voucher": self.voucher(max)?,
            "deposit": {
                "amount": amount.to_string(),
                "authorization": {"erc3009Authorization": {
                    "validAfter": "0",
                    "validBefore": (now + valid_for).to_string(),
                    "salt": format!("0x{:064x}", salt),
                    "signature": format!("0x{}", alloy_primitives::hex::encode(signature.as_bytes())),
                }},
            },
        });
        Ok(Self::header(&accepted, &required["resource"], payload))
    }

    /// PAYMENT-SIGNATURE asking for a refund (`amount`, or all) with the
    /// zero-charge voucher at `charged`.
    pub fn refund(
        &self,
        required: &Value,
        charged: u128,
        amount: Option<u128>,
    ) -> anyhow::Result<String> {
        let accepted = batch_offer(required)?;
        let mut payload = json!({"type": "refund", "channelConfig": self.config_json(), "voucher": self.voucher(charged)?});
        if let Some(amount) = amount {
            payload["amount"] = json!(amount.to_string());
        }
        Ok(Self::header(&accepted, &required["resource"], payload))
    }
}

/// The decoded PAYMENT-RESPONSE header of an answer.
pub fn payment_response(headers: &http::HeaderMap) -> anyhow::Result<Value> {
    let header = headers
        .get("payment-response")
        .ok_or_else(|| anyhow::anyhow!("no PAYMENT-RESPONSE header"))?;
    Ok(serde_json::from_slice(
        &STANDARD.decode(header.as_bytes())?,
    )?)
}
