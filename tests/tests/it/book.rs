//! The double-entry book: authorizations book pending transfers, settlement
//! posts them, failure voids them; balances are always a recomputation of the
//! transfers; Σ debits = Σ credits. A property test drives random sequences of
//! operations against an in-memory model of the same rules.

use std::collections::HashMap;

use proptest::prelude::*;
use rungate_proto::ledger::v1::ledger_service_client::LedgerServiceClient;
use rungate_proto::ledger::v1::{
    Balance, LedgerWrite, ListBalancesRequest, SettlementStatus, SettlementUpdate, WriteOutcome,
    ledger_write::Record,
};
use rungate_tests::{cluster, records};
use tonic::transport::Channel;

async fn ledger() -> LedgerServiceClient<Channel> {
    LedgerServiceClient::connect(cluster().ledger_url.clone())
        .await
        .expect("connect")
}

fn authorization(
    network: &str,
    payer: &str,
    request_id: &str,
    nonce: &str,
    amount: u128,
) -> LedgerWrite {
    let record = records::authorization(network, request_id, payer, nonce, amount);
    records::write(format!("auth-{request_id}"), Record::Authorization(record))
}

fn settlement(request_id: &str, status: SettlementStatus, step: usize) -> LedgerWrite {
    LedgerWrite {
        idempotency_key: format!("settle-{request_id}-{step}"),
        record: Some(Record::Settlement(SettlementUpdate {
            request_id: request_id.into(),
            status: status as i32,
            tx_hash: if status == SettlementStatus::Settled {
                "0xtx".into()
            } else {
                String::new()
            },
            ..Default::default()
        })),
    }
}

async fn balances(prefix: &str) -> HashMap<String, [u128; 4]> {
    ledger()
        .await
        .list_balances(ListBalancesRequest {
            code_prefix: prefix.into(),
        })
        .await
        .expect("balances")
        .into_inner()
        .balances
        .into_iter()
        .map(|b: Balance| {
            let n = |a: Option<rungate_proto::types::v1::Amount>| a.unwrap_or_default().atomic();
            (
                b.account,
                [
                    n(b.debits_posted),
                    n(b.credits_posted),
                    n(b.debits_pending),
                    n(b.credits_pending),
                ],
            )
        })
        .collect()
}

/// Writes as a client should: UNAVAILABLE means "not recorded, send it again
/// with the same idempotency key" (lanes can deadlock on contended nonces).
async fn outcome(write: LedgerWrite) -> WriteOutcome {
    let mut tries = 0;
    loop {
        tries += 1;
        match ledger().await.write_one(write.clone()).await {
            Ok(ack) => return WriteOutcome::try_from(ack.into_inner().outcome).expect("outcome"),
            Err(status) if status.code() == tonic::Code::Unavailable && tries < 10 => {
                tokio::time::sleep(std::time::Duration::from_millis(20 * tries)).await;
            }
            Err(status) => panic!("write failed: {status}"),
        }
    }
}

#[tokio::test]
async fn settlement_posts_and_failure_voids_the_pending_transfer() {
    let network = format!("test:{}", uuid::Uuid::new_v4().simple());
    let ledger_code = format!("{network}:0xasset");
    let payer = "0xPAYER";
    assert_eq!(
        outcome(authorization(
            &network,
            payer,
            &format!("{network}-a"),
            "0x1",
            700
        ))
        .await,
        WriteOutcome::Applied
    );
    assert_eq!(
        outcome(authorization(
            &network,
            payer,
            &format!("{network}-b"),
            "0x2",
            50
        ))
        .await,
        WriteOutcome::Applied
    );
    let book = balances(&format!("payer:{ledger_code}")).await;
    let payer_account = format!("payer:{ledger_code}:0xpayer");
    assert_eq!(book[&payer_account], [0, 0, 750, 0], "both pending");

    for (step, status) in [SettlementStatus::Settling, SettlementStatus::Settled]
        .into_iter()
        .enumerate()
    {
        assert_eq!(
            outcome(settlement(&format!("{network}-a"), status, step)).await,
            WriteOutcome::Applied
        );
    }
    assert_eq!(
        outcome(settlement(
            &format!("{network}-b"),
            SettlementStatus::Failed,
            0
        ))
        .await,
        WriteOutcome::Applied
    );
    // A settled payment cannot be voided afterwards: the state machine and the
    // resolve-once index both forbid a second resolution.
    assert_eq!(
        outcome(settlement(
            &format!("{network}-a"),
            SettlementStatus::Voided,
            9
        ))
        .await,
        WriteOutcome::Conflict
    );

    let payer_side = balances(&format!("payer:{ledger_code}")).await;
    assert_eq!(
        payer_side[&payer_account],
        [700, 0, 0, 0],
        "700 posted, 50 voided"
    );
    let revenue = balances(&format!("revenue:{ledger_code}")).await;
    assert_eq!(revenue[&format!("revenue:{ledger_code}")], [0, 700, 0, 0]);
}

