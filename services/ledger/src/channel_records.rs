//! Applying batch-settlement writes: deposits, the coalesced latest voucher
//! of a channel, claims, refunds, sweeps and gas. Every running total only
//! moves forward, so a replayed or out-of-date write is a no-op, and each
//! money movement is booked once under a key derived from the fact.
//!
//! The book: a deposit moves the payer's money into its channel's escrow
//! account (still the payer's: a liability); serving calls moves it on to
//! earned; a claim on chain makes it revenue; a refund returns it to the
//! payer. Gas is an expense, in the chain's native unit.

use rungate_proto::ledger::v1::{
    ChannelClaim, ChannelDeposit, ChannelRefund, ChannelVoucher, GasSpent, Sweep,
};
use sqlx::{PgConnection, Row};

use crate::convert::amount_text;
use crate::records::{Key, Refusal, claim_key, required};

/// The book accounts a record may touch: (code, kind, ledger). Created before
/// the batch's transaction (see `records::ensure_accounts`).
pub fn deposit_accounts(d: &ChannelDeposit) -> Vec<(String, &'static str, String)> {
    let Some(c) = &d.channel else {
        return Vec::new();
    };
    let ledger = format!("{}:{}", c.network, c.asset.to_ascii_lowercase());
    vec![
        (
            format!("payer:{ledger}:{}", c.payer.to_ascii_lowercase()),
            "payer",
            ledger.clone(),
        ),
        (
            format!("escrow:{ledger}:{}", c.channel_id.to_ascii_lowercase()),
            "escrow",
            ledger.clone(),
        ),
        (
            format!("earned:{ledger}:{}", c.receiver.to_ascii_lowercase()),
            "earned",
            ledger.clone(),
        ),
        (
            format!("revenue:{ledger}:{}", c.receiver.to_ascii_lowercase()),
            "revenue",
            ledger,
        ),
    ]
}

pub fn gas_accounts(g: &GasSpent) -> Vec<(String, &'static str, String)> {
    let ledger = format!("{}:native", g.network);
    vec![
        (
            format!("settler:{ledger}:{}", g.payer.to_ascii_lowercase()),
            "settler",
            ledger.clone(),
        ),
        (format!("expense:gas:{ledger}"), "expense", ledger),
    ]
}

/// The SQL naming one of a channel's accounts, from its `channels` row `c`
/// (macros, so statements stay static strings).
macro_rules! account {
    ($kind:literal, $owner:literal) => {
        concat!(
            "(SELECT id FROM accounts WHERE code = '",
            $kind,
            ":' || c.network || ':' || c.asset || ':' || c.",
            $owner,
            ")"
        )
    };
}

/// A deposit that landed: the channel (first time), its running totals, the
/// deposit row and the payer -> escrow transfer. Rare, so several statements.
pub async fn deposit(
    conn: &mut PgConnection,
    key: &Key<'_>,
    d: &ChannelDeposit,
) -> Result<bool, Refusal> {
    required("request_id", &d.request_id)?;
    required("tx_hash", &d.tx_hash)?;
    let c = d
        .channel
        .as_ref()
        .ok_or_else(|| Refusal::Rejected("channel is required".into()))?;
    for (field, value) in [
        ("channel_id", &c.channel_id),
        ("network", &c.network),
        ("asset", &c.asset),
        ("payer", &c.payer),
        ("receiver", &c.receiver),
        ("receiver_authorizer", &c.receiver_authorizer),
    ] {
        required(field, value)?;
    }
    if !claim_key(conn, key).await? {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO channels (channel_id, network, asset, payer, payer_authorizer, receiver,
             receiver_authorizer, withdraw_delay, salt)
         VALUES (lower($1), $2, lower($3), lower($4), lower($5), lower($6), lower($7), $8, lower($9))
         ON CONFLICT (channel_id) DO NOTHING",
    )
    .bind(&c.channel_id)
    .bind(&c.network)
    .bind(&c.asset)
    .bind(&c.payer)
    .bind(&c.payer_authorizer)
    .bind(&c.receiver)
    .bind(&c.receiver_authorizer)
    .bind(c.withdraw_delay as i64)
    .bind(&c.salt)
    .execute(&mut *conn)
    .await?;
    sqlx::query(concat!(
        "WITH row AS (
             INSERT INTO channel_deposits (request_id, channel_id, amount, tx_hash, block_number)
             VALUES ($1, lower($2), $3::numeric, lower($4), $5) RETURNING channel_id, amount),
         state AS (
             INSERT INTO channel_states (channel_id, deposited) SELECT channel_id, amount FROM row
             ON CONFLICT (channel_id) DO UPDATE
                 SET deposited = channel_states.deposited + EXCLUDED.deposited, updated_at = now())
         INSERT INTO transfers (transfer_key, kind, debit_account, credit_account, amount, request_id)
         SELECT 'deposit:' || $1, 'posted', ",
        account!("payer", "payer"),
        ", ",
        account!("escrow", "channel_id"),
        ", row.amount, $1 FROM row JOIN channels c ON c.channel_id = row.channel_id"
    ),
    )
    .bind(&d.request_id)
    .bind(&c.channel_id)
    .bind(amount_text(d.amount))
    .bind(&d.tx_hash)
    .bind(d.block_number as i64)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// The latest voucher and the charged total: stored if it is newer than what
