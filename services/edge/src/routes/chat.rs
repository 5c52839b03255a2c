//! `POST /v1/chat/completions`, streamed (SSE) or not.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;
use http::{HeaderValue, StatusCode, header};
use rungate_proto::inference::v1::{
    Finished, GenerateEvent, GenerateRequest, generate_event::Event,
};
use tonic::Streaming;

use rungate_common::client::{drain, within};

use crate::ApiError;
use crate::metrics::Timing;
use crate::openai::tools::{ToolCallChunk, ToolCalls};
use crate::openai::{
    AssistantMessage, ChatRequest, Chunk, ChunkChoice, Completion, CompletionChoice, Delta,
    Logprobs, Usage, finish_reason,
};
use crate::recorder::{ServedCall, UsageRecorder};
use crate::routes::paid::{self, CallEnd, Gate, PaidSession};
use crate::sse;
use crate::state::AppState;

/// What a request body may be: how large, and how long it may take to arrive.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub timeout: std::time::Duration,
}

/// At most this much of a body announced over the limit is read before
/// refusing it; a larger one gets its 413 and a closed connection.
const DISCARD_BYTES: usize = 16 << 20;

/// The whole body, or the right refusal: 413 when it is (or announces it
/// will be) over the limit, decided from Content-Length before reading;
/// 408 when it does not arrive in time; 400 when its framing is broken.
async fn read_body(
    headers: &http::HeaderMap,
    body: Body,
    limits: BodyLimits,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::invalid(
            None,
            format!(
                "The request body is larger than the {}-byte limit.",
                limits.max_bytes
            ),
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|length| length > limits.max_bytes as u64) {
        // Answered at once; what the client is still sending is read (and
        // dropped) behind the answer, within bounds, so that it finishes
        // writing and reads the 413 rather than a broken pipe.
        tokio::spawn(tokio::time::timeout(
            limits.timeout,
            discard(body, DISCARD_BYTES),
        ));
        return Err(too_large());
    }
    let read = axum::body::to_bytes(body, limits.max_bytes);
    match tokio::time::timeout(limits.timeout, read).await {
        Err(_) => Err(ApiError::invalid(
            None,
            format!(
                "The request body did not arrive within {:?}.",
                limits.timeout
            ),
        )
        .with_status(StatusCode::REQUEST_TIMEOUT)),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) => {
            let over_limit = std::error::Error::source(&error)
                .is_some_and(|cause| cause.is::<http_body_util::LengthLimitError>());
            if over_limit {
                Err(too_large())
            } else {
                Err(ApiError::invalid(
                    None,
                    format!("The request body could not be read: {error}."),
                ))
            }
        }
    }
}

/// Reads a body to its end (or past `most` bytes) without keeping it.
async fn discard(mut body: Body, most: usize) {
    use http_body_util::BodyExt;
    let mut seen = 0;
    while let Some(Ok(frame)) = body.frame().await {
        seen += frame.data_ref().map_or(0, Bytes::len);
        if seen > most {
            return;
        }
    }
}

/// `GET /v1/chat/completions`: what x402 batch-settlement clients use to
/// ask for their unspent deposit back (a probe for the offer, then the
/// refund payment). Billing answers both; nothing is generated.
pub async fn refund(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    let id = format!("refund-{}", uuid::Uuid::new_v4().simple());
    match paid::gate(&state, &parts.headers, parts.uri.path(), None, &id).await? {
        Gate::Refused(response) | Gate::Handled(response) => Ok(response),
        // Dropping the session tells billing nothing was served.
        Gate::Paid(_) | Gate::Free => Err(ApiError::invalid(
            None,
            "A chat completion is a POST; GET only takes an x402 batch-settlement refund.",
        )
        .with_status(StatusCode::METHOD_NOT_ALLOWED)),
    }
}

