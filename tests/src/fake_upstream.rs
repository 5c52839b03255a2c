//! A fake OpenAI-compatible server standing in for remote providers (which a
//! test cannot reach). Each behaviour lives under its own base path:
//!
//! - `/ok/v1`: answers "You said: <last user message>", one word per chunk,
//!   honouring `max_tokens` (finish_reason "length"); usage counts words.
//! - `/fail500/v1`, `/fail429/v1`: refuse before any token.
//! - `/slow/v1`: waits 5 s before the first byte.
//! - `/drop/v1`: sends two words, then closes the connection without finishing.
//!
//! - `/trickle/v1`: like `ok`, 100 ms between chunks.
//! - `/fast/v1`: like `ok`, without the 2 ms between chunks (benchmarks).
//! - `/stall/v1`: sends two words, then nothing for 5 s.
//!
//! Every request it receives is kept (body and `traceparent`), so tests can
//! check what was sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::net::TcpListener;

#[derive(Clone, Default)]
pub struct FakeUpstream {
    requests: Arc<Mutex<Vec<Received>>>,
    aborted: Arc<Mutex<Vec<String>>>,
}

/// Records a response stream dropped before its end (the caller went away).
struct AbortWatch {
    aborted: Arc<Mutex<Vec<String>>>,
    prompt: String,
    finished: bool,
}

/// A response stream that marks its watch finished when it ends.
struct Watched<S> {
    inner: std::pin::Pin<Box<S>>,
    watch: AbortWatch,
}

impl<S: futures::Stream> futures::Stream for Watched<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        let next = self.inner.as_mut().poll_next(cx);
        if let std::task::Poll::Ready(None) = next {
            self.watch.finished = true;
        }
        next
    }
}

impl Drop for AbortWatch {
    fn drop(&mut self) {
        if !self.finished
            && let Ok(mut aborted) = self.aborted.lock()
        {
            aborted.push(std::mem::take(&mut self.prompt));
        }
    }
}

#[derive(Clone, Debug)]
pub struct Received {
    pub mode: String,
    pub body: Value,
    pub traceparent: Option<String>,
}

impl FakeUpstream {
    /// Serves on `listener` until the runtime stops.
    pub fn spawn(&self, listener: TcpListener) {
        let app = Router::new()
            .route("/{mode}/v1/chat/completions", post(completions))
            .with_state(self.clone());
        tokio::spawn(async move {
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let _ = axum::serve(listener, app).await;
        });
    }

    /// Whether the response to the call whose last user message is
    /// `prompt` was abandoned by its client before the end.
    pub fn was_aborted(&self, prompt: &str) -> bool {
        self.aborted
            .lock()
            .is_ok_and(|aborted| aborted.iter().any(|p| p == prompt))
    }

    /// Request bodies received under `mode`, oldest first.
    pub fn received(&self, mode: &str) -> Vec<Value> {
        self.requests_under(mode)
            .into_iter()
            .map(|r| r.body)
            .collect()
    }

    /// Requests received under `mode`, oldest first.
    pub fn requests_under(&self, mode: &str) -> Vec<Received> {
        self.requests
            .lock()
            .map(|r| r.iter().filter(|r| r.mode == mode).cloned().collect())
            .unwrap_or_default()
    }
}

fn words(text: &str) -> u32 {
    text.split_whitespace().count() as u32
}

async fn completions(
    State(fake): State<FakeUpstream>,
    Path(mode): Path<String>,
    headers: http::HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let body = body.0;
    if let Ok(mut requests) = fake.requests.lock() {
        requests.push(Received {
            mode: mode.clone(),
            body: body.clone(),
            traceparent: headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        });
    }
    match mode.as_str() {
        "fail500" => {
            return (http::StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded").into_response();
        }
        "fail429" => {
            return (
                http::StatusCode::TOO_MANY_REQUESTS,
                axum::Json(json!({"error": {"message": "slow down", "type": "rate_limit"}})),
            )
                .into_response();
        }
        "slow" => tokio::time::sleep(Duration::from_secs(5)).await,
        _ => {}
    }
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let prompt_tokens: u32 = messages
        .iter()
        .map(|m| words(m["content"].as_str().unwrap_or("")))
        .sum();
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_owned();
    let answer = format!("You said: {last_user}");
    let all: Vec<String> = answer.split_whitespace().map(str::to_owned).collect();
    let max = body["max_tokens"].as_u64().unwrap_or(u64::MAX) as usize;
    let (pieces, finish) = if all.len() > max {
        (all[..max].to_vec(), "length")
    } else {
        (all, "stop")
    };
    let model = body["model"].as_str().unwrap_or("fake").to_owned();
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "fake-1", "object": "chat.completion.chunk", "created": 0, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut frames: Vec<Value> = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for (i, piece) in pieces.iter().enumerate() {
        let text = if i == 0 {
            piece.clone()
        } else {
            format!(" {piece}")
        };
        frames.push(chunk(json!({"content": text}), Value::Null));
    }
    let dropping = mode == "drop";
    if dropping {
        frames.truncate(3);
    } else {
        frames.push(chunk(json!({}), json!(finish)));
        frames.push(
            json!({"id": "fake-1", "object": "chat.completion.chunk", "created": 0,
            "model": model, "choices": [],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": pieces.len(),
                      "total_tokens": prompt_tokens as usize + pieces.len()}}),
        );
    }
    let pause = Duration::from_millis(match mode.as_str() {
        "trickle" => 100,
        "fast" => 0,
        _ => 2,
    });
    let stall = mode == "stall";
    let stream = futures::stream::iter(
        frames
            .into_iter()
            .map(|frame| frame.to_string())
            .enumerate(),
    )
    .then(move |(i, data)| async move {
        let pause = if stall && i == 3 {
            Duration::from_secs(5)
        } else {
            pause
        };
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        Ok::<_, std::io::Error>(Bytes::from(format!("data: {data}\n\n")))
    })
    .chain(futures::stream::iter(
        (!dropping).then(|| Ok(Bytes::from_static(b"data: [DONE]\n\n"))),
    ))
    .chain(futures::stream::iter(dropping.then(|| {
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "dropped",
        ))
    })));
    let watched = Watched {
        inner: Box::pin(stream),
        watch: AbortWatch {
            aborted: fake.aborted.clone(),
            prompt: last_user.clone(),
            finished: dropping,
        },
    };
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(watched))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

use futures::StreamExt;
