//! Edge configuration; every flag is also an environment variable.

use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// gRPC URL of the inference service; a comma-separated list reaches
    /// several replicas through one balanced channel (as for every URL here).
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

    /// A request's head must arrive within this (slow clients are cut off);
    /// an HTTP/1 connection idle between requests is closed after it too.
    #[arg(long, env = "RUNGATE_HEADER_TIMEOUT", default_value = "15s",
          value_parser = rungate_common::args::parse_duration)]
    pub header_timeout: Duration,

    /// The whole request body must arrive within this (408 otherwise).
    #[arg(long, env = "RUNGATE_BODY_TIMEOUT", default_value = "30s",
          value_parser = rungate_common::args::parse_duration)]
    pub body_timeout: Duration,

    /// Requests served at once (a stream counts until its end); more get
    /// 503 with Retry-After instead of a queue.
    #[arg(long, env = "RUNGATE_MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: usize,

    /// Deadline of quick internal calls (quotes, token counts, the payment
    /// verdict, receipts, the model list); past it the client gets 504.
    #[arg(long, env = "RUNGATE_RPC_TIMEOUT", default_value = "10s",
          value_parser = rungate_common::args::parse_duration)]
    pub rpc_timeout: Duration,

    /// How long the engine may take to accept a call and start it (queue
    /// wait and, for upstreams, the first token).
    #[arg(long, env = "RUNGATE_GENERATE_TIMEOUT", default_value = "120s",
          value_parser = rungate_common::args::parse_duration)]
    pub generate_timeout: Duration,

    /// How long to wait for billing's settlement answer (sync settlement
    /// waits for the chain).
    #[arg(long, env = "RUNGATE_SETTLE_TIMEOUT", default_value = "60s",
          value_parser = rungate_common::args::parse_duration)]
    pub settle_timeout: Duration,

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
            header_timeout: Duration::from_secs(15),
            body_timeout: Duration::from_secs(30),
            max_concurrent_requests: 1024,
            rpc_timeout: Duration::from_secs(10),
            generate_timeout: Duration::from_secs(120),
            settle_timeout: Duration::from_secs(60),
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
