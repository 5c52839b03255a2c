//! RunGate edge: the public HTTP face. Speaks the OpenAI chat API and turns
//! each call into internal gRPC calls.

pub mod config;
pub mod error;
mod openai;
mod payment;
mod recorder;
mod routes;
mod sse;
mod state;

use std::future::Future;

use tokio::net::TcpListener;

pub use config::Config;
pub use error::ApiError;

/// Serves the HTTP API on `listener` until `shutdown` resolves, then lets
/// in-flight requests (streams included) finish for up to the drain timeout.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = state::AppState::connect(&config)?;
    let app = routes::router(state, &config);
    tracing::info!(addr = %listener.local_addr()?, "edge serving");
    let (drain_started, drain_begun) = tokio::sync::oneshot::channel::<()>();
    // No Nagle: small writes (SSE chunks, short JSON answers) go out at
    // once instead of waiting for the client's delayed ACK (up to 40 ms).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = drain_started.send(());
    });
    let server = server.into_future();
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return Ok(result?),
        _ = drain_begun => {}
    }
    match tokio::time::timeout(config.drain_timeout, server).await {
        Ok(result) => Ok(result?),
        Err(_) => {
            tracing::warn!(drain = ?config.drain_timeout, "drain deadline passed; dropping requests still in flight");
            Ok(())
        }
    }
}