/// is there, with the newly charged part booked escrow -> earned.
pub async fn voucher(
    conn: &mut PgConnection,
    key: &Key<'_>,
    v: &ChannelVoucher,
) -> Result<bool, Refusal> {
    required("channel_id", &v.channel_id)?;
    required("signature", &v.signature)?;
    let row = sqlx::query(concat!(
        "WITH idem AS (
             INSERT INTO idempotency_keys (key, payload) VALUES ($5, $6)
             ON CONFLICT (key) DO NOTHING RETURNING key),
         cur AS (
             SELECT channel_id, charged FROM channel_states
             WHERE channel_id = lower($1) AND EXISTS (SELECT 1 FROM idem) FOR UPDATE),
         moved AS (
             UPDATE channel_states s SET signed_max = $2::numeric, signature = $3,
                 charged = $4::numeric, updated_at = now()
             FROM cur
             WHERE s.channel_id = cur.channel_id AND $4::numeric >= cur.charged
               AND $2::numeric >= s.signed_max
             RETURNING cur.channel_id, cur.charged AS before),
         book AS (
             INSERT INTO transfers (transfer_key, kind, debit_account, credit_account, amount, request_id)
             SELECT 'charge:' || m.channel_id || ':' || $4, 'posted', ",
        account!("escrow", "channel_id"),
        ", ",
        account!("earned", "receiver"),
        ", $4::numeric - m.before, m.channel_id
             FROM moved m JOIN channels c ON c.channel_id = m.channel_id
             WHERE $4::numeric > m.before)
         SELECT (SELECT count(*) FROM idem) AS fresh, (SELECT count(*) FROM cur) AS known"
    ))
    .bind(&v.channel_id)
    .bind(amount_text(v.signed_max))
    .bind(&v.signature)
    .bind(amount_text(v.charged))
    .bind(key.key)
    .bind(key.payload)
    .fetch_one(&mut *conn)
    .await?;
    if row.get::<i64, _>("fresh") == 0 {
        return Ok(false);
    }
    if row.get::<i64, _>("known") == 0 {
        return Err(Refusal::Rejected(format!(
            "no channel `{}` (its deposit comes first)",
            v.channel_id
        )));
    }
    Ok(true)
}

/// What a claim left on chain: the channel's claimed total moves up to it
/// (booked earned -> revenue) and its lease is released either way.
pub async fn claim(
    conn: &mut PgConnection,
    key: &Key<'_>,
    c: &ChannelClaim,
) -> Result<bool, Refusal> {
    required("channel_id", &c.channel_id)?;
    required("tx_hash", &c.tx_hash)?;
    if !claim_key(conn, key).await? {
        return Ok(false);
    }
    let known = sqlx::query(concat!(
        "WITH cur AS (
             SELECT channel_id, claimed FROM channel_states WHERE channel_id = lower($1) FOR UPDATE),
         moved AS (
             UPDATE channel_states s SET claimed = greatest(s.claimed, $2::numeric),
                 lease_owner = NULL, lease_until = NULL, updated_at = now()
             FROM cur WHERE s.channel_id = cur.channel_id
             RETURNING cur.channel_id, cur.claimed AS before),
         row AS (
             INSERT INTO channel_claims (channel_id, total_claimed, claimed, tx_hash, block_number)
             SELECT channel_id, $2::numeric, $2::numeric - before, lower($3), $4
             FROM moved WHERE $2::numeric > before)
         INSERT INTO transfers (transfer_key, kind, debit_account, credit_account, amount, request_id)
         SELECT 'claim:' || m.channel_id || ':' || $2, 'posted', ",
        account!("earned", "receiver"),
        ", ",
        account!("revenue", "receiver"),
        ", $2::numeric - m.before, m.channel_id
         FROM moved m JOIN channels c ON c.channel_id = m.channel_id
         WHERE $2::numeric > m.before
         RETURNING 1"
    ))
    .bind(&c.channel_id)
    .bind(amount_text(c.total_claimed))
    .bind(&c.tx_hash)
    .bind(c.block_number as i64)
    .fetch_optional(&mut *conn)
    .await?;
    if known.is_none() {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM channels WHERE channel_id = lower($1))",
        )
        .bind(&c.channel_id)
        .fetch_one(&mut *conn)
        .await?;
        if !exists {
            return Err(Refusal::Rejected(format!("no channel `{}`", c.channel_id)));
        }
    }
    Ok(true)
}

