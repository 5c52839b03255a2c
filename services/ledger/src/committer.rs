//! Group commit: writes from every stream queue up here and are committed many
//! per transaction, so one fsync covers a whole batch. A write is acknowledged
//! only after its transaction commits (acked means durable).

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
    jobs: mpsc::Sender<Job>,
    stopped: watch::Receiver<bool>,
}

impl Committer {
    pub fn spawn(pool: PgPool, max_batch: usize) -> Self {
        let (jobs, queue) = mpsc::channel(max_batch.max(1) * 4);
        let (done, stopped) = watch::channel(false);
        tokio::spawn(async move {
            run(pool, queue, max_batch.max(1)).await;
            let _ = done.send(true);
        });
        Self { jobs, stopped }
    }

    /// Queues a batch and waits for its acks, in order.
    pub async fn submit(&self, writes: Vec<LedgerWrite>) -> Result<Vec<WriteAck>, LedgerError> {
        let mut pending = Vec::with_capacity(writes.len());
        for write in writes {
            let (done, ack) = oneshot::channel();
            self.jobs
                .send(Job { write, done })
                .await
                .map_err(|_| LedgerError::ShuttingDown)?;
            pending.push(ack);
        }
        let mut acks = Vec::with_capacity(pending.len());
        for ack in pending {
            acks.push(ack.await.map_err(|_| LedgerError::ShuttingDown)??);
        }
        Ok(acks)
    }

    /// Stops taking writes once every clone is dropped and the queue is drained.
    pub async fn close(self) {
        let mut stopped = self.stopped.clone();
        drop(self);
        let _ = stopped.wait_for(|done| *done).await;
    }
}

async fn run(pool: PgPool, mut queue: mpsc::Receiver<Job>, max_batch: usize) {
    let mut batch = Vec::with_capacity(max_batch);
    while queue.recv_many(&mut batch, max_batch).await > 0 {
        commit(&pool, &mut batch).await;
    }
}

async fn commit(pool: &PgPool, batch: &mut Vec<Job>) {
    let outcome = async {
        let mut tx = pool.begin().await?;
        let mut acks = Vec::with_capacity(batch.len());
        for job in batch.iter() {
            sqlx::query("SAVEPOINT w").execute(&mut *tx).await?;
            let (outcome, message) = match apply(&mut tx, &job.write).await {
                Ok(outcome) => (outcome, String::new()),
                Err(Refusal::Database(error)) => return Err(error),
                Err(Refusal::Conflict(m)) => (WriteOutcome::Conflict, m),
                Err(Refusal::Rejected(m)) => (WriteOutcome::Rejected, m),
            };
            let end = if outcome == WriteOutcome::Applied {
                "RELEASE SAVEPOINT w"
            } else {
                "ROLLBACK TO SAVEPOINT w"
            };
            sqlx::query(end).execute(&mut *tx).await?;
            acks.push(WriteAck {
                idempotency_key: job.write.idempotency_key.clone(),
                outcome: outcome as i32,
                message,
            });
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(acks)
    }
    .await;
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
