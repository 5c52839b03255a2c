//! What billing does for a call, whichever API asked (gRPC, the paid-call
//! stream): price it, offer the x402 schemes for it, and admit its payment
//! under the scheme the payer chose.

use std::sync::Arc;

use rungate_proto::billing::v1::{
    AuthorizeRequest, AuthorizeResponse, HttpReply, QuoteRequest, QuoteResponse,
};
use serde_json::Value;

use crate::BillingError;
use crate::chain::Chain;
use crate::channels::{Admitted, Channels, Reserved};
use crate::payments::{Authorized, Payments};
use crate::pricing::PriceTable;
use crate::x402::batch::offer::{self, Snapshot};
use crate::x402::networks::Offer;
use crate::x402::payment::{self, Payload};
use crate::x402::{Refused, http};
use rungate_common::clock::now;

pub struct Billing {
    prices: PriceTable,
    /// None in free mode (no payment networks configured).
    payments: Option<Arc<Payments>>,
    /// batch-settlement, when a receiver-authorizer key is configured.
    channels: Option<Arc<Channels>>,
    replicas: Replicas,
}

/// This billing among its replicas. A batch-settlement channel's state
/// lives in one replica's memory (its calls are serialized there, its
/// vouchers coalesced there), so each channel has one owner, chosen by its
/// id; the others send its payments to the owner.
#[derive(Debug, Clone, Copy)]
pub struct Replicas {
    pub index: u32,
    pub count: u32,
}

impl Replicas {
    /// The replica that serves `channel`, when it is not this one.
    pub fn owner_elsewhere(&self, channel: &alloy_primitives::B256) -> Option<u32> {
        if self.count <= 1 {
            return None;
        }
        let mut key = [0u8; 8];
        key.copy_from_slice(&channel[..8]);
        // Channel ids are hashes: their first bytes spread evenly.
        let owner = (u64::from_be_bytes(key) % u64::from(self.count)) as u32;
        (owner != self.index).then_some(owner)
    }
}

/// A payment billing let through, under its scheme.
#[derive(Debug)]
pub enum Admission {
    Exact(Authorized),
    Batch(BatchCall),
}

/// A voucher- (or deposit-) paid call in progress.
#[derive(Debug)]
pub struct BatchCall {
    pub reserved: Reserved,
    pub chain: Arc<Chain>,
    pub version: u32,
}

/// What billing decided about a presented payment.
pub struct Decision {
    pub response: AuthorizeResponse,
    pub admission: Option<Admission>,
}

impl Billing {
    pub fn new(
        prices: PriceTable,
        payments: Option<Arc<Payments>>,
        channels: Option<Arc<Channels>>,
        replicas: Replicas,
    ) -> Self {
        Self {
            prices,
            payments,
            channels,
            replicas,
        }
    }

    pub fn payments_handle(&self) -> Option<Arc<Payments>> {
        self.payments.clone()
    }

