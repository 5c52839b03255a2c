//! Acked means durable: the ledger process is killed with SIGKILL in the
//! middle of a stream of writes, restarted, and the writer replays everything
//! it has no ack for. Every acked write survived the crash; after the replay
//! every write is recorded exactly once.

use std::collections::HashSet;
use std::process::{Child, Command};

use rungate_proto::ledger::v1::ledger_service_client::LedgerServiceClient;
use rungate_proto::ledger::v1::{
    Authorization, LedgerWrite, Usage, WriteBatch, WriteOutcome, ledger_write::Record,
};
use rungate_proto::types::v1::TokenUsage;
use rungate_tests::postgres::{Postgres, die_with_parent};

/// The ledger process; killed and reaped on drop, so a failing test leaves nothing behind.
struct Ledger(Child);

impl Ledger {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start_ledger(database_url: &str, port: u16) -> Ledger {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rungate-ledger"));
    command
        .env("DATABASE_URL", database_url)
        .env("RUNGATE_LEDGER_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn");
    die_with_parent(&mut command);
    Ledger(command.spawn().expect("ledger starts"))
}

/// Record `i` of the run: authorizations and usage, alternating.
fn write(run: &str, i: usize) -> LedgerWrite {
    let request_id = format!("{run}-{i}");
    let record = if i.is_multiple_of(2) {
        Record::Authorization(Authorization {
            request_id: request_id.clone(),
            network: "eip155:8453".into(),
            asset: "0xasset".into(),
            payer: "0xpayer".into(),
            pay_to: "0xpayto".into(),
            amount: Some(1u128.into()),
            valid_after: 0,
            valid_before: 4_000_000_000,
            nonce: format!("0x{run}{i}"),
            signature: "0xsig".into(),
            scheme: "exact".into(),
            x402_version: 2,
        })
    } else {
        Record::Usage(Usage {
            request_id: request_id.clone(),
            model: "m".into(),
            tokens: Some(TokenUsage {
                prompt_tokens: 1,
                completion_tokens: 1,
            }),
            quoted: Some(1u128.into()),
            charged: Some(1u128.into()),
            engine: "local".into(),
            finish_reason: "stop".into(),
            ..Default::default()
        })
    };
    LedgerWrite {
        idempotency_key: format!("k-{request_id}"),
        record: Some(record),
    }
}

async fn connect(url: &str) -> LedgerServiceClient<tonic::transport::Channel> {
    rungate_tests::cluster::wait_serving(url)
        .await
        .expect("ledger serving");
    LedgerServiceClient::connect(url.to_owned())
        .await
        .expect("connect")
}

async fn recorded(database_url: &str, run: &str) -> HashSet<String> {
    let pool = sqlx::PgPool::connect(database_url).await.expect("db");
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT request_id FROM authorizations WHERE starts_with(request_id, $1)
         UNION ALL SELECT request_id FROM usage_records WHERE starts_with(request_id, $1)",
    )
    .bind(format!("{run}-"))
    .fetch_all(&pool)
    .await
    .expect("query");
    let unique: HashSet<String> = rows.iter().cloned().collect();
    assert_eq!(unique.len(), rows.len(), "a write was recorded twice");
    unique
}

#[tokio::test]
async fn a_killed_ledger_loses_no_acked_write_and_replays_record_once() {
    let postgres = tokio::task::spawn_blocking(|| Postgres::start(true))
        .await
        .expect("join")
        .expect("postgres");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let run = format!("crash{}", uuid::Uuid::new_v4().simple());
    const TOTAL: usize = 4_000;
    const BATCH: usize = 20;

    let mut ledger = start_ledger(&postgres.url, port);
    let mut client = connect(&url).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteBatch>(8);
    let mut acks = client
        .write(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let sender = tokio::spawn({
        let run = run.clone();
        async move {
            for start in (0..TOTAL).step_by(BATCH) {
                let writes = (start..start + BATCH).map(|i| write(&run, i)).collect();
                if tx.send(WriteBatch { writes }).await.is_err() {
                    break;
                }
            }
        }
    });
    let mut acked = HashSet::new();
    let mut killed = false;
    // The stream ends (with an error) once the ledger is gone.
    while let Ok(Some(batch)) = acks.message().await {
        for ack in batch.acks {
            assert_eq!(ack.outcome, WriteOutcome::Applied as i32, "{}", ack.message);
            acked.insert(ack.idempotency_key.trim_start_matches("k-").to_owned());
        }
        if !killed && acked.len() >= TOTAL / 4 {
            ledger.kill(); // SIGKILL, then reaped
            killed = true;
        }
    }
    sender.abort();
    assert!(killed, "the ledger was killed mid-stream");
    assert!(
        acked.len() < TOTAL,
        "some writes were still unacked at the kill"
    );

    let survived = recorded(&postgres.url, &run).await;
    let lost: Vec<_> = acked.difference(&survived).collect();
    assert!(lost.is_empty(), "acked writes lost in the crash: {lost:?}");

    // Restart and replay everything without an ack, plus some acked writes.
    let _ledger = start_ledger(&postgres.url, port);
    let mut client = connect(&url).await;
    let replay: Vec<LedgerWrite> = (0..TOTAL)
        .filter(|i| !acked.contains(&format!("{run}-{i}")) || i % 97 == 0)
        .map(|i| write(&run, i))
        .collect();
    for chunk in replay.chunks(200) {
        let mut acks = client
            .write(futures::stream::iter([WriteBatch {
                writes: chunk.to_vec(),
            }]))
            .await
            .expect("stream")
            .into_inner();
        let batch = acks.message().await.expect("acks").expect("one batch");
        for (write, ack) in chunk.iter().zip(batch.acks) {
            let key = write.idempotency_key.trim_start_matches("k-");
            let expected = if survived.contains(key) {
                WriteOutcome::Duplicate
            } else {
                WriteOutcome::Applied
            };
            assert_eq!(ack.outcome, expected as i32, "{key}: {}", ack.message);
        }
    }
    let after = recorded(&postgres.url, &run).await;
    assert_eq!(after.len(), TOTAL, "every write recorded exactly once");
}
