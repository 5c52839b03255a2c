//! Serving a call from a channel, the scheme's steps in order: the channel
//! is ours and its id binds its config; the voucher is the payer's; one call
//! per channel at a time; the voucher is exactly what was charged so far plus
//! this call's price (else the corrective 402 with our state); it is within
//! the deposit. A deposit goes on chain first (and into the ledger) and the
//! call is served once it is mined. A refund claims what was earned and
//! returns the rest in one transaction.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;

use alloy_primitives::{Address, B256};
use rungate_proto::ledger::v1::{
    ChannelClaim, ChannelConfig as StoredConfig, ChannelDeposit, ChannelRefund, Usage,
};

use super::{Channel, Channels, Shared, lock};
use crate::BillingError;
use crate::chain::escrow::{ClaimRow, Mined, OnChain};
use crate::chain::{Chain, Outcome};
use crate::x402::batch::BatchReason;
use crate::x402::batch::eip712::ChannelConfig;
use crate::x402::batch::offer::{self, Snapshot};
use crate::x402::batch::payload::{self, BatchPayload, DepositAuthorization, SignedVoucher};
use crate::x402::batch::verify::{self, Terms};
use crate::x402::exact_evm::EXPIRY_MARGIN_SECS;
use crate::x402::networks::Offer;

/// How long a call waits for the channel's previous call to finish before
/// it is refused as busy: long enough for the previous call's end to reach
/// billing after its answer reached the client (a client sends its next
/// voucher as soon as it has the answer), short enough that two calls at
/// once on one channel are told so.
const TURN_WAIT: Duration = Duration::from_millis(250);

/// A call admitted on a channel: it holds the channel's turn until it is
/// `complete`d or `release`d.
#[derive(Debug)]
pub struct Reserved {
    pub channel: Shared,
    _turn: OwnedSemaphorePermit,
    pub channel_id: B256,
    pub payer: Address,
    pub voucher: SignedVoucher,
    /// The voucher's increment: the most this call may be charged.
    pub increment: u128,
    /// The deposit this call's payment made, if it made one.
    pub deposit: Option<Mined>,
}

#[derive(Debug)]
pub enum Admitted {
    Serve(Reserved),
    /// Refused; with the channel's state when the client is out of step.
    Refused {
        reason: BatchReason,
        snapshot: Option<Snapshot>,
    },
    /// A refund, done: what it returned and the channel after it.
    Refunded {
        payer: Address,
        amount: u128,
        mined: Mined,
        snapshot: Snapshot,
    },
}

fn refused(reason: BatchReason) -> Admitted {
    Admitted::Refused {
        reason,
        snapshot: None,
    }
}

fn out_of_step(channel: &Channel) -> Admitted {
    Admitted::Refused {
        reason: BatchReason::CumulativeMismatch,
        snapshot: Some(channel.snapshot()),
    }
}

impl Channels {
    pub fn terms_on(&self, chain: &Chain) -> Terms {
        Terms {
            receiver: chain.network.pay_to,
            receiver_authorizer: self.authorizer(),
            token: chain.network.asset,
            withdraw_delay: self.terms.withdraw_delay,
        }
    }

    /// Checks a batch-settlement payment for a call priced `increment`, and
    /// holds its channel (or does its refund).
    pub async fn admit(
        &self,
        chain: &Arc<Chain>,
        request_id: &str,
        payload: BatchPayload,
        increment: u128,
        now: u64,
    ) -> Result<Admitted, BillingError> {
        let config = payload.config();
        if let Err(reason) = verify::check_config(config, &self.terms_on(chain)) {
            return Ok(refused(reason));
        }
        let id = match verify::bind(&chain.escrow, config, payload.voucher()) {
            Ok(id) => id,
            Err(reason) => return Ok(refused(reason)),
        };
        if let Err(reason) = verify::voucher_signature(&chain.escrow, config, payload.voucher()) {
            return Ok(refused(reason));
        }
        match payload {
            BatchPayload::Voucher { config, voucher } => {
                self.voucher(chain, id, config, voucher, increment).await
            }
            BatchPayload::Deposit {
                config,
                voucher,
                deposit,
            } => {
                let token = chain.domain_separator;
                if let Err(reason) = verify::deposit_authorization(
                    token,
                    &config,
                    id,
                    &deposit,
                    now,
                    EXPIRY_MARGIN_SECS,
                ) {
                    return Ok(refused(reason));
                }
                self.deposit(chain, request_id, id, config, voucher, deposit, increment)
                    .await
            }
            BatchPayload::Refund {
                config,
                voucher,
                amount,
            } => self.refund(chain, id, config, voucher, amount).await,
        }
    }

