//! Applying one write inside the committer's transaction. Each write runs in
//! its own savepoint so a refused write never takes its batch-mates down.

use prost::Message;
use rungate_proto::ledger::v1::{
    Authorization, LedgerWrite, SettlementStatus, SettlementUpdate, Usage, WriteOutcome,
    ledger_write::Record,
};
use sqlx::{PgConnection, Row};

use crate::channel_records;
use crate::convert::{amount_text, parse_status, status_label};

/// Why a write changed nothing.
pub enum Refusal {
    Conflict(String),
    Rejected(String),
    Database(sqlx::Error),
}

impl From<sqlx::Error> for Refusal {
    fn from(error: sqlx::Error) -> Self {
        match error.as_database_error().and_then(|e| e.code()).as_deref() {
            // unique_violation: the fact is already recorded under another key.
            Some("23505") => Refusal::Conflict(
                error
                    .as_database_error()
                    .map_or_else(String::new, |e| e.message().to_owned()),
            ),
            // check, foreign key, not-null violations, bad enum or numeric text.
            Some("23514" | "23503" | "23502" | "22P02" | "22003") => Refusal::Rejected(
                error
                    .as_database_error()
                    .map_or_else(String::new, |e| e.message().to_owned()),
            ),
            _ => Refusal::Database(error),
        }
    }
}

/// Applies `write`: records it, or recognises a replay of an earlier write.
/// Each record is one statement that also claims the idempotency key, so an
/// applied write costs one round trip. A refusal may leave the key claimed:
/// the committer rolls the write back (see committer.rs).
pub async fn apply(conn: &mut PgConnection, write: &LedgerWrite) -> Result<WriteOutcome, Refusal> {
    if write.idempotency_key.is_empty() {
        return Err(Refusal::Rejected("idempotency_key is required".into()));
    }
    let Some(record) = &write.record else {
        return Err(Refusal::Rejected("the write has no record".into()));
    };
    let payload = write.encode_to_vec();
    let key = Key {
        key: &write.idempotency_key,
        payload: &payload,
    };
    let fresh = match record {
        Record::Authorization(a) => authorization(conn, &key, a).await?,
        Record::Usage(u) => usage(conn, &key, u).await?,
        Record::Settlement(s) => settlement(conn, &key, s).await?,
        Record::Deposit(d) => channel_records::deposit(conn, &key, d).await?,
        Record::Voucher(v) => channel_records::voucher(conn, &key, v).await?,
        Record::Claim(c) => channel_records::claim(conn, &key, c).await?,
        Record::Refund(r) => channel_records::refund(conn, &key, r).await?,
        Record::Sweep(s) => channel_records::sweep(conn, &key, s).await?,
        Record::Gas(g) => channel_records::gas(conn, &key, g).await?,
    };
    if fresh {
        return Ok(WriteOutcome::Applied);
    }
    // The key was taken: a replay (same payload) or a misuse (another payload).
    let first: Vec<u8> = sqlx::query_scalar("SELECT payload FROM idempotency_keys WHERE key = $1")
        .bind(key.key)
        .fetch_one(&mut *conn)
        .await?;
    if first == payload {
        Ok(WriteOutcome::Duplicate)
    } else {
        Err(Refusal::Conflict(format!(
            "idempotency key `{}` was used for another write",
            key.key
        )))
    }
}

/// The idempotency key a write claims, with the payload it is bound to.
pub(crate) struct Key<'a> {
    pub key: &'a str,
    pub payload: &'a [u8],
}

/// Claims the key on its own (for records written in several statements);
/// whether it was fresh.
pub(crate) async fn claim_key(conn: &mut PgConnection, key: &Key<'_>) -> Result<bool, Refusal> {
    let fresh = sqlx::query(
        "INSERT INTO idempotency_keys (key, payload) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
    )
    .bind(key.key)
    .bind(key.payload)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(fresh == 1)
}

/// The book accounts a write needs to exist before its transaction.
pub fn accounts_needed(record: &Record) -> Vec<(String, &'static str, String)> {
    match record {
        Record::Authorization(a) => accounts_for(a).into(),
        Record::Deposit(d) => channel_records::deposit_accounts(d),
        Record::Gas(g) => channel_records::gas_accounts(g),
        _ => Vec::new(),
    }
}

pub(crate) fn required(field: &str, value: &str) -> Result<(), Refusal> {
    if value.is_empty() {
        Err(Refusal::Rejected(format!("{field} is required")))
    } else {
        Ok(())
    }
}

