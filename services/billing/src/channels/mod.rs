//! The channel book: batch-settlement channels as billing serves them. Each
//! channel's state lives here, in memory, so a voucher is checked without a
//! round trip; one call per channel runs at a time. The ledger holds every
//! deposit (written before the call it pays for is served) and, coalesced,
//! each channel's latest voucher (see `writer`): after a restart a channel is
//! rebuilt from there, and a client that is ahead of what was stored is
//! brought back in step by the corrective 402.
//!
//! What a billing crash can lose: the calls served on a channel since its
//! last voucher was stored (at most `--voucher-flush` plus a commit): they
//! are not collected, and the payer is not charged for them; nothing is
//! collected twice.

mod pay;
pub mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use alloy_primitives::{Address, B256, Bytes};
use alloy_signer::SignerSync;
use alloy_signer_local::PrivateKeySigner;
use rungate_proto::ledger::v1::ChannelState;

pub use pay::{Admitted, Reserved};

use crate::BillingError;
use crate::chain::Chain;
use crate::chain::escrow::OnChain;
use crate::ledger::Ledger;
use crate::remote::RemoteFacilitator;
use crate::x402::batch::offer::{BatchTerms, Snapshot};

/// One channel as billing serves it.
#[derive(Debug)]
pub struct Channel {
    pub id: B256,
    /// The escrow's view, as last read or changed by us.
    pub onchain: OnChain,
    /// What served calls cost in all: the next voucher's base.
    pub charged: u128,
    /// The latest voucher.
    pub signed_max: u128,
    pub signature: Bytes,
    /// One call at a time: the call in flight holds the channel's turn.
    turn: Arc<tokio::sync::Semaphore>,
}

impl Channel {
    pub fn new_turn() -> Arc<tokio::sync::Semaphore> {
        Arc::new(tokio::sync::Semaphore::new(1))
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            channel_id: self.id,
            balance: self.onchain.balance,
            total_claimed: self.onchain.total_claimed,
            withdraw_requested_at: self.onchain.withdraw_requested_at,
            refund_nonce: self.onchain.refund_nonce,
            charged: self.charged,
            signed_max: self.signed_max,
            signature: self.signature.clone(),
        }
    }

    /// What vouchers may reach: the deposit, less a withdrawal the payer
    /// has started (it would take that much back before a late claim).
    pub fn spendable(&self) -> u128 {
        self.onchain.balance.saturating_sub(self.onchain.withdrawal)
    }
}

pub type Shared = Arc<Mutex<Channel>>;

pub fn lock(channel: &Shared) -> MutexGuard<'_, Channel> {
    // A panic while holding a channel is a bug; its state is still the last
    // consistent one (every update is a few assignments), so keep serving.
    channel
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub struct Channels {
    book: Mutex<HashMap<B256, Shared>>,
    pub ledger: Ledger,
    pub writer: writer::Writer,
    pub terms: BatchTerms,
    authorizer: PrivateKeySigner,
    /// `--facilitator-url`: deposits are submitted through it.
    facilitator: Option<Arc<RemoteFacilitator>>,
}

impl Channels {
    pub fn new(
        ledger: Ledger,
        writer: writer::Writer,
        authorizer: PrivateKeySigner,
        terms: BatchTerms,
        facilitator: Option<Arc<RemoteFacilitator>>,
    ) -> Self {
        Self {
            book: Mutex::new(HashMap::new()),
            ledger,
            writer,
            terms,
            authorizer,
            facilitator,
        }
    }

    pub fn authorizer(&self) -> Address {
        self.authorizer.address()
    }

    /// Our receiverAuthorizer's signature over an escrow digest.
    pub fn sign(&self, digest: &B256) -> Result<Bytes, BillingError> {
        let signature = self
            .authorizer
            .sign_hash_sync(digest)
            .map_err(|e| BillingError::Config(format!("receiver authorizer: {e}")))?;
        Ok(Bytes::from(signature.as_bytes().to_vec()))
    }

    fn cached(&self, id: &B256) -> Option<Shared> {
        self.book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// The channel, from memory or else rebuilt from the ledger and the
    /// chain (after a restart); None if the ledger does not know it.
    pub async fn get(&self, id: &B256, chain: &Chain) -> Result<Option<Shared>, BillingError> {
        if let Some(channel) = self.cached(id) {
            return Ok(Some(channel));
        }
        let Some(stored) = self.ledger.channel(&id.to_string()).await? else {
            return Ok(None);
        };
        let mut channel = from_ledger(*id, &stored)?;
        // The escrow may have moved since (a withdrawal, someone's claim).
        match chain.channel(*id).await {
            Ok(onchain) => channel.onchain = onchain,
            Err(error) => {
                tracing::warn!(%error, channel = %id, "escrow unreadable; using the ledger's view")
            }
        }
        Ok(Some(self.insert(channel)))
    }

    /// Adds a channel (if another task added it first, that one stays).
    fn insert(&self, channel: Channel) -> Shared {
        self.book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(channel.id)
            .or_insert_with(|| Arc::new(Mutex::new(channel)))
            .clone()
    }

    /// A claim moved the channel's claimed total on chain.
    pub fn claimed(&self, id: &B256, total: u128) {
        if let Some(channel) = self.cached(id) {
            let mut channel = lock(&channel);
            channel.onchain.total_claimed = channel.onchain.total_claimed.max(total);
        }
    }

    /// The channel's escrow view, e.g. after a withdrawal started; no-op for
    /// channels not in memory (they are read fresh when next used).
    pub fn refresh(&self, id: &B256, onchain: OnChain) {
        if let Some(channel) = self.cached(id) {
            lock(&channel).onchain = onchain;
        }
    }
}

fn from_ledger(id: B256, stored: &ChannelState) -> Result<Channel, BillingError> {
    let bad =
        |what: &str| BillingError::Ledger(format!("stored channel {id} has a malformed {what}"));
    // The config itself arrives with every payment (its id binds it).
    stored.channel.as_ref().ok_or_else(|| bad("config"))?;
    let amount = |a: Option<rungate_proto::types::v1::Amount>| a.unwrap_or_default().atomic();
    let deposited = amount(stored.deposited);
    let refunded = amount(stored.refunded);
    Ok(Channel {
        id,
        // What the ledger knows of the escrow; the chain is read again before
        // anything is claimed or refunded.
        onchain: OnChain {
            balance: deposited.saturating_sub(refunded),
            total_claimed: amount(stored.claimed),
            ..OnChain::default()
        },
        charged: amount(stored.charged),
        signed_max: amount(stored.signed_max),
        signature: alloy_primitives::hex::decode(&stored.signature)
            .map(Bytes::from)
            .unwrap_or_default(),
        turn: Channel::new_turn(),
    })
}