    /// The hot path: all in memory.
    async fn voucher(
        &self,
        chain: &Chain,
        id: B256,
        config: ChannelConfig,
        voucher: SignedVoucher,
        increment: u128,
    ) -> Result<Admitted, BillingError> {
        let Some(shared) = self.get(&id, chain).await? else {
            return Ok(refused(BatchReason::ChannelNotFound));
        };
        let Some(turn) = take_turn(&shared).await else {
            return Ok(refused(BatchReason::ChannelBusy));
        };
        {
            let channel = lock(&shared);
            if Some(voucher.max_claimable) != channel.charged.checked_add(increment) {
                return Ok(out_of_step(&channel));
            }
            if voucher.max_claimable > channel.spendable() {
                return Ok(refused(BatchReason::CumulativeExceedsBalance));
            }
        }
        Ok(Admitted::Serve(Reserved {
            channel: shared,
            _turn: turn,
            channel_id: id,
            payer: config.payer,
            voucher,
            increment,
            deposit: None,
        }))
    }

    /// Opens or tops up the channel on chain, records the deposit, then holds
    /// the channel for the call it pays.
    #[allow(clippy::too_many_arguments)]
    async fn deposit(
        &self,
        chain: &Arc<Chain>,
        request_id: &str,
        id: B256,
        config: ChannelConfig,
        voucher: SignedVoucher,
        deposit: DepositAuthorization,
        increment: u128,
    ) -> Result<Admitted, BillingError> {
        let shared = match self.get(&id, chain).await? {
            Some(known) => known,
            None => {
                // New to us; the escrow may still have a history for it.
                let onchain = chain.channel(id).await.map_err(BillingError::Chain)?;
                self.insert(Channel {
                    id,
                    charged: onchain.total_claimed,
                    onchain,
                    signed_max: onchain.total_claimed,
                    signature: Default::default(),
                    turn: Channel::new_turn(),
                })
            }
        };
        // Held from here: one deposit (or call) per channel at a time.
        let Some(turn) = take_turn(&shared).await else {
            return Ok(refused(BatchReason::ChannelBusy));
        };
        {
            let channel = lock(&shared);
            if Some(voucher.max_claimable) != channel.charged.checked_add(increment) {
                return Ok(out_of_step(&channel));
            }
            if voucher.max_claimable > channel.spendable().saturating_add(deposit.amount) {
                return Ok(refused(BatchReason::CumulativeExceedsBalance));
            }
        }
        let mined = match &self.facilitator {
            None => chain.deposit(&config, &deposit).await,
            Some(facilitator) => {
                let offer = Offer {
                    amount: increment,
                    resource: "",
                    description: "",
                };
                let requirement = offer::requirement(&chain.network, &offer, &self.terms);
                let payload = payload::deposit_json(&config, &voucher, &deposit);
                match facilitator.deposit(&requirement, payload).await {
                    Ok(tx_hash) => chain.mined_elsewhere(tx_hash).await,
                    Err(outcome) => Err(outcome),
                }
            }
        };
        let mined = match mined {
            Ok(mined) => mined,
            Err(outcome) => {
                return match outcome {
                    Outcome::Unknown { error } => {
                        // It may still land, in the payer's own channel (where
                        // the next deposit or refund finds it); the call is not
                        // served.
                        tracing::warn!(%error, channel = %id, "deposit outcome unknown");
                        Err(BillingError::ChainUnavailable(error))
                    }
                    other => {
                        tracing::info!(?other, channel = %id, "deposit failed");
                        Ok(refused(BatchReason::DepositFailed))
                    }
                };
            }
        };
        let onchain = chain.channel(id).await.unwrap_or_else(|error| {
            tracing::warn!(%error, "escrow unreadable after a deposit; counting it ourselves");
            let before = lock(&shared).onchain;
            OnChain {
                balance: before.balance.saturating_add(deposit.amount),
                ..before
            }
        });
        let record = ChannelDeposit {
            request_id: request_id.to_owned(),
            channel: Some(stored_config(id, &chain.network.network, &config)),
            amount: Some(deposit.amount.into()),
            tx_hash: mined.tx_hash.to_string(),
            block_number: mined.block,
        };
        self.writer.gas(chain, &mined, "deposit");
        // On chain but not in the ledger: the payer's money is in its own
        // channel (refundable); the call is not served.
        self.ledger.record_deposit(record).await?;
        lock(&shared).onchain = onchain;
        Ok(Admitted::Serve(Reserved {
            channel: shared,
            _turn: turn,
            channel_id: id,
            payer: config.payer,
            voucher,
            increment,
            deposit: Some(mined),
        }))
    }

