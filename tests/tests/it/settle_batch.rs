//! Deferred `exact` settlement keeps up, or serving slows down: many
//! authorizations settle per transaction (Multicall3); an authorization the
//! worker could not send in time is refused up front; and when settlement
//! falls behind, new payments get 503 with Retry-After instead of being
//! served and left to expire unpaid.

use std::collections::HashSet;
use std::time::Duration;

use alloy_signer_local::PrivateKeySigner;
use rungate_common::clock::now;
use rungate_tests::chain::{self, PAY_TO};
use rungate_tests::paid::{PaidOptions, PaidStack};
use serde_json::{Value, json};

const BODY: &str =
    r#"{"model":"fake-echo","messages":[{"role":"user","content":"pay me"}],"max_tokens":2}"#;

async fn stack(options: PaidOptions) -> PaidStack {
    let cluster = rungate_tests::cluster();
    PaidStack::start(&cluster.inference_url, &cluster.database_url, options)
        .await
        .expect("paid stack")
}

async fn chat(stack: &PaidStack, payment: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", stack.edge_url))
        .header("content-type", "application/json")
        .body(BODY);
    if let Some(payment) = payment {
        request = request.header("PAYMENT-SIGNATURE", payment);
    }
    request.send().await.expect("edge")
}

async fn required(stack: &PaidStack) -> Value {
    let unpaid = chat(stack, None).await;
    assert_eq!(unpaid.status(), 402);
    rungate_tests::x402::payment_required(unpaid.headers()).expect("402")
}

async fn funded(stack: &PaidStack, amount: u128) -> PrivateKeySigner {
    let payer = PrivateKeySigner::random();
    chain::mint(&stack.chain_url, &payer.address().to_checksum(None), amount)
        .await
        .expect("mint");
    payer
}

async fn settlement(stack: &PaidStack, id: &str) -> Value {
    let receipt: Value = reqwest::get(format!("{}/v1/receipts/{id}", stack.edge_url))
        .await
        .expect("edge")
        .json()
        .await
        .expect("JSON");
    receipt["settlement"].clone()
}

