//! The upstream engine: any OpenAI-compatible server (vLLM, llama.cpp server,
//! Ollama, OpenAI, OpenRouter). Streams are re-framed into our own events;
//! usage comes from the upstream (we always ask for it). Upstreams of one model
//! are tried in order while no token has been produced, never after.

use std::collections::VecDeque;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use rungate_proto::inference::v1::{
    ChatMessage, FinishReason, Finished, GenerateEvent, GenerateRequest, Started, TextDelta,
    ToolCallDelta, generate_event::Event,
};
use rungate_proto::types::v1::TokenUsage;
use serde_json::{Map, Value, json};

use crate::InferenceError;
use crate::config::UpstreamEntry;
use crate::engine::EventStream;
use crate::sse::SseDecoder;

pub struct UpstreamEngine {
    public_id: String,
    upstreams: Vec<Upstream>,
}

struct Upstream {
    completions_url: String,
    api_key: Option<String>,
    model: String,
    client: reqwest::Client,
    first_token_timeout: Duration,
    idle_timeout: Duration,
}

impl UpstreamEngine {
    pub fn new(public_id: &str, entries: &[UpstreamEntry]) -> Result<Self, InferenceError> {
        if entries.is_empty() {
            return Err(InferenceError::Config(format!(
                "model `{public_id}` has no upstreams"
            )));
        }
        let upstreams = entries
            .iter()
            .map(|entry| Upstream::new(public_id, entry))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            public_id: public_id.to_owned(),
            upstreams,
        })
    }

    pub async fn generate(
        &self,
        request: GenerateRequest,
        default_max_tokens: u32,
    ) -> Result<EventStream, InferenceError> {
        let mut last_error = None;
        for (index, upstream) in self.upstreams.iter().enumerate() {
            let body = request_body(&request, &upstream.model, default_max_tokens)?;
            match upstream.open(body).await {
                Ok(stream) => return Ok(stream),
                Err(error) if fails_over(&error) => {
                    tracing::warn!(
                        model = %self.public_id,
                        upstream = index,
                        %error,
                        "upstream failed before the first token; trying the next"
                    );
                    last_error = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            InferenceError::UpstreamUnavailable("no upstream configured".to_owned())
        }))
    }

    /// Upstreams do not expose their tokenizer; ~4 bytes a token is the
    /// usual estimate, rounded up, plus a few tokens of chat framing per
    /// message. Tool definitions (in `extra_json`, the request's pass-through
    /// fields) and the calls in the history are prompt too.
    pub fn estimate_prompt_tokens(
        messages: &[ChatMessage],
        extra_json: &str,
    ) -> Result<u32, InferenceError> {
        let tools = if extra_json.is_empty() {
            0
        } else {
            let extra: Value =
                serde_json::from_str(extra_json).map_err(|_| InferenceError::InvalidArgument {
                    param: "extra_json",
                    message: "extra_json must be a JSON object".into(),
                })?;
            extra
                .get("tools")
                .map_or(0, |tools| tools.to_string().len())
        };
        let bytes: usize = messages
            .iter()
            .map(|m| {
                m.content.len() + m.role.len() + m.tool_calls_json.as_ref().map_or(0, String::len)
            })
            .sum::<usize>()
            + tools;
        Ok(u32::try_from(bytes.div_ceil(4) + messages.len() * 4).unwrap_or(u32::MAX))
    }
}

/// Errors before the first token that another upstream might not have.
fn fails_over(error: &InferenceError) -> bool {
    match error {
        InferenceError::UpstreamUnavailable(_) | InferenceError::UpstreamTimeout(_) => true,
        InferenceError::UpstreamRejected { status, .. } => *status == 429 || *status >= 500,
        _ => false,
    }
}

