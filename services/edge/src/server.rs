//! The HTTP server under the router: the accept loop axum::serve runs, plus
//! what it leaves out. Every connection gets a timer, so a request's head
//! must arrive within `header_timeout` (slowloris clients are cut off), and
//! a connection that sends nothing, or an HTTP/1 one idle between requests,
//! is closed after the same time;
//! HTTP/2 connections are pinged and closed when the peer stops answering.
//! On shutdown the listener closes and open connections finish their
//! requests for up to `drain`.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// How a connection is kept in check.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A request's head must arrive within this; also the HTTP/1 idle timeout.
    pub header_timeout: Duration,
    /// HTTP/2 ping interval; a peer that misses a ping's answer this long is gone.
    pub http2_keep_alive: Duration,
}

pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keep_alive)
        .keep_alive_timeout(limits.http2_keep_alive);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    // Out of descriptors and the like: back off, keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // No Nagle: small writes (SSE chunks, short JSON answers) go out at
        // once instead of waiting for the client's delayed ACK (up to 40 ms).
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
        let service = TowerToHyperService::new(app.clone());
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            // hyper's protocol detection waits for the first bytes without a
            // deadline: a connection that says nothing is closed here.
            let mut first = [0u8; 1];
            let spoke = tokio::time::timeout(limits.header_timeout, tcp.peek(&mut first)).await;
            if !matches!(spoke, Ok(Ok(n)) if n > 0) {
                return;
            }
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
            if let Err(error) = watcher.watch(connection.into_owned()).await {
                // Timeouts, resets, malformed requests: the client's doing.
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain,
            "drain deadline passed; dropping requests still in flight"
        );
    }
}
