//! The shared test cluster: Postgres, the fake upstream, and the four
//! services, each on its own pre-bound loopback listener (no port races).

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::fake_upstream::FakeUpstream;
use crate::postgres::Postgres;

pub struct TestCluster {
    pub edge_url: String,
    pub inference_url: String,
    pub billing_url: String,
    pub ledger_url: String,
    pub database_url: String,
    pub upstream: FakeUpstream,
    /// Base URL of the fake upstream; behaviours live under `/<mode>/v1`.
    pub upstream_url: String,
    /// The inference service's registry, for engine metrics.
    pub registry: rungate_inference::registry::Registry,
}

static CLUSTER: OnceLock<Result<TestCluster, String>> = OnceLock::new();
/// Owned here (not by the cluster's thread) so the exit hook can stop it.
static POSTGRES: Mutex<Option<Postgres>> = Mutex::new(None);

/// The cluster, started on first use and shared by every test of the binary.
pub fn cluster() -> &'static TestCluster {
    // A failed start is remembered: every test fails fast instead of retrying.
    match CLUSTER.get_or_init(|| start().map_err(|error| format!("{error:#}"))) {
        Ok(cluster) => cluster,
        Err(error) => panic!("cannot start the test cluster: {error}"),
    }
}

/// Registry for the inference service: one model per fake-upstream
/// behaviour, and the tiny local GGUF.
fn models_toml(upstream: &str, tiny: &std::path::Path) -> String {
    format!(
        r#"
[[models]]
id = "tiny-local"
default_max_tokens = 16
engine = {{ kind = "local", path = "{tiny}", threads = 1, max_concurrent = 2, max_queue = 64 }}

[[models]]
id = "fake-echo"
engine = {{ kind = "upstream", upstreams = [{{ base_url = "{upstream}/ok/v1", model = "echo-1" }}] }}

[[models]]
id = "fake-failover"
engine = {{ kind = "upstream", upstreams = [
  {{ base_url = "{upstream}/fail500/v1" }},
  {{ base_url = "{upstream}/fail429/v1" }},
  {{ base_url = "{upstream}/ok/v1" }},
] }}

[[models]]
id = "fake-trickle"
engine = {{ kind = "upstream", upstreams = [{{ base_url = "{upstream}/trickle/v1" }}] }}

[[models]]
id = "fake-stall"
engine = {{ kind = "upstream", upstreams = [{{ base_url = "{upstream}/stall/v1", idle_timeout_ms = 300 }}] }}

[[models]]
id = "fake-drop"
engine = {{ kind = "upstream", upstreams = [{{ base_url = "{upstream}/drop/v1" }}] }}

[[models]]
id = "fake-slow"
engine = {{ kind = "upstream", upstreams = [{{ base_url = "{upstream}/slow/v1", first_token_timeout_ms = 500 }}] }}

[[models]]
id = "fake-refused"
engine = {{ kind = "upstream", upstreams = [{{ base_url = "http://127.0.0.1:9/v1", connect_timeout_ms = 300 }}] }}
"#,
        tiny = tiny.display()
    )
}

fn start() -> anyhow::Result<TestCluster> {
    let (ready, booted) = std::sync::mpsc::channel();
    // The cluster's own thread and runtime outlive every test's runtime. The
    // thread never ends, so Postgres (spawned from it with PDEATHSIG) dies
    // only with the process.
    std::thread::Builder::new()
        .name("test-cluster".into())
        .spawn(move || {
            let postgres = match Postgres::start(false) {
                Ok(postgres) => postgres,
                Err(error) => {
                    let _ = ready.send(Err(error));
                    return;
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready.send(Err(anyhow::Error::from(error)));
                    return;
                }
            };
            runtime.block_on(async move {
                let _ = ready.send(boot(postgres).await);
                std::future::pending::<()>().await;
            });
        })?;
    booted
        .recv()
        .context("the cluster thread died while booting")?
}

#[allow(unsafe_code)]
fn stop_postgres_at_exit() {
    extern "C" fn stop() {
        if let Ok(mut postgres) = POSTGRES.lock()
            && let Some(mut postgres) = postgres.take()
        {
            postgres.stop();
        }
    }
    // SAFETY: registering a plain `extern "C" fn` with no captured state.
    unsafe {
        libc::atexit(stop);
    }
}

/// A listener on a free loopback port, and its address.
pub async fn bind() -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

async fn boot(postgres: Postgres) -> anyhow::Result<TestCluster> {
    // Spans get trace contexts (so propagation is real); logs stay at warn
    // unless RUST_LOG asks for more. Kept for the life of the process.
    std::mem::forget(rungate_common::telemetry::init_with_log_filter(
        "rungate-tests",
        rungate_common::telemetry::LogFormat::Pretty,
        None,
        "warn",
    )?);
    let database_url = postgres.url.clone();
    *POSTGRES.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = Some(postgres);
    stop_postgres_at_exit();

    let upstream = FakeUpstream::default();
    let (listener, addr) = bind().await?;
    upstream.spawn(listener);
    let upstream_url = format!("http://{addr}");

    let never = std::future::pending::<()>;

    let (listener, ledger_addr) = bind().await?;
    let ledger = rungate_ledger::Config::new(&database_url);
    tokio::spawn(async move {
        if let Err(error) = rungate_ledger::serve(listener, ledger, never()).await {
            eprintln!("ledger stopped: {error:#}");
        }
    });

    let (listener, billing_addr) = bind().await?;
    tokio::spawn(async move {
        if let Err(error) =
            rungate_billing::serve(listener, rungate_billing::Config::default(), never()).await
        {
            eprintln!("billing stopped: {error:#}");
        }
    });

    let (listener, inference_addr) = bind().await?;
    let tiny = crate::fixtures::tiny_gguf()?;
    let inference = rungate_inference::Config {
        models_file: None,
        models_toml: Some(models_toml(&upstream_url, &tiny)),
        drain_timeout: Duration::from_secs(5),
    };
    let registry = tokio::task::spawn_blocking(move || {
        rungate_inference::registry::Registry::from_config(&inference)
    })
    .await??;
    let serving = registry.clone();
    tokio::spawn(async move {
        let served =
            rungate_inference::serve_registry(listener, serving, never(), Duration::from_secs(5));
        if let Err(error) = served.await {
            eprintln!("inference stopped: {error:#}");
        }
    });

    let (listener, edge_addr) = bind().await?;
    let edge = rungate_edge::Config::new(
        format!("http://{inference_addr}"),
        format!("http://{ledger_addr}"),
    );
    tokio::spawn(async move {
        if let Err(error) = rungate_edge::serve(listener, edge, never()).await {
            eprintln!("edge stopped: {error:#}");
        }
    });

    let cluster = TestCluster {
        edge_url: format!("http://{edge_addr}"),
        inference_url: format!("http://{inference_addr}"),
        billing_url: format!("http://{billing_addr}"),
        ledger_url: format!("http://{ledger_addr}"),
        database_url,
        upstream,
        upstream_url,
        registry,
    };
    for url in [
        &cluster.ledger_url,
        &cluster.billing_url,
        &cluster.inference_url,
    ] {
        wait_serving(url).await?;
    }
    Ok(cluster)
}

/// Polls `grpc.health.v1` until the server reports SERVING (or 30 s pass).
pub async fn wait_serving(url: &str) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(url.to_owned())?
            .connect()
            .await
        {
            let status = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            if let Ok(response) = status
                && response.into_inner().status == ServingStatus::Serving as i32
            {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("{url} did not report SERVING within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
