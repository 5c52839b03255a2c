//! A paid stack for tests and benchmarks: its own dev chain (anvil), ledger
//! (on a fresh database, so no other billing's worker claims its
//! settlements), billing and paid edge, over a given inference service.
//! Billing reads the chain through a switchable proxy, so a test can take
//! its RPC down.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::chain::{self, DevChain};
use crate::chain_proxy::ChainProxy;
use crate::cluster::bind;

pub struct PaidStack {
    pub edge_url: String,
    pub billing_url: String,
    pub ledger_url: String,
    /// The stack's own database (the ledger's).
    pub database_url: String,
    /// The chain itself (tests read it here, whatever the proxy's state).
    pub chain_url: String,
    /// What billing talks to.
    pub proxy: ChainProxy,
    billing: Billing,
    pub chain: DevChain,
}

/// How the stack's billing settles.
pub struct PaidOptions {
    pub settlement: rungate_billing::config::SettlementMode,
    pub chain_reads: rungate_billing::config::ChainReads,
    pub receipt_timeout: Duration,
    pub settle_interval: Duration,
    /// How often batch-settlement channels are claimed.
    pub claim_interval: Duration,
    pub voucher_flush: Duration,
    /// How long payments are valid (the offers' maxTimeoutSeconds).
    pub max_timeout_seconds: u64,
    /// Billing's price table (TOML); None: the list price.
    pub prices_toml: Option<String>,
}

impl Default for PaidOptions {
    fn default() -> Self {
        Self {
            settlement: rungate_billing::config::SettlementMode::Deferred,
            chain_reads: rungate_billing::config::ChainReads::Cached,
            receipt_timeout: Duration::from_secs(2),
            settle_interval: Duration::from_millis(100),
            claim_interval: Duration::from_secs(3600),
            voucher_flush: Duration::from_millis(20),
            max_timeout_seconds: 300,
            prices_toml: None,
        }
    }
}

/// A new, empty database on the server of `url`; its URL.
async fn fresh_database(url: &str) -> anyhow::Result<String> {
    use sqlx::Connection;
    let name = format!("paid_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(url).await?;
    // The name is ours (hex), not input: safe to put in the statement.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    let (server, _) = url
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("database URL without a database: {url}"))?;
    Ok(format!("{server}/{name}"))
}

/// The stack's billing, which a test may restart on the same address.
struct Billing {
    addr: SocketAddr,
    config: rungate_billing::Config,
    stop: tokio_util::sync::CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Billing {
    fn spawn(listener: TcpListener, addr: SocketAddr, config: rungate_billing::Config) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let serving = config.clone();
        let done = tokio::spawn(async move {
            if let Err(error) = rungate_billing::serve(listener, serving, shutdown).await {
                eprintln!("paid billing stopped: {error:#}");
            }
        });
        Self {
            addr,
            config,
            stop,
            done,
        }
    }
}

impl PaidStack {
    /// Stops billing (gracefully: what it holds only in memory is gone, as
    /// after a crash, except the last coalesced writes) and starts a new
    /// one on the same address, as a restart would.
    pub async fn restart_billing(&mut self) -> anyhow::Result<()> {
        self.billing.stop.cancel();
        (&mut self.billing.done).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.billing.addr).await {
                Ok(listener) => break listener,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => return Err(error.into()),
            }
        };
        self.billing = Billing::spawn(listener, self.billing.addr, self.billing.config.clone());
        crate::cluster::wait_serving(&self.billing_url).await
    }

    /// Starts anvil, billing and a paid edge on the current runtime; they
    /// stop with it (anvil with this value).
    pub async fn start(
        inference_url: &str,
        database_url: &str,
        options: PaidOptions,
    ) -> anyhow::Result<Self> {
        let database_url = fresh_database(database_url).await?;
        let (listener, ledger_addr) = bind().await?;
        let ledger = rungate_ledger::Config::new(&database_url);
        tokio::spawn(async move {
            if let Err(error) =
                rungate_ledger::serve(listener, ledger, std::future::pending()).await
            {
                eprintln!("paid ledger stopped: {error:#}");
            }
        });
        let ledger_url = format!("http://{ledger_addr}");
        crate::cluster::wait_serving(&ledger_url).await?;

        let port = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
        let chain = chain::start(&chain::repo_root(), port).await?;
        let proxy = ChainProxy::start(SocketAddr::from(([127, 0, 0, 1], port))).await?;

        let (listener, billing_addr) = bind().await?;
        let billing = rungate_billing::Config {
            networks_toml: Some(chain::networks_toml_with(
                &proxy.url,
                options.max_timeout_seconds,
            )),
            prices_toml: options.prices_toml.clone(),
            ledger_url: ledger_url.clone(),
            settlement_key: Some(rungate_billing::config::Redacted(chain::SETTLER_KEY.into())),
            settlement: options.settlement,
            chain_reads: options.chain_reads,
            receipt_timeout: options.receipt_timeout,
            settle_interval: options.settle_interval,
            receiver_authorizer_key: Some(rungate_billing::config::Redacted(
                chain::RECEIVER_AUTHORIZER_KEY.into(),
            )),
            claim_interval: options.claim_interval,
            voucher_flush: options.voucher_flush,
            drain_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let billing = Billing::spawn(listener, billing_addr, billing);
        let billing_url = format!("http://{billing_addr}");
        crate::cluster::wait_serving(&billing_url).await?;

        let (listener, edge_addr) = bind().await?;
        let edge = rungate_edge::Config::new(inference_url, &ledger_url).with_billing(&billing_url);
        tokio::spawn(async move {
            if let Err(error) = rungate_edge::serve(listener, edge, std::future::pending()).await {
                eprintln!("paid edge stopped: {error:#}");
            }
        });
        Ok(Self {
            edge_url: format!("http://{edge_addr}"),
            billing_url,
            billing,
            ledger_url,
            database_url,
            chain_url: chain.rpc_url.clone(),
            proxy,
            chain,
        })
    }
}