    /// Claims what the channel earned and refunds `amount` (default: all the
    /// rest) in one transaction.
    async fn refund(
        &self,
        chain: &Arc<Chain>,
        id: B256,
        config: ChannelConfig,
        voucher: SignedVoucher,
        amount: Option<u128>,
    ) -> Result<Admitted, BillingError> {
        let Some(shared) = self.get(&id, chain).await? else {
            return Ok(refused(BatchReason::ChannelNotFound));
        };
        let Some(_turn) = take_turn(&shared).await else {
            return Ok(refused(BatchReason::ChannelBusy));
        };
        let (charged, latest) = {
            let channel = lock(&shared);
            // A refund's voucher charges nothing: it must be the charged total.
            if voucher.max_claimable != channel.charged {
                return Ok(out_of_step(&channel));
            }
            let latest = SignedVoucher {
                channel_id: id,
                max_claimable: channel.signed_max,
                signature: channel.signature.clone(),
            };
            (channel.charged, latest)
        };
        let result = self
            .refund_held(chain, id, &config, charged, latest, amount)
            .await;
        let mut channel = lock(&shared);
        match result {
            Ok(Ok((onchain, mined, refunded))) => {
                channel.onchain = onchain;
                Ok(Admitted::Refunded {
                    payer: config.payer,
                    amount: refunded,
                    mined,
                    snapshot: channel.snapshot(),
                })
            }
            Ok(Err(reason)) => Ok(refused(reason)),
            Err(error) => Err(error),
        }
    }

