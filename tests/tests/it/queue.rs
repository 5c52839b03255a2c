//! The settlement queue (claims with leases, SKIP LOCKED), expiry, and the
//! WatchSettlements stream.

use std::collections::HashSet;
use std::time::Duration;

use rungate_common::clock::now;
use rungate_proto::ledger::v1::ledger_service_client::LedgerServiceClient;
use rungate_proto::ledger::v1::{
    Authorization, ClaimSettlementsRequest, ExpireAuthorizationsRequest, GetReceiptRequest,
    LedgerWrite, ListBalancesRequest, SettlementStatus, SettlementUpdate, WatchSettlementsRequest,
    WriteOutcome, ledger_write::Record,
};
use rungate_tests::{cluster, records};
use tonic::transport::Channel;

async fn ledger() -> LedgerServiceClient<Channel> {
    LedgerServiceClient::connect(cluster().ledger_url.clone())
        .await
        .expect("connect")
}

fn network() -> String {
    format!("queue:{}", uuid::Uuid::new_v4().simple())
}

/// An authorization whose call was served (usage recorded): due for settlement.
async fn authorize(network: &str, request_id: &str, valid_before: u64) {
    authorize_unserved(network, request_id, valid_before).await;
    write_applied(
        format!("usage-{request_id}"),
        Record::Usage(records::usage(request_id, 5)),
    )
    .await;
}

async fn authorize_unserved(network: &str, request_id: &str, valid_before: u64) {
    let authorization = Authorization {
        valid_before,
        ..records::authorization(
            network,
            request_id,
            "0xpayer",
            &format!("0x{request_id}"),
            5,
        )
    };
    write_applied(
        format!("auth-{request_id}"),
        Record::Authorization(authorization),
    )
    .await;
}

async fn write_applied(key: String, record: Record) {
    let ack = ledger()
        .await
        .write_one(records::write(key, record))
        .await
        .expect("write")
        .into_inner();
    assert_eq!(ack.outcome, WriteOutcome::Applied as i32, "{}", ack.message);
}

fn claim(network: &str, worker: &str, limit: u32, lease_seconds: u32) -> ClaimSettlementsRequest {
    ClaimSettlementsRequest {
        worker: worker.into(),
        limit,
        lease_seconds,
        network: network.into(),
        request_id: String::new(),
    }
}

#[tokio::test]
async fn only_served_calls_are_due_unless_one_is_named() {
    let network = network();
    let request = format!("{network}-unserved");
    authorize_unserved(&network, &request, now() + 3_600).await;
    let due = ledger()
        .await
        .claim_settlements(claim(&network, "w", 10, 60))
        .await
        .expect("claim")
        .into_inner();
    assert!(due.claimed.is_empty(), "a call not served is never settled");
    let named = ledger()
        .await
        .claim_settlements(ClaimSettlementsRequest {
            request_id: request.clone(),
            ..claim(&network, "sync", 10, 60)
        })
        .await
        .expect("claim")
        .into_inner();
    assert_eq!(named.claimed.len(), 1);
    assert_eq!(
        named.claimed[0]
            .authorization
            .as_ref()
            .map(|a| a.request_id.as_str()),
        Some(request.as_str())
    );
}

#[tokio::test]
async fn concurrent_workers_never_claim_the_same_settlement() {
    let network = network();
    let mut expected = HashSet::new();
    for i in 0..12 {
        let request = format!("{network}-{i}");
        authorize(&network, &request, now() + 3_600 + i).await;
        expected.insert(request);
    }
    let mut workers = Vec::new();
    for worker in 0..4 {
        let network = network.clone();
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let claimed = ledger()
                    .await
                    .claim_settlements(claim(&network, &format!("w{worker}"), 2, 60))
                    .await
                    .expect("claim")
                    .into_inner()
                    .claimed;
                if claimed.is_empty() {
                    return mine;
                }
                for c in claimed {
                    assert_eq!(c.attempts, 1);
                    mine.push(c.authorization.expect("authorization").request_id);
                }
            }
        }));
    }
    let mut seen = Vec::new();
    for worker in workers {
        seen.extend(worker.await.expect("join"));
    }
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a settlement was claimed twice");
    assert_eq!(unique, expected);
}