pub async fn completions(
    State(state): State<AppState>,
    request: Request,
    body_limits: BodyLimits,
) -> Result<Response, ApiError> {
    let mut timing = Timing::new(std::time::Instant::now());
    let (parts, body) = request.into_parts();
    let bytes = read_body(&parts.headers, body, body_limits).await?;
    let chat = ChatRequest::parse(&bytes)?;
    // Random (v4), not time-ordered: the id is also the receipt id, which
    // must not be guessable.
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let span = tracing::Span::current();
    span.record("request_id", id.as_str());
    if let Some(metadata) = &chat.metadata {
        span.record(
            "metadata",
            tracing::field::display(serde_json::Value::Object(metadata.clone())),
        );
    }
    let mut paid =
        match paid::gate(&state, &parts.headers, parts.uri.path(), Some(&chat), &id).await? {
            Gate::Free => None,
            Gate::Paid(session) => Some(*session),
            Gate::Refused(response) | Gate::Handled(response) => return Ok(response),
        };
    let created = rungate_common::clock::now();

    let extra_json = chat.extra_json();
    let generate = GenerateRequest {
        request_id: id.clone(),
        model: chat.model.clone(),
        messages: chat.messages,
        sampling: Some(chat.sampling),
        extra_json,
        user: chat.user,
    };
    // Errors before the first token (unknown model, refused fields, engine
    // overloaded) arrive here and become proper HTTP statuses.
    let deadline = state.deadlines.generate;
    timing.engine_started();
    let events = within(
        deadline,
        state
            .inference
            .clone()
            .generate(rungate_common::client::request(generate, deadline)),
    )
    .await?
    .into_inner();
    // A streamed call's payment header goes out with the first byte: wait
    // for it (in sync settlement, while the engine processes the prompt).
    let settled = match &mut paid {
        Some(session) if chat.stream => {
            let settled = session.settled().await?;
            if !settled.success {
                let mut response = paid::settlement_failed(&settled);
                set_request_id(&mut response, &id);
                return Ok(response);
            }
            Some(settled)
        }
        _ => None,
    };
    let call = Call {
        id,
        created,
        model: chat.model,
        served_by: String::new(),
        trailers: state.deadlines.trailers,
        // Paid calls' usage is recorded by billing, with their charge.
        usage: paid.is_none().then(|| state.usage.clone()),
        paid,
        timing,
    };
    if chat.stream {
        let mut response = streamed(call, events, chat.include_usage);
        if let Some(settled) = settled {
            paid::add_payment_response(&mut response, &settled);
        }
        Ok(response)
    } else {
        complete(call, events).await
    }
}

struct Call {
    id: String,
    created: u64,
    model: String,
    /// The engine's name for what served the call (from its Started event).
    served_by: String,
    /// How long to wait for the engine stream's trailers after `Finished`.
    trailers: std::time::Duration,
    /// Free mode: the recorder that writes this call's usage.
    usage: Option<UsageRecorder>,
    paid: Option<PaidSession>,
    timing: Timing,
}

impl Call {
    fn finished(&mut self, finished: &Finished) {
        self.timing
            .finished(&self.model, finished.usage.unwrap_or_default());
        let Some(recorder) = &self.usage else {
            return;
        };
        recorder.record(ServedCall {
            request_id: &self.id,
            model: &self.model,
            engine: &self.served_by,
            usage: finished.usage.unwrap_or_default(),
            finish_reason: finish_reason(finished.finish_reason),
            charged: 0u128.into(),
        });
    }
}

