//! Collecting batch-settlement money. Every `--claim-interval`, channels
//! whose stored charged total is above what was claimed are leased from the
//! ledger, a hundred at a time, and claimed in one `claimWithSignature`
//! transaction with their latest stored vouchers; once that is mined (never
//! before: a sweep behind an unconfirmed claim sweeps nothing), one
//! `settle(receiver, token)` sends the claimed money to the receiver.
//!
//! Claims are cumulative, so a retry (a lapsed lease, a second replica) can
//! never collect twice: the escrow ignores a row at or below what it already
//! has. A payer who starts a timed withdrawal gets its channel claimed at
//! once (the watcher reads the escrow's WithdrawInitiated logs), well within
//! the withdrawal delay.

use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, B256, Bytes, aliases::U40};
use rungate_proto::ledger::v1::{ChannelClaim, ChannelState, ClaimChannelsRequest, Sweep};
use tokio_util::sync::CancellationToken;

use crate::BillingError;
use crate::chain::escrow::ClaimRow;
use crate::chain::{Chain, Outcome};
use crate::channels::Channels;
use crate::x402::batch::eip712::ChannelConfig;
use crate::x402::batch::payload::SignedVoucher;

/// Channels per claim transaction (~40k gas for one, ~19k each in a batch).
const CLAIMS_PER_TX: u32 = 100;
/// How often the escrow's withdrawal logs are read.
const WITHDRAWAL_POLL: Duration = Duration::from_secs(2);
/// How far back the watcher looks when it starts (a withdrawal started while
/// billing was down is still seen; the shortest delay is 15 minutes).
const LOOKBACK_BLOCKS: u64 = 2_000;

pub struct ClaimWorker {
    pub channels: Arc<Channels>,
    pub chains: Vec<Arc<Chain>>,
    pub interval: Duration,
    pub lease: Duration,
    pub worker: String,
}

/// What a collection pass did.
#[derive(Debug, Default)]
pub struct Collected {
    pub channels: u32,
    pub claims: Vec<B256>,
    pub sweeps: Vec<B256>,
}