    pub fn channels(&self) -> Option<&Arc<Channels>> {
        self.channels.as_ref()
    }

    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }

    pub fn payments(&self, what: &'static str) -> Result<&Arc<Payments>, BillingError> {
        self.payments
            .as_ref()
            .ok_or(BillingError::PaymentsDisabled(what))
    }

    /// The quote's amount and the description its offers carry. A quote
    /// without a model (a refund's probe) is at the default price.
    fn price(&self, request: &QuoteRequest) -> (u128, String) {
        let amount = self
            .prices
            .price(&request.model)
            .quote(request.prompt_tokens, request.max_tokens);
        let what = if request.model.is_empty() {
            "RunGate chat completions".to_owned()
        } else {
            format!("RunGate chat completion with {}", request.model)
        };
        (amount, what)
    }

    /// Every offer for the call: `exact` on each network (v1 and v2), and
    /// batch-settlement next to it in v2. `corrective`: the channel state to
    /// put in the batch offer on that network (a client out of step).
    fn offers(
        &self,
        offer: &Offer<'_>,
        corrective: Option<(&str, &Snapshot)>,
    ) -> (Vec<Value>, Vec<Value>) {
        let networks = self.payments.as_ref().map_or(&[][..], |p| &p.networks[..]);
        let v1 = networks.iter().map(|n| n.requirement_v1(offer)).collect();
        let mut v2 = Vec::with_capacity(networks.len() * 2);
        for network in networks {
            v2.push(network.requirement_v2(offer));
            if let Some(channels) = &self.channels {
                let batch = offer::requirement(network, offer, &channels.terms);
                v2.push(match corrective {
                    Some((name, snapshot)) if name == network.network => {
                        offer::corrective(batch, snapshot)
                    }
                    _ => batch,
                });
            }
        }
        (v1, v2)
    }

    pub fn quote_for(&self, request: &QuoteRequest) -> QuoteResponse {
        let (amount, description) = self.price(request);
        let offer = Offer {
            amount,
            resource: &request.resource,
            description: &description,
        };
        let (v1, v2) = self.offers(&offer, None);
        let payment_required = http::payment_required(
            "X-PAYMENT or PAYMENT-SIGNATURE header is required",
            &request.resource,
            v1.clone(),
            v2.clone(),
        );
        QuoteResponse {
            amount: Some(amount.into()),
            requirements_v1_json: v1.iter().map(Value::to_string).collect(),
            requirements_v2_json: v2.iter().map(Value::to_string).collect(),
            flat: self.prices.price(&request.model).is_flat(),
            payment_required: Some(payment_required),
        }
    }

    /// The presented payment, decoded (from the header as it came, or JSON).
    fn presented_json(request: &AuthorizeRequest) -> Result<Value, BillingError> {
        if !request.payment_payload_json.is_empty() {
            return serde_json::from_str(&request.payment_payload_json).map_err(|_| {
                BillingError::MalformedPayment {
                    header: "payment".into(),
                    why: "not JSON",
                }
            });
        }
        http::decode_header(&request.payment_header).map_err(|why| BillingError::MalformedPayment {
            header: request.payment_header_name.clone(),
            why,
        })
    }

    /// Checks the payment under its scheme. A refused payment is an answer
    /// (`is_valid: false`, its reason, the 402 to send), not an error.
    pub async fn authorize_call(
        &self,
        request: &AuthorizeRequest,
    ) -> Result<Decision, BillingError> {
        let payments = self.payments("Authorize")?;
        if request.request_id.is_empty() {
            return Err(BillingError::InvalidArgument(
                "request_id is required".into(),
            ));
        }
        let json = Self::presented_json(request)?;
        let quote = request.quote.clone().unwrap_or_default();
        let (amount, description) = self.price(&quote);
        let offer = Offer {
            amount,
            resource: &quote.resource,
            description: &description,
        };
        let terms = self.channels.as_ref().map(|c| &c.terms);
        let presented = match payment::parse(json, &payments.networks, &offer, terms) {
            Ok(presented) => presented,
            Err(reason) => return Ok(self.refuse(&request.request_id, reason, &offer, None)),
        };
        let now = now();
        match &presented.payload {
            Payload::Exact(exact) => {
                match payments
                    .authorize(&request.request_id, &presented, exact, &offer, now)
                    .await?
                {
                    Ok(authorized) => Ok(Decision {
                        response: AuthorizeResponse {
                            is_valid: true,
                            payer: authorized.payer.to_checksum(None),
                            authorization_id: authorized.request_id.clone(),
                            amount: Some(amount.into()),
                            x402_version: authorized.version,
                            scheme: "exact".into(),
                            ..Default::default()
                        },
                        admission: Some(Admission::Exact(authorized)),
                    }),
                    Err(reason) => {
                        Ok(self.refuse(&request.request_id, reason.into(), &offer, None))
                    }
                }
            }
            Payload::Batch(batch) => {
                let channels = self
                    .channels
                    .as_ref()
                    .ok_or(BillingError::PaymentsDisabled("batch-settlement"))?;
                let chain = payments.chains[presented.index].clone();
                let version = presented.version;
                // One replica: no channel id to hash on the hot path.
                let elsewhere = (self.replicas.count > 1)
                    .then(|| {
                        self.replicas
                            .owner_elsewhere(&chain.escrow.channel_id(batch.config()))
                    })
                    .flatten();
                if let Some(owner) = elsewhere {
                    return Ok(Decision {
                        response: AuthorizeResponse {
                            owner_replica: Some(owner),
                            scheme: crate::x402::batch::SCHEME.into(),
                            ..Default::default()
                        },
                        admission: None,
                    });
                }
                match channels
                    .admit(&chain, &request.request_id, (**batch).clone(), amount, now)
                    .await?
                {
                    Admitted::Serve(reserved) => Ok(Decision {
                        response: AuthorizeResponse {
                            is_valid: true,
                            payer: reserved.payer.to_checksum(None),
                            authorization_id: request.request_id.clone(),
                            amount: Some(amount.into()),
                            x402_version: version,
                            scheme: crate::x402::batch::SCHEME.into(),
                            ..Default::default()
                        },
                        admission: Some(Admission::Batch(BatchCall {
                            reserved,
                            chain,
                            version,
                        })),
                    }),
                    Admitted::Refused { reason, snapshot } => {
                        let corrective = snapshot
                            .as_ref()
                            .map(|s| (chain.network.network.as_str(), s));
                        Ok(self.refuse(&request.request_id, reason.into(), &offer, corrective))
                    }
                    Admitted::Refunded {
                        payer,
                        amount,
                        mined,
                        snapshot,
                    } => {
                        let settled = rungate_proto::billing::v1::SettleResponse {
                            success: true,
                            payer: payer.to_checksum(None),
                            transaction: mined.tx_hash.to_string(),
                            network: chain.network.network.clone(),
                            amount: Some(amount.into()),
                            ..Default::default()
                        };
                        let extra = serde_json::json!({"channelState": snapshot.channel_state()});
                        let body = serde_json::json!({
                            "message": "Refund acknowledged",
                            "channelId": snapshot.channel_id.to_string(),
                        });
                        Ok(Decision {
                            response: AuthorizeResponse {
                                is_valid: true,
                                payer: payer.to_checksum(None),
                                x402_version: version,
                                handled: true,
                                reply: Some(http::handled(&body, version, &settled, Some(&extra))),
                                ..Default::default()
                            },
                            admission: None,
                        })
                    }
                }
            }
        }
    }

    fn refuse(
        &self,
        request_id: &str,
        reason: Refused,
        offer: &Offer<'_>,
        corrective: Option<(&str, &Snapshot)>,
    ) -> Decision {
        tracing::info!(%request_id, reason = reason.as_str(), "payment refused");
        crate::metrics::refused(reason.as_str(), reason.scheme());
        let (v1, v2) = self.offers(offer, corrective);
        let reply: HttpReply =
            http::payment_required(reason.as_str(), offer.resource, v1.clone(), v2.clone());
        Decision {
            response: AuthorizeResponse {
                is_valid: false,
                invalid_reason: reason.as_str().to_owned(),
                amount: Some(offer.amount.into()),
                requirements_v1_json: v1.iter().map(Value::to_string).collect(),
                requirements_v2_json: v2.iter().map(Value::to_string).collect(),
                reply: Some(reply),
                ..Default::default()
            },
            admission: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Replicas;

    #[test]
    fn every_channel_has_exactly_one_owner_among_the_replicas() {
        for byte in 0..=255u8 {
            let channel = alloy_primitives::B256::repeat_byte(byte);
            let owners: Vec<u32> = (0..3)
                .filter(|&index| {
                    Replicas { index, count: 3 }
                        .owner_elsewhere(&channel)
                        .is_none()
                })
                .collect();
            assert_eq!(owners.len(), 1, "{channel}");
            let owner = owners[0];
            for index in 0..3 {
                let elsewhere = Replicas { index, count: 3 }.owner_elsewhere(&channel);
                assert_eq!(elsewhere, (index != owner).then_some(owner));
            }
        }
        let alone = Replicas { index: 0, count: 1 };
        assert_eq!(
            alone.owner_elsewhere(&alloy_primitives::B256::repeat_byte(7)),
            None
        );
    }
}
