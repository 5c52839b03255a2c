//! The x402 facilitator HTTP API (`POST /verify`, `POST /settle`,
//! `GET /supported`), so any x402 seller can have RunGate verify and settle
//! its payments on the networks billing is configured for: `exact`, and
//! `batch-settlement` (deposits, vouchers, claims, sweeps and refunds) when
//! billing holds a receiverAuthorizer key. Served on billing's port next to
//! gRPC. Checks here always read the chain: a facilitator answers for
//! someone else's money.

mod batch;
mod exact;

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::channels::Channels;
use crate::payments::Payments;

#[derive(Clone)]
struct Facilitator {
    payments: Arc<Payments>,
    /// batch-settlement: our receiverAuthorizer (signs claims and refunds).
    channels: Option<Arc<Channels>>,
}

pub fn router(payments: Arc<Payments>, channels: Option<Arc<Channels>>) -> Router {
    Router::new()
        .route("/verify", post(verify))
        .route("/settle", post(settle))
        .route("/supported", get(supported))
        .with_state(Facilitator { payments, channels })
}

async fn supported(State(f): State<Facilitator>) -> Json<Value> {
    let mut kinds = Vec::new();
    let mut signers = serde_json::Map::new();
    for chain in &f.payments.chains {
        let n = &chain.network;
        kinds.push(json!({"x402Version": 1, "scheme": "exact", "network": n.v1_name}));
        kinds.push(json!({"x402Version": 2, "scheme": "exact", "network": n.network}));
        if let Some(channels) = &f.channels {
            kinds.push(json!({
                "x402Version": 2,
                "scheme": crate::x402::batch::SCHEME,
                "network": n.network,
                "extra": {"receiverAuthorizer": channels.authorizer().to_checksum(None)},
            }));
        }
        signers.insert(
            n.network.clone(),
            json!([chain.settler().to_checksum(None)]),
        );
    }
    Json(json!({"kinds": kinds, "extensions": [], "signers": signers}))
}

/// A batch-settlement request goes to that scheme (when we offer it);
/// everything else is checked as `exact`, which names what is wrong.
fn batch_settlement<'a>(f: &'a Facilitator, body: &Value) -> Option<&'a Arc<Channels>> {
    let scheme = body.pointer("/paymentRequirements/scheme")?.as_str()?;
    (scheme == crate::x402::batch::SCHEME)
        .then_some(f.channels.as_ref())
        .flatten()
}

async fn verify(State(f): State<Facilitator>, Json(body): Json<Value>) -> Json<Value> {
    Json(match batch_settlement(&f, &body) {
        Some(channels) => batch::verify(&f.payments, channels, &body).await,
        None => exact::verify(&f.payments, &body).await,
    })
}

async fn settle(State(f): State<Facilitator>, Json(body): Json<Value>) -> Json<Value> {
    Json(match batch_settlement(&f, &body) {
        Some(channels) => batch::settle(&f.payments, channels, &body).await,
        None => exact::settle(&f.payments, &body).await,
    })
}