/// Returns whether the write was fresh (its key unclaimed until now).
async fn authorization(
    conn: &mut PgConnection,
    key: &Key<'_>,
    a: &Authorization,
) -> Result<bool, Refusal> {
    for (field, value) in [
        ("request_id", &a.request_id),
        ("network", &a.network),
        ("asset", &a.asset),
        ("payer", &a.payer),
        ("pay_to", &a.pay_to),
        ("nonce", &a.nonce),
        ("signature", &a.signature),
        ("scheme", &a.scheme),
    ] {
        required(field, value)?;
    }
    // Addresses and nonces are hex: compare them case-insensitively. One
    // statement claims the key and books the authorization, its settlement
    // row and first event, and the pending transfer (payer -> revenue); the
    // committer has made sure both accounts exist (see `accounts_for`).
    let [(payer, ..), (revenue, ..)] = accounts_for(a);
    let fresh: i64 = sqlx::query_scalar(
        "WITH idem AS (
             INSERT INTO idempotency_keys (key, payload) VALUES ($15, $16)
             ON CONFLICT (key) DO NOTHING RETURNING key),
         auth AS (
             INSERT INTO authorizations (request_id, network, asset, payer, pay_to, amount,
                 valid_after, valid_before, nonce, signature, scheme, x402_version)
             SELECT $1, $2, lower($3), lower($4), lower($5), $6::numeric,
                 $7::numeric, $8::numeric, lower($9), $10, $11, $12
             WHERE EXISTS (SELECT 1 FROM idem)
             RETURNING request_id, amount),
         settlement AS (
             INSERT INTO settlements (request_id, status) SELECT request_id, 'authorized' FROM auth),
         event AS (
             INSERT INTO settlement_events (request_id, status) SELECT request_id, 'authorized' FROM auth),
         pending AS (
             INSERT INTO transfers (transfer_key, kind, debit_account, credit_account, amount, request_id)
             SELECT 'auth:' || auth.request_id, 'pending',
                 (SELECT id FROM accounts WHERE code = $13),
                 (SELECT id FROM accounts WHERE code = $14),
                 auth.amount, auth.request_id
             FROM auth WHERE auth.amount > 0)
         SELECT count(*) FROM auth",
    )
    .bind(&a.request_id)
    .bind(&a.network)
    .bind(&a.asset)
    .bind(&a.payer)
    .bind(&a.pay_to)
    .bind(amount_text(a.amount))
    .bind(a.valid_after.to_string())
    .bind(a.valid_before.to_string())
    .bind(&a.nonce)
    .bind(&a.signature)
    .bind(&a.scheme)
    .bind(a.x402_version as i32)
    .bind(payer)
    .bind(revenue)
    .bind(key.key)
    .bind(key.payload)
    .fetch_one(&mut *conn)
    .await?;
    Ok(fresh == 1)
}

