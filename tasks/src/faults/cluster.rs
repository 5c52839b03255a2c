//! The cluster the fault suite and the soak run against: the four services
//! as separate processes (each can be killed and started again), a real
//! Postgres that can be stopped the way a crash stops it, anvil behind a
//! proxy that can cut billing off from the chain, and a fast fake engine so
//! the load is payments, not inference.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rungate_tests::chain;
use rungate_tests::chain_proxy::ChainProxy;
use rungate_tests::fake_upstream::FakeUpstream;
use rungate_tests::postgres::Postgres;

use super::VOUCHER_FLUSH;
use crate::dev::{Service, bin_dir, free_port, free_ports, root, spawn};

/// One service process, and how to start it again.
struct Proc {
    name: &'static str,
    env: Vec<(&'static str, String)>,
    health: String,
    service: Option<Service>,
}

pub(crate) struct Cluster {
    bin: PathBuf,
    procs: Vec<Proc>,
    pub(crate) postgres: Postgres,
    pub(crate) proxy: ChainProxy,
    pub(crate) chain: chain::DevChain,
    pub(crate) edge_url: String,
    pub(crate) billing_url: String,
    _upstream: FakeUpstream,
}

impl Cluster {
    fn proc(&mut self, name: &str) -> anyhow::Result<&mut Proc> {
        self.procs
            .iter_mut()
            .find(|p| p.name == name)
            .with_context(|| format!("no service {name}"))
    }

    pub(crate) fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let proc = self.proc(name)?;
        if let Some(mut service) = proc.service.take() {
            service.child.kill()?;
            service.child.wait()?;
        }
        Ok(())
    }

    pub(crate) async fn start(&mut self, name: &str) -> anyhow::Result<()> {
        let bin = self.bin.clone();
        let proc = self.proc(name)?;
        proc.service = Some(spawn(&bin, proc.name, &proc.env)?);
        let health = proc.health.clone();
        wait_healthy(&health).await
    }

    /// Process ids of the running services, by name.
    pub(crate) fn pids(&self) -> Vec<(&'static str, u32)> {
        self.procs
            .iter()
            .filter_map(|p| Some((p.name, p.service.as_ref()?.child.id())))
            .collect()
    }

    pub(crate) fn stop_all(&mut self) {
        for proc in self.procs.iter_mut().rev() {
            if let Some(mut service) = proc.service.take() {
                let _ = service.child.kill();
                let _ = service.child.wait();
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

async fn wait_healthy(health: &str) -> anyhow::Result<()> {
    if let Some(grpc) = health.strip_prefix("grpc:") {
        return rungate_tests::cluster::wait_serving(grpc).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(health)
        .await
        .map_or(true, |r| !r.status().is_success())
    {
        if Instant::now() > deadline {
            bail!("{health} did not come up");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Builds the services and runs `body` on a multi-threaded runtime.
pub(crate) fn with_runtime<F: std::future::Future<Output = anyhow::Result<()>>>(
    body: impl FnOnce(PathBuf) -> F,
) -> anyhow::Result<()> {
    let root = root();
    crate::dev::build_services(&root)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(body(root));
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}
/// Postgres, anvil behind a proxy, the fake engine, and the four services.
pub(crate) async fn boot(root: &Path) -> anyhow::Result<Cluster> {
    let bin = bin_dir();
    let postgres = Postgres::start(true)?;
    let chain_port = free_port()?;
    let dev_chain = chain::start(root, chain_port).await?;
    let proxy = ChainProxy::start(([127, 0, 0, 1], chain_port).into()).await?;
    let upstream = FakeUpstream::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream_url = format!("http://{}", listener.local_addr()?);
    upstream.spawn(listener);

    let [ledger, billing, inference, edge] = free_ports(4, &[chain_port])?[..] else {
        anyhow::bail!("no four free ports");
    };
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let models = format!(
        r#"[[models]]
id = "fake-echo"
engine = {{ kind = "upstream", upstreams = [{{ base_url = "{upstream_url}/fast/v1" }}] }}"#
    );
    let listen = |var: &'static str, port: u16| (var, format!("127.0.0.1:{port}"));
    let quiet = || ("RUST_LOG", "error".to_owned());
    let procs = vec![
        Proc {
            name: "rungate-ledger",
            env: vec![
                listen("RUNGATE_LEDGER_LISTEN", ledger),
                ("DATABASE_URL", postgres.url.clone()),
                quiet(),
            ],
            health: format!("grpc:{}", url(ledger)),
            service: None,
        },
        Proc {
            name: "rungate-billing",
            env: vec![
                listen("RUNGATE_BILLING_LISTEN", billing),
                ("RUNGATE_PRICES_FILE", "config/prices.toml".into()),
                ("RUNGATE_LEDGER_URL", url(ledger)),
                ("RUNGATE_NETWORKS", chain::networks_toml(&proxy.url)),
                ("RUNGATE_SETTLEMENT_KEY", chain::SETTLER_KEY.into()),
                (
                    "RUNGATE_RECEIVER_AUTHORIZER_KEY",
                    chain::RECEIVER_AUTHORIZER_KEY.into(),
                ),
                ("RUNGATE_RECEIPT_TIMEOUT", "3s".into()),
                ("RUNGATE_CLAIM_INTERVAL", "60m".into()),
                (
                    "RUNGATE_VOUCHER_FLUSH",
                    format!("{}ms", VOUCHER_FLUSH.as_millis()),
                ),
                quiet(),
            ],
            health: format!("grpc:{}", url(billing)),
            service: None,
        },
        Proc {
            name: "rungate-inference",
            env: vec![
                listen("RUNGATE_INFERENCE_LISTEN", inference),
                ("RUNGATE_MODELS", models),
                quiet(),
            ],
            health: format!("grpc:{}", url(inference)),
            service: None,
        },
        Proc {
            name: "rungate-edge",
            env: vec![
                listen("RUNGATE_EDGE_LISTEN", edge),
                ("RUNGATE_INFERENCE_URL", url(inference)),
                ("RUNGATE_LEDGER_URL", url(ledger)),
                ("RUNGATE_BILLING_URL", url(billing)),
                quiet(),
            ],
            health: format!("{}/healthz", url(edge)),
            service: None,
        },
    ];
    let mut cluster = Cluster {
        bin,
        procs,
        postgres,
        proxy,
        chain: dev_chain,
        edge_url: url(edge),
        billing_url: url(billing),
        _upstream: upstream,
    };
    for name in [
        "rungate-ledger",
        "rungate-billing",
        "rungate-inference",
        "rungate-edge",
    ] {
        cluster.start(name).await?;
    }
    Ok(cluster)
}
