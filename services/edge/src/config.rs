//! Edge configuration; every flag is also an environment variable.

use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// gRPC URL of the inference service.
    #[arg(
        long,
        env = "RUNGATE_INFERENCE_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub inference_url: String,

    /// gRPC URL of the ledger (usage records, receipts).
    #[arg(
        long,
        env = "RUNGATE_LEDGER_URL",
        default_value = "http://127.0.0.1:50054"
    )]
    pub ledger_url: String,

    /// Largest request body accepted, in bytes (larger gets 413).
    #[arg(long, env = "RUNGATE_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,

    /// How long in-flight requests may run after shutdown begins.
    #[arg(long, env = "RUNGATE_DRAIN_TIMEOUT", default_value = "10s",
          value_parser = rungate_common::args::parse_duration)]
    pub drain_timeout: Duration,
}

impl Config {
    pub fn new(inference_url: impl Into<String>, ledger_url: impl Into<String>) -> Self {
        Self {
            inference_url: inference_url.into(),
            ledger_url: ledger_url.into(),
            max_body_bytes: 1 << 20,
            drain_timeout: Duration::from_secs(10),
        }
    }
}
