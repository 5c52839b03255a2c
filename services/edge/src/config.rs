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

    /// gRPC URL of the billing service (quotes, x402 verification, settlement).
    #[arg(
        long,
        env = "RUNGATE_BILLING_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    pub billing_url: String,

    /// Serve without payments (private deployments): no 402s, usage is
    /// still recorded.
    #[arg(long, env = "RUNGATE_FREE_MODE")]
    pub free_mode: bool,

    /// The public base URL clients reach this edge at (e.g.
    /// https://api.example.com), used as the x402 `resource`. Default: the
    /// request's Host header.
    #[arg(long, env = "RUNGATE_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Largest request body accepted, in bytes (larger gets 413).
    #[arg(long, env = "RUNGATE_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,

    /// How long in-flight requests may run after shutdown begins.
    #[arg(long, env = "RUNGATE_DRAIN_TIMEOUT", default_value = "10s",
          value_parser = rungate_common::args::parse_duration)]
    pub drain_timeout: Duration,
}

impl Config {
    /// A free-mode config (no payments); see `with_billing`.
    pub fn new(inference_url: impl Into<String>, ledger_url: impl Into<String>) -> Self {
        Self {
            inference_url: inference_url.into(),
            ledger_url: ledger_url.into(),
            billing_url: "http://127.0.0.1:50053".into(),
            free_mode: true,
            public_url: None,
            max_body_bytes: 1 << 20,
            drain_timeout: Duration::from_secs(10),
        }
    }

    /// Payments on, verified and settled by the billing service at `url`.
    pub fn with_billing(mut self, url: impl Into<String>) -> Self {
        self.billing_url = url.into();
        self.free_mode = false;
        self
    }
}