impl Upstream {
    fn new(public_id: &str, entry: &UpstreamEntry) -> Result<Self, InferenceError> {
        let api_key = match &entry.api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                InferenceError::Config(format!(
                    "model `{public_id}`: environment variable {var} (its API key) is not set"
                ))
            })?),
            None => None,
        };
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(entry.connect_timeout_ms))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| InferenceError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            completions_url: format!("{}/chat/completions", entry.base_url.trim_end_matches('/')),
            api_key,
            model: entry.model.clone().unwrap_or_else(|| public_id.to_owned()),
            client,
            first_token_timeout: Duration::from_millis(entry.first_token_timeout_ms),
            idle_timeout: Duration::from_millis(entry.idle_timeout_ms),
        })
    }

    /// Sends the request and reads until the first token (or the end), so that
    /// every failure before the first token can still fail over.
    async fn open(&self, body: Value) -> Result<EventStream, InferenceError> {
        let opening = async {
            // The upstream joins our trace if it speaks W3C TraceContext (vLLM does).
            let mut trace = http::HeaderMap::new();
            rungate_common::propagation::inject_current(&mut trace);
            let mut call = self
                .client
                .post(&self.completions_url)
                .headers(trace)
                .json(&body);
            if let Some(key) = &self.api_key {
                call = call.bearer_auth(key);
            }
            let response = call.send().await.map_err(|e| {
                InferenceError::UpstreamUnavailable(format!("{}: {e}", self.completions_url))
            })?;
            let status = response.status();
            if !status.is_success() {
                let text = response.text().await.unwrap_or_default();
                return Err(InferenceError::UpstreamRejected {
                    status: status.as_u16(),
                    message: upstream_error_message(&text),
                });
            }
            let mut stream = ChunkStream::new(response.bytes_stream().boxed(), self.idle_timeout);
            stream.pending.push_back(event(Event::Started(Started {
                served_by: self.model.clone(),
            })));
            stream.fill_until_first_token().await?;
            Ok(stream)
        };
        let stream = tokio::time::timeout(self.first_token_timeout, opening)
            .await
            .map_err(|_| {
                InferenceError::UpstreamTimeout(format!(
                    "no first token from {} within {:?}",
                    self.completions_url, self.first_token_timeout
                ))
            })??;
        Ok(stream.into_events())
    }
}

fn event(event: Event) -> GenerateEvent {
    GenerateEvent { event: Some(event) }
}

/// The OpenAI request the upstream gets: our fields, the caller's pass-through
/// fields, and always `stream_options.include_usage` so usage is exact.
fn request_body(
    request: &GenerateRequest,
    model: &str,
    default_max_tokens: u32,
) -> Result<Value, InferenceError> {
    let mut body = if request.extra_json.is_empty() {
        Map::new()
    } else {
        match serde_json::from_str(&request.extra_json) {
            Ok(Value::Object(map)) => map,
            _ => {
                return Err(InferenceError::InvalidArgument {
                    param: "extra_json",
                    message: "extra_json must be a JSON object".to_owned(),
                });
            }
        }
    };
    let messages: Vec<Value> = request
        .messages
        .iter()
        .map(|m| {
            let mut message = json!({ "role": m.role, "content": m.content });
            if let Some(name) = &m.name {
                message["name"] = json!(name);
            }
            if let Some(id) = &m.tool_call_id {
                message["tool_call_id"] = json!(id);
            }
            if let Some(calls) = &m.tool_calls_json
                && let Ok(calls) = serde_json::from_str::<Value>(calls)
            {
                message["tool_calls"] = calls;
            }
            message
        })
        .collect();
    let sampling = request.sampling.clone().unwrap_or_default();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(messages));
    body.insert("stream".into(), json!(true));
    body.insert("stream_options".into(), json!({ "include_usage": true }));
    body.insert(
        "max_tokens".into(),
        json!(sampling.max_tokens.unwrap_or(default_max_tokens)),
    );
    if let Some(t) = sampling.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = sampling.top_p {
        body.insert("top_p".into(), json!(p));
    }
    if let Some(seed) = sampling.seed {
        body.insert("seed".into(), json!(seed));
    }
    if !sampling.stop.is_empty() {
        body.insert("stop".into(), json!(sampling.stop));
    }
    if let Some(user) = &request.user {
        body.insert("user".into(), json!(user));
    }
    Ok(Value::Object(body))
}

