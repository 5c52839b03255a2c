//! `cargo xtask faults`: paid load while the cluster is hurt, then a check of
//! every payment. The four services run as separate processes on a real
//! Postgres and anvil (billing reaches the chain through a proxy that can
//! go down), with a fast fake engine so the load is payments, not
//! inference. Half the clients pay `exact` (a fresh EIP-3009 authorization
//! per call), half batch-settlement (a channel each, a voucher per call,
//! resyncing from the corrective 402 as the official clients do). Faults in
//! turn, load running throughout: kill -9 of billing, ledger, edge and
//! inference (each restarted), Postgres stopped immediately (and started
//! again), the chain's RPC down for a while.
//!
//! Then, once the workers have drained, the invariants of `check`.

pub(crate) mod check;
pub(crate) mod cluster;
pub(crate) mod load;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;

use cluster::{boot, with_runtime};
use load::Load;

#[derive(clap::Args)]
pub struct FaultArgs {
    /// Seconds of load before and after each fault.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Paying clients (half exact, half batch-settlement).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// The short version (what `cargo xtask test` runs): 2 s around each fault.
    #[arg(long)]
    quick: bool,
}

impl FaultArgs {
    pub fn quick() -> Self {
        Self {
            seconds: 2,
            clients: 8,
            quick: true,
        }
    }
}

/// How long billing coalesces voucher writes (`--voucher-flush`): what a
/// billing crash may lose of batch-settlement calls already answered.
pub(crate) const VOUCHER_FLUSH: Duration = Duration::from_millis(100);
/// How far before a billing kill a lost voucher may have been answered:
/// the flush window, plus the ledger write in flight when it fired.
pub(crate) const LOSS_WINDOW: Duration = Duration::from_millis(600);
/// The client notes an answer once it has read it, a moment after the edge
/// sent it: an answer sent before the kill may be noted just after.
pub(crate) const READ_SLACK: Duration = Duration::from_millis(200);

pub fn run(args: FaultArgs) -> anyhow::Result<()> {
    with_runtime(|root| async move { suite(&args, &root).await })
}

/// A fault and the calls around it.
struct Fault {
    name: &'static str,
    answered: u64,
    failed: u64,
}

async fn suite(args: &FaultArgs, root: &Path) -> anyhow::Result<()> {
    let seconds = if args.quick { 2 } else { args.seconds };
    let mut cluster = boot(root).await?;
    let load = Load::start(&cluster, args.clients.max(2)).await?;

    let mut table = Vec::new();
    let mut events = Vec::new();
    for name in [
        "rungate-billing",
        "rungate-ledger",
        "rungate-edge",
        "rungate-inference",
        "postgres",
        "chain rpc",
    ] {
        let before = load.counts();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        events.push((name, Instant::now()));
        match name {
            "postgres" => {
                cluster.postgres.stop_immediately();
                tokio::time::sleep(Duration::from_secs(2)).await;
                cluster.postgres.restart()?;
            }
            "chain rpc" => {
                cluster.proxy.set_up(false);
                tokio::time::sleep(Duration::from_secs(seconds.max(3))).await;
                cluster.proxy.set_up(true);
            }
            service => {
                cluster.kill(service)?;
                tokio::time::sleep(Duration::from_secs(1)).await;
                cluster.start(service).await?;
            }
        }
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let after = load.counts();
        table.push(Fault {
            name,
            answered: after.0 - before.0,
            failed: after.1 - before.1,
        });
    }
    let served = load.stop().await;

    println!(
        "\nFault suite: {} paying clients (half exact, half batch-settlement), {seconds} s of load before and after each fault\n",
        args.clients
    );
    println!(
        "| fault (then restarted) | calls answered 200 | calls failed (connection, 402, 5xx) |"
    );
    println!("|---|---|---|");
    for fault in &table {
        let what = match fault.name {
            "postgres" => "Postgres stopped immediately (SIGQUIT)".to_owned(),
            "chain rpc" => format!("chain RPC down {} s", seconds.max(3)),
            service => format!("kill -9 {service}"),
        };
        println!("| {what} | {} | {} |", fault.answered, fault.failed);
    }
    let holds = check::verify(&cluster, &served, &events).await?;
    cluster.stop_all();
    if !holds {
        bail!("a fault-suite invariant is broken");
    }
    Ok(())
}
