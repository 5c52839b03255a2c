//! `cargo xtask bench-paid`: what x402 payment adds to a call, per scheme.
//! Two edges share one fast fake engine (the fake OpenAI upstream: no model
//! in the way) and one ledger; one serves free, the other asks billing
//! (deferred settlement, cached chain reads: the configuration meant for
//! speed) to authorize every call. `exact`: a fresh EIP-3009 payment per
//! call; `batch`: one deposit per client's channel, then a voucher per call.
//! Payments are pre-signed so the client's signing is not measured. Latency
//! alternates free and paid calls; throughput runs each side with
//! concurrent clients. The settlement worker settles `exact` calls on anvil
//! meanwhile, as it would in production; batch-settlement is then collected
//! with one claim and one sweep, and their gas gives the per-call cost.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy_signer_local::PrivateKeySigner;
use rungate_common::clock::now;
use rungate_tests::batch::{BatchPayer, batch_offer};
use rungate_tests::fake_upstream::FakeUpstream;
use rungate_tests::paid::{PaidOptions, PaidStack};
use rungate_tests::postgres::Postgres;
use serde_json::{Value, json};
use tokio::net::TcpListener;

#[derive(clap::Args)]
pub struct PaidBenchArgs {
    /// Sequential calls per side for latency.
    #[arg(long, default_value_t = 500)]
    calls: usize,
    /// Concurrent clients in the throughput runs.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds per throughput run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Which paid side to measure next to free: exact, batch or all; or
    /// `settlement`: whether exact settlement keeps up with serving at 1, 8
    /// and 32 clients (`--seconds` each; 60 in docs/BENCHMARKS.md).
    #[arg(long, default_value = "all")]
    scheme: String,
}

const BODY: &str =
    r#"{"model":"fake-echo","messages":[{"role":"user","content":"benchmark me"}],"max_tokens":4}"#;
/// Each batch channel's deposit: more than any run spends.
const DEPOSIT: u128 = 1 << 40;

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

/// One measured side: its latencies and rate.
struct Side {
    name: &'static str,
    p50: f64,
    p99: f64,
    rate: f64,
    failed: u64,
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
        // Billing's default (the tests store vouchers sooner).
        voucher_flush: Duration::from_millis(100),
        ..Default::default()
    };
    let paid = PaidStack::start(&inference_url, database_url, options).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let free_url = format!("http://{}", listener.local_addr()?);
    let free = rungate_edge::Config::new(&inference_url, &paid.ledger_url);
    tokio::spawn(rungate_edge::serve(listener, free, std::future::pending()));

    let client = reqwest::Client::new();
    let paid_url = format!("{}/v1/chat/completions", paid.edge_url);
    let free_url = format!("{free_url}/v1/chat/completions");
    let unpaid = post(&client, &paid_url, None).await?;
    let required = rungate_tests::x402::payment_required(unpaid.headers())?;
    if args.scheme == "settlement" {
        let bench = crate::bench_settle::Bench {
            seconds: args.seconds,
            paid: &paid,
            client: &client,
            paid_url: &paid_url,
            free_url: &free_url,
            required: &required,
        };
        return bench.run().await;
    }

    for _ in 0..20 {
        call(&client, &free_url, None).await?;
    }
    let mut sides = vec![side(args, "free", &client, &free_url, &Sources::Free).await];
    let mut gas = None;
    // batch-settlement before exact: exact leaves a settlement backlog the
    // worker keeps working through (on the same cores) after its run.
    if args.scheme == "batch" || args.scheme == "all" {
        let channels = open_channels(args, &paid, &client, &paid_url, &required).await?;
        let sources = Sources::Batch(channels);
        sides.push(side(args, "batch-settlement", &client, &paid_url, &sources).await);
    }

    if args.scheme == "exact" || args.scheme == "all" {
        let payer = PrivateKeySigner::random();
        rungate_tests::chain::mint(&paid.chain_url, &payer.address().to_checksum(None), 1 << 60)
            .await?;
        // Enough for 3,000 paid calls/s; running out ends the run early (reported).
        let budget = args.calls + 40 + 3_000 * args.seconds as usize;
        eprintln!("pre-signing {budget} exact payments…");
        let now = now();
        let all = (0..budget)
            .map(|_| rungate_tests::x402::pay(&payer, &required, now, 3_600))
            .collect::<Result<VecDeque<_>, _>>()?;
        let sources = Sources::Exact(Mutex::new(all));
        sides.push(side(args, "exact (deferred)", &client, &paid_url, &sources).await);
    }
    if args.scheme == "batch" || args.scheme == "all" {
        gas = Some(collect_gas(&paid).await?);
    }
    println!(
        "\nPaid vs free calls through the edge (fake engine, cached chain reads; {} sequential \
         calls each, then {} clients for {} s):\n",
        args.calls, args.concurrency, args.seconds
    );
    println!("| side | p50 | p99 | added p50 | added p99 | calls/s | vs free | failed |");
    println!("|---|---|---|---|---|---|---|---|");
    let free = (sides[0].p50, sides[0].p99, sides[0].rate);
    for side in &sides {
        println!(
            "| {} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.0} | {:.0}% | {} |",
            side.name,
            side.p50,
            side.p99,
            side.p50 - free.0,
            side.p99 - free.1,
            side.rate,
            100.0 * side.rate / free.2,
            side.failed,
        );
    }
    if let Some(gas) = gas {
        gas.print();
    }
    Ok(())
}