    async fn refund_held(
        &self,
        chain: &Arc<Chain>,
        id: B256,
        config: &ChannelConfig,
        charged: u128,
        latest: SignedVoucher,
        requested: Option<u128>,
    ) -> Result<Result<(OnChain, Mined, u128), BatchReason>, BillingError> {
        let onchain = chain.channel(id).await.map_err(BillingError::Chain)?;
        let remainder = onchain
            .balance
            .saturating_sub(charged.max(onchain.total_claimed));
        let amount = match requested {
            _ if remainder == 0 => return Ok(Err(BatchReason::RefundNoBalance)),
            Some(asked) if asked > remainder => return Ok(Err(BatchReason::RefundNoBalance)),
            Some(asked) => asked,
            None => remainder,
        };
        // What was earned is claimed first, in the same transaction.
        let claim = (charged > onchain.total_claimed).then(|| ClaimRow {
            config: config.clone(),
            voucher: latest,
            total_claimed: charged,
        });
        let claim_signature = match &claim {
            Some(row) => Some(self.sign(&chain.escrow.claim_batch_digest(vec![row.entry()]))?),
            None => None,
        };
        let refund_signature = self.sign(&chain.escrow.refund_digest(
            id,
            alloy_primitives::U256::from(onchain.refund_nonce),
            amount,
        ))?;
        let mined = match chain
            .refund(
                config,
                amount,
                onchain.refund_nonce,
                refund_signature,
                claim.as_ref().zip(claim_signature),
            )
            .await
        {
            Ok(mined) => mined,
            Err(Outcome::Unknown { error }) => return Err(BillingError::ChainUnavailable(error)),
            Err(other) => {
                tracing::warn!(?other, channel = %id, "refund failed");
                return Ok(Err(BatchReason::RefundFailed));
            }
        };
        self.writer.gas(chain, &mined, "refund");
        let after = chain.channel(id).await.unwrap_or(OnChain {
            balance: onchain.balance - mined.refunded(),
            total_claimed: charged.max(onchain.total_claimed),
            refund_nonce: onchain.refund_nonce + 1,
            ..onchain
        });
        if claim.is_some() {
            self.ledger
                .record_claim(ChannelClaim {
                    channel_id: id.to_string(),
                    total_claimed: Some(after.total_claimed.into()),
                    tx_hash: mined.tx_hash.to_string(),
                    block_number: mined.block,
                })
                .await?;
        }
        let refunded = mined.refunded();
        self.ledger
            .record_refund(ChannelRefund {
                channel_id: id.to_string(),
                refund_nonce: onchain.refund_nonce,
                amount: Some(refunded.into()),
                tx_hash: mined.tx_hash.to_string(),
                block_number: mined.block,
            })
            .await?;
        Ok(Ok((after, mined, refunded)))
    }

    /// The call was served and costs `charge` (at most its increment): the
    /// channel moves on to the new voucher. Stored coalesced, not waited for.
    pub fn complete(&self, reserved: Reserved, charge: u128, mut usage: Usage) -> Snapshot {
        let charge = charge.min(reserved.increment);
        let snapshot = {
            let mut channel = lock(&reserved.channel);
            channel.charged = channel.charged.saturating_add(charge);
            channel.signed_max = reserved.voucher.max_claimable;
            channel.signature = reserved.voucher.signature.clone();
            channel.snapshot()
        };
        usage.channel_id = reserved.channel_id.to_string();
        usage.cumulative = Some(snapshot.charged.into());
        usage.charged = Some(charge.into());
        usage.quoted = Some(reserved.increment.into());
        self.writer.voucher(reserved.channel.clone(), usage);
        snapshot
    }

    /// The channel as it will be once the held call is charged `charge`.
    pub fn preview(&self, reserved: &Reserved, charge: u128) -> Snapshot {
        let channel = lock(&reserved.channel);
        let mut snapshot = channel.snapshot();
        snapshot.charged = snapshot
            .charged
            .saturating_add(charge.min(reserved.increment));
        snapshot.signed_max = reserved.voucher.max_claimable;
        snapshot.signature = reserved.voucher.signature.clone();
        snapshot
    }

    /// The call was not served: the channel is free and nothing changed (the
    /// client may send the same voucher again).
    pub fn release(&self, reserved: Reserved) {
        drop(reserved);
    }
}

pub fn stored_config(id: B256, network: &str, config: &ChannelConfig) -> StoredConfig {
    StoredConfig {
        channel_id: id.to_string(),
        network: network.to_owned(),
        asset: config.token.to_string(),
        payer: config.payer.to_string(),
        payer_authorizer: config.payerAuthorizer.to_string(),
        receiver: config.receiver.to_string(),
        receiver_authorizer: config.receiverAuthorizer.to_string(),
        withdraw_delay: config.withdrawDelay.to::<u64>(),
        salt: config.salt.to_string(),
    }
}

/// The channel's turn, waiting a little for the call before it to end.
async fn take_turn(channel: &Shared) -> Option<OwnedSemaphorePermit> {
    let turn = lock(channel).turn.clone();
    tokio::time::timeout(TURN_WAIT, turn.acquire_owned())
        .await
        .ok()?
        .ok()
}
