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

    /// gRPC URL of the ledger (nonce reservations, usage, settlements).
    #[arg(
        long,
        env = "RUNGATE_LEDGER_URL",
        default_value = "http://127.0.0.1:50054"
    )]
    pub ledger_url: String,

    /// Private key (0x-hex) of the account that submits settlements and pays
    /// their gas. Prefer --settlement-key-file; never logged.
    #[arg(long, env = "RUNGATE_SETTLEMENT_KEY", hide_env_values = true)]
    pub settlement_key: Option<Redacted>,

    /// File holding the settlement key.
    #[arg(long, env = "RUNGATE_SETTLEMENT_KEY_FILE")]
    pub settlement_key_file: Option<PathBuf>,

    /// When payments settle: `deferred` answers right after authorization and
    /// a worker settles served calls in the background; `sync` settles before
    /// answering (after generation, or before the first byte of a stream).
    #[arg(long, env = "RUNGATE_SETTLEMENT", value_enum, default_value_t = SettlementMode::Deferred)]
    pub settlement: SettlementMode,

    /// How payer balances (and on-chain nonce use) are checked: `cached`
    /// serves from a per-payer cache refreshed in the background; `strict`
    /// reads the chain before serving every call.
    #[arg(long, env = "RUNGATE_CHAIN_READS", value_enum, default_value_t = ChainReads::Cached)]
    pub chain_reads: ChainReads,

    /// How old a cached balance may be before it is refreshed in the background.
    #[arg(long, env = "RUNGATE_BALANCE_TTL", default_value = "2s",
          value_parser = rungate_common::args::parse_duration)]
    pub balance_ttl: Duration,

    /// How long to wait for a settlement transaction's receipt before
    /// leaving it to a later (safe) retry.
    #[arg(long, env = "RUNGATE_RECEIPT_TIMEOUT", default_value = "30s",
          value_parser = rungate_common::args::parse_duration)]
    pub receipt_timeout: Duration,

    /// How often the deferred-settlement worker looks for served calls.
    #[arg(long, env = "RUNGATE_SETTLE_INTERVAL", default_value = "500ms",
          value_parser = rungate_common::args::parse_duration)]
    pub settle_interval: Duration,

    /// Verify and settle through this x402 facilitator (its /verify and
    /// /settle) instead of locally. Nonces are still reserved in the ledger.
    #[arg(long, env = "RUNGATE_FACILITATOR_URL")]
    pub facilitator_url: Option<String>,

    /// Private key (0x-hex) of our batch-settlement receiverAuthorizer: it
    /// signs claims and refunds. Setting it (or its file) offers
    /// batch-settlement next to `exact`. Prefer the file; never logged.
    #[arg(long, env = "RUNGATE_RECEIVER_AUTHORIZER_KEY", hide_env_values = true)]
    pub receiver_authorizer_key: Option<Redacted>,

    /// File holding the receiverAuthorizer key.
    #[arg(long, env = "RUNGATE_RECEIVER_AUTHORIZER_KEY_FILE")]
    pub receiver_authorizer_key_file: Option<PathBuf>,

    /// The deposit batch-settlement clients are asked for (`extra.minDeposit`),
    /// in the asset's atomic units: 1000000 is 1 USDC, a million calls at
    /// the list price.
    #[arg(long, env = "RUNGATE_MIN_DEPOSIT", default_value_t = 1_000_000)]
    pub min_deposit: u128,

    /// A channel's withdrawal delay: how long a payer's timed withdrawal
    /// waits (time for us to claim). 15m to 30 days.
    #[arg(long, env = "RUNGATE_WITHDRAW_DELAY", default_value = "15m",
          value_parser = rungate_common::args::parse_duration)]
    pub withdraw_delay: Duration,

    /// How often channels' earnings are claimed on chain (and swept to
    /// payTo). A channel whose payer starts a withdrawal is claimed at once.
    #[arg(long, env = "RUNGATE_CLAIM_INTERVAL", default_value = "60s",
          value_parser = rungate_common::args::parse_duration)]
    pub claim_interval: Duration,

    /// How long served calls' vouchers gather before they are stored (one
    /// ledger batch); what a billing crash can lose at most.
    #[arg(long, env = "RUNGATE_VOUCHER_FLUSH", default_value = "100ms",
          value_parser = rungate_common::args::parse_duration)]
    pub voucher_flush: Duration,

    /// How long in-flight calls may run after shutdown begins.
    #[arg(long, env = "RUNGATE_DRAIN_TIMEOUT", default_value = "10s",
          value_parser = rungate_common::args::parse_duration)]
    pub drain_timeout: Duration,

    /// This replica's place among the billing replicas, counted from 0 in
    /// the order of the edges' `--billing-url` list. Each batch-settlement
    /// channel is served by one replica (its state lives in that replica's
    /// memory); a payment for another's channel is sent there.
    #[arg(long, env = "RUNGATE_BILLING_REPLICA", default_value_t = 0)]
    pub replica: u32,

    /// How many billing replicas there are.
    #[arg(long, env = "RUNGATE_BILLING_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub replicas: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            prices_file: None,
            prices_toml: None,
            networks_file: None,
            networks_toml: None,
            ledger_url: "http://127.0.0.1:50054".into(),
            settlement_key: None,
            settlement_key_file: None,
            settlement: SettlementMode::Deferred,
            chain_reads: ChainReads::Cached,
            balance_ttl: Duration::from_secs(2),
            receipt_timeout: Duration::from_secs(30),
            settle_interval: Duration::from_millis(500),
            facilitator_url: None,
            receiver_authorizer_key: None,
            receiver_authorizer_key_file: None,
            min_deposit: 1_000_000,
            withdraw_delay: Duration::from_secs(900),
            claim_interval: Duration::from_secs(60),
            voucher_flush: Duration::from_millis(100),
            drain_timeout: Duration::from_secs(10),
            replica: 0,
            replicas: 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SettlementMode {
    Sync,
    Deferred,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChainReads {
    Strict,
    Cached,
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

    /// The settlement signer, from --settlement-key or its file.
    pub fn settlement_signer(&self) -> Result<alloy_signer_local::PrivateKeySigner, BillingError> {
        load_key(
            "settlement",
            self.settlement_key.as_ref(),
            self.settlement_key_file.as_deref(),
        )?
        .ok_or_else(|| {
            BillingError::Config(
                "payment networks are configured but no settlement key is (--settlement-key-file)"
                    .into(),
            )
        })
    }

    /// The receiverAuthorizer signer; None: batch-settlement is not offered.
    pub fn receiver_authorizer(
        &self,
    ) -> Result<Option<alloy_signer_local::PrivateKeySigner>, BillingError> {
        load_key(
            "receiver authorizer",
            self.receiver_authorizer_key.as_ref(),
            self.receiver_authorizer_key_file.as_deref(),
        )
    }

    /// The withdrawal delay in seconds, within the escrow's bounds.
    pub fn withdraw_delay_secs(&self) -> Result<u64, BillingError> {
        use crate::x402::batch::{MAX_WITHDRAW_DELAY, MIN_WITHDRAW_DELAY};
        let secs = self.withdraw_delay.as_secs();
        if !(MIN_WITHDRAW_DELAY..=MAX_WITHDRAW_DELAY).contains(&secs) {
            return Err(BillingError::Config(format!(
                "--withdraw-delay must be between {MIN_WITHDRAW_DELAY} s and {MAX_WITHDRAW_DELAY} s"
            )));
        }
        Ok(secs)
    }
}

/// A private key given inline or as a file; the error never echoes it.
fn load_key(
    what: &str,
    inline: Option<&Redacted>,
    file: Option<&std::path::Path>,
) -> Result<Option<alloy_signer_local::PrivateKeySigner>, BillingError> {
    let key = match (inline, file) {
        (Some(key), _) => key.0.trim().to_owned(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| BillingError::Config(format!("{what} key file {}: {e}", path.display())))?
            .trim()
            .to_owned(),
        (None, None) => return Ok(None),
    };
    key.parse().map(Some).map_err(|_| {
        BillingError::Config(format!("the {what} key is not a 32-byte hex private key"))
    })
}

/// A secret from the command line or environment: `Debug` never shows it.
#[derive(Clone)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Redacted {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settlement_key_never_shows_in_debug_output() {
        let key = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6";
        let config = Config {
            settlement_key: Some(Redacted(key.into())),
            ..Config::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains(&key[4..20]), "{shown}");
        assert!(shown.contains("<redacted>"));
        let signer = config.settlement_signer().expect("key");
        assert_eq!(
            signer.address().to_checksum(None),
            "0x90F79bf6EB2c4f870365E785982E1f101E93b906"
        );
    }
}
