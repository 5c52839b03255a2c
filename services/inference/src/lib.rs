//! RunGate inference: a registry of public models, each served by an engine,
//! streamed to callers over gRPC.

pub mod config;
pub mod engine;
pub mod error;
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
    let registry = registry::Registry::from_config(&config)?;
    tracing::info!(
        addr = %listener.local_addr()?,
        models = registry.len(),
        "inference serving"
    );
    let service = service::InferenceApi::new(registry);
    let routes = tonic::service::Routes::new(InferenceServiceServer::new(service));
    rungate_common::grpc::serve(
        listener,
        routes,
        &[SERVICE_NAME],
        shutdown,
        config.drain_timeout,
    )
    .await?;
    Ok(())
}
