//! Reads of batch-settlement channels: one channel's stored state (billing
//! rebuilds its in-memory channel from it after a restart), and the claim
//! queue, leased like the settlement queue so two billing replicas never
//! claim the same channel at once and a crashed worker's lease lapses.

use rungate_proto::ledger::v1::{
    ChannelConfig, ChannelState, ClaimChannelsRequest, ClaimChannelsResponse, GetChannelRequest,
};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use crate::LedgerError;
use crate::convert::parse_amount;

const MAX_CLAIM: u32 = 1_000;

macro_rules! columns {
    () => {
        "c.channel_id, c.network, c.asset, c.payer, c.payer_authorizer, c.receiver,
    c.receiver_authorizer, c.withdraw_delay, c.salt, s.deposited::text AS deposited,
    s.refunded::text AS refunded, s.signed_max::text AS signed_max, s.signature,
    s.charged::text AS charged, s.claimed::text AS claimed"
    };
}

fn state(row: &PgRow) -> Result<ChannelState, LedgerError> {
    Ok(ChannelState {
        channel: Some(ChannelConfig {
            channel_id: row.get("channel_id"),
            network: row.get("network"),
            asset: row.get("asset"),
            payer: row.get("payer"),
            payer_authorizer: row.get("payer_authorizer"),
            receiver: row.get("receiver"),
            receiver_authorizer: row.get("receiver_authorizer"),
            withdraw_delay: row.get::<i64, _>("withdraw_delay") as u64,
            salt: row.get("salt"),
        }),
        deposited: Some(parse_amount(row.get("deposited"))?),
        refunded: Some(parse_amount(row.get("refunded"))?),
        signed_max: Some(parse_amount(row.get("signed_max"))?),
        signature: row.get("signature"),
        charged: Some(parse_amount(row.get("charged"))?),
        claimed: Some(parse_amount(row.get("claimed"))?),
    })
}

pub async fn get(pool: &PgPool, request: &GetChannelRequest) -> Result<ChannelState, LedgerError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM channels c JOIN channel_states s ON s.channel_id = c.channel_id
         WHERE c.channel_id = lower($1)"
    ))
    .bind(&request.channel_id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| LedgerError::NotFound(format!("no channel `{}`", request.channel_id)))?;
    state(&row)
}

/// Channels with charged money not claimed yet (or the named ones), not
/// leased to anyone else, oldest change first; leased to `worker`.
pub async fn claim(
    pool: &PgPool,
    request: &ClaimChannelsRequest,
) -> Result<ClaimChannelsResponse, LedgerError> {
    if request.worker.is_empty() {
        return Err(LedgerError::InvalidArgument("worker is required".into()));
    }
    let limit = request.limit.clamp(1, MAX_CLAIM);
    let lease = request.lease_seconds.clamp(1, 3_600);
    let named: Vec<String> = request
        .channel_ids
        .iter()
        .map(|id| id.to_ascii_lowercase())
        .collect();
    let rows = sqlx::query(concat!(
        "WITH due AS (
             SELECT s.channel_id FROM channel_states s JOIN channels c ON c.channel_id = s.channel_id
             WHERE s.charged > s.claimed
               AND (s.lease_until IS NULL OR s.lease_until < now())
               AND ($4 = '' OR c.network = $4)
               AND (cardinality($5::text[]) = 0 OR s.channel_id = ANY($5))
             ORDER BY s.updated_at
             LIMIT $1
             FOR UPDATE OF s SKIP LOCKED),
         leased AS (
             UPDATE channel_states s SET lease_owner = $2,
                 lease_until = now() + make_interval(secs => $3)
             FROM due WHERE s.channel_id = due.channel_id
             RETURNING s.*)
         SELECT ",
        columns!(),
        " FROM leased s JOIN channels c ON c.channel_id = s.channel_id
         ORDER BY s.updated_at"
    ))
    .bind(i64::from(limit))
    .bind(&request.worker)
    .bind(f64::from(lease))
    .bind(&request.network)
    .bind(&named)
    .fetch_all(pool)
    .await?;
    Ok(ClaimChannelsResponse {
        channels: rows.iter().map(state).collect::<Result<_, _>>()?,
    })
}
