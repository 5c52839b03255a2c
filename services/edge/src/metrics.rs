//! The edge's Prometheus metrics at `GET /metrics`: every HTTP request by
//! route, method and status, and the OpenTelemetry GenAI metrics of each
//! generation by model (duration, time to first token, time per output
//! token, token usage), measured from the request's arrival, payment included.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use rungate_common::metrics::{
    GENAI_REQUEST_DURATION, GENAI_TIME_PER_OUTPUT_TOKEN, GENAI_TIME_TO_FIRST_TOKEN,
    GENAI_TOKEN_USAGE, HTTP_REQUEST_DURATION, OVERHEAD,
};
use rungate_proto::types::v1::TokenUsage;

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

/// When a call arrived, its engine call began, and its first token came.
/// Dropped when the answer is done (or abandoned): then it records the
/// overhead RunGate added, the call's whole time less the engine's.
pub struct Timing {
    pub arrived: Instant,
    pub first_token: Option<Instant>,
    engine_started: Option<Instant>,
    /// The engine's time and the model, once the generation finished.
    engine: Option<(std::time::Duration, String)>,
}

impl Timing {
    pub fn new(arrived: Instant) -> Self {
        Self {
            arrived,
            first_token: None,
            engine_started: None,
            engine: None,
        }
    }

    /// The engine call is about to be made.
    pub fn engine_started(&mut self) {
        self.engine_started = Some(Instant::now());
    }

    pub fn token(&mut self) {
        self.first_token.get_or_insert_with(Instant::now);
    }

    /// A generation ended with `usage`.
    pub fn finished(&mut self, model: &str, usage: TokenUsage) {
        let labels = [
            ("gen_ai.operation.name", "chat".to_owned()),
            ("gen_ai.request.model", model.to_owned()),
        ];
        let now = Instant::now();
        if let Some(started) = self.engine_started {
            self.engine = Some((now - started, model.to_owned()));
        }
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

impl Drop for Timing {
    fn drop(&mut self) {
        if let Some((engine, model)) = self.engine.take() {
            let total = self.arrived.elapsed();
            metrics::histogram!(OVERHEAD, "gen_ai.request.model" => model)
                .record(total.saturating_sub(engine));
        }
    }
}
