//! Does the payer have the money, and is the nonce unused on chain?
//! `strict` asks the chain on every call (two eth_calls, in parallel).
//! `cached` keeps each payer's balance, serves from it, and refreshes it in
//! the background once older than the TTL; amounts authorized but not yet
//! settled are held against it, so a burst cannot spend the same balance
//! twice. Only a payer's first call waits for the chain. In cached mode a
//! nonce used elsewhere on chain is caught at settlement (which then fails)
//! rather than before serving; replays to RunGate itself are always caught
//! by the ledger's nonce reservation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy_primitives::{Address, B256, U256};

use crate::chain::Chain;
use crate::config::ChainReads;
use crate::x402::InvalidReason;

pub struct Funds {
    mode: ChainReads,
    ttl: Duration,
    cache: Mutex<HashMap<(String, Address), Entry>>,
}

struct Entry {
    balance: U256,
    /// Authorized and not yet settled or voided.
    held: U256,
    fetched: Instant,
    /// Something settled since the fetch: refresh at the next call.
    stale: bool,
    refreshing: bool,
}

impl Funds {
    pub fn new(mode: ChainReads, ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            mode,
            ttl,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Checks the payer can pay `amount` and, in cached mode, holds it.
    pub async fn check(
        self: &Arc<Self>,
        chain: &Arc<Chain>,
        payer: Address,
        nonce: B256,
        amount: U256,
    ) -> Result<(), InvalidReason> {
        match self.mode {
            ChainReads::Strict => {
                let (balance, used) =
                    tokio::join!(chain.balance(payer), chain.nonce_used(payer, nonce));
                if used.map_err(unexpected)? {
                    return Err(InvalidReason::NonceUsed);
                }
                if balance.map_err(unexpected)? < amount {
                    return Err(InvalidReason::InsufficientFunds);
                }
                Ok(())
            }
            ChainReads::Cached => self.hold(chain, payer, amount).await,
        }
    }

    async fn hold(
        self: &Arc<Self>,
        chain: &Arc<Chain>,
        payer: Address,
        amount: U256,
    ) -> Result<(), InvalidReason> {
        let key = (chain.network.network.clone(), payer);
        for attempt in 0..2 {
            {
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(entry) = cache.get_mut(&key) {
                    let stale = entry.stale || entry.fetched.elapsed() > self.ttl;
                    if entry.balance.saturating_sub(entry.held) >= amount {
                        entry.held += amount;
                        if stale && !entry.refreshing {
                            entry.refreshing = true;
                            self.refresh_in_background(chain.clone(), key.clone());
                        }
                        return Ok(());
                    }
                    // Short on a fresh balance: that is the final word.
                    if !stale || attempt > 0 {
                        return Err(InvalidReason::InsufficientFunds);
                    }
                }
            }
            let balance = chain.balance(payer).await.map_err(unexpected)?;
            self.store(&key, balance);
        }
        Err(InvalidReason::InsufficientFunds)
    }

    fn store(&self, key: &(String, Address), balance: U256) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let entry = cache.entry(key.clone()).or_insert(Entry {
            balance,
            held: U256::ZERO,
            fetched: Instant::now(),
            stale: false,
            refreshing: false,
        });
        entry.balance = balance;
        entry.fetched = Instant::now();
        entry.stale = false;
        entry.refreshing = false;
    }

    fn refresh_in_background(self: &Arc<Self>, chain: Arc<Chain>, key: (String, Address)) {
        let funds = self.clone();
        tokio::spawn(async move {
            match chain.balance(key.1).await {
                Ok(balance) => funds.store(&key, balance),
                Err(error) => {
                    tracing::warn!(%error, "balance refresh failed");
                    let mut cache = funds.cache.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(entry) = cache.get_mut(&key) {
                        entry.refreshing = false;
                    }
                }
            }
        });
    }

    /// The held amount is settled (now in the chain balance) or will never be.
    pub fn release(&self, network: &str, payer: Address, amount: U256) {
        if self.mode == ChainReads::Cached {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = cache.get_mut(&(network.to_owned(), payer)) {
                entry.held = entry.held.saturating_sub(amount);
                entry.stale = true;
            }
        }
    }
}

fn unexpected(error: crate::chain::ReadError) -> InvalidReason {
    tracing::warn!(%error, "verification could not read the chain");
    InvalidReason::Unexpected
}
