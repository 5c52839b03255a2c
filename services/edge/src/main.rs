use std::net::SocketAddr;

use clap::Parser;

/// RunGate edge: the OpenAI-compatible HTTP API.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Address the HTTP server listens on.
    #[arg(long, env = "RUNGATE_EDGE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    common: rungate_common::CommonArgs,
    #[command(flatten)]
    config: rungate_edge::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = rungate_common::telemetry::init(
        "rungate-edge",
        cli.common.log_format,
        cli.common.otlp_endpoint.as_deref(),
    )?;
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    rungate_edge::serve(listener, cli.config, rungate_common::shutdown::signal()).await
}
