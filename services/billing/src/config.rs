//! Billing configuration; every flag is also an environment variable.

use std::path::PathBuf;
use std::time::Duration;

use crate::BillingError;
use crate::pricing::PriceTable;

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// TOML price table: `[default]` and `[models."<id>"]` with `per_call`,
    /// `per_prompt_token`, `per_completion_token` in atomic units (decimals allowed).
    #[arg(long, env = "RUNGATE_PRICES_FILE")]
    pub prices_file: Option<PathBuf>,

    /// The same price table inline (wins over --prices-file).
    #[arg(long, env = "RUNGATE_PRICES")]
    pub prices_toml: Option<String>,

    /// TOML list of `[[networks]]` payments are accepted on; none means free mode.
    #[arg(long, env = "RUNGATE_NETWORKS_FILE")]
    pub networks_file: Option<PathBuf>,

    /// The same list inline (wins over --networks-file).
    #[arg(long, env = "RUNGATE_NETWORKS")]
    pub networks_toml: Option<String>,

    /// How long in-flight calls may run after shutdown begins.
    #[arg(long, env = "RUNGATE_DRAIN_TIMEOUT", default_value = "10s",
          value_parser = rungate_common::args::parse_duration)]
    pub drain_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            prices_file: None,
            prices_toml: None,
            networks_file: None,
            networks_toml: None,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    pub fn price_table(&self) -> Result<PriceTable, BillingError> {
        let text = rungate_common::args::inline_or_file(
            self.prices_toml.as_deref(),
            self.prices_file.as_deref(),
        )
        .map_err(BillingError::Config)?;
        PriceTable::from_toml(&text)
    }

    pub fn networks(&self) -> Result<Vec<crate::x402::networks::Network>, BillingError> {
        let text = rungate_common::args::inline_or_file(
            self.networks_toml.as_deref(),
            self.networks_file.as_deref(),
        )
        .map_err(BillingError::Config)?;
        Ok(crate::x402::networks::NetworksFile::from_toml(&text)?.networks)
    }
}
