//! `cargo xtask bench-paid`: what x402 payment adds to a call. Two edges
//! share one fast fake engine (the fake OpenAI upstream: no model in the
//! way) and one ledger; one serves free, the other asks billing (deferred
//! settlement, cached chain reads: the configuration meant for speed) to
//! authorize every call with a fresh EIP-3009 payment, pre-signed so the
//! client's signing is not measured. Latency alternates free and paid calls;
//! throughput runs each side with concurrent clients. The settlement worker
//! settles on anvil meanwhile, as it would in production.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy_signer_local::PrivateKeySigner;
use rungate_tests::fake_upstream::FakeUpstream;
use rungate_tests::paid::{PaidOptions, PaidStack};
use rungate_tests::postgres::Postgres;
use tokio::net::TcpListener;

#[derive(clap::Args)]
pub struct PaidBenchArgs {
    /// Sequential calls per side for latency.
    #[arg(long, default_value_t = 500)]
    calls: usize,
    /// Concurrent clients in the throughput runs.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds per throughput run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

const BODY: &str =
    r#"{"model":"fake-echo","messages":[{"role":"user","content":"benchmark me"}],"max_tokens":4}"#;

pub fn run(args: PaidBenchArgs) -> anyhow::Result<()> {
    let mut postgres = Postgres::start(true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(measure(&args, &postgres.url));
    runtime.shutdown_timeout(Duration::from_secs(5));
    postgres.stop();
    result
}

async fn measure(args: &PaidBenchArgs, database_url: &str) -> anyhow::Result<()> {
    let upstream = FakeUpstream::default();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let upstream_url = format!("http://{}", listener.local_addr()?);
    upstream.spawn(listener);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let inference_url = format!("http://{}", listener.local_addr()?);
    let inference = rungate_inference::Config {
        models_file: None,
        models_toml: Some(format!(
            r#"[[models]]
id = "fake-echo"
engine = {{ kind = "upstream", upstreams = [{{ base_url = "{upstream_url}/fast/v1" }}] }}"#
        )),
        drain_timeout: Duration::from_secs(1),
    };
    tokio::spawn(rungate_inference::serve(
        listener,
        inference,
        std::future::pending(),
    ));
    rungate_tests::cluster::wait_serving(&inference_url).await?;

    let options = PaidOptions {
        receipt_timeout: Duration::from_secs(30),
        settle_interval: Duration::from_millis(500),
        ..Default::default()
    };
    let paid = PaidStack::start(&inference_url, database_url, options).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let free_url = format!("http://{}", listener.local_addr()?);
    let free = rungate_edge::Config::new(&inference_url, &paid.ledger_url);
    tokio::spawn(rungate_edge::serve(listener, free, std::future::pending()));

    let payer = PrivateKeySigner::random();
    rungate_tests::chain::mint(&paid.chain_url, &payer.address().to_checksum(None), 1 << 60)
        .await?;
    let client = reqwest::Client::new();
    let paid_url = format!("{}/v1/chat/completions", paid.edge_url);
    let free_url = format!("{free_url}/v1/chat/completions");
    let unpaid = post(&client, &paid_url, None).await?;
    let required = rungate_tests::x402::payment_required(unpaid.headers())?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    // Enough for 3,000 paid calls/s; running out ends the run early (reported).
    let budget = args.calls + 40 + 3_000 * args.seconds as usize;
    eprintln!("pre-signing {budget} payments…");
    let payments: Vec<String> = (0..budget)
        .map(|_| rungate_tests::x402::pay(&payer, &required, now, 3_600))
        .collect::<Result<_, _>>()?;
    let payments = Arc::new(Payments {
        all: payments,
        next: AtomicUsize::new(0),
    });

    // Warm both paths (connections, the payer's cached balance).
    for _ in 0..20 {
        call(&client, &free_url, None).await?;
        call(&client, &paid_url, payments.take()).await?;
    }
    let (mut free_ms, mut paid_ms) = (Vec::new(), Vec::new());
    for _ in 0..args.calls {
        free_ms.push(call(&client, &free_url, None).await?);
        paid_ms.push(call(&client, &paid_url, payments.take()).await?);
    }
    let free_rate = throughput(args, &client, &free_url, None).await;
    let paid_rate = throughput(args, &client, &paid_url, Some(payments.clone())).await;
    if payments.next.load(Ordering::Relaxed) >= payments.all.len() {
        eprintln!("warning: the pre-signed payments ran out; the paid rate is a lower bound");
    }

    let (f50, f99) = percentiles(&mut free_ms);
    let (p50, p99) = percentiles(&mut paid_ms);
    println!(
        "\nPaid vs free calls through the edge (fake engine, deferred settlement, cached chain reads; \
         {} sequential calls each, then {} clients for {} s):\n",
        args.calls, args.concurrency, args.seconds
    );
    println!("| | p50 | p99 | calls/s |");
    println!("|---|---|---|---|");
    println!("| free | {f50:.2} ms | {f99:.2} ms | {free_rate:.0} |");
    println!("| paid (x402) | {p50:.2} ms | {p99:.2} ms | {paid_rate:.0} |");
    println!(
        "| added by payment | {:.2} ms | {:.2} ms | |",
        p50 - f50,
        p99 - f99
    );
    Ok(())
}

struct Payments {
    all: Vec<String>,
    next: AtomicUsize,
}

impl Payments {
    fn take(&self) -> Option<&str> {
        self.all
            .get(self.next.fetch_add(1, Ordering::Relaxed))
            .map(String::as_str)
    }
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    payment: Option<&str>,
) -> anyhow::Result<reqwest::Response> {
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .body(BODY);
    if let Some(payment) = payment {
        request = request.header("PAYMENT-SIGNATURE", payment);
    }
    Ok(request.send().await?)
}

/// One call, read to the end; its latency in ms.
async fn call(client: &reqwest::Client, url: &str, payment: Option<&str>) -> anyhow::Result<f64> {
    let started = Instant::now();
    let response = post(client, url, payment).await?;
    let status = response.status();
    let body = response.bytes().await?;
    if status != 200 {
        anyhow::bail!(
            "{url} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

async fn throughput(
    args: &PaidBenchArgs,
    client: &reqwest::Client,
    url: &str,
    payments: Option<Arc<Payments>>,
) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (client, url, done, payments) = (
                client.clone(),
                url.to_owned(),
                done.clone(),
                payments.clone(),
            );
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let payment = match &payments {
                        Some(p) => match p.take() {
                            Some(payment) => Some(payment.to_owned()),
                            None => return,
                        },
                        None => None,
                    };
                    if call(&client, &url, payment.as_deref()).await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    for worker in workers {
        let _ = worker.await;
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn percentiles(ms: &mut [f64]) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 * q) as usize).min(ms.len() - 1)];
    (at(0.5), at(0.99))
}
