//! RunGate edge: the public HTTP face. Speaks the OpenAI chat API and turns
//! each call into internal gRPC calls.

pub mod config;
pub mod error;
mod metrics;
mod openai;
mod payment;
mod recorder;
mod routes;
mod server;
mod shed;
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
    let limits = server::ConnectionLimits {
        header_timeout: config.header_timeout,
        http2_keep_alive: std::time::Duration::from_secs(20),
    };
    server::run(listener, app, limits, shutdown, config.drain_timeout).await;
    Ok(())
}