/// The book accounts an authorization moves money between: (code, kind, ledger)
/// of the payer's account and of revenue. A ledger is one asset on one network.
pub fn accounts_for(a: &Authorization) -> [(String, &'static str, String); 2] {
    let ledger = format!("{}:{}", a.network, a.asset.to_ascii_lowercase());
    [
        (
            format!("payer:{ledger}:{}", a.payer.to_ascii_lowercase()),
            "payer",
            ledger.clone(),
        ),
        (format!("revenue:{ledger}"), "revenue", ledger),
    ]
}

/// Creates the accounts a batch needs, outside its transaction: account
/// creation is idempotent and never rolled back, and done this way two lanes
/// never wait on each other's open transaction for a shared account.
pub async fn ensure_accounts(
    pool: &sqlx::PgPool,
    mut accounts: Vec<(String, &'static str, String)>,
) -> Result<(), sqlx::Error> {
    // Sorted, so concurrent inserts take their locks in one order.
    accounts.sort();
    accounts.dedup();
    let (codes, (kinds, ledgers)): (Vec<String>, (Vec<&str>, Vec<String>)) =
        accounts.into_iter().map(|(c, k, l)| (c, (k, l))).unzip();
    sqlx::query(
        "INSERT INTO accounts (code, kind, ledger)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])
         ON CONFLICT (code) DO NOTHING",
    )
    .bind(codes)
    .bind(kinds)
    .bind(ledgers)
    .execute(pool)
    .await?;
    Ok(())
}

async fn usage(conn: &mut PgConnection, key: &Key<'_>, u: &Usage) -> Result<bool, Refusal> {
    required("request_id", &u.request_id)?;
    required("model", &u.model)?;
    let tokens = u.tokens.unwrap_or_default();
    let inserted = sqlx::query(
        "WITH idem AS (
             INSERT INTO idempotency_keys (key, payload) VALUES ($9, $10)
             ON CONFLICT (key) DO NOTHING RETURNING key)
         INSERT INTO usage_records (request_id, model, prompt_tokens, completion_tokens,
             quoted, charged, engine, finish_reason, channel_id, cumulative)
         SELECT $1, $2, $3, $4, $5::numeric, $6::numeric, $7, $8, lower(nullif($11, '')),
             CASE WHEN $11 = '' THEN NULL ELSE $12::numeric END
         WHERE EXISTS (SELECT 1 FROM idem)",
    )
    .bind(&u.request_id)
    .bind(&u.model)
    .bind(i64::from(tokens.prompt_tokens))
    .bind(i64::from(tokens.completion_tokens))
    .bind(amount_text(u.quoted))
    .bind(amount_text(u.charged))
    .bind(&u.engine)
    .bind(&u.finish_reason)
    .bind(key.key)
    .bind(key.payload)
    .bind(&u.channel_id)
    .bind(amount_text(u.cumulative))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// One statement: claim the key, lock the settlement, move it forward if the
/// state machine allows (authorized -> settling -> a final state; settling ->
/// settling is a retry), record the event, and on a final state resolve the
/// pending transfer (settled posts it; failed, expired, voided void it; the
/// unique index on `pending_id` makes a second resolution impossible).
async fn settlement(
    conn: &mut PgConnection,
    key: &Key<'_>,
    s: &SettlementUpdate,
) -> Result<bool, Refusal> {
    required("request_id", &s.request_id)?;
    let to = SettlementStatus::try_from(s.status).unwrap_or(SettlementStatus::Unspecified);
    let label = status_label(to).ok_or_else(|| Refusal::Rejected("status is required".into()))?;
    let (prefix, kind) = match to {
        SettlementStatus::Settled => (Some("settle:"), Some("post_pending")),
        SettlementStatus::Failed | SettlementStatus::Expired | SettlementStatus::Voided => {
            (Some("void:"), Some("void_pending"))
        }
        _ => (None, None),
    };
    let tx_hash = (!s.tx_hash.is_empty()).then_some(s.tx_hash.as_str());
    let block = (s.block_number > 0).then_some(s.block_number as i64);
    let error = (!s.error.is_empty()).then_some(s.error.as_str());
    let row = sqlx::query(
        "WITH idem AS (
             INSERT INTO idempotency_keys (key, payload) VALUES ($8, $9)
             ON CONFLICT (key) DO NOTHING RETURNING key),
         cur AS (
             SELECT request_id, status FROM settlements
             WHERE request_id = $1 AND EXISTS (SELECT 1 FROM idem) FOR UPDATE),
         moved AS (
             UPDATE settlements s SET status = $2::settlement_status,
                 tx_hash = coalesce($3, s.tx_hash), block_number = coalesce($4, s.block_number),
                 attempts = s.attempts + CASE WHEN $2 = 'settling' THEN 1 ELSE 0 END,
                 last_error = $5, updated_at = now(),
                 lease_owner = CASE WHEN $2 = 'settling' THEN s.lease_owner END,
                 lease_until = CASE WHEN $2 = 'settling' THEN s.lease_until END
             FROM cur
             WHERE s.request_id = cur.request_id
               AND (CASE cur.status WHEN 'authorized' THEN 1 WHEN 'settling' THEN 2 ELSE 3 END) < 3
               AND ((CASE $2 WHEN 'authorized' THEN 1 WHEN 'settling' THEN 2 ELSE 3 END)
                      > (CASE cur.status WHEN 'authorized' THEN 1 WHEN 'settling' THEN 2 ELSE 3 END)
                    OR (cur.status = 'settling' AND $2 = 'settling'))
             RETURNING s.request_id),
         event AS (
             INSERT INTO settlement_events (request_id, status, tx_hash, block_number, error)
             SELECT request_id, $2::settlement_status, $3, $4, $5 FROM moved),
         resolved AS (
             INSERT INTO transfers (transfer_key, kind, debit_account, credit_account, amount, pending_id, request_id)
             SELECT $6 || t.request_id, $7::transfer_kind, t.debit_account, t.credit_account, t.amount, t.id, t.request_id
             FROM transfers t JOIN moved m ON t.transfer_key = 'auth:' || m.request_id
             WHERE $7 IS NOT NULL)
         SELECT (SELECT count(*) FROM idem) AS fresh,
                (SELECT status::text FROM cur) AS was,
                (SELECT count(*) FROM moved) AS moved",
    )
    .bind(&s.request_id)
    .bind(label)
    .bind(tx_hash)
    .bind(block)
    .bind(error)
    .bind(prefix)
    .bind(kind)
    .bind(key.key)
    .bind(key.payload)
    .fetch_one(&mut *conn)
    .await?;
    if row.get::<i64, _>("fresh") == 0 {
        return Ok(false);
    }
    match row.get::<Option<&str>, _>("was") {
        None => Err(Refusal::Rejected(format!(
            "no authorization for request `{}`",
            s.request_id
        ))),
        Some(_) if row.get::<i64, _>("moved") == 1 => Ok(true),
        Some(was) => Err(Refusal::Conflict(format!(
            "settlement of `{}` cannot move from {} to {label}",
            s.request_id,
            status_label(parse_status(was)).unwrap_or("unknown")
        ))),
    }
}
