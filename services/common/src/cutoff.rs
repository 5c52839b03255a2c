//! Ends gRPC response streams still open when the drain deadline passes.
//! Without it, streams on spawned connection tasks would outlive `serve`.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// A response body that, once `deadline` is cancelled, ends with the trailers
/// of an UNAVAILABLE status, so clients see a clear, retryable error.
pub struct CutOff {
    inner: tonic::body::Body,
    deadline: Pin<Box<WaitForCancellationFutureOwned>>,
    cut: bool,
}

impl CutOff {
    pub fn wrap(inner: tonic::body::Body, deadline: &CancellationToken) -> tonic::body::Body {
        tonic::body::Body::new(Self {
            inner,
            deadline: Box::pin(deadline.clone().cancelled_owned()),
            cut: false,
        })
    }
}

impl Body for CutOff {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.cut {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.cut = true;
            // Drop the call's stream now: the handler sees its answer gone
            // (not only when the connection goes).
            self.inner = tonic::body::Body::empty();
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
            trailers.insert(
                "grpc-message",
                http::HeaderValue::from_static(
                    "server%20shut%20down%20before%20the%20call%20finished",
                ),
            );
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.cut || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
