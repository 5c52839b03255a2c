//! The process's Prometheus recorder (`metrics` + its Prometheus exporter)
//! and the metric names more than one service records. Names follow the
//! OpenTelemetry semantic conventions (the exporter writes `.` as `_`).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// HTTP server request duration, seconds, by route, method and status.
pub const HTTP_REQUEST_DURATION: &str = "http.server.request.duration";
/// A generation from request to last token, seconds, per model.
pub const GENAI_REQUEST_DURATION: &str = "gen_ai.server.request.duration";
/// Request to first token (content, tool call or refusal), seconds.
pub const GENAI_TIME_TO_FIRST_TOKEN: &str = "gen_ai.server.time_to_first_token";
/// Decode time per output token after the first, seconds.
pub const GENAI_TIME_PER_OUTPUT_TOKEN: &str = "gen_ai.server.time_per_output_token";
/// Tokens per call, `gen_ai.token.type` = input | output.
pub const GENAI_TOKEN_USAGE: &str = "gen_ai.client.token.usage";

/// What RunGate adds to a served call: its whole time (arrival to the
/// answer's end) less the engine's (its Generate call to `Finished`),
/// seconds, per model. Payment checks and billing's acknowledgement are in it.
pub const OVERHEAD: &str = "rungate_overhead_seconds";

/// The content type of `render`'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// `GET /metrics` in the Prometheus text format: every service serves it on
/// its own port (HTTP/1.1 next to gRPC), the edge on its public one.
/// Installs the recorder now, so that nothing recorded before the first
/// scrape is lost.
pub fn router() -> axum::Router {
    handle();
    axum::Router::new().route("/metrics", axum::routing::get(scrape))
}

/// The `/metrics` handler.
pub async fn scrape() -> impl axum::response::IntoResponse {
    (
        [(http::header::CONTENT_TYPE, CONTENT_TYPE)],
        handle().render(),
    )
}

const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
const COUNTS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
const TOKENS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0,
];

/// The recorder, installed on first use; several services in one process
/// (the tests) share it, and an embedding process's own recorder wins.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = builder().build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

/// Histograms as histograms (buckets), not summaries, so that they sum
/// across replicas.
fn builder() -> PrometheusBuilder {
    let buckets = [
        (Matcher::Suffix("duration".into()), SECONDS),
        (Matcher::Suffix("_seconds".into()), SECONDS),
        (Matcher::Suffix("_records".into()), COUNTS),
        (Matcher::Full(GENAI_TIME_TO_FIRST_TOKEN.into()), SECONDS),
        (Matcher::Full(GENAI_TIME_PER_OUTPUT_TOKEN.into()), SECONDS),
        (Matcher::Full(GENAI_TOKEN_USAGE.into()), TOKENS),
    ];
    let mut builder = PrometheusBuilder::new();
    for (matcher, values) in buckets {
        builder = builder
            .set_buckets_for_metric(matcher, values)
            .expect("no bucket list is empty");
    }
    builder
}

fn describe() {
    use metrics::{Unit, describe_histogram};
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "HTTP requests, from arrival to response headers."
    );
    describe_histogram!(
        GENAI_REQUEST_DURATION,
        Unit::Seconds,
        "Generations, from request to the last token."
    );
    describe_histogram!(
        GENAI_TIME_TO_FIRST_TOKEN,
        Unit::Seconds,
        "Time to the first token of a generation."
    );
    describe_histogram!(
        GENAI_TIME_PER_OUTPUT_TOKEN,
        Unit::Seconds,
        "Decode time per output token after the first."
    );
    describe_histogram!(
        OVERHEAD,
        Unit::Seconds,
        "What RunGate adds to a served call: its whole time less the engine's."
    );
    describe_histogram!(
        GENAI_TOKEN_USAGE,
        "Tokens per generation, by type (input, output)."
    );
}
