//! RunGate billing: prices calls, verifies x402 payments (EIP-3009, locally
//! with alloy), reserves their nonces in the ledger, and settles them on
//! chain, in sync or deferred mode. Also an x402 facilitator over HTTP.

mod chain;
pub mod config;
pub mod error;
mod facilitator;
mod funds;
mod ledger;
mod paid_call;
mod payments;
pub mod pricing;
pub mod remote;
mod service;
pub mod x402;

use std::future::Future;
use std::sync::Arc;

use rungate_proto::billing::v1::billing_service_server::{BillingServiceServer, SERVICE_NAME};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::BillingError;

/// Serves the billing gRPC API on `listener` until `shutdown` resolves. With
/// payment networks configured it also runs the settlement worker.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let prices = config.price_table()?;
    let payments = payments(&config)?;
    tracing::info!(
        addr = %listener.local_addr()?,
        payments = payments.is_some(),
        settlement = ?config.settlement,
        chain_reads = ?config.chain_reads,
        "billing serving"
    );
    let stop_worker = CancellationToken::new();
    if let Some(payments) = &payments {
        tokio::spawn(payments.clone().run_worker(stop_worker.clone()));
    }
    let _stop_worker = stop_worker.drop_guard();
    let payments_handle = payments.clone();
    let billing = Arc::new(service::Billing::new(prices, payments));
    let grpc = BillingServiceServer::new(service::BillingGrpc(billing));
    // The x402 facilitator API (HTTP/1.1 JSON) shares the port with gRPC.
    let routes = match payments_handle {
        Some(payments) => {
            tonic::service::Routes::from(facilitator::router(payments)).add_service(grpc)
        }
        None => tonic::service::Routes::new(grpc),
    };
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

fn payments(config: &Config) -> Result<Option<Arc<payments::Payments>>, BillingError> {
    let networks = config.networks()?;
    if networks.is_empty() {
        return Ok(None);
    }
    let signer = config.settlement_signer()?;
    let chains = networks
        .into_iter()
        .map(|n| chain::Chain::connect(n, signer.clone(), config.receipt_timeout).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    tracing::info!(settler = %signer.address(), "settlement signer loaded");
    let remote = match &config.facilitator_url {
        Some(url) => {
            tracing::info!(%url, "verifying and settling through an external facilitator");
            Some(remote::RemoteFacilitator::new(url)?)
        }
        None => None,
    };
    Ok(Some(Arc::new(payments::Payments {
        networks: chains.iter().map(|c| c.network.clone()).collect(),
        remote,
        chains,
        ledger: ledger::Ledger::connect(&config.ledger_url)?,
        funds: funds::Funds::new(config.chain_reads, config.balance_ttl),
        mode: config.settlement,
        settle_interval: config.settle_interval,
        lease: config.receipt_timeout * 2,
        worker: format!("billing-{}", std::process::id()),
    })))
}