#[tokio::test]
async fn every_transfer_balances_across_the_whole_book() {
    let all = balances("").await;
    let total = |i: usize| all.values().map(|b| b[i]).sum::<u128>();
    assert_eq!(total(0), total(1), "posted: debits = credits");
    assert_eq!(total(2), total(3), "pending: debits = credits");
}

#[tokio::test]
async fn fifty_concurrent_writers_with_overlapping_nonces_record_each_nonce_once() {
    let network = format!("test:{}", uuid::Uuid::new_v4().simple());
    let mut writers = Vec::new();
    for writer in 0..50 {
        let network = network.clone();
        writers.push(tokio::spawn(async move {
            // Ten nonces shared by fifty writers, each write under its own key and request.
            let nonce = format!("0xn{}", writer % 10);
            let request = format!("{network}-{writer}");
            let result = outcome(authorization(&network, "0xp", &request, &nonce, 1)).await;
            (nonce, result)
        }));
    }
    let mut applied: HashMap<String, usize> = HashMap::new();
    for writer in writers {
        let (nonce, outcome) = writer.await.expect("join");
        match outcome {
            WriteOutcome::Applied => *applied.entry(nonce).or_default() += 1,
            WriteOutcome::Conflict => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(applied.len(), 10);
    assert!(applied.values().all(|&n| n == 1), "{applied:?}");
    let book = balances(&format!("payer:{network}")).await;
    assert_eq!(
        book.values().next().expect("payer")[2],
        10,
        "ten pending transfers of 1"
    );
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum Op {
    Authorize { payer: u8, nonce: u8, amount: u32 },
    Advance { auth: usize, to: SettlementStatus },
    Replay { write: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3, 0u8..6, 1u32..1_000).prop_map(|(payer, nonce, amount)| Op::Authorize {
            payer,
            nonce,
            amount
        }),
        (
            0usize..16,
            prop_oneof![
                Just(SettlementStatus::Settling),
                Just(SettlementStatus::Settled),
                Just(SettlementStatus::Failed),
                Just(SettlementStatus::Expired),
                Just(SettlementStatus::Voided),
            ]
        )
            .prop_map(|(auth, to)| Op::Advance { auth, to }),
        (0usize..32).prop_map(|write| Op::Replay { write }),
    ]
}

/// The rules, in memory: what each write should do to the book.
#[derive(Default)]
struct Model {
    nonces: HashMap<(u8, u8), ()>,
    auths: Vec<(u8, u128, SettlementStatus)>,
    /// payer → [posted, pending]
    payers: HashMap<u8, [u128; 2]>,
    revenue: [u128; 2],
}

fn rank(s: SettlementStatus) -> u8 {
    match s {
        SettlementStatus::Authorized => 1,
        SettlementStatus::Settling => 2,
        _ => 3,
    }
}

async fn run_case(ops: Vec<Op>) {
    let network = format!("prop:{}", uuid::Uuid::new_v4().simple());
    let mut model = Model::default();
    let mut sent: Vec<LedgerWrite> = Vec::new();
    let mut step = 0;
    for op in ops {
        step += 1;
        let (write, expected) = match op {
            Op::Authorize {
                payer,
                nonce,
                amount,
            } => {
                let request = format!("{network}-{step}");
                let write = authorization(
                    &network,
                    &format!("0xp{payer}"),
                    &request,
                    &format!("0x{nonce}"),
                    amount.into(),
                );
                let fresh = model.nonces.insert((payer, nonce), ()).is_none();
                if fresh {
                    model
                        .auths
                        .push((payer, amount.into(), SettlementStatus::Authorized));
                    model.payers.entry(payer).or_default()[1] += u128::from(amount);
                    model.revenue[1] += u128::from(amount);
                }
                // Model index i is the i-th applied authorization sent (see request_of).
                (
                    write,
                    if fresh {
                        WriteOutcome::Applied
                    } else {
                        WriteOutcome::Conflict
                    },
                )
            }
            Op::Advance { auth, to } => {
                if model.auths.is_empty() {
                    continue;
                }
                let index = auth % model.auths.len();
                let (payer, amount, from) = model.auths[index];
                let request = request_of(&sent, index);
                let write = settlement(&request, to, step);
                let allowed = rank(from) < 3
                    && (rank(to) > rank(from) || (from == to && to == SettlementStatus::Settling));
                if allowed {
                    model.auths[index].2 = to;
                    let balance = model.payers.entry(payer).or_default();
                    match to {
                        SettlementStatus::Settled => {
                            balance[1] -= amount;
                            balance[0] += amount;
                            model.revenue[1] -= amount;
                            model.revenue[0] += amount;
                        }
                        SettlementStatus::Failed
                        | SettlementStatus::Expired
                        | SettlementStatus::Voided => {
                            balance[1] -= amount;
                            model.revenue[1] -= amount;
                        }
                        _ => {}
                    }
                }
                (
                    write,
                    if allowed {
                        WriteOutcome::Applied
                    } else {
                        WriteOutcome::Conflict
                    },
                )
            }
            Op::Replay { write } => {
                let Some(previous) = sent.get(write % sent.len().max(1)).cloned() else {
                    continue;
                };
                // Replays change nothing: the first outcome (applied → duplicate;
                // refused → refused again, the key was never kept).
                let expected = if previous.idempotency_key.starts_with("applied:") {
                    WriteOutcome::Duplicate
                } else {
                    WriteOutcome::Conflict
                };
                let mut replay = previous;
                replay.idempotency_key = replay
                    .idempotency_key
                    .split_once(':')
                    .map_or(replay.idempotency_key.clone(), |(_, k)| k.to_owned());
                (replay, expected)
            }
        };
        let got = outcome(write.clone()).await;
        assert_eq!(got, expected, "{write:?}");
        if !matches!(got, WriteOutcome::Duplicate) {
            let mut remembered = write;
            let tag = if got == WriteOutcome::Applied {
                "applied"
            } else {
                "refused"
            };
            remembered.idempotency_key = format!("{tag}:{}", remembered.idempotency_key);
            sent.push(remembered);
        }
    }
    let book = balances(&format!("payer:{network}")).await;
    for (payer, [posted, pending]) in &model.payers {
        let account = format!("payer:{network}:0xasset:0xp{payer}");
        let got = book.get(&account).copied().unwrap_or_default();
        assert_eq!([got[0], got[2]], [*posted, *pending], "{account}");
        assert_eq!([got[1], got[3]], [0, 0], "payers are only debited");
    }
    let revenue = balances(&format!("revenue:{network}")).await;
    let got = revenue.values().next().copied().unwrap_or_default();
    assert_eq!([got[1], got[3]], model.revenue, "revenue");
}

/// The request id of the `index`-th applied authorization.
fn request_of(sent: &[LedgerWrite], index: usize) -> String {
    sent.iter()
        .filter(|w| w.idempotency_key.starts_with("applied:"))
        .filter_map(|w| match &w.record {
            Some(Record::Authorization(a)) => Some(a.request_id.clone()),
            _ => None,
        })
        .nth(index)
        .unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_keep_the_book_equal_to_the_model(ops in prop::collection::vec(op(), 1..24)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(run_case(ops));
    }
}
