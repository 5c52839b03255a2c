//! Load shedding: at most `max_concurrent_requests` requests are served at
//! once (a streamed answer counts until its last byte); past that a request
//! gets 503 with Retry-After at once instead of waiting in an unbounded queue.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ApiError;

pub async fn shed(State(slots): State<Arc<Semaphore>>, request: Request, next: Next) -> Response {
    let Ok(permit) = slots.try_acquire_owned() else {
        return ApiError::overloaded().into_response();
    };
    next.run(request).await.map(|body| {
        Body::new(Held {
            body,
            _permit: permit,
        })
    })
}

/// A response body that holds its request's slot until it is done.
struct Held {
    body: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
