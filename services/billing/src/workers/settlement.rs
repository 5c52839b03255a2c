//! Deferred `exact` settlement: claims served calls, earliest deadline first,
//! and settles them, until stopped. Claims are leased, so a crashed worker's
//! work comes back to whoever runs next.

use std::sync::Arc;

use rungate_proto::ledger::v1::ClaimSettlementsRequest;
use tokio_util::sync::CancellationToken;

use crate::BillingError;
use crate::chain::Chain;
use crate::payments::Payments;

/// Claims the worker takes per network per pass.
const CLAIM_BATCH: u32 = 64;

pub async fn run(payments: Arc<Payments>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(payments.settle_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        for chain in &payments.chains {
            if let Err(error) = drain_once(&payments, chain).await {
                tracing::warn!(%error, network = %chain.network.network, "settlement pass failed");
            }
        }
    }
}

async fn drain_once(payments: &Payments, chain: &Arc<Chain>) -> Result<(), BillingError> {
    let claimed = payments
        .ledger
        .claim(ClaimSettlementsRequest {
            worker: payments.worker.clone(),
            limit: CLAIM_BATCH,
            lease_seconds: payments.lease.as_secs().max(1) as u32,
            network: chain.network.network.clone(),
            request_id: String::new(),
        })
        .await?;
    let settles = claimed
        .iter()
        .filter_map(|c| c.authorization.as_ref())
        .map(|a| payments.settle_claimed(chain, a));
    for result in futures::future::join_all(settles).await {
        if let Err(error) = result {
            tracing::warn!(%error, "recording a settlement failed; it will be retried");
        }
    }
    Ok(())
}