/// Where a side's payments come from.
pub(crate) enum Sources {
    Free,
    /// Pre-signed exact payments, each used once.
    Exact(Mutex<VecDeque<String>>),
    /// One channel per client: its pre-signed vouchers, in order.
    Batch(Vec<Mutex<VecDeque<String>>>),
}

impl Sources {
    /// The next payment for client `n`; Some(None) for free; None if out.
    fn next(&self, n: usize) -> Option<Option<String>> {
        match self {
            Sources::Free => Some(None),
            Sources::Exact(all) => all.lock().ok()?.pop_front().map(Some),
            Sources::Batch(channels) => channels
                .get(n % channels.len())?
                .lock()
                .ok()?
                .pop_front()
                .map(Some),
        }
    }
}

async fn side(
    args: &PaidBenchArgs,
    name: &'static str,
    client: &reqwest::Client,
    url: &str,
    sources: &Sources,
) -> Side {
    let mut ms = Vec::with_capacity(args.calls);
    let mut failed = 0;
    for _ in 0..args.calls {
        match sources.next(0) {
            Some(payment) => match call(client, url, payment.as_deref()).await {
                Ok(latency) => ms.push(latency),
                Err(error) => {
                    failed += 1;
                    eprintln!("{name}: {error}");
                }
            },
            None => break,
        }
    }
    let (rate, run_failed) = throughput(args.concurrency, args.seconds, client, url, sources).await;
    let (p50, p99) = percentiles(&mut ms);
    Side {
        name,
        p50,
        p99,
        rate,
        failed: failed + run_failed,
    }
}

/// A channel per client (plus the latency run's, client 0's), each opened
/// with a deposit paying its first call; their vouchers pre-signed.
async fn open_channels(
    args: &PaidBenchArgs,
    paid: &PaidStack,
    client: &reqwest::Client,
    url: &str,
    required: &Value,
) -> anyhow::Result<Vec<Mutex<VecDeque<String>>>> {
    let offer = batch_offer(required)?;
    let price: u128 = offer["amount"].as_str().unwrap_or("1").parse()?;
    let per_client = 3_000 * args.seconds as usize / args.concurrency.max(1) + args.calls + 40;
    eprintln!(
        "opening {} channels and pre-signing {} vouchers each…",
        args.concurrency, per_client
    );
    let mut channels = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency.max(1) {
        let signer = PrivateKeySigner::random();
        rungate_tests::chain::mint(
            &paid.chain_url,
            &signer.address().to_checksum(None),
            DEPOSIT,
        )
        .await?;
        let payer = BatchPayer::new(signer, &offer)?;
        let deposit = payer.deposit(required, DEPOSIT, price, now(), 3_600)?;
        call(client, url, Some(&deposit)).await?;
        let vouchers = (2..per_client as u128 + 2)
            .map(|n| payer.pay(required, n * price))
            .collect::<Result<VecDeque<_>, _>>()?;
        channels.push(Mutex::new(vouchers));
    }
    Ok(channels)
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
pub(crate) async fn call(
    client: &reqwest::Client,
    url: &str,
    payment: Option<&str>,
) -> anyhow::Result<f64> {
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

/// Calls/s with `concurrency` clients for `seconds`, and how many calls failed.
pub(crate) async fn throughput(
    concurrency: usize,
    seconds: u64,
    client: &reqwest::Client,
    url: &str,
    sources: &Sources,
) -> (f64, u64) {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let next = AtomicUsize::new(0);
    let workers = (0..concurrency).map(|_| {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let (done, failed) = (done.clone(), failed.clone());
        async move {
            while Instant::now() < deadline {
                let Some(payment) = sources.next(n) else {
                    return;
                };
                match call(client, url, payment.as_deref()).await {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(error) => {
                        if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("first failure: {error}");
                        }
                        0
                    }
                };
            }
        }
    });
    futures::future::join_all(workers).await;
    (
        done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(),
        failed.load(Ordering::Relaxed),
    )
}

fn percentiles(ms: &mut [f64]) -> (f64, f64) {
    if ms.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 * q) as usize).min(ms.len() - 1)];
    (at(0.5), at(0.99))
}

/// Gas of the transactions each scheme needs, from real receipts.
struct Gas {
    exact_per_call: Option<u64>,
    deposit: u64,
    claim: u64,
    claimed_channels: u32,
    sweep: u64,
}

