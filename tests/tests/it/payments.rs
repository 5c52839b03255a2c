//! Settlement under failure, on a real chain (anvil) behind a proxy that
//! takes billing's RPC down: an outcome billing could not learn is retried
//! by the worker once its lease lapses, and the retry finds out what
//! happened on chain before it sends anything, so money moves exactly once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy_signer_local::PrivateKeySigner;
use rungate_tests::chain::{self, SETTLER_KEY};
use rungate_tests::paid::{PaidOptions, PaidStack};
use serde_json::{Value, json};

const BODY: &str =
    r#"{"model":"fake-echo","messages":[{"role":"user","content":"pay me"}],"max_tokens":2}"#;

async fn stack() -> PaidStack {
    let cluster = rungate_tests::cluster();
    PaidStack::start(
        &cluster.inference_url,
        &cluster.database_url,
        PaidOptions::default(),
    )
    .await
    .expect("paid stack")
}

async fn funded_payer(stack: &PaidStack, amount: u128) -> PrivateKeySigner {
    let payer = PrivateKeySigner::random();
    chain::mint(&stack.chain_url, &payer.address().to_checksum(None), amount)
        .await
        .expect("mint");
    payer
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A paid call as an x402 client makes it (402, sign, retry); its receipt id.
async fn paid_call(stack: &PaidStack, payer: &PrivateKeySigner) -> String {
    let http = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", stack.edge_url);
    let post = || {
        http.post(&url)
            .header("content-type", "application/json")
            .body(BODY)
    };
    let unpaid = post().send().await.expect("edge");
    assert_eq!(unpaid.status(), 402);
    let required = rungate_tests::x402::payment_required(unpaid.headers()).expect("402");
    let payment = rungate_tests::x402::pay(payer, &required, now(), 300).expect("sign");
    let paid = post()
        .header("PAYMENT-SIGNATURE", payment)
        .send()
        .await
        .expect("edge");
    assert_eq!(paid.status(), 200, "{:?}", paid.text().await);
    paid.headers()["x-rungate-receipt"]
        .to_str()
        .expect("ascii")
        .to_owned()
}

async fn settlement(stack: &PaidStack, id: &str) -> Value {
    let url = format!("{}/v1/receipts/{id}", stack.edge_url);
    let receipt: Value = reqwest::get(&url)
        .await
        .expect("edge")
        .json()
        .await
        .expect("JSON");
    receipt["settlement"].clone()
}

async fn wait_for(stack: &PaidStack, id: &str, status: &str, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let settlement = settlement(stack, id).await;
        if settlement["status"] == status {
            return settlement;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never became {status}: {settlement}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn rpc(stack: &PaidStack, method: &str, params: Value) -> Value {
    chain::rpc(&reqwest::Client::new(), &stack.chain_url, method, params)
        .await
        .expect("anvil")
}

async fn balance(stack: &PaidStack, payer: &PrivateKeySigner) -> u128 {
    chain::balance(&stack.chain_url, &payer.address().to_checksum(None))
        .await
        .expect("balance")
}

#[tokio::test]
async fn a_settlement_that_finds_the_rpc_down_is_retried_and_lands_once() {
    let stack = stack().await;
    let payer = funded_payer(&stack, 10).await;
    // The first call settles, and leaves billing's cached balance warm.
    let first = paid_call(&stack, &payer).await;
    let first = wait_for(&stack, &first, "settled", Duration::from_secs(10)).await;

    stack.proxy.set_up(false);
    let second = paid_call(&stack, &payer).await;
    // The worker claimed it and could not reach the chain: it stays
    // settling, nothing moved, nothing is marked failed.
    wait_for(&stack, &second, "settling", Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(settlement(&stack, &second).await["status"], "settling");
    assert_eq!(balance(&stack, &payer).await, 9);

    stack.proxy.set_up(true);
    let landed = wait_for(&stack, &second, "settled", Duration::from_secs(15)).await;
    assert_ne!(landed["transaction"], first["transaction"]);
    assert_eq!(
        balance(&stack, &payer).await,
        8,
        "each call paid exactly once"
    );
}

#[tokio::test]
async fn a_settlement_whose_receipt_never_came_is_not_sent_twice() {
    let stack = stack().await;
    let payer = funded_payer(&stack, 10).await;
    // Blocks stop: the settlement transaction waits in the mempool.
    rpc(&stack, "evm_setAutomine", json!([false])).await;
    let id = paid_call(&stack, &payer).await;
    wait_for(&stack, &id, "settling", Duration::from_secs(5)).await;
    // Past the 2 s receipt timeout (the outcome is unknown to billing), and
    // before its 4 s lease lapses, the transaction is mined.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    rpc(&stack, "evm_mine", json!([])).await;
    rpc(&stack, "evm_setAutomine", json!([true])).await;
    // The retry finds the authorization used on chain and records that transaction.
    let settled = wait_for(&stack, &id, "settled", Duration::from_secs(15)).await;
    assert_eq!(balance(&stack, &payer).await, 9);
    let settler = PrivateKeySigner::from_bytes(&SETTLER_KEY.parse().expect("key"))
        .expect("key")
        .address();
    let sent = rpc(
        &stack,
        "eth_getTransactionCount",
        json!([settler, "pending"]),
    )
    .await;
    assert_eq!(
        sent, "0x1",
        "the settler sent one transaction, not a second"
    );
    let receipt = rpc(
        &stack,
        "eth_getTransactionReceipt",
        json!([settled["transaction"]]),
    )
    .await;
    assert_eq!(receipt["status"], "0x1");
}