async fn complete(
    mut call: Call,
    mut events: Streaming<GenerateEvent>,
) -> Result<Response, ApiError> {
    let (mut text, mut refusal) = (String::new(), String::new());
    let mut tool_calls = ToolCalls::default();
    let mut logprobs = None;
    while let Some(event) = events.message().await? {
        match event.event {
            Some(Event::Delta(delta)) => {
                call.timing.token();
                text.push_str(&delta.text);
                Logprobs::extend(&mut logprobs, &delta.logprobs_json);
            }
            Some(Event::Refusal(delta)) => {
                call.timing.token();
                refusal.push_str(&delta.text);
            }
            Some(Event::ToolCall(delta)) => {
                call.timing.token();
                tool_calls.push(delta);
            }
            Some(Event::Started(started)) => call.served_by = started.served_by,
            Some(Event::Finished(finished)) => {
                // The stream ends right after; read its end rather than reset it.
                drain(&mut events, call.trailers).await;
                call.finished(&finished);
                let tool_calls = std::mem::take(&mut tool_calls).into_calls();
                // OpenAI's `content` is null when the answer is only calls or a refusal.
                let only_calls = text.is_empty() && !(tool_calls.is_empty() && refusal.is_empty());
                let body = Completion {
                    id: &call.id,
                    object: "chat.completion",
                    created: call.created,
                    model: &call.model,
                    choices: [CompletionChoice {
                        index: 0,
                        message: AssistantMessage {
                            role: "assistant",
                            content: (!only_calls).then_some(text.as_str()),
                            refusal: (!refusal.is_empty()).then_some(refusal.as_str()),
                            tool_calls,
                        },
                        logprobs: logprobs.take(),
                        finish_reason: finish_reason(finished.finish_reason),
                    }],
                    usage: Usage::from(&finished),
                };
                let mut response = axum::Json(body).into_response();
                set_request_id(&mut response, &call.id);
                if let Some(mut session) = call.paid.take() {
                    session
                        .completed(call_end(&finished, &call.served_by))
                        .await?;
                    let settled = session.settled().await?;
                    if !settled.success {
                        let mut response = paid::settlement_failed(&settled);
                        set_request_id(&mut response, &call.id);
                        tokio::spawn(session.finish());
                        return Ok(response);
                    }
                    paid::add_payment_response(&mut response, &settled);
                    // Billing records the call's usage on its own; the answer
                    // does not wait for that second ledger write.
                    tokio::spawn(session.finish());
                }
                return Ok(response);
            }
            None => {}
        }
    }
    Err(tonic::Status::unavailable("the engine ended the stream without finishing").into())
}

fn streamed(call: Call, events: Streaming<GenerateEvent>, include_usage: bool) -> Response {
    let id = call.id.clone();
    let frames = Frames {
        call,
        events,
        include_usage,
        pending: VecDeque::with_capacity(3),
        started: false,
        done: false,
        deltas: 0,
    };
    let mut response = Response::new(Body::from_stream(frames.into_stream()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    set_request_id(&mut response, &id);
    response
}

/// What billing is told of a call the engine finished.
fn call_end<'a>(finished: &Finished, engine: &'a str) -> CallEnd<'a> {
    CallEnd {
        usage: finished.usage.unwrap_or_default(),
        cached_prompt_tokens: finished.cached_prompt_tokens,
        finish_reason: finish_reason(finished.finish_reason),
        engine,
    }
}

/// The call's id, which is also its receipt's (`GET /v1/receipts/{id}`).
fn set_request_id(response: &mut Response, id: &str) {
    if let Ok(value) = HeaderValue::from_str(id) {
        response.headers_mut().insert("x-request-id", value.clone());
        response.headers_mut().insert("x-rungate-receipt", value);
    }
}

/// The exact OpenAI chunk sequence: role delta, content deltas, the finish
/// chunk, the usage chunk (if asked for), `[DONE]`. An error after the stream
/// began is sent as an `error` event and the stream ends. Dropping the body
/// (client gone) drops the gRPC stream, which cancels generation.
struct Frames {
    call: Call,
    events: Streaming<GenerateEvent>,
    include_usage: bool,
    pending: VecDeque<Bytes>,
    started: bool,
    done: bool,
    /// Content, refusal and tool-call deltas sent so far (a paid call cut
    /// short counts as served once something went out).
    deltas: u32,
}

impl Drop for Frames {
    fn drop(&mut self) {
        let Some(session) = self.call.paid.take() else {
            return;
        };
        if self.deltas > 0 {
            let usage = rungate_proto::types::v1::TokenUsage {
                prompt_tokens: 0,
                completion_tokens: self.deltas,
            };
            session.completed_now(CallEnd {
                usage,
                cached_prompt_tokens: 0,
                finish_reason: "cancelled",
                engine: &self.call.served_by,
            });
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(session.finish());
            }
        }
        // Nothing sent: dropping the session voids the authorization.
    }
}

impl Frames {
    fn chunk(&self, delta: Delta<'_>, finish: Option<&'static str>) -> Bytes {
        self.chunk_with_logprobs(delta, None, finish)
    }

