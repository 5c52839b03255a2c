//! Deferred `exact` settlement: claims served calls, earliest deadline
//! first, and settles them many per transaction (Multicall3), several
//! transactions in flight at once, until stopped. An authorization too close
//! to its `validBefore` to be mined in time is marked expired without
//! sending anything (no reverted transaction, no gas). Claims are leased, so
//! a crashed worker's work comes back to whoever runs next. Each pass also
//! reads the backlog for backpressure (see `backpressure`).

use std::sync::Arc;
use std::time::Instant;

use rungate_proto::ledger::v1::ClaimSettlementsRequest;
use tokio_util::sync::CancellationToken;

use crate::BillingError;
use crate::chain::{Chain, Outcome};
use crate::payments::Payments;
use rungate_common::clock::now;

/// Authorizations per Multicall3 transaction.
const PER_TX: usize = 100;
/// Transactions in flight at once per chain.
const IN_FLIGHT: usize = 4;
/// An authorization whose `validBefore` is nearer than this is not sent.
pub const SEND_MARGIN_SECS: u64 = 20;

pub async fn run(payments: Arc<Payments>, stop: CancellationToken) {
    tokio::spawn(watch_backlog(payments.clone(), stop.clone()));
    let mut ticks = tokio::time::interval(payments.settle_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        for chain in &payments.chains {
            // A full pass means more is waiting: go again at once.
            loop {
                match drain_once(&payments, chain).await {
                    Ok(full) if full && !stop.is_cancelled() => continue,
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, network = %chain.network.network, "settlement pass failed");
                    }
                }
                break;
            }
        }
    }
}

/// Reads the backlog on its own clock, not between passes: a pass can wait
/// a receipt timeout on a stalled chain, which is exactly when backpressure
/// and the metrics must see the backlog grow.
async fn watch_backlog(payments: Arc<Payments>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(payments.settle_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => observe_backlog(&payments).await,
        }
    }
}

async fn observe_backlog(payments: &Payments) {
    match payments.ledger.backlog().await {
        Ok(backlog) => {
            payments
                .pressure
                .observe_backlog(backlog.due, backlog.earliest_valid_before);
            crate::metrics::backlog(&backlog, now());
        }
        Err(error) => tracing::debug!(%error, "backlog unreadable"),
    }
}

/// One pass: whether it took a full load (more may be waiting).
async fn drain_once(payments: &Payments, chain: &Arc<Chain>) -> Result<bool, BillingError> {
    let started = Instant::now();
    let claimed = payments
        .ledger
        .claim(ClaimSettlementsRequest {
            worker: payments.worker.clone(),
            limit: (PER_TX * IN_FLIGHT) as u32,
            lease_seconds: payments.lease.as_secs().max(1) as u32,
            network: chain.network.network.clone(),
            request_id: String::new(),
        })
        .await?;
    let full = claimed.len() == PER_TX * IN_FLIGHT;
    let deadline = now() + SEND_MARGIN_SECS;
    let (late, due): (Vec<_>, Vec<_>) = claimed
        .iter()
        .filter_map(|c| c.authorization.as_ref().map(|a| (a, c.attempts)))
        .partition(|(a, _)| a.valid_before <= deadline);
    for (authorization, _) in &late {
        tracing::warn!(request_id = %authorization.request_id, "too close to validBefore to settle; expired unsent");
        if let Err(error) = payments.expire_unsent(chain, authorization).await {
            tracing::warn!(%error, "recording an expiry failed; it will be retried");
        }
    }
    let batches = due
        .chunks(PER_TX)
        .map(|batch| payments.settle_batch(chain, batch));
    let mut settled = 0;
    for results in futures::future::join_all(batches).await {
        for result in results {
            match result {
                Ok(Outcome::Settled { .. }) => settled += 1,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "recording a settlement failed; it will be retried")
                }
            }
        }
    }
    payments
        .pressure
        .observe_settled(settled, started.elapsed());
    crate::metrics::rate(payments.pressure.reading().rate);
    Ok(full)
}
