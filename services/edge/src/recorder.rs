//! Records each served call's usage in the ledger, off the response path:
//! calls queue their record here and a background task sends them in batches
//! over one ledger write stream (the ledger group-commits them). A failed
//! batch is resent; idempotency keys make resending safe.

use std::time::Duration;

use rungate_proto::ledger::v1::{LedgerWrite, Usage, WriteBatch, ledger_write::Record};
use rungate_proto::types::v1::TokenUsage;
use tokio::sync::mpsc;

use crate::state::LedgerClient;

const MAX_BATCH: usize = 256;

#[derive(Clone)]
pub struct UsageRecorder {
    queue: mpsc::Sender<LedgerWrite>,
}

/// What a finished call consumed.
pub struct ServedCall<'a> {
    pub request_id: &'a str,
    pub model: &'a str,
    pub engine: &'a str,
    pub usage: TokenUsage,
    pub finish_reason: &'a str,
    /// What it was quoted and charged (free mode: nothing). For an `exact`
    /// paid call this is the very record billing writes (same key, same
    /// payload): whichever lands first counts, so a billing crash between
    /// the answer and its own write loses nothing.
    pub charged: rungate_proto::types::v1::Amount,
}

impl UsageRecorder {
    pub fn spawn(ledger: LedgerClient) -> Self {
        let (queue, pending) = mpsc::channel(16 * MAX_BATCH);
        tokio::spawn(run(ledger, pending));
        Self { queue }
    }

    /// Queues the record; never blocks the response. A full queue (the ledger
    /// is down for long) drops the record with an error log.
    pub fn record(&self, call: ServedCall<'_>) {
        let write = LedgerWrite {
            idempotency_key: format!("usage:{}", call.request_id),
            record: Some(Record::Usage(Usage {
                request_id: call.request_id.to_owned(),
                model: call.model.to_owned(),
                tokens: Some(call.usage),
                quoted: Some(call.charged),
                charged: Some(call.charged),
                engine: call.engine.to_owned(),
                finish_reason: call.finish_reason.to_owned(),
                ..Default::default()
            })),
        };
        if let Err(error) = self.queue.try_send(write) {
            tracing::error!(request_id = call.request_id, %error, "usage record dropped: ledger queue full");
        }
    }
}

async fn run(ledger: LedgerClient, mut pending: mpsc::Receiver<LedgerWrite>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while pending.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut backoff = Duration::from_millis(100);
        loop {
            match send(&ledger, &batch).await {
                Ok(()) => break,
                Err(status) => {
                    tracing::warn!(%status, writes = batch.len(), "recording usage failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        batch.clear();
    }
}

/// Deadline of one batch's write; a ledger slower than this is retried.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

async fn send(ledger: &LedgerClient, batch: &[LedgerWrite]) -> Result<(), tonic::Status> {
    use rungate_common::client::{drain, within};
    let request = futures::stream::iter([WriteBatch {
        writes: batch.to_vec(),
    }]);
    let acked = within(WRITE_DEADLINE, async {
        let mut acks = ledger.clone().write(request).await?.into_inner();
        let acked = acks.message().await?.ok_or_else(|| {
            tonic::Status::unavailable("the ledger closed the stream without acks")
        })?;
        drain(&mut acks, Duration::from_secs(1)).await;
        Ok(acked)
    })
    .await?;
    for ack in acked.acks {
        // Applied or Duplicate are both recorded; anything else is a bug to see in logs.
        if ack.outcome != rungate_proto::ledger::v1::WriteOutcome::Applied as i32
            && ack.outcome != rungate_proto::ledger::v1::WriteOutcome::Duplicate as i32
        {
            tracing::error!(key = %ack.idempotency_key, message = %ack.message, "usage record refused");
        }
    }
    Ok(())
}
