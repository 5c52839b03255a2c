//! Project tasks, run by `cargo xtask` once it has set the machine up:
//! `cargo xtask dev` starts the local cluster, `cargo xtask test` runs every test.
#![allow(clippy::print_stdout)] // printing is what a task runner is for

mod bench;
mod bench_batched;
mod bench_ledger;
mod bench_paid;
mod bench_peer;
mod bench_settle;
mod dev;
mod faults;
mod fresh;
mod soak;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "RunGate project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build and start the whole cluster locally (Postgres + four services) until Ctrl-C.
    Dev(dev::DevArgs),
    /// Run the test suite (what CI runs).
    Test(test::TestArgs),
    /// Measure the local engine against llama.cpp (direct and its server), and TTFT through the edge.
    Bench(bench::BenchArgs),
    /// Measure ledger write throughput and ack latency at several batch sizes.
    BenchLedger(bench_ledger::LedgerBenchArgs),
    /// Measure what x402 payment adds to a call (latency and calls/s).
    BenchPaid(bench_paid::PaidBenchArgs),
    /// Paid load while each service is killed, Postgres stopped and the chain
    /// RPC cut; then every payment is checked.
    Faults(faults::FaultArgs),
    /// Paid load for ten minutes: no errors, flat memory and file descriptors.
    Soak(soak::SoakArgs),
    /// README's two commands on a fresh clone (no .venv, no node_modules).
    Fresh(fresh::FreshArgs),
}

pub use xtask::cargo;

/// Benchmarks measure optimised code: a debug xtask re-runs itself built
/// with `--release` (same arguments) and exits with its status.
fn in_release() -> anyhow::Result<()> {
    let status = cargo()
        .args([
            "run",
            "--quiet",
            "--release",
            "--package",
            "rungate-tasks",
            "--",
        ])
        .args(std::env::args_os().skip(1))
        .status()?;
    std::process::exit(status.code().unwrap_or(1));
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cfg!(debug_assertions)
        && matches!(
            cli.task,
            Task::Bench(_) | Task::BenchLedger(_) | Task::BenchPaid(_)
        )
    {
        return in_release();
    }
    match cli.task {
        Task::Dev(args) => dev::run(args),
        Task::Test(args) => test::run(args),
        Task::Bench(args) => bench::run(args),
        Task::BenchLedger(args) => bench_ledger::run(args),
        Task::BenchPaid(args) => bench_paid::run(args),
        Task::Faults(args) => faults::run(args),
        Task::Soak(args) => soak::run(args),
        Task::Fresh(args) => fresh::run(args),
    }
}
