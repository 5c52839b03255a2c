//! `cargo xtask bench-ledger`: records/s the ledger sustains through its write
//! stream, and ack latency, at several batch sizes, against a throwaway
//! Postgres with its default durability (fsync on: acked means on disk).
//! Each paid call is three records: authorization, usage, settlement.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rungate_proto::ledger::v1::ledger_service_client::LedgerServiceClient;
use rungate_proto::ledger::v1::{
    Authorization, LedgerWrite, SettlementStatus, SettlementUpdate, Usage, WriteBatch,
    WriteOutcome, ledger_write::Record,
};
use rungate_proto::types::v1::TokenUsage;
use rungate_tests::postgres::Postgres;

#[derive(clap::Args)]
pub struct LedgerBenchArgs {
    /// Seconds per batch size.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent write streams (writers).
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Batches each stream keeps in flight.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// The ledger's commit lanes (its --commit-lanes).
    #[arg(long, default_value_t = 8)]
    lanes: usize,
}

fn call(id: &str) -> [LedgerWrite; 3] {
    let write = |key: String, record| LedgerWrite {
        idempotency_key: key,
        record: Some(record),
    };
    [
        write(
            format!("a-{id}"),
            Record::Authorization(Authorization {
                request_id: id.into(),
                network: "eip155:8453".into(),
                asset: "0x833589fcd6edb6e08f4c7c32d4f71b54bda02913".into(),
                payer: format!("0xpayer{}", id.len() % 7),
                pay_to: "0xpayto".into(),
                amount: Some(1u128.into()),
                valid_after: 0,
                valid_before: 4_000_000_000,
                nonce: format!("0x{id}"),
                signature: "0xsig".into(),
                scheme: "exact".into(),
                x402_version: 2,
            }),
        ),
        write(
            format!("u-{id}"),
            Record::Usage(Usage {
                request_id: id.into(),
                model: "smollm2-135m-instruct".into(),
                tokens: Some(TokenUsage {
                    prompt_tokens: 30,
                    completion_tokens: 7,
                }),
                quoted: Some(1u128.into()),
                charged: Some(1u128.into()),
                engine: "local".into(),
                finish_reason: "stop".into(),
                ..Default::default()
            }),
        ),
        write(
            format!("s-{id}"),
            Record::Settlement(SettlementUpdate {
                request_id: id.into(),
                status: SettlementStatus::Settled as i32,
                tx_hash: "0xtx".into(),
                block_number: 1,
                error: String::new(),
            }),
        ),
    ]
}

pub fn run(args: LedgerBenchArgs) -> anyhow::Result<()> {
    let postgres = Postgres::start(true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let rows = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let config = rungate_ledger::Config {
            commit_lanes: args.lanes,
            ..rungate_ledger::Config::new(&postgres.url)
        };
        tokio::spawn(rungate_ledger::serve(
            listener,
            config,
            std::future::pending(),
        ));
        rungate_tests::cluster::wait_serving(&url).await?;
        let mut rows = Vec::new();
        for batch in [1usize, 16, 256] {
            rows.push((batch, measure(&url, batch, &args).await?));
        }
        anyhow::Ok(rows)
    })?;
    println!(
        "\n## Ledger write stream, {} streams × {} batches in flight, {} lanes, fsync on\n",
        args.streams, args.in_flight, args.lanes
    );
    println!("| batch size | records/s | ack p50 | ack p99 |");
    println!("|---|---|---|---|");
    for (batch, (rate, p50, p99)) in rows {
        println!("| {batch} | {rate:.0} | {p50:.1} ms | {p99:.1} ms |");
    }
    Ok(())
}

/// Returns (records/s, p50 ms, p99 ms) of batch acks.
async fn measure(
    url: &str,
    batch: usize,
    args: &LedgerBenchArgs,
) -> anyhow::Result<(f64, f64, f64)> {
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let acked = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for stream in 0..args.streams {
        let (url, acked, next) = (url.to_owned(), acked.clone(), next.clone());
        let in_flight = args.in_flight;
        tasks.push(tokio::spawn(async move {
            let mut client = LedgerServiceClient::connect(url).await?;
            let (tx, rx) = tokio::sync::mpsc::channel::<WriteBatch>(in_flight);
            let mut acks = client
                .write(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            let mut sent_at = std::collections::VecDeque::new();
            let mut latencies = Vec::new();
            // Records in call order (authorization, usage, settlement), cut
            // into batches of exactly `batch` records; a call may span batches.
            let mut sequence: u64 = 0;
            let mut make = |_: &AtomicU64| {
                let writes = (0..batch)
                    .map(|_| {
                        let n = sequence;
                        sequence += 1;
                        let [auth, usage, settle] = call(&format!("b{batch}-{stream}-{}", n / 3));
                        match n % 3 {
                            0 => auth,
                            1 => usage,
                            _ => settle,
                        }
                    })
                    .collect();
                WriteBatch { writes }
            };
            for _ in 0..in_flight {
                sent_at.push_back(Instant::now());
                tx.send(make(&next)).await?;
            }
            while let Some(reply) = acks.message().await? {
                let sent = sent_at.pop_front().unwrap_or_else(Instant::now);
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                let applied = reply
                    .acks
                    .iter()
                    .filter(|a| a.outcome == WriteOutcome::Applied as i32)
                    .count();
                anyhow::ensure!(
                    applied == reply.acks.len(),
                    "a write was refused: {:?}",
                    reply
                        .acks
                        .iter()
                        .find(|a| a.outcome != WriteOutcome::Applied as i32)
                );
                acked.fetch_add(applied as u64, Ordering::Relaxed);
                if Instant::now() < deadline {
                    sent_at.push_back(Instant::now());
                    tx.send(make(&next)).await?;
                } else if sent_at.is_empty() {
                    break;
                }
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    Ok((
        acked.load(Ordering::Relaxed) as f64 / elapsed,
        pct(0.5),
        pct(0.99),
    ))
}
