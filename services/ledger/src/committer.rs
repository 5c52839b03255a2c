//! Group commit: writes from every stream queue up here and are committed many
//! per transaction, so one fsync covers a whole batch. A write is acknowledged
//! only after its transaction commits (acked means durable).
//!
//! Several lanes commit in parallel, each on its own connection. A write goes
//! to the lane its request id hashes to, so the records of one call (its
//! authorization, usage, settlement) are applied in the order they were sent;
//! facts shared across lanes (nonces, idempotency keys) are guarded by unique
//! indexes, which Postgres serialises between the lanes' transactions.

use rungate_proto::ledger::v1::{LedgerWrite, WriteAck, WriteOutcome};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, watch};

use crate::LedgerError;
use crate::records::{Refusal, apply};

struct Job {
    write: LedgerWrite,
    done: oneshot::Sender<Result<WriteAck, LedgerError>>,
}

#[derive(Clone)]
pub struct Committer {
    lanes: Vec<mpsc::Sender<Job>>,
    stopped: Vec<watch::Receiver<bool>>,
}

/// The request a write is about: the key that keeps one call's records in order.
fn request_id(write: &LedgerWrite) -> &str {
    use rungate_proto::ledger::v1::ledger_write::Record;
    // A channel's writes share its lane, so its vouchers apply in order.
    match &write.record {
        Some(Record::Authorization(a)) => &a.request_id,
        Some(Record::Usage(u)) => &u.request_id,
        Some(Record::Settlement(s)) => &s.request_id,
        Some(Record::Deposit(d)) => d.channel.as_ref().map_or("", |c| c.channel_id.as_str()),
        Some(Record::Voucher(v)) => &v.channel_id,
        Some(Record::Claim(c)) => &c.channel_id,
        Some(Record::Refund(r)) => &r.channel_id,
        Some(Record::Sweep(s)) => &s.tx_hash,
        Some(Record::Gas(g)) => &g.tx_hash,
        None => "",
    }
}

impl Committer {
    pub fn spawn(pool: PgPool, max_batch: usize, lanes: usize) -> Self {
        let max_batch = max_batch.max(1);
        let (senders, stopped) = (0..lanes.max(1))
            .map(|_| {
                let (jobs, queue) = mpsc::channel(max_batch * 4);
                let (done, stopped) = watch::channel(false);
                let pool = pool.clone();
                tokio::spawn(async move {
                    run(pool, queue, max_batch).await;
                    let _ = done.send(true);
                });
                (jobs, stopped)
            })
            .unzip();
        Self {
            lanes: senders,
            stopped,
        }
    }

    fn lane(&self, write: &LedgerWrite) -> &mpsc::Sender<Job> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        request_id(write).hash(&mut hasher);
        &self.lanes[hasher.finish() as usize % self.lanes.len()]
    }

    /// Queues a batch and waits for its acks, in order.
    pub async fn submit(&self, writes: Vec<LedgerWrite>) -> Result<Vec<WriteAck>, LedgerError> {
        self.enqueue(writes).await?.acks().await
    }

    /// Queues a batch; its writes are applied after everything queued before
    /// it. Callers that need order across batches enqueue them one by one.
    pub async fn enqueue(&self, writes: Vec<LedgerWrite>) -> Result<Pending, LedgerError> {
        let mut pending = Vec::with_capacity(writes.len());
        for write in writes {
            let (done, ack) = oneshot::channel();
            self.lane(&write)
                .clone()
                .send(Job { write, done })
                .await
                .map_err(|_| LedgerError::ShuttingDown)?;
            pending.push(ack);
        }
        Ok(Pending(pending))
    }

    /// Stops taking writes once every clone is dropped and the queue is drained.
    pub async fn close(self) {
        let stopped = self.stopped.clone();
        drop(self);
        for mut lane in stopped {
            let _ = lane.wait_for(|done| *done).await;
        }
    }
}

/// Acks of an enqueued batch, arriving once its transaction commits.
pub struct Pending(Vec<oneshot::Receiver<Result<WriteAck, LedgerError>>>);

impl Pending {
    pub async fn acks(self) -> Result<Vec<WriteAck>, LedgerError> {
        let mut acks = Vec::with_capacity(self.0.len());
        for ack in self.0 {
            acks.push(ack.await.map_err(|_| LedgerError::ShuttingDown)??);
        }
        Ok(acks)
    }
}

async fn run(pool: PgPool, mut queue: mpsc::Receiver<Job>, max_batch: usize) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut known_accounts = std::collections::HashSet::new();
    while queue.recv_many(&mut batch, max_batch).await > 0 {
        commit(&pool, &mut batch, &mut known_accounts).await;
    }
}

/// Accounts the batch's writes need that this lane has not seen yet.
async fn prepare_accounts(
    pool: &PgPool,
    batch: &[Job],
    known: &mut std::collections::HashSet<String>,
) -> Result<(), sqlx::Error> {
    let missing: Vec<_> = batch
        .iter()
        .filter_map(|job| job.write.record.as_ref())
        .flat_map(crate::records::accounts_needed)
        .filter(|(code, ..)| !known.contains(code))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let codes: Vec<String> = missing.iter().map(|(code, ..)| code.clone()).collect();
    crate::records::ensure_accounts(pool, missing).await?;
    known.extend(codes);
    Ok(())
}

