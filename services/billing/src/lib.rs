//! RunGate billing: prices calls and speaks x402 for them. `exact` (one
//! EIP-3009 authorization per call): verified locally, its nonce reserved in
//! the ledger, settled on chain in sync or deferred mode. batch-settlement
//! (a deposit per channel, a voucher per call): vouchers checked in memory,
//! stored coalesced, claimed in batches. Also an x402 facilitator over HTTP.
//!
//! Layout: `x402/` is the protocol (one folder per scheme); `calls` decides
//! for a call; `payments` and `channels` hold the two schemes' state;
//! `workers` collect the money; `service`, `paid_call` and `facilitator` are
//! the APIs.

mod backpressure;
mod calls;
mod chain;
mod channels;
pub mod config;
pub mod error;
mod facilitator;
mod funds;
mod ledger;
mod metrics;
mod paid_call;
mod payments;
pub mod pricing;
pub mod remote;
mod service;
mod workers;
pub mod x402;

use std::future::Future;
use std::sync::Arc;

use rungate_proto::billing::v1::billing_service_server::{BillingServiceServer, SERVICE_NAME};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::BillingError;

/// Serves the billing gRPC API on `listener` until `shutdown` resolves. With
/// payment networks configured it also runs the settlement worker (and, with
/// batch-settlement, the claim worker).
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    if config.replica >= config.replicas {
        return Err(BillingError::Config(format!(
            "--replica {} is not below --replicas {}",
            config.replica, config.replicas
        ))
        .into());
    }
    let prices = config.price_table()?;
    let payments = payments(&config)?;
    let channels = match &payments {
        Some(payments) => channels(&config, payments)?,
        None => None,
    };
    tracing::info!(
        addr = %listener.local_addr()?,
        payments = payments.is_some(),
        batch_settlement = channels.is_some(),
        settlement = ?config.settlement,
        chain_reads = ?config.chain_reads,
        "billing serving"
    );
    let stop_workers = CancellationToken::new();
    let mut claims = None;
    if let Some(payments) = &payments {
        tokio::spawn(workers::settlement::run(
            payments.clone(),
            stop_workers.clone(),
        ));
        if let Some(channels) = &channels {
            let worker = Arc::new(workers::claims::ClaimWorker {
                channels: channels.clone(),
                chains: payments.chains.clone(),
                interval: config.claim_interval,
                lease: config.receipt_timeout * 2,
                worker: payments.worker.clone(),
            });
            tokio::spawn(worker.clone().run(stop_workers.clone()));
            claims = Some(worker);
        }
    }
    let _stop_workers = stop_workers.drop_guard();
    let payments_handle = payments.clone();
    let replicas = calls::Replicas {
        index: config.replica,
        count: config.replicas,
    };
    let facilitator_channels = channels.clone();
    let billing = Arc::new(calls::Billing::new(prices, payments, channels, replicas));
    let grpc = service::BillingGrpc { billing, claims };
    let grpc = BillingServiceServer::new(grpc);
    // The x402 facilitator API (HTTP/1.1 JSON) shares the port with gRPC
    // (and `/metrics`).
    metrics::describe();
    let routes = match payments_handle {
        Some(payments) => {
            tonic::service::Routes::from(facilitator::router(payments, facilitator_channels))
        }
        None => tonic::service::Routes::default(),
    }
    .add_service(grpc);
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
            Some(Arc::new(remote::RemoteFacilitator::new(url)?))
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
        pressure: Default::default(),
        worker: format!("billing-{}", std::process::id()),
    })))
}

/// batch-settlement's channel book, when a receiverAuthorizer key is set.
fn channels(
    config: &Config,
    payments: &payments::Payments,
) -> Result<Option<Arc<channels::Channels>>, BillingError> {
    let Some(authorizer) = config.receiver_authorizer()? else {
        return Ok(None);
    };
    let terms = x402::batch::offer::BatchTerms {
        receiver_authorizer: authorizer.address(),
        withdraw_delay: config.withdraw_delay_secs()?,
        min_deposit: config.min_deposit,
    };
    tracing::info!(receiver_authorizer = %authorizer.address(), "batch-settlement offered");
    let writer = channels::writer::Writer::spawn(payments.ledger.clone(), config.voucher_flush);
    Ok(Some(Arc::new(channels::Channels::new(
        payments.ledger.clone(),
        writer,
        authorizer,
        terms,
        payments.remote.clone(),
    ))))
}
