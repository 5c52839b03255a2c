//! An external x402 facilitator (`--facilitator-url`) in place of local
//! verification and settlement: billing still matches the payment against
//! its offer, reserves the nonce in the ledger and records the outcome; the
//! facilitator checks the signature, funds and nonce, and submits the
//! transaction.

use std::time::Duration;

use alloy_primitives::B256;
use rungate_proto::ledger::v1::Authorization;
use serde_json::{Value, json};

use crate::BillingError;
use crate::chain::Outcome;
use crate::x402::InvalidReason;
use crate::x402::networks::{Network, Offer};

pub struct RemoteFacilitator {
    client: reqwest::Client,
    url: String,
}

impl RemoteFacilitator {
    pub fn new(url: &str) -> Result<Self, BillingError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| BillingError::Config(format!("facilitator client: {e}")))?;
        Ok(Self {
            client,
            url: url.trim_end_matches('/').to_owned(),
        })
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        let response = self
            .client
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("facilitator answered {}", response.status()));
        }
        response.json().await.map_err(|e| e.to_string())
    }

    /// POST /verify: Ok(payer) or the facilitator's reason.
    pub async fn verify(
        &self,
        payment: &Value,
        requirements: &Value,
    ) -> Result<String, InvalidReason> {
        let body = json!({
            "x402Version": payment.get("x402Version"),
            "paymentPayload": payment,
            "paymentRequirements": requirements,
        });
        match self.post("/verify", &body).await {
            Ok(verdict) if verdict["isValid"] == true => {
                Ok(verdict["payer"].as_str().unwrap_or_default().to_owned())
            }
            Ok(verdict) => Err(InvalidReason::parse(
                verdict["invalidReason"].as_str().unwrap_or_default(),
            )),
            Err(error) => {
                tracing::warn!(%error, "facilitator /verify failed");
                Err(InvalidReason::Unexpected)
            }
        }
    }

    /// POST /settle for a batch-settlement deposit (the facilitator checks
    /// and submits it): the transaction's hash.
    pub async fn deposit(&self, requirement: &Value, payload: Value) -> Result<B256, Outcome> {
        let body = json!({
            "x402Version": 2,
            "paymentPayload": {"x402Version": 2, "accepted": requirement, "payload": payload},
            "paymentRequirements": requirement,
        });
        match self.post("/settle", &body).await {
            Ok(settled) if settled["success"] == true => settled["transaction"]
                .as_str()
                .and_then(|t| t.parse::<B256>().ok())
                .ok_or_else(|| Outcome::Unknown {
                    error: format!("facilitator deposited without a transaction hash: {settled}"),
                }),
            Ok(settled) => Err(Outcome::Failed {
                reason: format!(
                    "facilitator: {}",
                    settled["errorReason"].as_str().unwrap_or("deposit failed")
                ),
            }),
            Err(error) => Err(Outcome::Unknown { error }),
        }
    }

    /// POST /settle for a reserved authorization, rebuilt from its record.
    pub async fn settle(&self, network: &Network, a: &Authorization) -> Outcome {
        let amount = a.amount.unwrap_or_default().atomic();
        let offer = Offer {
            amount,
            resource: "",
            description: "",
        };
        let payload = json!({
            "signature": a.signature,
            "authorization": {
                "from": a.payer, "to": a.pay_to, "value": amount.to_string(),
                "validAfter": a.valid_after.to_string(), "validBefore": a.valid_before.to_string(),
                "nonce": a.nonce,
            },
        });
        let requirements = network.requirement(a.x402_version, &offer);
        let payment = if a.x402_version == 1 {
            json!({"x402Version": 1, "scheme": "exact", "network": network.v1_name, "payload": payload})
        } else {
            json!({"x402Version": 2, "accepted": requirements, "payload": payload})
        };
        let body = json!({
            "x402Version": a.x402_version,
            "paymentPayload": payment,
            "paymentRequirements": requirements,
        });
        match self.post("/settle", &body).await {
            Ok(settled) if settled["success"] == true => {
                match settled["transaction"]
                    .as_str()
                    .and_then(|t| t.parse::<B256>().ok())
                {
                    Some(tx_hash) => Outcome::Settled { tx_hash, block: 0 },
                    None => Outcome::Unknown {
                        error: format!("facilitator settled without a transaction hash: {settled}"),
                    },
                }
            }
            Ok(settled) => Outcome::Failed {
                reason: format!(
                    "facilitator: {}",
                    settled["errorReason"]
                        .as_str()
                        .unwrap_or("settlement failed")
                ),
            },
            Err(error) => Outcome::Unknown { error },
        }
    }
}