/// Exponential, with jitter so two deadlocked lanes do not meet again.
fn backoff(attempt: u32) -> std::time::Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut jitter = std::collections::hash_map::RandomState::new().build_hasher();
    jitter.write_u32(attempt);
    let base = 2u64 << attempt.min(8);
    std::time::Duration::from_millis(base + jitter.finish() % base)
}

fn retryable(error: &sqlx::Error) -> bool {
    // deadlock_detected, serialization_failure
    matches!(
        error.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("40P01" | "40001")
    )
}

/// Why a batch attempt stopped without committing.
enum Stop {
    Database(sqlx::Error),
    /// A write was refused on the fast path: redo the batch carefully.
    Refused,
}

impl From<sqlx::Error> for Stop {
    fn from(error: sqlx::Error) -> Self {
        Stop::Database(error)
    }
}

/// Runs the batch in one transaction. The fast path applies writes back to
/// back with no savepoints: each applied write is one round trip. A refused
/// write may have left part of itself behind (its idempotency key, say), so
/// on the first refusal the fast attempt stops and the batch runs again
/// `careful`ly, each write under a savepoint that a refusal rolls back.
/// Refusals are rare (replays, misuse), so nearly every batch is fast.
async fn attempt_batch(
    pool: &PgPool,
    batch: &[Job],
    known_accounts: &mut std::collections::HashSet<String>,
    careful: bool,
) -> Result<Vec<WriteAck>, Stop> {
    prepare_accounts(pool, batch, known_accounts).await?;
    let mut tx = pool.begin().await?;
    let mut acks = Vec::with_capacity(batch.len());
    if careful {
        sqlx::raw_sql("SAVEPOINT w").execute(&mut *tx).await?;
    }
    let last = batch.len().saturating_sub(1);
    for (i, job) in batch.iter().enumerate() {
        let (outcome, message) = match apply(&mut tx, &job.write).await {
            Ok(outcome) => (outcome, String::new()),
            Err(Refusal::Database(error)) => return Err(Stop::Database(error)),
            Err(_) if !careful => return Err(Stop::Refused),
            Err(Refusal::Conflict(m)) => (WriteOutcome::Conflict, m),
            Err(Refusal::Rejected(m)) => (WriteOutcome::Rejected, m),
        };
        if careful {
            // One round trip between writes: a refused write's rollback keeps
            // `w` for the next; an applied one releases it and sets a new one.
            let refused = matches!(outcome, WriteOutcome::Conflict | WriteOutcome::Rejected);
            let next = match (refused, i == last) {
                (true, _) => Some("ROLLBACK TO SAVEPOINT w"),
                (false, true) => None,
                (false, false) => Some("RELEASE SAVEPOINT w; SAVEPOINT w"),
            };
            if let Some(sql) = next {
                sqlx::raw_sql(sql).execute(&mut *tx).await?;
            }
        }
        acks.push(WriteAck {
            idempotency_key: job.write.idempotency_key.clone(),
            outcome: outcome as i32,
            message,
        });
    }
    tx.commit().await?;
    Ok(acks)
}

/// Seconds per group commit (retries included) and records per commit.
pub const COMMIT_DURATION: &str = "rungate_ledger_commit_duration_seconds";
pub const COMMIT_RECORDS: &str = "rungate_ledger_commit_records";

/// Deadlocks between lanes (two batches waiting on each other's unique keys,
/// e.g. a replayed nonce) abort one transaction; nothing in it was acked, so
/// the batch is simply run again.
const ATTEMPTS: u32 = 6;

async fn commit(
    pool: &PgPool,
    batch: &mut Vec<Job>,
    known_accounts: &mut std::collections::HashSet<String>,
) {
    let started = std::time::Instant::now();
    let records = batch.len();
    let mut attempt = 0;
    let mut careful = false;
    let outcome = loop {
        attempt += 1;
        match attempt_batch(pool, batch, known_accounts, careful).await {
            Ok(acks) => break Ok(acks),
            Err(Stop::Refused) => careful = true,
            Err(Stop::Database(error)) if attempt < ATTEMPTS && retryable(&error) => {
                tracing::debug!(%error, attempt, "ledger batch retried");
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(Stop::Database(error)) => break Err(error),
        }
    };
    let result = if outcome.is_ok() {
        "committed"
    } else {
        "failed"
    };
    metrics::histogram!(COMMIT_DURATION, "outcome" => result).record(started.elapsed());
    metrics::histogram!(COMMIT_RECORDS, "outcome" => result).record(records as f64);
    match outcome {
        Ok(acks) => {
            for (job, ack) in batch.drain(..).zip(acks) {
                let _ = job.done.send(Ok(ack));
            }
        }
        Err(error) => {
            tracing::error!(%error, writes = batch.len(), "ledger batch failed; nothing in it was recorded");
            for job in batch.drain(..) {
                let _ = job
                    .done
                    .send(Err(LedgerError::BatchFailed(error.to_string())));
            }
        }
    }
}
