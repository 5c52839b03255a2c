//! `cargo xtask soak` (not in CI): the fault suite's paid load, without
//! faults, for ten minutes. Every call must be answered 200, every payment
//! invariant must hold after, and each service's memory (RSS) and open file
//! descriptors must stay flat: sampled through the run, the last sample is
//! compared with the one taken once the run has warmed up.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::faults::cluster::{Cluster, boot, with_runtime};
use crate::faults::load::Load;

#[derive(clap::Args)]
pub struct SoakArgs {
    /// How long the load runs.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Paying clients (half exact, half batch-settlement).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds between samples of RSS and file descriptors.
    #[arg(long, default_value_t = 30)]
    every: u64,
}

/// Growth allowed between the warm sample and the last: allocator and
/// pool noise, not a leak (a leak at this load grows without bound).
const RSS_SLACK_KB: u64 = 16 * 1024;
const FD_SLACK: u64 = 16;

pub fn run(args: SoakArgs) -> anyhow::Result<()> {
    with_runtime(|root| async move { soak(&args, &root).await })
}

/// One service at one moment.
struct Usage {
    name: &'static str,
    rss_kb: u64,
    fds: u64,
}

fn sample(cluster: &Cluster) -> Vec<Usage> {
    cluster
        .pids()
        .into_iter()
        .map(|(name, pid)| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let rss_kb = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
            Usage { name, rss_kb, fds }
        })
        .collect()
}

async fn soak(args: &SoakArgs, root: &Path) -> anyhow::Result<()> {
    let mut cluster = boot(root).await?;
    let load = Load::start(&cluster, args.clients.max(2)).await?;
    let started = Instant::now();
    let length = Duration::from_secs(args.minutes * 60);
    let every = Duration::from_secs(args.every.max(1));
    let mut samples = Vec::new();
    while started.elapsed() < length {
        tokio::time::sleep(every.min(length.saturating_sub(started.elapsed()))).await;
        let (ok, failed) = load.counts();
        samples.push((started.elapsed(), ok, failed, sample(&cluster)));
    }
    let served = load.stop().await;

    println!(
        "\nSoak: {} paying clients for {} min\n",
        args.clients, args.minutes
    );
    let names: Vec<&str> = samples
        .first()
        .map(|(_, _, _, usage)| usage.iter().map(|u| u.name).collect())
        .unwrap_or_default();
    let columns: String = names
        .iter()
        .map(|n| format!(" {n} RSS MB / fds |"))
        .collect();
    println!("| time | calls 200 | failed |{columns}");
    println!("|---|---|---|{}", "---|".repeat(names.len()));
    for (at, ok, failed, usage) in &samples {
        let cells: String = usage
            .iter()
            .map(|u| format!(" {:.1} / {} |", u.rss_kb as f64 / 1024.0, u.fds))
            .collect();
        println!("| {} s | {ok} | {failed} |{cells}", at.as_secs());
    }
    let mut problems = Vec::new();
    let (_, _, failed, _) = samples
        .last()
        .map_or((Duration::ZERO, 0, 0, &[][..]), |(a, o, f, u)| {
            (*a, *o, *f, &u[..])
        });
    if failed > 0 {
        problems.push(format!("{failed} calls failed"));
    }
    // Warm: a fifth into the run, once pools and caches have filled.
    if let (Some(warm), Some(last)) = (samples.get(samples.len() / 5), samples.last()) {
        for (before, after) in warm.3.iter().zip(&last.3) {
            if after.rss_kb > before.rss_kb + before.rss_kb / 5 + RSS_SLACK_KB {
                problems.push(format!(
                    "{}: RSS grew from {} to {} kB",
                    after.name, before.rss_kb, after.rss_kb
                ));
            }
            if after.fds > before.fds + FD_SLACK {
                problems.push(format!(
                    "{}: fds grew from {} to {}",
                    after.name, before.fds, after.fds
                ));
            }
        }
    }
    let holds = crate::faults::check::verify(&cluster, &served, &[]).await?;
    cluster.stop_all();
    for problem in &problems {
        println!("BROKEN: {problem}");
    }
    if !holds || !problems.is_empty() {
        bail!("the soak failed");
    }
    println!("\n0 failed calls; RSS and fds flat; every invariant holds");
    Ok(())
}
