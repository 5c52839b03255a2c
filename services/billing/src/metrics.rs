//! Billing's Prometheus metrics (served at `GET /metrics` on its port): the
//! `exact` settlement backlog (served calls not yet settled), how old the
//! oldest of them is and how long until the earliest runs out, what the
//! worker settles, and the payments refused because settlement is behind.

use std::sync::OnceLock;

use rungate_proto::ledger::v1::SettlementBacklogResponse;

pub const BACKLOG: &str = "rungate_settlement_backlog";
pub const OLDEST_AGE: &str = "rungate_settlement_backlog_oldest_age_seconds";
pub const EXPIRES_IN: &str = "rungate_settlement_backlog_expires_in_seconds";
pub const RATE: &str = "rungate_settlement_rate_per_second";
pub const SETTLEMENTS: &str = "rungate_settlements_total";
pub const REFUSED: &str = "rungate_payments_refused_total";
pub const AUTHORIZED: &str = "rungate_payments_authorized_total";
pub const EARNED: &str = "rungate_earned_total";
pub const GAS: &str = "rungate_gas_spent_gwei_total";

/// Billing's metrics described, once per process.
pub fn describe() {
    static DESCRIBED: OnceLock<()> = OnceLock::new();
    DESCRIBED.get_or_init(describe_all);
}

fn describe_all() {
    use metrics::{Unit, describe_counter, describe_gauge};
    // The recorder first: descriptions given before it exists are lost.
    rungate_common::metrics::handle();
    describe_gauge!(BACKLOG, "Served exact calls not yet settled on chain.");
    describe_gauge!(
        OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest served exact call not yet settled."
    );
    describe_gauge!(
        EXPIRES_IN,
        Unit::Seconds,
        "Time until the earliest unsettled authorization's validBefore."
    );
    describe_gauge!(
        RATE,
        "Settlements per second the worker achieves (smoothed)."
    );
    describe_counter!(
        SETTLEMENTS,
        "exact settlements by outcome (settled, expired, failed)."
    );
    describe_counter!(
        GAS,
        "Gas our mined transactions cost, in gwei of the chain's native token."
    );
    describe_counter!(
        REFUSED,
        "Payments refused before serving, by reason and scheme."
    );
    describe_counter!(AUTHORIZED, "Payments accepted for a call, by scheme.");
    describe_counter!(
        EARNED,
        "Charged for served calls, in atomic units of the asset, by scheme."
    );
}

/// What the worker read of the backlog, at `now` (unix seconds).
pub fn backlog(backlog: &SettlementBacklogResponse, now: u64) {
    let since = |at: u64| if at == 0 { 0 } else { now.saturating_sub(at) };
    let until = |at: u64| if at == 0 { 0 } else { at.saturating_sub(now) };
    metrics::gauge!(BACKLOG).set(backlog.due as f64);
    metrics::gauge!(OLDEST_AGE).set(since(backlog.oldest_authorized_at) as f64);
    metrics::gauge!(EXPIRES_IN).set(until(backlog.earliest_valid_before) as f64);
}

/// The worker's smoothed settlement rate.
pub fn rate(per_second: f64) {
    metrics::gauge!(RATE).set(per_second);
}

/// A settlement's end: `settled`, `failed` or `expired` (not sent in time).
pub fn settlement(outcome: &'static str) {
    metrics::counter!(SETTLEMENTS, "outcome" => outcome).increment(1);
}

/// A payment refused before serving, by reason and scheme.
pub fn refused(reason: &'static str, scheme: &'static str) {
    metrics::counter!(REFUSED, "reason" => reason, "scheme" => scheme).increment(1);
}

/// A payment accepted for a call: `exact` or `batch-settlement`.
pub fn authorized(scheme: &'static str) {
    metrics::counter!(AUTHORIZED, "scheme" => scheme).increment(1);
}

/// Gas a mined transaction of ours cost (settlements, claims, sweeps,
/// deposits and refunds submitted as facilitator), counted in gwei (a u64
/// of wei would overflow after 18 ETH).
pub fn gas_spent(network: &str, wei: u128) {
    let gwei = u64::try_from(wei / 1_000_000_000).unwrap_or(u64::MAX);
    metrics::counter!(GAS, "network" => network.to_owned()).increment(gwei);
}

/// A served call's charge, in atomic units, recorded with its usage.
pub fn earned(scheme: &'static str, atomic: u128) {
    metrics::counter!(EARNED, "scheme" => scheme)
        .increment(u64::try_from(atomic).unwrap_or(u64::MAX));
}
