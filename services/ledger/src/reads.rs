//! Read side: receipts and settlement listings.

use rungate_proto::ledger::v1::{
    Balance, GetReceiptRequest, ListBalancesRequest, ListBalancesResponse, ListSettlementsRequest,
    ListSettlementsResponse, Receipt, Settlement,
};
use rungate_proto::types::v1::TokenUsage;
use sqlx::{PgPool, Row};

use crate::LedgerError;
use crate::convert::{parse_amount, parse_status};

const MAX_PAGE: u32 = 500;

/// The receipt named by `request`: its request id, or else its authorization.
pub async fn receipt(pool: &PgPool, request: &GetReceiptRequest) -> Result<Receipt, LedgerError> {
    let request_id = match (&request.request_id, &request.authorization) {
        (id, _) if !id.is_empty() => id.clone(),
        (_, Some(key)) => sqlx::query_scalar(
            "SELECT request_id FROM authorizations
             WHERE network = $1 AND payer = lower($2) AND nonce = lower($3)",
        )
        .bind(&key.network)
        .bind(&key.payer)
        .bind(&key.nonce)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| {
            LedgerError::NotFound("no authorization with that network, payer and nonce".into())
        })?,
        _ => {
            return Err(LedgerError::InvalidArgument(
                "give a request_id or an authorization".into(),
            ));
        }
    };
    let request_id = request_id.as_str();
    // A voucher-paid call was collected by the first claim that reached its
    // cumulative total, and swept by the first sweep after that claim.
    let row = sqlx::query(
        "SELECT u.model, u.prompt_tokens, u.completion_tokens,
                coalesce(u.charged, 0)::text AS charged,
                coalesce(a.payer, ch.payer) AS payer, coalesce(a.network, ch.network) AS network,
                s.status::text AS status, s.tx_hash,
                (extract(epoch FROM coalesce(u.created_at, a.created_at)) * 1000)::bigint AS created_ms,
                u.channel_id, coalesce(u.cumulative, 0)::text AS cumulative,
                cl.tx_hash AS claim_tx, sw.tx_hash AS sweep_tx
         FROM (SELECT $1::text AS request_id) r
         LEFT JOIN usage_records u ON u.request_id = r.request_id
         LEFT JOIN authorizations a ON a.request_id = r.request_id
         LEFT JOIN settlements s ON s.request_id = r.request_id
         LEFT JOIN channels ch ON ch.channel_id = u.channel_id
         LEFT JOIN LATERAL (
             SELECT tx_hash, block_number FROM channel_claims
             WHERE channel_id = u.channel_id AND total_claimed >= u.cumulative
             ORDER BY total_claimed LIMIT 1) cl ON true
         LEFT JOIN LATERAL (
             SELECT tx_hash FROM sweeps
             WHERE network = ch.network AND asset = ch.asset AND receiver = ch.receiver
               AND block_number >= cl.block_number
             ORDER BY block_number, id LIMIT 1) sw ON true
         WHERE u.request_id IS NOT NULL OR a.request_id IS NOT NULL",
    )
    .bind(request_id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| LedgerError::NotFound(format!("no receipt `{request_id}`")))?;
    let tokens = row
        .get::<Option<i32>, _>("prompt_tokens")
        .map(|prompt| TokenUsage {
            prompt_tokens: prompt as u32,
            completion_tokens: row.get::<Option<i32>, _>("completion_tokens").unwrap_or(0) as u32,
        });
    let text = |column: &str| row.get::<Option<String>, _>(column).unwrap_or_default();
    Ok(Receipt {
        request_id: request_id.to_owned(),
        model: text("model"),
        tokens,
        charged: Some(parse_amount(row.get("charged"))?),
        payer: text("payer"),
        network: text("network"),
        status: row
            .get::<Option<&str>, _>("status")
            .map_or(0, |s| parse_status(s) as i32),
        tx_hash: text("tx_hash"),
        created_at_ms: row.get("created_ms"),
        channel_id: text("channel_id"),
        cumulative: Some(parse_amount(row.get("cumulative"))?),
        claim_tx: text("claim_tx"),
        sweep_tx: text("sweep_tx"),
    })
}

/// Newest first, keyset-paginated on the authorization's id.
pub async fn settlements(
    pool: &PgPool,
    request: &ListSettlementsRequest,
) -> Result<ListSettlementsResponse, LedgerError> {
    if request.payer.is_empty() {
        return Err(LedgerError::InvalidArgument("payer is required".into()));
    }
    let page_size = match request.page_size {
        0 => 50,
        n => n.min(MAX_PAGE),
    };
    let before = if request.page_token.is_empty() {
        i64::MAX
    } else {
        request
            .page_token
            .parse()
            .map_err(|_| LedgerError::InvalidArgument("page_token is not one we issued".into()))?
    };
    let rows = sqlx::query(
        "SELECT a.id, a.request_id, a.network, a.payer, a.amount::text AS amount,
                s.status::text AS status, coalesce(s.tx_hash, '') AS tx_hash,
                (extract(epoch FROM s.updated_at) * 1000)::bigint AS updated_ms
         FROM authorizations a JOIN settlements s ON s.request_id = a.request_id
         WHERE a.payer = lower($1) AND a.id < $2
         ORDER BY a.id DESC LIMIT $3",
    )
    .bind(&request.payer)
    .bind(before)
    .bind(i64::from(page_size) + 1)
    .fetch_all(pool)
    .await?;
    let more = rows.len() > page_size as usize;
    let mut settlements = Vec::with_capacity(rows.len().min(page_size as usize));
    let mut last_id = 0i64;
    for row in rows.iter().take(page_size as usize) {
        last_id = row.get("id");
        settlements.push(Settlement {
            request_id: row.get("request_id"),
            network: row.get("network"),
            payer: row.get("payer"),
            amount: Some(parse_amount(row.get("amount"))?),
            status: parse_status(row.get("status")) as i32,
            tx_hash: row.get("tx_hash"),
            updated_at_ms: row.get("updated_ms"),
        });
    }
    Ok(ListSettlementsResponse {
        settlements,
        next_page_token: if more {
            last_id.to_string()
        } else {
            String::new()
        },
    })
}

/// Balances computed from the transfers (the `account_balances` view).
pub async fn balances(
    pool: &PgPool,
    request: &ListBalancesRequest,
) -> Result<ListBalancesResponse, LedgerError> {
    let rows = sqlx::query(
        "SELECT code, debits_posted::text AS dp, credits_posted::text AS cp,
                debits_pending::text AS dn, credits_pending::text AS cn
         FROM account_balances WHERE starts_with(code, $1) ORDER BY code",
    )
    .bind(&request.code_prefix)
    .fetch_all(pool)
    .await?;
    let balances = rows
        .iter()
        .map(|row| {
            Ok(Balance {
                account: row.get("code"),
                debits_posted: Some(parse_amount(row.get("dp"))?),
                credits_posted: Some(parse_amount(row.get("cp"))?),
                debits_pending: Some(parse_amount(row.get("dn"))?),
                credits_pending: Some(parse_amount(row.get("cn"))?),
            })
        })
        .collect::<Result<_, LedgerError>>()?;
    Ok(ListBalancesResponse { balances })
}
