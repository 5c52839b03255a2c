//! `cargo xtask bench-paid --scheme settlement`: does `exact` settlement
//! keep up with serving? Deferred exact payments from 1, 8 and 32 clients
//! for `--seconds` each, the settlement worker sending to anvil on the same
//! cores: served/s next to settled/s during the load, what was left to
//! settle when the load stopped and how long the worker took to finish it,
//! how many served calls expired unsettled (the target is none), and the
//! calls refused or failed (backpressure answers 503). Then free mode at 32
//! clients, which must answer every call 2xx.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use alloy_signer_local::PrivateKeySigner;
use rungate_common::clock::now;
use rungate_tests::paid::PaidStack;
use serde_json::Value;

use crate::bench_paid::{Sources, throughput};

pub(crate) struct Bench<'a> {
    pub seconds: u64,
    pub paid: &'a PaidStack,
    pub client: &'a reqwest::Client,
    pub paid_url: &'a str,
    pub free_url: &'a str,
    pub required: &'a Value,
}

/// Settled and expired-while-served counts in the ledger.
async fn counts(ledger: &sqlx::PgPool) -> anyhow::Result<(i64, i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT count(*) FILTER (WHERE s.status = 'settled'),
                count(*) FILTER (WHERE s.status = 'expired' AND u.request_id IS NOT NULL),
                count(*) FILTER (WHERE s.status = 'settling'
                    OR (s.status = 'authorized' AND u.request_id IS NOT NULL))
         FROM settlements s LEFT JOIN usage_records u ON u.request_id = s.request_id",
    )
    .fetch_one(ledger)
    .await?)
}

/// One load level's outcome.
struct Level {
    clients: usize,
    served_per_s: f64,
    settled_per_s: f64,
    left: i64,
    drained_in: Duration,
    expired: i64,
    failed: u64,
}

impl Bench<'_> {
    pub async fn run(&self) -> anyhow::Result<()> {
        let ledger = sqlx::PgPool::connect(&self.paid.database_url).await?;
        let mut levels = Vec::new();
        for clients in [1, 8, 32] {
            levels.push(self.level(&ledger, clients).await?);
        }
        let (free_rate, free_failed) =
            throughput(32, self.seconds, self.client, self.free_url, &Sources::Free).await;

        println!(
            "\nexact (deferred) settlement next to serving, {} s per level (fake engine, anvil on the same cores):\n",
            self.seconds
        );
        println!(
            "| clients | served/s | settled/s during the load | left when it stopped | settled all after | served calls expired | non-2xx (503 backpressure incl.) |"
        );
        println!("|---|---|---|---|---|---|---|");
        for l in &levels {
            println!(
                "| {} | {:.0} | {:.0} | {} | {:.1} s | {} | {} |",
                l.clients,
                l.served_per_s,
                l.settled_per_s,
                l.left,
                l.drained_in.as_secs_f64(),
                l.expired,
                l.failed
            );
        }
        println!("\nfree mode, 32 clients: {free_rate:.0} calls/s, {free_failed} non-2xx");
        Ok(())
    }

    async fn level(&self, ledger: &sqlx::PgPool, clients: usize) -> anyhow::Result<Level> {
        let payer = PrivateKeySigner::random();
        rungate_tests::chain::mint(
            &self.paid.chain_url,
            &payer.address().to_checksum(None),
            1 << 60,
        )
        .await?;
        // More than the edge can serve; signed as a client would, valid for
        // the offer's window from now (a run uses up a fifth of it at most).
        let budget = 1_500 * self.seconds as usize;
        let window = self.required["accepts"][0]["maxTimeoutSeconds"]
            .as_u64()
            .unwrap_or(300);
        eprintln!("{clients} clients: pre-signing {budget} exact payments…");
        let signed_at = now();
        let all = (0..budget)
            .map(|_| rungate_tests::x402::pay(&payer, self.required, signed_at, window))
            .collect::<Result<VecDeque<_>, _>>()?;
        let sources = Sources::Exact(Mutex::new(all));

        let (settled_before, expired_before, _) = counts(ledger).await?;
        let started = Instant::now();
        let (served_per_s, failed) =
            throughput(clients, self.seconds, self.client, self.paid_url, &sources).await;
        let load = started.elapsed();
        let (settled_after, _, left) = counts(ledger).await?;

        // The worker finishes what is left (or gives up after five minutes).
        let stopped = Instant::now();
        let deadline = stopped + Duration::from_secs(300);
        let mut remaining = left;
        while remaining > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            remaining = counts(ledger).await?.2;
        }
        let drained_in = stopped.elapsed();
        let (_, expired_after, _) = counts(ledger).await?;
        Ok(Level {
            clients,
            served_per_s,
            settled_per_s: (settled_after - settled_before) as f64 / load.as_secs_f64(),
            left,
            drained_in,
            expired: expired_after - expired_before,
            failed,
        })
    }
}
