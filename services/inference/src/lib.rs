//! RunGate inference: a registry of public models, each served by an engine,
//! streamed to callers over gRPC.

pub mod config;
pub mod engine;
pub mod error;
mod genai;
pub mod local;
pub mod registry;
mod service;
mod sse;
pub mod upstream;

use std::future::Future;

use rungate_proto::inference::v1::inference_service_server::{
    InferenceServiceServer, SERVICE_NAME,
};
use tokio::net::TcpListener;

pub use config::Config;
pub use error::InferenceError;

/// Serves the inference gRPC API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let drain = config.drain_timeout;
    // Loading models reads and maps whole files: keep it off the runtime.
    let registry =
        tokio::task::spawn_blocking(move || registry::Registry::from_config(&config)).await??;
    serve_registry(listener, registry, shutdown, drain).await
}

/// `serve` with a registry built by the caller, who can keep a clone of it
/// (to read engine metrics, say).
pub async fn serve_registry(
    listener: TcpListener,
    registry: registry::Registry,
    shutdown: impl Future<Output = ()> + Send,
    drain: std::time::Duration,
) -> anyhow::Result<()> {
    tracing::info!(
        addr = %listener.local_addr()?,
        models = registry.len(),
        "inference serving"
    );
    let service = service::InferenceApi::new(registry);
    let routes = tonic::service::Routes::new(InferenceServiceServer::new(service));
    rungate_common::grpc::serve(listener, routes, &[SERVICE_NAME], shutdown, drain).await?;
    Ok(())
}
