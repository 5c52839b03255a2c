//! Ledger configuration; every flag is also an environment variable.

use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Postgres connection URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Pool size.
    #[arg(long, env = "RUNGATE_LEDGER_MAX_CONNECTIONS", default_value_t = 16)]
    pub max_connections: u32,

    /// Most writes committed in one transaction (group commit).
    #[arg(long, env = "RUNGATE_LEDGER_MAX_BATCH", default_value_t = 512)]
    pub max_batch: usize,

    /// Transactions committing in parallel (each a pool connection).
    #[arg(long, env = "RUNGATE_LEDGER_COMMIT_LANES", default_value_t = 8)]
    pub commit_lanes: usize,

    /// How often authorizations past validBefore are expired and voided.
    #[arg(long, env = "RUNGATE_LEDGER_EXPIRY_INTERVAL", default_value = "30s",
          value_parser = rungate_common::args::parse_duration)]
    pub expiry_interval: Duration,

    /// Apply `migrations/` at startup.
    #[arg(long, env = "RUNGATE_LEDGER_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate: bool,

    /// How long in-flight streams may run after shutdown begins.
    #[arg(long, env = "RUNGATE_DRAIN_TIMEOUT", default_value = "10s",
          value_parser = rungate_common::args::parse_duration)]
    pub drain_timeout: Duration,
}

impl Config {
    pub fn new(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            max_connections: 16,
            max_batch: 512,
            commit_lanes: 8,
            expiry_interval: Duration::from_secs(30),
            migrate: true,
            drain_timeout: Duration::from_secs(10),
        }
    }
}
