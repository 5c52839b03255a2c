//! The edge's Prometheus metrics at `GET /metrics`: every HTTP request by
//! route, method and status, and the OpenTelemetry GenAI metrics of each
//! generation by model (duration, time to first token, time per output
//! token, token usage), measured from the request's arrival, payment included.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::CONTENT_TYPE;
use rungate_common::metrics::{
    GENAI_REQUEST_DURATION, GENAI_TIME_PER_OUTPUT_TOKEN, GENAI_TIME_TO_FIRST_TOKEN,
    GENAI_TOKEN_USAGE, HTTP_REQUEST_DURATION,
};
use rungate_proto::types::v1::TokenUsage;

/// `GET /metrics`. Installs the recorder now, so that nothing recorded
/// before the first scrape is lost.
pub fn route() -> axum::routing::MethodRouter<crate::state::AppState> {
    let handle = rungate_common::metrics::handle();
    axum::routing::get(move || {
        let text = handle.render();
        async move {
            (
                [(CONTENT_TYPE, rungate_common::metrics::CONTENT_TYPE)],
                text,
            )
                .into_response()
        }
    })
}

/// Middleware: one duration sample per request, to its response headers.
pub async fn track(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    metrics::histogram!(
        HTTP_REQUEST_DURATION,
        "http.route" => route,
        "http.request.method" => method,
        "http.response.status_code" => response.status().as_u16().to_string(),
    )
    .record(start.elapsed());
    response
}

/// When a generation began and produced its first token.
#[derive(Clone, Copy)]
pub struct Timing {
    pub arrived: Instant,
    pub first_token: Option<Instant>,
}

impl Timing {
    pub fn new(arrived: Instant) -> Self {
        Self {
            arrived,
            first_token: None,
        }
    }

    pub fn token(&mut self) {
        self.first_token.get_or_insert_with(Instant::now);
    }

    /// A generation ended with `usage`.
    pub fn finished(&self, model: &str, usage: TokenUsage) {
        let labels = [
            ("gen_ai.operation.name", "chat".to_owned()),
            ("gen_ai.request.model", model.to_owned()),
        ];
        let now = Instant::now();
        metrics::histogram!(GENAI_REQUEST_DURATION, &labels).record(now - self.arrived);
        if let Some(first) = self.first_token {
            metrics::histogram!(GENAI_TIME_TO_FIRST_TOKEN, &labels).record(first - self.arrived);
            if usage.completion_tokens > 1 {
                let per_token = (now - first) / (usage.completion_tokens - 1);
                metrics::histogram!(GENAI_TIME_PER_OUTPUT_TOKEN, &labels).record(per_token);
            }
        }
        for (kind, tokens) in [
            ("input", usage.prompt_tokens),
            ("output", usage.completion_tokens),
        ] {
            let [operation, model] = labels.clone();
            let labels = [operation, model, ("gen_ai.token.type", kind.to_owned())];
            metrics::histogram!(GENAI_TOKEN_USAGE, &labels).record(f64::from(tokens));
        }
    }
}