impl ClaimWorker {
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut claims = tokio::time::interval(self.interval);
        claims.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch = tokio::time::interval(WITHDRAWAL_POLL);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen: Vec<Option<u64>> = vec![None; self.chains.len()];
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = claims.tick() => {
                    self.collect_all().await;
                }
                _ = watch.tick() => {
                    for (chain, seen) in self.chains.iter().zip(seen.iter_mut()) {
                        if let Err(error) = self.watch_withdrawals(chain, seen).await {
                            tracing::debug!(%error, network = %chain.network.network, "withdrawal watch failed");
                        }
                    }
                }
            }
        }
    }

    /// Collects every due channel on every chain now.
    pub async fn collect_all(&self) -> Collected {
        let mut done = Collected::default();
        for chain in &self.chains {
            if let Err(error) = self.collect(chain, Vec::new(), &mut done).await {
                tracing::warn!(%error, network = %chain.network.network, "claim pass failed");
            }
        }
        done
    }

    /// Claims now the channels whose payer started a withdrawal.
    async fn watch_withdrawals(
        &self,
        chain: &Arc<Chain>,
        seen: &mut Option<u64>,
    ) -> Result<(), BillingError> {
        let head = chain.block_number().await?;
        let from = seen.map_or(head.saturating_sub(LOOKBACK_BLOCKS), |s| s + 1);
        if from > head {
            return Ok(());
        }
        let started = chain.withdrawals_started(from, head).await?;
        *seen = Some(head);
        if started.is_empty() {
            return Ok(());
        }
        for id in &started {
            // New vouchers may not reach into what the payer takes back.
            if let Ok(onchain) = chain.channel(*id).await {
                self.channels.refresh(id, onchain);
            }
        }
        tracing::info!(
            channels = started.len(),
            "withdrawal started; claiming those channels now"
        );
        let named = started.iter().map(B256::to_string).collect();
        self.collect(chain, named, &mut Collected::default()).await
    }

    /// Claims due channels (or only `named` ones) and sweeps what was claimed.
    async fn collect(
        &self,
        chain: &Arc<Chain>,
        named: Vec<String>,
        done: &mut Collected,
    ) -> Result<(), BillingError> {
        let before = done.claims.len();
        loop {
            let due = self
                .channels
                .ledger
                .claim_channels(ClaimChannelsRequest {
                    worker: self.worker.clone(),
                    limit: CLAIMS_PER_TX,
                    lease_seconds: self.lease.as_secs().max(1) as u32,
                    network: chain.network.network.clone(),
                    channel_ids: named.clone(),
                })
                .await?;
            let full = due.len() as u32 == CLAIMS_PER_TX;
            let rows: Vec<ClaimRow> = due.iter().filter_map(claim_row).collect();
            if rows.is_empty() {
                break;
            }
            self.claim(chain, &rows, done).await?;
            if !full {
                break;
            }
        }
        if done.claims.len() > before {
            self.sweep(chain, done).await?;
        }
        Ok(())
    }

    /// One transaction for all rows; if the escrow refuses it (one bad row,
    /// e.g. a channel a withdrawal emptied), each row on its own, so the
    /// others are still collected.
    async fn claim(
        &self,
        chain: &Arc<Chain>,
        rows: &[ClaimRow],
        done: &mut Collected,
    ) -> Result<(), BillingError> {
        if self.submit(chain, rows, done).await?.is_none() && rows.len() > 1 {
            for row in rows {
                self.submit(chain, std::slice::from_ref(row), done).await?;
            }
        }
        Ok(())
    }

    /// Submits one claim transaction and records its effect per channel.
    /// None: refused by the escrow (or its outcome unknown: the lease lapses
    /// and a later pass retries, safely).
    async fn submit(
        &self,
        chain: &Arc<Chain>,
        rows: &[ClaimRow],
        done: &mut Collected,
    ) -> Result<Option<()>, BillingError> {
        let entries = rows.iter().map(ClaimRow::entry).collect();
        let signature = self
            .channels
            .sign(&chain.escrow.claim_batch_digest(entries))?;
        let mined = match chain.claim(rows, signature).await {
            Ok(mined) => mined,
            Err(Outcome::Unknown { error }) => {
                tracing::warn!(%error, rows = rows.len(), "claim outcome unknown; retried when the lease lapses");
                return Ok(None);
            }
            Err(refused) => {
                tracing::warn!(?refused, rows = rows.len(), "claim refused");
                return Ok(None);
            }
        };
        self.channels.writer.gas(chain, &mined, "claim");
        let moved = mined.claimed();
        for row in rows {
            let id = row.voucher.channel_id;
            // A row the escrow skipped was claimed before (at least as far).
            let total = match moved.iter().find(|(channel, _)| *channel == id) {
                Some((_, total)) => *total,
                None => chain
                    .channel(id)
                    .await?
                    .total_claimed
                    .min(row.total_claimed),
            };
            self.channels.claimed(&id, total);
            self.channels
                .ledger
                .record_claim(ChannelClaim {
                    channel_id: id.to_string(),
                    total_claimed: Some(total.into()),
                    tx_hash: mined.tx_hash.to_string(),
                    block_number: mined.block,
                })
                .await?;
        }
        tracing::info!(channels = rows.len(), tx = %mined.tx_hash, "claimed");
        done.channels += moved.len() as u32;
        done.claims.push(mined.tx_hash);
        Ok(Some(()))
    }

    /// Sends everything claimed to the receiver.
    async fn sweep(&self, chain: &Arc<Chain>, done: &mut Collected) -> Result<(), BillingError> {
        let network = &chain.network;
        let mined = match chain.sweep(network.pay_to, network.asset).await {
            Ok(mined) => mined,
            Err(outcome) => {
                // The claimed money stays in the escrow, ours; the next pass sweeps it.
                tracing::warn!(?outcome, "sweep did not go through; the next pass retries");
                return Ok(());
            }
        };
        self.channels.writer.gas(chain, &mined, "sweep");
        let amount = mined.swept();
        if amount > 0 {
            self.channels
                .ledger
                .record_sweep(Sweep {
                    network: network.network.clone(),
                    asset: network.asset.to_string(),
                    receiver: network.pay_to.to_string(),
                    amount: Some(amount.into()),
                    tx_hash: mined.tx_hash.to_string(),
                    block_number: mined.block,
                })
                .await?;
        }
        tracing::info!(amount, tx = %mined.tx_hash, "swept");
        done.sweeps.push(mined.tx_hash);
        Ok(())
    }
}

/// A stored channel as a claim row: its latest voucher, claimed up to the
/// charged total (never the voucher's full ceiling: the rest is the payer's).
fn claim_row(state: &ChannelState) -> Option<ClaimRow> {
    let stored = state.channel.as_ref()?;
    let address = |text: &str| text.parse::<Address>().ok();
    let amount = |a: Option<rungate_proto::types::v1::Amount>| a.unwrap_or_default().atomic();
    let channel_id: B256 = stored.channel_id.parse().ok()?;
    Some(ClaimRow {
        config: ChannelConfig {
            payer: address(&stored.payer)?,
            payerAuthorizer: address(&stored.payer_authorizer)?,
            receiver: address(&stored.receiver)?,
            receiverAuthorizer: address(&stored.receiver_authorizer)?,
            token: address(&stored.asset)?,
            withdrawDelay: U40::from(stored.withdraw_delay),
            salt: stored.salt.parse().ok()?,
        },
        voucher: SignedVoucher {
            channel_id,
            max_claimable: amount(state.signed_max),
            signature: alloy_primitives::hex::decode(&state.signature)
                .map(Bytes::from)
                .ok()?,
        },
        total_claimed: amount(state.charged),
    })
}
