//! The settlement queue and expiry. Claims lease due settlements (authorized
//! and served, or one named by sync settlement) to a worker
//! with `FOR UPDATE SKIP LOCKED`, so concurrent workers (billing replicas)
//! never get the same one, and a crashed worker's claims come back when its
//! lease runs out. Expiry voids what can no longer be settled.

use rungate_proto::ledger::v1::{
    Authorization, ClaimSettlementsRequest, ClaimSettlementsResponse, ClaimedSettlement,
    SettlementBacklogRequest, SettlementBacklogResponse,
};
use sqlx::{PgPool, Row};

use crate::LedgerError;
use crate::convert::parse_amount;

const MAX_CLAIM: u32 = 1_000;

pub async fn claim(
    pool: &PgPool,
    request: &ClaimSettlementsRequest,
) -> Result<ClaimSettlementsResponse, LedgerError> {
    if request.worker.is_empty() {
        return Err(LedgerError::InvalidArgument("worker is required".into()));
    }
    let limit = request.limit.clamp(1, MAX_CLAIM);
    let lease = request.lease_seconds.clamp(1, 3_600);
    let rows = sqlx::query(
        "WITH due AS (
             SELECT s.request_id FROM settlements s
             JOIN authorizations a ON a.request_id = s.request_id
             -- A lapsed 'settling' lease comes back even past validBefore: its
             -- transaction may have landed, and only the worker can find out.
             WHERE ((s.status = 'authorized' AND a.valid_before > extract(epoch FROM now()))
                    OR (s.status = 'settling' AND s.lease_until < now()))
               AND ($4 = '' OR a.network = $4)
               -- Only served calls are due: an authorization whose call never
               -- completed is voided or expires, never settled.
               AND CASE WHEN $5 = '' THEN EXISTS (SELECT 1 FROM usage_records u WHERE u.request_id = s.request_id)
                        ELSE s.request_id = $5 END
             ORDER BY a.valid_before
             LIMIT $1
             FOR UPDATE OF s SKIP LOCKED),
         claimed AS (
             UPDATE settlements s SET status = 'settling', attempts = s.attempts + 1,
                 lease_owner = $2, lease_until = now() + make_interval(secs => $3),
                 updated_at = now()
             FROM due WHERE s.request_id = due.request_id
             RETURNING s.request_id, s.attempts),
         events AS (
             INSERT INTO settlement_events (request_id, status)
             SELECT request_id, 'settling' FROM claimed)
         SELECT a.request_id, a.network, a.asset, a.payer, a.pay_to, a.amount::text AS amount,
                a.valid_after::text AS valid_after, a.valid_before::text AS valid_before,
                a.nonce, a.signature, a.scheme, a.x402_version, c.attempts
         FROM claimed c JOIN authorizations a ON a.request_id = c.request_id
         ORDER BY a.valid_before",
    )
    .bind(i64::from(limit))
    .bind(&request.worker)
    .bind(f64::from(lease))
    .bind(&request.network)
    .bind(&request.request_id)
    .fetch_all(pool)
    .await?;
    let number = |row: &sqlx::postgres::PgRow, column: &str| -> Result<u64, LedgerError> {
        row.get::<&str, _>(column)
            .parse()
            .map_err(|_| LedgerError::InvalidArgument(format!("stored {column} is not a u64")))
    };
    let claimed = rows
        .iter()
        .map(|row| {
            Ok(ClaimedSettlement {
                authorization: Some(Authorization {
                    request_id: row.get("request_id"),
                    network: row.get("network"),
                    asset: row.get("asset"),
                    payer: row.get("payer"),
                    pay_to: row.get("pay_to"),
                    amount: Some(parse_amount(row.get("amount"))?),
                    valid_after: number(row, "valid_after")?,
                    valid_before: number(row, "valid_before")?,
                    nonce: row.get("nonce"),
                    signature: row.get("signature"),
                    scheme: row.get("scheme"),
                    x402_version: row.get::<i32, _>("x402_version") as u32,
                }),
                attempts: row.get::<i32, _>("attempts") as u32,
            })
        })
        .collect::<Result<_, LedgerError>>()?;
    Ok(ClaimSettlementsResponse { claimed })
}

/// Served, unsettled calls: how many, the earliest deadline, the oldest.
pub async fn backlog(
    pool: &PgPool,
    request: &SettlementBacklogRequest,
) -> Result<SettlementBacklogResponse, LedgerError> {
    let row = sqlx::query(
        "SELECT count(*) AS due,
                coalesce(min(a.valid_before), 0)::text AS earliest,
                coalesce(extract(epoch FROM min(a.created_at)), 0)::bigint AS oldest
         FROM settlements s JOIN authorizations a ON a.request_id = s.request_id
         WHERE s.status IN ('authorized', 'settling')
           AND ($1 = '' OR a.network = $1)
           AND EXISTS (SELECT 1 FROM usage_records u WHERE u.request_id = s.request_id)",
    )
    .bind(&request.network)
    .fetch_one(pool)
    .await?;
    Ok(SettlementBacklogResponse {
        due: row.get::<i64, _>("due") as u64,
        earliest_valid_before: row.get::<&str, _>("earliest").parse().unwrap_or(0),
        oldest_authorized_at: row.get::<i64, _>("oldest") as u64,
    })
}

/// Authorizations past `validBefore` that were never claimed become expired,
/// and their pending transfers are voided, in one transaction. Returns how
/// many. (A settlement already `settling` may have reached the chain; its
/// worker, not the clock, decides how it ends.)
pub async fn expire(pool: &PgPool) -> Result<u32, LedgerError> {
    let expired: i64 = sqlx::query_scalar(
        "WITH expired AS (
             UPDATE settlements s SET status = 'expired', updated_at = now(),
                 lease_owner = NULL, lease_until = NULL
             FROM authorizations a
             WHERE a.request_id = s.request_id AND s.status = 'authorized'
               AND a.valid_before <= extract(epoch FROM now())
             RETURNING s.request_id),
         events AS (
             INSERT INTO settlement_events (request_id, status)
             SELECT request_id, 'expired' FROM expired),
         voids AS (
             INSERT INTO transfers (transfer_key, kind, debit_account, credit_account, amount, pending_id, request_id)
             SELECT 'void:' || t.request_id, 'void_pending', t.debit_account, t.credit_account,
                    t.amount, t.id, t.request_id
             FROM transfers t JOIN expired e ON t.transfer_key = 'auth:' || e.request_id)
         SELECT count(*) FROM expired",
    )
    .fetch_one(pool)
    .await?;
    Ok(expired as u32)
}

/// Runs `expire` every `interval` until the ledger stops.
pub async fn expire_periodically(pool: PgPool, interval: std::time::Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match expire(&pool).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "authorizations expired"),
            Err(error) => tracing::warn!(%error, "expiry pass failed; will retry"),
        }
    }
}