/// A refund to the payer (its nonce makes it one fact): escrow -> payer.
pub async fn refund(
    conn: &mut PgConnection,
    key: &Key<'_>,
    r: &ChannelRefund,
) -> Result<bool, Refusal> {
    required("channel_id", &r.channel_id)?;
    required("tx_hash", &r.tx_hash)?;
    if !claim_key(conn, key).await? {
        return Ok(false);
    }
    let done = sqlx::query(concat!(
        "WITH row AS (
             INSERT INTO channel_refunds (channel_id, refund_nonce, amount, tx_hash, block_number)
             VALUES (lower($1), $2, $3::numeric, lower($4), $5) RETURNING channel_id, amount),
         state AS (
             UPDATE channel_states s SET refunded = s.refunded + row.amount, updated_at = now()
             FROM row WHERE s.channel_id = row.channel_id)
         INSERT INTO transfers (transfer_key, kind, debit_account, credit_account, amount, request_id)
         SELECT 'refund:' || row.channel_id || ':' || $2, 'posted', ",
        account!("escrow", "channel_id"),
        ", ",
        account!("payer", "payer"),
        ", row.amount, row.channel_id
         FROM row JOIN channels c ON c.channel_id = row.channel_id WHERE row.amount > 0"
    ))
    .bind(&r.channel_id)
    .bind(r.refund_nonce as i64)
    .bind(amount_text(r.amount))
    .bind(&r.tx_hash)
    .bind(r.block_number as i64)
    .execute(&mut *conn)
    .await;
    match done {
        Ok(_) => Ok(true),
        Err(error) => Err(error.into()),
    }
}

/// A sweep of claimed money to the receiver (a fact; the book moved at claim).
pub async fn sweep(conn: &mut PgConnection, key: &Key<'_>, s: &Sweep) -> Result<bool, Refusal> {
    required("tx_hash", &s.tx_hash)?;
    required("receiver", &s.receiver)?;
    if !claim_key(conn, key).await? {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO sweeps (network, asset, receiver, amount, tx_hash, block_number)
         VALUES ($1, lower($2), lower($3), $4::numeric, lower($5), $6)",
    )
    .bind(&s.network)
    .bind(&s.asset)
    .bind(&s.receiver)
    .bind(amount_text(s.amount))
    .bind(&s.tx_hash)
    .bind(s.block_number as i64)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// Gas one of our transactions cost: settler -> expense, in wei.
pub async fn gas(conn: &mut PgConnection, key: &Key<'_>, g: &GasSpent) -> Result<bool, Refusal> {
    required("tx_hash", &g.tx_hash)?;
    required("payer", &g.payer)?;
    if !claim_key(conn, key).await? {
        return Ok(false);
    }
    let [(settler, ..), (expense, ..)] = <[_; 2]>::try_from(gas_accounts(g))
        .map_err(|_| Refusal::Rejected("gas accounts".into()))?;
    sqlx::query(
        "WITH row AS (
             INSERT INTO gas_spent (tx_hash, network, payer, wei, purpose)
             VALUES (lower($1), $2, lower($3), $4::numeric, $5) RETURNING tx_hash, wei)
         INSERT INTO transfers (transfer_key, kind, debit_account, credit_account, amount, request_id)
         SELECT 'gas:' || row.tx_hash, 'posted',
             (SELECT id FROM accounts WHERE code = $6), (SELECT id FROM accounts WHERE code = $7),
             row.wei, row.tx_hash
         FROM row WHERE row.wei > 0",
    )
    .bind(&g.tx_hash)
    .bind(&g.network)
    .bind(&g.payer)
    .bind(amount_text(g.wei))
    .bind(&g.purpose)
    .bind(settler)
    .bind(expense)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}