    fn chunk_with_logprobs(
        &self,
        delta: Delta<'_>,
        logprobs: Option<Logprobs>,
        finish: Option<&'static str>,
    ) -> Bytes {
        sse::data_event(&Chunk {
            id: &self.call.id,
            object: "chat.completion.chunk",
            created: self.call.created,
            model: &self.call.model,
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs,
                finish_reason: finish,
            }],
            usage: self.include_usage.then_some(None),
        })
    }

    fn usage_chunk(&self, usage: Usage) -> Bytes {
        sse::data_event(&Chunk {
            id: &self.call.id,
            object: "chat.completion.chunk",
            created: self.call.created,
            model: &self.call.model,
            choices: Vec::new(),
            usage: Some(Some(usage)),
        })
    }

    fn fail(&mut self, status: tonic::Status) {
        self.fail_with(ApiError::from(status));
    }

    fn fail_with(&mut self, error: ApiError) {
        self.pending.push_back(sse::raw_event(&error.to_json()));
        self.done = true;
    }

    async fn advance(&mut self) {
        if !self.started {
            self.started = true;
            let first = self.chunk(
                Delta {
                    role: Some("assistant"),
                    content: Some(""),
                    ..Default::default()
                },
                None,
            );
            self.pending.push_back(first);
            return;
        }
        match self.events.message().await {
            Ok(Some(GenerateEvent {
                event: Some(Event::Delta(delta)),
            })) => {
                self.call.timing.token();
                let mut logprobs = None;
                Logprobs::extend(&mut logprobs, &delta.logprobs_json);
                let frame = self.chunk_with_logprobs(
                    Delta {
                        content: Some(&delta.text),
                        ..Default::default()
                    },
                    logprobs,
                    None,
                );
                self.pending.push_back(frame);
                self.deltas += 1;
            }
            Ok(Some(GenerateEvent {
                event: Some(Event::ToolCall(call)),
            })) => {
                self.call.timing.token();
                let frame = self.chunk(
                    Delta {
                        tool_calls: Some([ToolCallChunk::from(&call)]),
                        ..Default::default()
                    },
                    None,
                );
                self.pending.push_back(frame);
                self.deltas += 1;
            }
            Ok(Some(GenerateEvent {
                event: Some(Event::Refusal(refusal)),
            })) => {
                self.call.timing.token();
                let frame = self.chunk(
                    Delta {
                        refusal: Some(&refusal.text),
                        ..Default::default()
                    },
                    None,
                );
                self.pending.push_back(frame);
                self.deltas += 1;
            }
            Ok(Some(GenerateEvent {
                event: Some(Event::Started(started)),
            })) => self.call.served_by = started.served_by,
            Ok(Some(GenerateEvent {
                event: Some(Event::Finished(finished)),
            })) => {
                drain(&mut self.events, self.call.trailers).await;
                self.call.finished(&finished);
                if let Some(mut session) = self.call.paid.take() {
                    let completion = call_end(&finished, &self.call.served_by);
                    if let Err(error) = session.completed(completion).await {
                        // Billing could not take the charge: no `[DONE]`.
                        self.fail_with(error);
                        return;
                    }
                    // Keep the call open until billing has recorded it.
                    tokio::spawn(session.finish());
                }
                let last = self.chunk(
                    Delta::default(),
                    Some(finish_reason(finished.finish_reason)),
                );
                self.pending.push_back(last);
                if self.include_usage {
                    let usage = self.usage_chunk(Usage::from(&finished));
                    self.pending.push_back(usage);
                }
                self.pending.push_back(Bytes::from_static(sse::DONE));
                self.done = true;
            }
            Ok(Some(_)) => {}
            Ok(None) => self.fail(tonic::Status::unavailable(
                "the engine ended the stream without finishing",
            )),
            Err(status) => self.fail(status),
        }
    }

    fn into_stream(self) -> impl Stream<Item = Result<Bytes, Infallible>> {
        futures::stream::unfold(self, |mut frames| async move {
            loop {
                if let Some(frame) = frames.pending.pop_front() {
                    return Some((Ok(frame), frames));
                }
                if frames.done {
                    return None;
                }
                frames.advance().await;
            }
        })
    }
}
