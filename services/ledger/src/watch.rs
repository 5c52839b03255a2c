//! Settlement changes, fanned out to watchers. Postgres announces each
//! recorded transition on commit (a trigger on settlement_events calls
//! pg_notify), so watchers of any ledger replica see every replica's writes.

use rungate_proto::ledger::v1::SettlementChange;
use serde::Deserialize;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;

use crate::convert::parse_status;

pub const CHANNEL: &str = "settlement_events";

#[derive(Deserialize)]
struct Notice {
    request_id: String,
    status: String,
    tx_hash: String,
    error: String,
    at_ms: i64,
}

/// Listens for changes and broadcasts them; abort the task to stop.
pub async fn spawn(
    pool: &PgPool,
) -> Result<
    (
        broadcast::Sender<SettlementChange>,
        tokio::task::JoinHandle<()>,
    ),
    sqlx::Error,
> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    let (changes, _) = broadcast::channel(4_096);
    let sender = changes.clone();
    let task = tokio::spawn(async move {
        loop {
            match listener.recv().await {
                Ok(notification) => {
                    let Ok(notice) = serde_json::from_str::<Notice>(notification.payload()) else {
                        tracing::warn!(
                            payload = notification.payload(),
                            "unreadable settlement notice"
                        );
                        continue;
                    };
                    // No receivers is fine: nobody is watching right now.
                    let _ = sender.send(SettlementChange {
                        request_id: notice.request_id,
                        status: parse_status(&notice.status) as i32,
                        tx_hash: notice.tx_hash,
                        error: notice.error,
                        at_ms: notice.at_ms,
                    });
                }
                // PgListener reconnects by itself on the next recv.
                Err(error) => {
                    tracing::warn!(%error, "settlement listener interrupted; reconnecting");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        }
    });
    Ok((changes, task))
}
