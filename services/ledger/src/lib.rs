//! RunGate ledger: the only service that touches Postgres. Idempotent,
//! group-committed writes of authorizations, usage and settlements; receipts
//! and settlement listings.

mod channel_records;
mod channels;
pub mod committer;
pub mod config;
mod convert;
pub mod db;
pub mod error;
mod queue;
mod reads;
mod records;
mod service;
mod watch;

use std::future::Future;

use rungate_proto::ledger::v1::ledger_service_server::{LedgerServiceServer, SERVICE_NAME};
use tokio::net::TcpListener;

pub use config::Config;
pub use error::LedgerError;

/// Serves the ledger gRPC API on `listener` until `shutdown` resolves.
/// Writes acknowledged before shutdown are durable; the committer finishes the
/// batch in hand before the process exits.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    describe_metrics();
    let pool = db::connect(&config).await?;
    if config.migrate {
        db::migrate(&pool).await?;
    }
    let committer =
        committer::Committer::spawn(pool.clone(), config.max_batch, config.commit_lanes);
    let (changes, listening) = watch::spawn(&pool).await?;
    let expiring = tokio::spawn(queue::expire_periodically(
        pool.clone(),
        config.expiry_interval,
    ));
    tracing::info!(addr = %listener.local_addr()?, "ledger serving");
    let service = service::LedgerApi::new(pool.clone(), committer.clone(), changes);
    let routes = tonic::service::Routes::new(LedgerServiceServer::new(service));
    rungate_common::grpc::serve(
        listener,
        routes,
        &[SERVICE_NAME],
        shutdown,
        config.drain_timeout,
    )
    .await?;
    listening.abort();
    expiring.abort();
    committer.close().await;
    pool.close().await;
    Ok(())
}

fn describe_metrics() {
    use metrics::{Unit, describe_histogram};
    rungate_common::metrics::handle();
    describe_histogram!(
        committer::COMMIT_DURATION,
        Unit::Seconds,
        "Group commits of ledger writes, retries included, by outcome."
    );
    describe_histogram!(
        committer::COMMIT_RECORDS,
        "Records per group commit, by outcome."
    );
}
