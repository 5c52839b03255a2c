//! One span per generation with the OpenTelemetry GenAI attributes: opened
//! with the request's, completed from the stream's `Started` and `Finished`
//! events, closed when the stream ends (or its caller drops it). Numbers
//! are recorded as i64: tracing-opentelemetry writes other integers as text.

use rungate_proto::inference::v1::{
    FinishReason, GenerateEvent, GenerateRequest, Model, generate_event::Event,
};
use tracing::Span;
use tracing::field::Empty;

pub fn span(request: &GenerateRequest, model: &Model) -> Span {
    let sampling = request.sampling.clone().unwrap_or_default();
    let provider = if model.engine == "local" {
        "llama.cpp"
    } else {
        "openai"
    };
    tracing::info_span!(
        "chat",
        otel.name = %format_args!("chat {}", request.model),
        otel.kind = "server",
        otel.status_code = Empty,
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = provider,
        gen_ai.request.model = %request.model,
        gen_ai.request.max_tokens = i64::from(sampling.max_tokens.unwrap_or(model.default_max_tokens)),
        gen_ai.request.temperature = sampling.temperature.map(f64::from),
        gen_ai.request.top_p = sampling.top_p.map(f64::from),
        gen_ai.request.seed = sampling.seed.and_then(|s| i64::try_from(s).ok()),
        gen_ai.response.model = Empty,
        gen_ai.response.finish_reasons = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        error.type = Empty,
        rungate.request_id = %request.request_id,
    )
}

/// Records what an event says about the generation.
pub fn record(span: &Span, event: &Result<GenerateEvent, crate::InferenceError>) {
    match event {
        Ok(GenerateEvent {
            event: Some(Event::Started(started)),
        }) => {
            span.record("gen_ai.response.model", started.served_by.as_str());
        }
        Ok(GenerateEvent {
            event: Some(Event::Finished(finished)),
        }) => {
            let reason =
                FinishReason::try_from(finished.finish_reason).unwrap_or(FinishReason::Unspecified);
            span.record("gen_ai.response.finish_reasons", finish_reason(reason));
            if let Some(usage) = &finished.usage {
                span.record("gen_ai.usage.input_tokens", i64::from(usage.prompt_tokens));
                span.record(
                    "gen_ai.usage.output_tokens",
                    i64::from(usage.completion_tokens),
                );
            }
        }
        Err(error) => failed(span, error),
        Ok(_) => {}
    }
}

pub fn failed(span: &Span, error: &crate::InferenceError) {
    span.record("otel.status_code", "ERROR");
    span.record("error.type", error.kind());
}

/// OpenAI's name for a finish reason, as the conventions want it.
fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
        FinishReason::Unspecified => "unknown",
    }
}
