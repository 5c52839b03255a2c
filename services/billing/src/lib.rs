//! RunGate billing: prices calls. Payment verification and settlement (x402)
//! plug into the same service.

pub mod config;
pub mod error;
pub mod pricing;
mod service;
pub mod x402;

use std::future::Future;

use rungate_proto::billing::v1::billing_service_server::{BillingServiceServer, SERVICE_NAME};
use tokio::net::TcpListener;

pub use config::Config;
pub use error::BillingError;

/// Serves the billing gRPC API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let prices = config.price_table()?;
    let networks = config.networks()?;
    tracing::info!(addr = %listener.local_addr()?, "billing serving");
    let service = service::BillingApi::new(prices, networks);
    let routes = tonic::service::Routes::new(BillingServiceServer::new(service));
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
