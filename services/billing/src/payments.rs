//! Payments end to end: authorize (verify + hold funds + reserve the nonce),
//! settle (now, for sync settlement, or from the queue, for deferred), and
//! the worker that drains the queue.

use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, B256, Signature, U256};
use rungate_proto::billing::v1::SettleResponse;
use rungate_proto::ledger::v1::{
    Authorization, ClaimSettlementsRequest, SettlementStatus, SettlementUpdate,
};

use crate::BillingError;
use crate::chain::{Chain, Outcome, SettleAuthorization};
use crate::config::SettlementMode;
use crate::funds::Funds;
use crate::ledger::{Ledger, Reservation};
use crate::remote::RemoteFacilitator;
use crate::x402::InvalidReason;
use crate::x402::networks::{Network, Offer};
use crate::x402::{exact_evm, payment};

pub struct Payments {
    pub chains: Vec<Arc<Chain>>,
    /// The chains' networks, in the same order.
    pub networks: Vec<Network>,
    /// Verify and settle through an external facilitator instead of locally.
    pub remote: Option<Arc<RemoteFacilitator>>,
    pub ledger: Ledger,
    pub funds: Arc<Funds>,
    pub mode: SettlementMode,
    pub settle_interval: Duration,
    /// How long a claimed settlement is ours before another worker may retry it.
    pub lease: Duration,
    /// The settlement backlog, for refusing what could not be settled in time.
    pub pressure: crate::backpressure::Pressure,
    pub worker: String,
}

/// A payment that passed every check and whose nonce is now reserved.
#[derive(Debug, Clone)]
pub struct Authorized {
    pub request_id: String,
    pub chain: Arc<Chain>,
    pub version: u32,
    pub payer: Address,
    pub amount: u128,
}

impl Authorized {
    /// The x402 SettleResponse for this payment.
    pub fn settle_response(&self, success: bool, error: &str, tx: Option<B256>) -> SettleResponse {
        SettleResponse {
            success,
            error_reason: error.to_owned(),
            payer: self.payer.to_checksum(None),
            transaction: tx.map(|h| h.to_string()).unwrap_or_default(),
            network: self.chain.network.name_for(self.version).to_owned(),
            amount: Some(self.amount.into()),
            reply: None,
        }
    }
}

impl Payments {
    /// Every check of the spec, in its order: the local ones (microseconds),
    /// the nonce reservation in the ledger (one round trip), the funds.
    pub async fn authorize(
        &self,
        request_id: &str,
        presented: &payment::Presented<'_>,
        payload: &exact_evm::ExactEvmPayload,
        offer: &Offer<'_>,
        now: u64,
    ) -> Result<Result<Authorized, InvalidReason>, BillingError> {
        // `networks` lists the chains' networks in the same order.
        let chain = &self.chains[presented.index];
        let margin = crate::workers::settlement::SEND_MARGIN_SECS;
        if self.mode == SettlementMode::Deferred
            && let Err(retry_after) =
                self.pressure
                    .admit(now, chain.network.max_timeout_seconds, margin)
        {
            crate::metrics::refused("settlement_backlog", crate::x402::exact_evm::SCHEME);
            return Err(BillingError::Overloaded { retry_after });
        }
        let verified = match &self.remote {
            None => {
                let expected = exact_evm::Expected {
                    pay_to: chain.network.pay_to,
                    amount: U256::from(offer.amount),
                    domain_separator: chain.domain_separator,
                };
                exact_evm::verify(payload, &expected, now)
            }
            Some(remote) => {
                self.verify_remotely(remote, presented, payload, offer)
                    .await
            }
        };
        let verified = match verified {
            Ok(v) => v,
            Err(reason) => return Ok(Err(reason)),
        };
        // Deferred: the worker must still be able to send it after the
        // current backlog, with its margin; else it would be served unpaid.
        if self.mode == SettlementMode::Deferred {
            let reach = now + margin + self.pressure.drain_secs();
            if verified.message.validBefore <= U256::from(reach) {
                return Ok(Err(InvalidReason::ValidBefore));
            }
        }
        let message = &verified.message;
        let record = Authorization {
            request_id: request_id.to_owned(),
            network: chain.network.network.clone(),
            asset: chain.network.asset.to_string(),
            payer: verified.payer.to_string(),
            pay_to: message.to.to_string(),
            amount: Some(offer.amount.into()),
            valid_after: saturating_u64(message.validAfter),
            valid_before: saturating_u64(message.validBefore),
            nonce: message.nonce.to_string(),
            signature: format!(
                "0x{}",
                alloy_primitives::hex::encode(verified.signature.as_bytes())
            ),
            scheme: "exact".into(),
            x402_version: presented.version,
        };
        // The spec's order: the nonce (reserved atomically, so of 20 copies
        // sent at once exactly one gets past here), then the funds.
        if self.ledger.reserve(record).await? == Reservation::AlreadyUsed {
            return Ok(Err(InvalidReason::NonceUsed));
        }
        let amount = U256::from(offer.amount);
        // An external facilitator has checked the funds already.
        let funds = match self.remote {
            None => {
                self.funds
                    .check(chain, verified.payer, message.nonce, amount)
                    .await
            }
            Some(_) => Ok(()),
        };
        if let Err(reason) = funds {
            // Refused after all: the reservation is voided (the nonce stays
            // spent here; clients sign a fresh one for every attempt).
            self.ledger.void(request_id, reason.as_str()).await?;
            return Ok(Err(reason));
        }
        Ok(Ok(Authorized {
            request_id: request_id.to_owned(),
            chain: chain.clone(),
            version: presented.version,
            payer: verified.payer,
            amount: offer.amount,
        }))
    }

