//! gRPC clients of the internal services: one balanced channel over every
//! replica's endpoint, several HTTP/2 connections to each, and a deadline on
//! every call.
//!
//! Why the HTTP/2 limits are set here: h2 remembers a stream it reset itself
//! (a dropped response stream, e.g. a client that went away) for a while, so
//! frames still in flight for it are ignored. It remembers only so many (50
//! by default); frames for a forgotten one count as a protocol error, and
//! after 1,024 such errors h2 tears the whole connection down, failing every
//! call on it. Callers read their streams to the end (see `drain`), and the
//! window below is wide enough for the cancellations that remain.

use std::future::Future;
use std::time::Duration;

use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

use crate::grpc::GrpcError;

/// HTTP/2 connections per endpoint: streams of one connection are framed by
/// one task on each side, so a busy caller spreads them over a few.
pub const CONNECTIONS_PER_ENDPOINT: usize = 2;

/// Reset streams h2 keeps track of, and for how long.
const TRACKED_RESETS: usize = 16_384;
const RESET_MEMORY: Duration = Duration::from_secs(30);

/// A channel over `urls` (a comma-separated list: one per replica), with
/// `connections` connections to each, balanced by power of two choices.
/// Connections are made on first use and remade when they break, so
/// services can start in any order.
pub fn channel(urls: &str, connections: usize) -> Result<Channel, GrpcError> {
    let endpoints = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(endpoint)
        .collect::<Result<Vec<_>, _>>()?;
    if endpoints.is_empty() {
        return Err(GrpcError::NoEndpoint(urls.to_owned()));
    }
    let connections = connections.max(1);
    let (channel, changes) = Channel::balance_channel(endpoints.len() * connections + 1);
    for (index, endpoint) in endpoints.iter().enumerate() {
        for connection in 0..connections {
            // Keyed by (endpoint, connection): the same URL twice is two connections.
            let change = Change::Insert((index, connection), endpoint.clone());
            changes
                .try_send(change)
                .map_err(|_| GrpcError::NoEndpoint(urls.to_owned()))?;
        }
    }
    // Dropping `changes` fixes the set: the channel keeps what was sent.
    Ok(channel)
}

fn endpoint(url: &str) -> Result<Endpoint, GrpcError> {
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|source| GrpcError::Endpoint {
        url: url.to_owned(),
        source,
    })?;
    Ok(endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .http2_max_concurrent_reset_streams(TRACKED_RESETS)
        .http2_reset_stream_duration(RESET_MEMORY))
}

/// A request that tells the server its deadline (`grpc-timeout`), so the
/// server stops working on it when the caller stops waiting.
pub fn request<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

/// Waits for `call` at most `deadline`; then the call is dropped and the
/// caller gets DEADLINE_EXCEEDED. tonic reports its own `grpc-timeout`
/// running out as CANCELLED "Timeout expired": that is the same deadline.
pub async fn within<T>(
    deadline: Duration,
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    let late = || tonic::Status::deadline_exceeded(format!("no answer within {deadline:?}"));
    match tokio::time::timeout(deadline, call).await {
        Ok(Err(status))
            if status.code() == tonic::Code::Cancelled
                && status.message() == tonic::TimeoutExpired(()).to_string() =>
        {
            Err(late())
        }
        Ok(result) => result,
        Err(_) => Err(late()),
    }
}

/// Reads a response stream to its end (its trailers), at most `deadline`,
/// so the connection never has to reset it. Errors after the last message
/// say nothing the caller still needs.
pub async fn drain<T>(stream: &mut tonic::Streaming<T>, deadline: Duration) {
    let _ = tokio::time::timeout(deadline, async {
        while let Ok(Some(_)) = stream.message().await {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_list_of_endpoints_is_one_channel() {
        assert!(channel("http://127.0.0.1:1, http://127.0.0.1:2", 2).is_ok());
        assert!(matches!(channel(" , ", 2), Err(GrpcError::NoEndpoint(_))));
        assert!(matches!(
            channel("not a url", 1),
            Err(GrpcError::Endpoint { .. })
        ));
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_is_deadline_exceeded() {
        let status = within(Duration::from_millis(10), async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<(), tonic::Status>(())
        })
        .await
        .expect_err("late");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    }
}
