//! `GET /v1/receipts/{id}`: what a call consumed and paid, and where its
//! settlement stands. Receipt ids are the calls' ids (random UUIDs): only who
//! got the response can name one, and there is no listing.

use axum::Json;
use axum::extract::{Path, State};
use rungate_common::client::{request, within};
use rungate_proto::ledger::v1::{GetReceiptRequest, SettlementStatus};
use serde_json::{Value, json};

use crate::ApiError;
use crate::state::AppState;

pub async fn one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let deadline = state.deadlines.rpc;
    let lookup = request(
        GetReceiptRequest {
            request_id: id.clone(),
            authorization: None,
        },
        deadline,
    );
    let receipt = within(deadline, state.ledger.clone().get_receipt(lookup))
        .await
        .map_err(|status| match status.code() {
            tonic::Code::NotFound => ApiError::not_found(format!("No receipt '{id}'")),
            _ => ApiError::from(status),
        })?
        .into_inner();
    let tokens = receipt.tokens.unwrap_or_default();
    let present = |text: &String| (!text.is_empty()).then(|| text.clone());
    let settlement = if !receipt.channel_id.is_empty() {
        // batch-settlement: charged to the channel, collected by a claim,
        // at payTo once swept.
        let status = match (present(&receipt.sweep_tx), present(&receipt.claim_tx)) {
            (Some(_), _) => "settled",
            (None, Some(_)) => "claimed",
            (None, None) => "charged",
        };
        json!({
            "scheme": "batch-settlement",
            "status": status,
            "channel": receipt.channel_id,
            "cumulative": receipt.cumulative.unwrap_or_default().atomic().to_string(),
            "claim_transaction": present(&receipt.claim_tx),
            "transaction": present(&receipt.sweep_tx),
            "network": receipt.network,
        })
    } else {
        match SettlementStatus::try_from(receipt.status).unwrap_or_default() {
            SettlementStatus::Unspecified => Value::Null,
            status => json!({
                "scheme": "exact",
                "status": status.as_str_name().trim_start_matches("SETTLEMENT_STATUS_").to_ascii_lowercase(),
                "transaction": present(&receipt.tx_hash),
                "network": receipt.network,
            }),
        }
    };
    Ok(Json(json!({
        "id": receipt.request_id,
        "object": "receipt",
        "created": receipt.created_at_ms / 1000,
        "model": receipt.model,
        "usage": {
            "prompt_tokens": tokens.prompt_tokens,
            "completion_tokens": tokens.completion_tokens,
            "total_tokens": tokens.prompt_tokens + tokens.completion_tokens,
        },
        // Atomic units of the payment asset, as a decimal string.
        "amount": receipt.charged.unwrap_or_default().atomic().to_string(),
        "payer": (!receipt.payer.is_empty()).then_some(&receipt.payer),
        "settlement": settlement,
    })))
}
