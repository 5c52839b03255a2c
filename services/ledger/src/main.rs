use std::net::SocketAddr;

use clap::Parser;

/// RunGate ledger service: the system's memory of money, in Postgres.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Address the gRPC server listens on.
    #[arg(long, env = "RUNGATE_LEDGER_LISTEN", default_value = "127.0.0.1:50054")]
    listen: SocketAddr,
    #[command(flatten)]
    common: rungate_common::CommonArgs,
    #[command(flatten)]
    config: rungate_ledger::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = rungate_common::telemetry::init(
        "rungate-ledger",
        cli.common.log_format,
        cli.common.otlp_endpoint.as_deref(),
    )?;
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    rungate_ledger::serve(listener, cli.config, rungate_common::shutdown::signal()).await
}
