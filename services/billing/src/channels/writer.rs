//! Coalesced writes: a served call's voucher and usage are queued here and
//! written in batches a few milliseconds apart, so no call waits for a
//! commit of its own. Per channel only the latest voucher is written (an
//! older one would change nothing: the ledger's totals only move forward).
//! Gas records ride along. A batch the ledger did not take is sent again
//! (idempotency keys make that safe) until it does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::B256;
use rungate_proto::ledger::v1::{
    ChannelVoucher, GasSpent, LedgerWrite, Usage, ledger_write::Record,
};
use tokio::sync::mpsc;

use super::{Shared, lock};
use crate::chain::Chain;
use crate::chain::escrow::Mined;
use crate::ledger::Ledger;

enum Queued {
    Voucher(Shared, Usage),
    Write(LedgerWrite),
}

#[derive(Clone)]
pub struct Writer {
    queue: mpsc::UnboundedSender<Queued>,
}

impl Writer {
    /// Starts the writer; `flush` is how long writes gather before a batch.
    pub fn spawn(ledger: Ledger, flush: Duration) -> Self {
        let (queue, queued) = mpsc::unbounded_channel();
        tokio::spawn(run(ledger, queued, flush));
        Self { queue }
    }

    /// A served call: its usage, and its channel's voucher (as it is when written).
    pub fn voucher(&self, channel: Shared, usage: Usage) {
        let _ = self.queue.send(Queued::Voucher(channel, usage));
    }

    /// What a transaction of ours cost.
    pub fn gas(&self, chain: &Chain, mined: &Mined, purpose: &str) {
        let record = GasSpent {
            network: chain.network.network.clone(),
            payer: chain.settler().to_string(),
            tx_hash: mined.tx_hash.to_string(),
            wei: Some(mined.gas_wei.into()),
            purpose: purpose.to_owned(),
        };
        let _ = self.queue.send(Queued::Write(LedgerWrite {
            idempotency_key: format!("gas:{}", mined.tx_hash),
            record: Some(Record::Gas(record)),
        }));
    }
}

async fn run(ledger: Ledger, mut queued: mpsc::UnboundedReceiver<Queued>, flush: Duration) {
    let mut items = Vec::new();
    loop {
        // Wait for the first write, then let more gather for `flush`.
        if queued.recv_many(&mut items, 1).await == 0 {
            return;
        }
        tokio::time::sleep(flush).await;
        while let Ok(item) = queued.try_recv() {
            items.push(item);
        }
        let writes = batch(std::mem::take(&mut items));
        let mut pause = Duration::from_millis(50);
        while let Err(error) = ledger.write_batch(writes.clone()).await {
            tracing::warn!(%error, writes = writes.len(), "storing vouchers failed; retrying");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
}

/// Usage in arrival order, then each channel's latest voucher once.
fn batch(items: Vec<Queued>) -> Vec<LedgerWrite> {
    let mut writes = Vec::with_capacity(items.len() + 1);
    let mut channels: HashMap<B256, Shared> = HashMap::new();
    for item in items {
        match item {
            Queued::Voucher(channel, usage) => {
                let id = lock(&channel).id;
                channels.entry(id).or_insert(channel);
                writes.push(LedgerWrite {
                    idempotency_key: format!("usage:{}", usage.request_id),
                    record: Some(Record::Usage(usage)),
                });
            }
            Queued::Write(write) => writes.push(write),
        }
    }
    for channel in channels.values().map(Arc::clone) {
        let channel = lock(&channel);
        let voucher = ChannelVoucher {
            channel_id: channel.id.to_string(),
            signed_max: Some(channel.signed_max.into()),
            signature: channel.signature.to_string(),
            charged: Some(channel.charged.into()),
        };
        writes.push(LedgerWrite {
            idempotency_key: format!(
                "voucher:{}:{}:{}",
                channel.id, channel.charged, channel.signed_max
            ),
            record: Some(Record::Voucher(voucher)),
        });
    }
    writes
}