/// Waits for every call's settlement to be final; their transactions.
async fn settled(stack: &PaidStack, ids: &[String]) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut transactions = Vec::new();
    for id in ids {
        loop {
            let found = settlement(stack, id).await;
            if found["status"] == "settled" {
                transactions.push(found["transaction"].as_str().expect("tx").to_owned());
                break;
            }
            assert!(
                found["status"] == "authorized" || found["status"] == "settling",
                "{id}: {found}"
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} never settled: {found}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    transactions
}

#[tokio::test]
async fn many_authorizations_settle_in_a_few_transactions_each_exactly_once() {
    let stack = stack(PaidOptions {
        settle_interval: Duration::from_millis(500),
        ..PaidOptions::default()
    })
    .await;
    let required = required(&stack).await;
    let payer = funded(&stack, 1_000).await;
    let before = chain::balance(&stack.chain_url, PAY_TO)
        .await
        .expect("balance");
    let calls = (0..40).map(|_| {
        let payment = rungate_tests::x402::pay(&payer, &required, now(), 300).expect("sign");
        let stack = &stack;
        async move {
            let paid = chat(stack, Some(&payment)).await;
            assert_eq!(paid.status(), 200);
            paid.headers()["x-rungate-receipt"]
                .to_str()
                .expect("id")
                .to_owned()
        }
    });
    let ids = futures::future::join_all(calls).await;
    let transactions = settled(&stack, &ids).await;
    let distinct: HashSet<_> = transactions.iter().collect();
    assert!(
        distinct.len() <= 8,
        "40 settlements in {} transactions",
        distinct.len()
    );
    let payer_address = payer.address().to_checksum(None);
    assert_eq!(
        chain::balance(&stack.chain_url, &payer_address)
            .await
            .expect("balance"),
        960,
        "each call paid exactly once"
    );
    assert_eq!(
        chain::balance(&stack.chain_url, PAY_TO)
            .await
            .expect("balance")
            - before,
        40
    );
}

#[tokio::test]
async fn a_payment_too_short_lived_to_be_settled_in_time_is_refused_up_front() {
    let stack = stack(PaidOptions::default()).await;
    let required = required(&stack).await;
    let payer = funded(&stack, 10).await;
    // Valid for 15 s: past the verifier's 6 s margin, inside the worker's 20 s.
    let payment = rungate_tests::x402::pay(&payer, &required, now(), 15).expect("sign");
    let refused = chat(&stack, Some(&payment)).await;
    assert_eq!(refused.status(), 402);
    let body: Value = refused.json().await.expect("JSON");
    assert_eq!(
        body["error"],
        "invalid_exact_evm_payload_authorization_valid_before"
    );
}

#[tokio::test]
async fn when_settlement_falls_behind_new_payments_wait_and_nothing_served_expires() {
    // Payments valid for 45 s: a backlog whose oldest call has under a
    // minute left is already at risk.
    let stack = stack(PaidOptions {
        max_timeout_seconds: 45,
        receipt_timeout: Duration::from_secs(2),
        ..PaidOptions::default()
    })
    .await;
    let required = required(&stack).await;
    let payer = funded(&stack, 1_000).await;
    let rpc = |method: &'static str, params: Value| {
        let url = stack.chain_url.clone();
        async move {
            chain::rpc(&reqwest::Client::new(), &url, method, params)
                .await
                .expect("anvil")
        }
    };
    // The chain stops mining: settlements are sent and never confirmed.
    rpc("evm_setAutomine", json!([false])).await;
    let mut served = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let retry_after = loop {
        let payment = rungate_tests::x402::pay(&payer, &required, now(), 45).expect("sign");
        let response = chat(&stack, Some(&payment)).await;
        match response.status().as_u16() {
            200 => served.push(
                response.headers()["x-rungate-receipt"]
                    .to_str()
                    .expect("id")
                    .to_owned(),
            ),
            503 => break response.headers()["retry-after"].clone(),
            other => panic!("unexpected {other}: {:?}", response.text().await),
        }
        assert!(tokio::time::Instant::now() < deadline, "never pushed back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!served.is_empty());
    assert!(retry_after.to_str().expect("ascii").parse::<u32>().is_ok());
    // Blocks again: the backlog settles, and payments are taken again.
    rpc("evm_setAutomine", json!([true])).await;
    rpc("evm_mine", json!([])).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let payment = rungate_tests::x402::pay(&payer, &required, now(), 45).expect("sign");
        let response = chat(&stack, Some(&payment)).await;
        if response.status() == 200 {
            served.push(
                response.headers()["x-rungate-receipt"]
                    .to_str()
                    .expect("id")
                    .to_owned(),
            );
            break;
        }
        assert_eq!(response.status(), 503);
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Every call that was served is settled: none expired unpaid.
    let transactions = settled(&stack, &served).await;
    assert_eq!(transactions.len(), served.len());
    assert_eq!(
        chain::balance(&stack.chain_url, &payer.address().to_checksum(None))
            .await
            .expect("balance"),
        1_000 - served.len() as u128
    );
}

/// The edge writes a served `exact` call's usage record too, byte for byte
/// the one billing writes (same key, same payload): a billing that dies
/// between the answer and its own write loses nothing, and the two writes
/// never conflict.
#[tokio::test]
async fn the_edge_and_billing_write_the_same_usage_record() {
    use rungate_proto::ledger::v1::ledger_service_client::LedgerServiceClient;
    use rungate_proto::ledger::v1::{LedgerWrite, Usage, WriteOutcome, ledger_write::Record};
    use rungate_proto::types::v1::TokenUsage;
    let stack = stack(PaidOptions::default()).await;
    let required = required(&stack).await;
    let payer = funded(&stack, 10).await;
    let payment = rungate_tests::x402::pay(&payer, &required, now(), 300).expect("sign");
    let paid = chat(&stack, Some(&payment)).await;
    assert_eq!(paid.status(), 200);
    let id = paid.headers()["x-rungate-receipt"]
        .to_str()
        .expect("id")
        .to_owned();
    let body: Value = paid.json().await.expect("JSON");
    settled(&stack, std::slice::from_ref(&id)).await;
    // What billing records for the call (the fake upstream serves it as echo-1).
    let record = Usage {
        request_id: id.clone(),
        model: "fake-echo".into(),
        tokens: Some(TokenUsage {
            prompt_tokens: body["usage"]["prompt_tokens"].as_u64().expect("usage") as u32,
            completion_tokens: body["usage"]["completion_tokens"].as_u64().expect("usage") as u32,
        }),
        quoted: Some(1u128.into()),
        charged: Some(1u128.into()),
        engine: "echo-1".into(),
        finish_reason: body["choices"][0]["finish_reason"]
            .as_str()
            .expect("finish reason")
            .into(),
        ..Default::default()
    };
    let mut ledger = LedgerServiceClient::connect(stack.ledger_url.clone())
        .await
        .expect("ledger");
    let ack = ledger
        .write_one(LedgerWrite {
            idempotency_key: format!("usage:{id}"),
            record: Some(Record::Usage(record)),
        })
        .await
        .expect("write")
        .into_inner();
    assert_eq!(ack.outcome(), WriteOutcome::Duplicate, "{}", ack.message);
}
