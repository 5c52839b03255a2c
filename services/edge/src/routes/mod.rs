//! The HTTP surface.

mod chat;
mod models;
mod paid;
mod receipts;

use axum::Router;
use axum::routing::{get, post};
use tower_http::trace::TraceLayer;

use crate::Config;
use crate::state::AppState;

pub fn router(state: AppState, config: &Config) -> Router {
    // The recorder now: nothing recorded before the first scrape is lost.
    rungate_common::metrics::handle();
    let body = chat::BodyLimits {
        max_bytes: config.max_body_bytes,
        timeout: config.body_timeout,
    };
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(
        config.max_concurrent_requests.max(1),
    ));
    // The API sheds load; health answers regardless, so balancers see us.
    let api = Router::new()
        .route(
            "/v1/chat/completions",
            post(move |state, request| chat::completions(state, request, body)).get(chat::refund),
        )
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::one))
        .route("/v1/receipts/{id}", get(receipts::one))
        .layer(axum::middleware::from_fn_with_state(
            slots,
            crate::shed::shed,
        ));
    api.route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(rungate_common::metrics::scrape))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .layer(cors())
        .layer(TraceLayer::new_for_http().make_span_with(http_span))
        .with_state(state)
}

/// Browser agents may call from any origin; they must be able to send the
/// payment headers and read the x402 and receipt headers.
fn cors() -> tower_http::cors::CorsLayer {
    use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName};
    use tower_http::cors::{Any, CorsLayer};
    let name = HeaderName::from_static;
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([http::Method::GET, http::Method::POST])
        .allow_headers([
            CONTENT_TYPE,
            AUTHORIZATION,
            name(crate::payment::X_PAYMENT),
            name(crate::payment::PAYMENT_SIGNATURE),
        ])
        .expose_headers([
            name(crate::payment::PAYMENT_REQUIRED),
            name(crate::payment::PAYMENT_RESPONSE),
            name(crate::payment::X_PAYMENT_RESPONSE),
            name("x-request-id"),
            name("x-rungate-receipt"),
        ])
}

async fn not_found(uri: http::Uri) -> crate::ApiError {
    crate::ApiError::not_found(format!("Unknown request URL: {}", uri.path()))
}

/// One span per HTTP request, continuing the caller's trace if it sent one.
fn http_span<B>(request: &http::Request<B>) -> tracing::Span {
    let span = tracing::info_span!(
        "http",
        otel.kind = "server",
        http.method = %request.method(),
        http.path = %request.uri().path(),
        request_id = tracing::field::Empty,
        metadata = tracing::field::Empty,
    );
    rungate_common::propagation::adopt_parent(&span, request.headers());
    span
}