/// One element of a chunk's `delta.tool_calls`.
fn tool_call_delta(call: &Value) -> Result<ToolCallDelta, InferenceError> {
    let index = call
        .get("index")
        .and_then(Value::as_u64)
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(|| {
            InferenceError::UpstreamProtocol("a tool call fragment without an index".to_owned())
        })?;
    let text = |pointer: &str| {
        call.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Ok(ToolCallDelta {
        index,
        id: text("/id"),
        name: text("/function/name"),
        arguments: text("/function/arguments"),
    })
}

fn upstream_error_message(body: &str) -> String {
    let parsed: Option<String> = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        v.pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    parsed.unwrap_or_else(|| body.chars().take(300).collect())
}

/// Upstream SSE chunks → our events, with an idle timeout between chunks.
struct ChunkStream {
    bytes: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    decoder: SseDecoder,
    pending: VecDeque<GenerateEvent>,
    idle_timeout: Duration,
    finish_reason: Option<FinishReason>,
    usage: Option<TokenUsage>,
    cached_prompt_tokens: u32,
    done: bool,
}

impl ChunkStream {
    fn new(
        bytes: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            bytes,
            decoder: SseDecoder::default(),
            pending: VecDeque::new(),
            idle_timeout,
            finish_reason: None,
            usage: None,
            cached_prompt_tokens: 0,
            done: false,
        }
    }

    async fn fill_until_first_token(&mut self) -> Result<(), InferenceError> {
        while !self.done
            && !self
                .pending
                .iter()
                .any(|e| !matches!(e.event, Some(Event::Started(_)) | None))
        {
            self.read_more().await?;
        }
        Ok(())
    }

    fn into_events(self) -> EventStream {
        futures::stream::unfold(self, |mut stream| async move {
            loop {
                if let Some(event) = stream.pending.pop_front() {
                    return Some((Ok(event), stream));
                }
                if stream.done {
                    return None;
                }
                if let Err(error) = stream.read_more().await {
                    stream.done = true;
                    return Some((Err(error), stream));
                }
            }
        })
        .boxed()
    }

    async fn read_more(&mut self) -> Result<(), InferenceError> {
        let next = tokio::time::timeout(self.idle_timeout, self.bytes.next())
            .await
            .map_err(|_| {
                InferenceError::UpstreamTimeout(format!(
                    "upstream sent nothing for {:?}",
                    self.idle_timeout
                ))
            })?;
        match next {
            None => {
                self.done = true;
                Err(InferenceError::UpstreamUnavailable(
                    "upstream closed the stream before it finished".to_owned(),
                ))
            }
            Some(Err(e)) => {
                self.done = true;
                Err(InferenceError::UpstreamUnavailable(format!(
                    "upstream stream broke: {e}"
                )))
            }
            Some(Ok(bytes)) => {
                for data in self.decoder.push(&bytes) {
                    if data == "[DONE]" {
                        return self.finish();
                    }
                    self.absorb(&data)?;
                }
                Ok(())
            }
        }
    }

    fn absorb(&mut self, data: &str) -> Result<(), InferenceError> {
        let chunk: Value = serde_json::from_str(data)
            .map_err(|e| InferenceError::UpstreamProtocol(format!("chunk is not JSON: {e}")))?;
        if let Some(error) = chunk.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("unknown error");
            return Err(InferenceError::UpstreamUnavailable(format!(
                "upstream error mid-stream: {message}"
            )));
        }
        if let Some(choice) = chunk.pointer("/choices/0") {
            let text = |field: &str| {
                choice
                    .pointer(field)
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                    .map(|t| TextDelta {
                        text: t.to_owned(),
                        ..Default::default()
                    })
            };
            if let Some(mut delta) = text("/delta/content") {
                if let Some(logprobs) = choice
                    .pointer("/logprobs/content")
                    .filter(|entries| entries.as_array().is_some_and(|a| !a.is_empty()))
                {
                    delta.logprobs_json = logprobs.to_string();
                }
                self.pending.push_back(event(Event::Delta(delta)));
            }
            if let Some(refusal) = text("/delta/refusal") {
                self.pending.push_back(event(Event::Refusal(refusal)));
            }
            for call in choice
                .pointer("/delta/tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                self.pending
                    .push_back(event(Event::ToolCall(tool_call_delta(call)?)));
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish_reason = Some(match reason {
                    "length" => FinishReason::Length,
                    "tool_calls" | "function_call" => FinishReason::ToolCalls,
                    "content_filter" => FinishReason::ContentFilter,
                    _ => FinishReason::Stop,
                });
            }
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            let count = |field: &str| usage.get(field).and_then(Value::as_u64).unwrap_or(0) as u32;
            self.usage = Some(TokenUsage {
                prompt_tokens: count("prompt_tokens"),
                completion_tokens: count("completion_tokens"),
            });
            self.cached_prompt_tokens = usage
                .pointer("/prompt_tokens_details/cached_tokens")
                .and_then(Value::as_u64)
                .map_or(0, |n| n as u32);
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), InferenceError> {
        self.done = true;
        let usage = self.usage.take().ok_or_else(|| {
            InferenceError::UpstreamProtocol("upstream finished without reporting usage".to_owned())
        })?;
        let finish_reason = self.finish_reason.unwrap_or(FinishReason::Stop);
        self.pending.push_back(event(Event::Finished(Finished {
            finish_reason: finish_reason as i32,
            usage: Some(usage),
            cached_prompt_tokens: self.cached_prompt_tokens,
        })));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn absorbed(chunks: &[Value]) -> Vec<Event> {
        let mut stream = ChunkStream::new(futures::stream::empty().boxed(), Duration::from_secs(1));
        for chunk in chunks {
            stream.absorb(&chunk.to_string()).expect("absorb");
        }
        stream.pending.into_iter().filter_map(|e| e.event).collect()
    }

    #[test]
    fn tool_call_fragments_and_refusals_become_events_in_order() {
        let delta = |delta: Value| json!({"choices": [{"index": 0, "delta": delta}]});
        let events = absorbed(&[
            delta(json!({"role": "assistant", "content": null})),
            delta(json!({"tool_calls": [
                {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}},
                {"index": 1, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{"}}]})),
            delta(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"x\":1}"}}]})),
            delta(json!({"refusal": "no"})),
        ]);
        let call = |index, id: &str, name: &str, arguments: &str| {
            Event::ToolCall(ToolCallDelta {
                index,
                id: id.into(),
                name: name.into(),
                arguments: arguments.into(),
            })
        };
        assert_eq!(
            events,
            vec![
                call(0, "call_a", "f", ""),
                call(1, "call_b", "g", "{"),
                call(0, "", "", "{\"x\":1}"),
                Event::Refusal(TextDelta {
                    text: "no".into(),
                    ..Default::default()
                }),
            ]
        );
    }

    #[test]
    fn a_tool_call_fragment_without_an_index_is_a_protocol_error() {
        let mut stream = ChunkStream::new(futures::stream::empty().boxed(), Duration::from_secs(1));
        let chunk = json!({"choices": [{"delta": {"tool_calls": [{"id": "x"}]}}]});
        assert!(matches!(
            stream.absorb(&chunk.to_string()),
            Err(InferenceError::UpstreamProtocol(_))
        ));
    }

    #[test]
    fn tool_definitions_add_to_the_prompt_estimate() {
        let messages = [ChatMessage {
            role: "user".into(),
            content: "What is the weather?".into(),
            ..Default::default()
        }];
        let tools = r#"[{"type":"function","function":{"name":"get_weather","parameters":{}}}]"#;
        let estimate = |extra: &str| UpstreamEngine::estimate_prompt_tokens(&messages, extra);
        let plain = estimate("").expect("no extra");
        let with_tools =
            estimate(&format!(r#"{{"tools":{tools},"temperature":1}}"#)).expect("tools");
        assert_eq!(with_tools - plain, (tools.len() as u32).div_ceil(4));
        assert!(estimate("[").is_err());
    }
}