    /// The external facilitator's verdict on the offer this payment chose;
    /// the authorization is decoded (not verified) here for the ledger.
    async fn verify_remotely(
        &self,
        remote: &RemoteFacilitator,
        presented: &payment::Presented<'_>,
        payload: &exact_evm::ExactEvmPayload,
        offer: &Offer<'_>,
    ) -> Result<exact_evm::Verified, InvalidReason> {
        let decoded = exact_evm::decode(payload)?;
        let requirements = presented.network.requirement(presented.version, offer);
        remote.verify(&presented.json, &requirements).await?;
        Ok(decoded)
    }

    /// Sync settlement of one authorized call: claim it, settle it, record
    /// the outcome. An outcome not yet known (RPC down, slow receipt) stays
    /// claimed; the worker finishes it once the lease runs out.
    pub async fn settle_by_id(&self, request_id: &str) -> Result<SettleResponse, BillingError> {
        let claimed = self
            .ledger
            .claim(ClaimSettlementsRequest {
                worker: self.worker.clone(),
                limit: 1,
                lease_seconds: self.lease.as_secs().max(1) as u32,
                network: String::new(),
                request_id: request_id.to_owned(),
            })
            .await?;
        let Some(authorization) = claimed.into_iter().next().and_then(|c| c.authorization) else {
            return Err(BillingError::InvalidArgument(format!(
                "authorization `{request_id}` is unknown, already settled or being settled"
            )));
        };
        let chain = self
            .chains
            .iter()
            .find(|c| c.network.network == authorization.network)
            .ok_or_else(|| {
                BillingError::Config(format!("no chain for {}", authorization.network))
            })?;
        let outcome = self.settle_claimed(chain, &authorization).await?;
        let network = chain.network.name_for(authorization.x402_version);
        let payer = authorization
            .payer
            .parse::<Address>()
            .map_or_else(|_| authorization.payer.clone(), |a| a.to_checksum(None));
        let (success, error, tx) = match outcome {
            Outcome::Settled { tx_hash, .. } => (true, "", tx_hash.to_string()),
            Outcome::Failed { .. } | Outcome::Expired => {
                (false, "transaction_failed", String::new())
            }
            // As far as the payer is concerned it is paid; the worker makes
            // sure of it (and cannot pay twice).
            Outcome::Unknown { .. } => (true, "", String::new()),
        };
        Ok(SettleResponse {
            success,
            error_reason: error.to_owned(),
            payer,
            transaction: tx,
            network: network.to_owned(),
            amount: authorization.amount,
            reply: None,
        })
    }

    /// Settles a claimed authorization on `chain` and records a final outcome.
    pub async fn settle_claimed(
        &self,
        chain: &Chain,
        authorization: &Authorization,
    ) -> Result<Outcome, BillingError> {
        let outcome = match (to_settle(authorization), &self.remote) {
            (Err(reason), _) => Outcome::Failed { reason },
            (Ok(_), Some(remote)) => remote.settle(&chain.network, authorization).await,
            (Ok(auth), None) => chain.settle(&auth).await,
        };
        self.record(chain, authorization, &outcome).await?;
        Ok(outcome)
    }

