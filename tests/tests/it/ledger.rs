//! The ledger writes to and reads from Postgres over gRPC: idempotent writes,
//! the nonce replay guard, batched stream acks, receipts and settlements.

use rungate_proto::ledger::v1::ledger_service_client::LedgerServiceClient;
use rungate_proto::ledger::v1::{
    Authorization, AuthorizationKey, GetReceiptRequest, LedgerWrite, ListSettlementsRequest,
    SettlementStatus, SettlementUpdate, Usage, WriteBatch, WriteOutcome, ledger_write::Record,
};
use rungate_proto::types::v1::TokenUsage;
use rungate_tests::{cluster, records};
use tonic::transport::Channel;

async fn ledger() -> LedgerServiceClient<Channel> {
    LedgerServiceClient::connect(cluster().ledger_url.clone())
        .await
        .expect("connect")
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn authorization(request_id: &str, payer: &str, nonce: &str) -> Authorization {
    Authorization {
        asset: "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913".into(),
        ..records::authorization(
            "eip155:8453",
            request_id,
            payer,
            nonce,
            1_000_000_000_000_000_000_000,
        )
    }
}

fn write(key: &str, record: Record) -> LedgerWrite {
    records::write(key, record)
}

fn outcome(ack: &rungate_proto::ledger::v1::WriteAck) -> WriteOutcome {
    WriteOutcome::try_from(ack.outcome).expect("known outcome")
}

#[tokio::test]
async fn writes_are_idempotent_and_a_nonce_pays_once() {
    let mut ledger = ledger().await;
    let payer = unique("0xPayer");
    let nonce = unique("0xnonce");
    let first = write(
        &unique("auth"),
        Record::Authorization(authorization(&unique("req"), &payer, &nonce)),
    );

    let ack = ledger
        .write_one(first.clone())
        .await
        .expect("write")
        .into_inner();
    assert_eq!(outcome(&ack), WriteOutcome::Applied, "{}", ack.message);
    let again = ledger
        .write_one(first.clone())
        .await
        .expect("write")
        .into_inner();
    assert_eq!(outcome(&again), WriteOutcome::Duplicate);

    // Same key, other payload: refused.
    let mut changed = first.clone();
    if let Some(Record::Authorization(a)) = &mut changed.record {
        a.amount = Some(2u128.into());
    }
    let conflict = ledger.write_one(changed).await.expect("write").into_inner();
    assert_eq!(outcome(&conflict), WriteOutcome::Conflict);

    // Another key, same payer + nonce (any case): the replay guard refuses it.
    let replay = write(
        &unique("auth"),
        Record::Authorization(authorization(&unique("req"), &payer.to_uppercase(), &nonce)),
    );
    let replayed = ledger.write_one(replay).await.expect("write").into_inner();
    assert_eq!(
        outcome(&replayed),
        WriteOutcome::Conflict,
        "{}",
        replayed.message
    );
}

#[tokio::test]
async fn a_batched_stream_records_usage_and_settlement_and_the_receipt_shows_them() {
    let mut ledger = ledger().await;
    let request_id = unique("req");
    let payer = unique("0xpayer");
    let nonce = unique("0xn");
    let batch = WriteBatch {
        writes: vec![
            write(
                &unique("a"),
                Record::Authorization(authorization(&request_id, &payer, &nonce)),
            ),
            write(
                &unique("u"),
                Record::Usage(Usage {
                    request_id: request_id.clone(),
                    model: "fake-echo".into(),
                    tokens: Some(TokenUsage {
                        prompt_tokens: 12,
                        completion_tokens: 34,
                    }),
                    quoted: Some(5u128.into()),
                    charged: Some(5u128.into()),
                    engine: "upstream".into(),
                    finish_reason: "stop".into(),
                    ..Default::default()
                }),
            ),
            write(
                &unique("s"),
                Record::Settlement(SettlementUpdate {
                    request_id: request_id.clone(),
                    status: SettlementStatus::Settling as i32,
                    ..Default::default()
                }),
            ),
            write(
                &unique("s"),
                Record::Settlement(SettlementUpdate {
                    request_id: request_id.clone(),
                    status: SettlementStatus::Settled as i32,
                    tx_hash: "0xabc".into(),
                    block_number: 7,
                    error: String::new(),
                }),
            ),
            // Backwards: settled → settling is refused, and only this write.
            write(
                &unique("s"),
                Record::Settlement(SettlementUpdate {
                    request_id: request_id.clone(),
                    status: SettlementStatus::Settling as i32,
                    ..Default::default()
                }),
            ),
            // Invalid: no such authorization.
            write(
                &unique("s"),
                Record::Settlement(SettlementUpdate {
                    request_id: unique("ghost"),
                    status: SettlementStatus::Settled as i32,
                    ..Default::default()
                }),
            ),
        ],
    };
    let mut acks = ledger
        .write(futures::stream::iter([batch]))
        .await
        .expect("stream opens")
        .into_inner();
    let acks = acks
        .message()
        .await
        .expect("acks")
        .expect("one ack batch")
        .acks;
    let outcomes: Vec<WriteOutcome> = acks.iter().map(outcome).collect();
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Applied,
            WriteOutcome::Applied,
            WriteOutcome::Applied,
            WriteOutcome::Applied,
            WriteOutcome::Conflict,
            WriteOutcome::Rejected,
        ]
    );

    let receipt = ledger
        .get_receipt(GetReceiptRequest {
            request_id: request_id.clone(),
            authorization: None,
        })
        .await
        .expect("receipt")
        .into_inner();
    assert_eq!(receipt.model, "fake-echo");
    assert_eq!(
        receipt.tokens,
        Some(TokenUsage {
            prompt_tokens: 12,
            completion_tokens: 34
        })
    );
    assert_eq!(receipt.charged.expect("charged").atomic(), 5);
    assert_eq!(receipt.payer, payer.to_lowercase());
    assert_eq!(receipt.status, SettlementStatus::Settled as i32);
    assert_eq!(receipt.tx_hash, "0xabc");

    // The same receipt, found by the authorization that paid for it.
    let by_authorization = ledger
        .get_receipt(GetReceiptRequest {
            request_id: String::new(),
            authorization: Some(AuthorizationKey {
                network: "eip155:8453".into(),
                payer: payer.to_uppercase(),
                nonce: nonce.clone(),
            }),
        })
        .await
        .expect("receipt by authorization")
        .into_inner();
    assert_eq!(by_authorization, receipt);

    let missing = ledger
        .get_receipt(GetReceiptRequest {
            request_id: unique("nope"),
            authorization: None,
        })
        .await
        .expect_err("no receipt");
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn settlements_by_payer_are_paginated_newest_first() {
    let mut ledger = ledger().await;
    let payer = unique("0xpager");
    let mut ids = Vec::new();
    for _ in 0..5 {
        let request_id = unique("req");
        let ack = ledger
            .write_one(write(
                &unique("a"),
                Record::Authorization(authorization(&request_id, &payer, &unique("0xn"))),
            ))
            .await
            .expect("write")
            .into_inner();
        assert_eq!(outcome(&ack), WriteOutcome::Applied);
        ids.push(request_id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = ledger
            .list_settlements(ListSettlementsRequest {
                payer: payer.clone(),
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .expect("page")
            .into_inner();
        assert!(page.settlements.len() <= 2);
        for s in &page.settlements {
            assert_eq!(s.status, SettlementStatus::Authorized as i32);
            assert_eq!(
                s.amount.expect("amount").atomic(),
                1_000_000_000_000_000_000_000
            );
        }
        seen.extend(page.settlements.into_iter().map(|s| s.request_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    ids.reverse();
    assert_eq!(seen, ids);
}