#[tokio::test]
async fn a_lapsed_lease_returns_the_claim_to_the_queue() {
    let network = network();
    let request = format!("{network}-lease");
    authorize(&network, &request, now() + 3_600).await;
    let first = ledger()
        .await
        .claim_settlements(claim(&network, "a", 10, 1))
        .await
        .expect("claim")
        .into_inner();
    assert_eq!(first.claimed.len(), 1);
    let during = ledger()
        .await
        .claim_settlements(claim(&network, "b", 10, 1))
        .await
        .expect("claim")
        .into_inner();
    assert!(during.claimed.is_empty(), "leased to a");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let after = ledger()
        .await
        .claim_settlements(claim(&network, "b", 10, 60))
        .await
        .expect("claim")
        .into_inner();
    assert_eq!(after.claimed.len(), 1, "the lease ran out");
    assert_eq!(after.claimed[0].attempts, 2);
}

#[tokio::test]
async fn authorizations_past_valid_before_expire_and_their_pending_transfer_is_voided() {
    let network = network();
    let request = format!("{network}-late");
    authorize(&network, &request, now() + 1).await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let claimed = ledger()
        .await
        .claim_settlements(claim(&network, "w", 10, 60))
        .await
        .expect("claim")
        .into_inner();
    assert!(claimed.claimed.is_empty(), "too late to settle");
    // Expired by this call, or already by the ledger's own periodic pass.
    ledger()
        .await
        .expire_authorizations(ExpireAuthorizationsRequest {})
        .await
        .expect("expire");
    let receipt = ledger()
        .await
        .get_receipt(GetReceiptRequest {
            request_id: request.clone(),
            authorization: None,
        })
        .await
        .expect("receipt")
        .into_inner();
    assert_eq!(receipt.status, SettlementStatus::Expired as i32);
    let balances = ledger()
        .await
        .list_balances(ListBalancesRequest {
            code_prefix: format!("payer:{network}"),
        })
        .await
        .expect("balances")
        .into_inner()
        .balances;
    let payer = &balances[0];
    assert_eq!(
        payer.debits_pending.unwrap_or_default().atomic(),
        0,
        "voided"
    );
    assert_eq!(payer.debits_posted.unwrap_or_default().atomic(), 0);
}

#[tokio::test]
async fn watchers_see_each_transition_as_it_commits() {
    let network = network();
    let request = format!("{network}-watched");
    let mut changes = ledger()
        .await
        .watch_settlements(WatchSettlementsRequest {
            request_id: request.clone(),
        })
        .await
        .expect("watch")
        .into_inner();
    authorize(&network, &request, now() + 3_600).await;
    let ack = ledger()
        .await
        .write_one(LedgerWrite {
            idempotency_key: format!("settled-{request}"),
            record: Some(Record::Settlement(SettlementUpdate {
                request_id: request.clone(),
                status: SettlementStatus::Settled as i32,
                tx_hash: "0xfeed".into(),
                block_number: 9,
                error: String::new(),
            })),
        })
        .await
        .expect("write")
        .into_inner();
    assert_eq!(ack.outcome, WriteOutcome::Applied as i32, "{}", ack.message);
    let first = next(&mut changes).await;
    assert_eq!(
        (first.request_id.as_str(), first.status),
        (request.as_str(), SettlementStatus::Authorized as i32)
    );
    let second = next(&mut changes).await;
    assert_eq!(second.status, SettlementStatus::Settled as i32);
    assert_eq!(second.tx_hash, "0xfeed");
}

async fn next(
    changes: &mut tonic::Streaming<rungate_proto::ledger::v1::SettlementChange>,
) -> rungate_proto::ledger::v1::SettlementChange {
    tokio::time::timeout(Duration::from_secs(5), changes.message())
        .await
        .expect("a change within 5 s")
        .expect("stream")
        .expect("open")
}