    /// Settles many claimed authorizations in one Multicall3 transaction
    /// (each may fail on its own) and records each outcome. Retries of an
    /// earlier attempt, and payments through an external facilitator, go
    /// one by one: the careful path asks the chain first.
    pub async fn settle_batch(
        &self,
        chain: &Chain,
        claimed: &[(&Authorization, u32)],
    ) -> Vec<Result<Outcome, BillingError>> {
        let mut results = Vec::with_capacity(claimed.len());
        let mut fresh = Vec::with_capacity(claimed.len());
        for (authorization, attempts) in claimed {
            match to_settle(authorization) {
                Ok(auth) if *attempts <= 1 && self.remote.is_none() => {
                    fresh.push((*authorization, auth))
                }
                _ => results.push(self.settle_claimed(chain, authorization).await),
            }
        }
        if fresh.is_empty() {
            return results;
        }
        let auths: Vec<SettleAuthorization> = fresh.iter().map(|(_, auth)| auth.clone()).collect();
        let outcomes = chain.settle_many(&auths).await;
        for ((authorization, _), outcome) in fresh.iter().zip(outcomes) {
            results.push(
                self.record(chain, authorization, &outcome)
                    .await
                    .map(|()| outcome),
            );
        }
        results
    }

    /// Marks a claimed authorization expired without sending it.
    pub async fn expire_unsent(
        &self,
        chain: &Chain,
        authorization: &Authorization,
    ) -> Result<(), BillingError> {
        self.record(chain, authorization, &Outcome::Expired).await
    }

    /// Records a final outcome in the ledger (an unknown one stays claimed:
    /// the worker retries it when the lease lapses) and frees the payer's
    /// held funds once the outcome is final.
    async fn record(
        &self,
        chain: &Chain,
        authorization: &Authorization,
        outcome: &Outcome,
    ) -> Result<(), BillingError> {
        let request_id = &authorization.request_id;
        if self.remote.is_none()
            && !matches!(outcome, Outcome::Unknown { .. })
            && let Ok(auth) = to_settle(authorization)
        {
            self.funds
                .release(&chain.network.network, auth.from, auth.value);
        }
        let update = match outcome {
            Outcome::Settled { tx_hash, block } => SettlementUpdate {
                request_id: request_id.clone(),
                status: SettlementStatus::Settled as i32,
                tx_hash: tx_hash.to_string(),
                block_number: *block,
                error: String::new(),
            },
            Outcome::Failed { reason } => SettlementUpdate {
                request_id: request_id.clone(),
                status: SettlementStatus::Failed as i32,
                error: reason.clone(),
                ..Default::default()
            },
            Outcome::Expired => SettlementUpdate {
                request_id: request_id.clone(),
                status: SettlementStatus::Expired as i32,
                error: "too close to validBefore to be mined in time; not sent".into(),
                ..Default::default()
            },
            Outcome::Unknown { error } => {
                tracing::warn!(%request_id, %error, "settlement outcome unknown; it will be retried");
                return Ok(());
            }
        };
        tracing::debug!(%request_id, ?outcome, "settlement finished");
        self.ledger.finish(update).await?;
        crate::metrics::settlement(match outcome {
            Outcome::Settled { .. } => "settled",
            Outcome::Expired => "expired",
            _ => "failed",
        });
        Ok(())
    }
}

fn saturating_u64(value: U256) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// The ledger's record back into a transferWithAuthorization call.
fn to_settle(a: &Authorization) -> Result<SettleAuthorization, String> {
    let bad = |field: &str| format!("stored authorization has a malformed {field}");
    let signature = alloy_primitives::hex::decode(&a.signature)
        .ok()
        .and_then(|bytes| Signature::try_from(bytes.as_slice()).ok())
        .ok_or_else(|| bad("signature"))?;
    Ok(SettleAuthorization {
        asset: a.asset.parse().map_err(|_| bad("asset"))?,
        from: a.payer.parse().map_err(|_| bad("payer"))?,
        to: a.pay_to.parse().map_err(|_| bad("pay_to"))?,
        value: U256::from(a.amount.unwrap_or_default().atomic()),
        valid_after: U256::from(a.valid_after),
        valid_before: U256::from(a.valid_before),
        nonce: a.nonce.parse().map_err(|_| bad("nonce"))?,
        signature,
    })
}