impl Gas {
    fn print(&self) {
        let per_channel = self.claim as f64 / f64::from(self.claimed_channels.max(1));
        println!(
            "\nOn-chain gas (anvil receipts): deposit {} per channel; claim {} for {} channels \
             ({per_channel:.0} each); sweep {} per collection{}.\n",
            self.deposit,
            self.claim,
            self.claimed_channels,
            self.sweep,
            self.exact_per_call
                .map(|g| format!("; exact: {g} per call"))
                .unwrap_or_default()
        );
        println!("| calls per channel | batch-settlement gas per call | exact gas per call |");
        println!("|---|---|---|");
        for calls in [1_000u64, 100_000, 1_000_000] {
            // One deposit and one claim row per channel; the sweep is shared
            // by every channel of a collection (counted once per channel here,
            // the worst case of one channel per collection).
            let batch = (self.deposit as f64 + per_channel + self.sweep as f64) / calls as f64;
            let exact = self
                .exact_per_call
                .map_or_else(|| "n/a".to_owned(), |g| g.to_string());
            println!("| {calls} | {batch:.3} | {exact} |");
        }
    }
}

async fn gas_used(paid: &PaidStack, tx: &str) -> anyhow::Result<u64> {
    let receipt = rungate_tests::chain::rpc(
        &reqwest::Client::new(),
        &paid.chain_url,
        "eth_getTransactionReceipt",
        json!([tx]),
    )
    .await?;
    let hex = receipt["gasUsed"].as_str().unwrap_or("0x0");
    Ok(u64::from_str_radix(hex.trim_start_matches("0x"), 16)?)
}

async fn collect_gas(paid: &PaidStack) -> anyhow::Result<Gas> {
    use rungate_proto::billing::v1::CollectRequest;
    use rungate_proto::billing::v1::billing_service_client::BillingServiceClient;
    // Deposits: the escrow's Deposited logs name their transactions.
    let logs = rungate_tests::chain::rpc(
        &reqwest::Client::new(),
        &paid.chain_url,
        "eth_getLogs",
        json!([{"address": rungate_tests::chain::BATCH_SETTLEMENT, "fromBlock": "0x0", "toBlock": "latest"}]),
    )
    .await?;
    let deposit_tx = logs
        .as_array()
        .and_then(|l| l.first())
        .and_then(|l| l["transactionHash"].as_str())
        .unwrap_or_default()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut billing = BillingServiceClient::connect(paid.billing_url.clone()).await?;
    let collected = billing.collect(CollectRequest {}).await?.into_inner();
    let claim = match collected.claim_transactions.first() {
        Some(tx) => gas_used(paid, tx).await?,
        None => 0,
    };
    let sweep = match collected.sweep_transactions.first() {
        Some(tx) => gas_used(paid, tx).await?,
        None => 0,
    };
    let exact_per_call = exact_gas(paid).await?;
    Ok(Gas {
        exact_per_call,
        deposit: gas_used(paid, &deposit_tx).await?,
        claim,
        claimed_channels: collected.channels_claimed,
        sweep,
    })
}

/// The gas an `exact` settlement costs: a Multicall3 batch's gas over the
/// authorizations it settled (its token `AuthorizationUsed` logs).
async fn exact_gas(paid: &PaidStack) -> anyhow::Result<Option<u64>> {
    let http = reqwest::Client::new();
    let used = "0x98de503528ee59b575ef0c0a2576a82497bfc029a5685b209e9ec333479b10a5"; // AuthorizationUsed(address,bytes32)
    let logs = rungate_tests::chain::rpc(
        &http,
        &paid.chain_url,
        "eth_getLogs",
        json!([{"address": rungate_tests::chain::TOKEN, "fromBlock": "0x0", "toBlock": "latest", "topics": [used]}]),
    )
    .await?;
    // Transactions sent to the token itself or through Multicall3 (deposits go to the escrow).
    let mut per_tx: std::collections::HashMap<String, u64> = Default::default();
    for log in logs.as_array().into_iter().flatten() {
        if let Some(tx) = log["transactionHash"].as_str() {
            *per_tx.entry(tx.to_owned()).or_default() += 1;
        }
    }
    let (mut gas, mut settled) = (0u64, 0u64);
    for (tx, count) in per_tx {
        let sent = rungate_tests::chain::rpc(
            &http,
            &paid.chain_url,
            "eth_getTransactionByHash",
            json!([tx]),
        )
        .await?;
        let to = sent["to"].as_str().unwrap_or_default();
        if to.eq_ignore_ascii_case(rungate_tests::chain::BATCH_SETTLEMENT) {
            continue;
        }
        gas += gas_used(paid, &tx).await?;
        settled += count;
    }
    Ok((settled > 0).then(|| gas / settled))
}
