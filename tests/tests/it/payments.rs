//! Settlement under failure, on a real chain (anvil) behind a proxy that
//! takes billing's RPC down: an outcome billing could not learn is retried
//! by the worker once its lease lapses, and the retry finds out what
//! happened on chain before it sends anything, so money moves exactly once.

use std::time::Duration;

use alloy_signer_local::PrivateKeySigner;
use rungate_common::clock::now;
use rungate_tests::chain::{self, SETTLER_KEY};
use rungate_tests::paid::{PaidOptions, PaidStack};
use serde_json::{Value, json};

const BODY: &str =
    r#"{"model":"fake-echo","messages":[{"role":"user","content":"pay me"}],"max_tokens":2}"#;

async fn stack() -> PaidStack {
    stack_with(PaidOptions::default()).await
}

async fn stack_with(options: PaidOptions) -> PaidStack {
    let cluster = rungate_tests::cluster();
    PaidStack::start(&cluster.inference_url, &cluster.database_url, options)
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

async fn chat(stack: &PaidStack, payment: Option<&str>) -> reqwest::Response {
    chat_with(stack, BODY, payment).await
}

async fn chat_with(
    stack: &PaidStack,
    body: &'static str,
    payment: Option<&str>,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", stack.edge_url))
        .header("content-type", "application/json")
        .body(body);
    if let Some(payment) = payment {
        request = request.header("PAYMENT-SIGNATURE", payment);
    }
    request.send().await.expect("edge")
}

/// What the 402 asks for, signed by `payer` as an x402 client would.
async fn sign(stack: &PaidStack, payer: &PrivateKeySigner) -> rungate_tests::x402::Signed {
    let unpaid = chat(stack, None).await;
    assert_eq!(unpaid.status(), 402);
    let required = rungate_tests::x402::payment_required(unpaid.headers()).expect("402");
    rungate_tests::x402::signed(payer, &required, now(), 300).expect("sign")
}

/// A paid call as an x402 client makes it (402, sign, retry); its receipt id.
async fn paid_call(stack: &PaidStack, payer: &PrivateKeySigner) -> String {
    let payment = sign(stack, payer).await;
    let paid = chat(stack, Some(&payment.header)).await;
    assert_eq!(paid.status(), 200, "{:?}", paid.text().await);
    paid.headers()["x-rungate-receipt"]
        .to_str()
        .expect("ascii")
        .to_owned()
}

async fn refusal(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 402);
    let body: Value = response.json().await.expect("JSON");
    body["error"].as_str().unwrap_or_default().to_owned()
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
    // Receipts are awaited 3 s; a lapsed claim (6 s) is retried.
    let stack = stack_with(PaidOptions {
        receipt_timeout: Duration::from_secs(3),
        ..PaidOptions::default()
    })
    .await;
    let payer = funded_payer(&stack, 10).await;
    // Blocks stop: the settlement transaction waits in the mempool.
    rpc(&stack, "evm_setAutomine", json!([false])).await;
    let id = paid_call(&stack, &payer).await;
    wait_for(&stack, &id, "settling", Duration::from_secs(5)).await;
    // Past the receipt timeout (the outcome is unknown to billing), and
    // well before the lease lapses, the transaction is mined.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
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

#[tokio::test]
async fn strict_chain_reads_see_what_happened_on_chain_before_serving() {
    let stack = stack_with(PaidOptions {
        chain_reads: rungate_billing::config::ChainReads::Strict,
        ..PaidOptions::default()
    })
    .await;
    let payer = funded_payer(&stack, 2).await;
    // The authorization was already used on chain (someone submitted it).
    let used = sign(&stack, &payer).await;
    let relayer = json!({"from": chain::DEPLOYER, "to": chain::TOKEN, "data": used.calldata});
    chain::transact(&reqwest::Client::new(), &stack.chain_url, relayer)
        .await
        .expect("submitted elsewhere");
    assert_eq!(
        refusal(chat(&stack, Some(&used.header)).await).await,
        "invalid_exact_evm_nonce_already_used"
    );
    // The payer's funds left a moment ago: no cache to hide it.
    let sweep = format!(
        "0xa9059cbb{:0>64}{:064x}",
        "9965507d1a55bcc2695c58ba16fb37d819b0a4dc", 1
    );
    rpc(&stack, "anvil_impersonateAccount", json!([payer.address()])).await;
    rpc(
        &stack,
        "anvil_setBalance",
        json!([payer.address(), "0xde0b6b3a7640000"]),
    )
    .await;
    let tx = json!({"from": payer.address(), "to": chain::TOKEN, "data": sweep});
    chain::transact(&reqwest::Client::new(), &stack.chain_url, tx)
        .await
        .expect("sweep");
    assert_eq!(balance(&stack, &payer).await, 0);
    let fresh = sign(&stack, &payer).await;
    assert_eq!(
        refusal(chat(&stack, Some(&fresh.header)).await).await,
        "insufficient_funds"
    );
}

#[tokio::test]
async fn a_call_the_engine_fails_is_voided_and_never_charged() {
    use rungate_proto::ledger::v1::ledger_service_client::LedgerServiceClient;
    use rungate_proto::ledger::v1::{AuthorizationKey, GetReceiptRequest, SettlementStatus};
    const FAILING: &str =
        r#"{"model":"fake-drop","messages":[{"role":"user","content":"one two three"}]}"#;
    let stack = stack().await;
    let payer = funded_payer(&stack, 10).await;
    let unpaid = chat_with(&stack, FAILING, None).await;
    assert_eq!(unpaid.status(), 402);
    let required = rungate_tests::x402::payment_required(unpaid.headers()).expect("402");
    let payment = rungate_tests::x402::signed(&payer, &required, now(), 300).expect("sign");
    // The upstream drops the connection mid-answer: the call is not served.
    let failed = chat_with(&stack, FAILING, Some(&payment.header)).await;
    assert_eq!(failed.status(), 503);
    let mut ledger = LedgerServiceClient::connect(stack.ledger_url.clone())
        .await
        .expect("ledger");
    let key = AuthorizationKey {
        network: "eip155:8453".into(),
        payer: payer.address().to_string(),
        nonce: payment.nonce.clone(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let receipt = loop {
        let receipt = ledger
            .get_receipt(GetReceiptRequest {
                request_id: String::new(),
                authorization: Some(key.clone()),
            })
            .await
            .expect("the authorization is recorded")
            .into_inner();
        if receipt.status() == SettlementStatus::Voided {
            break receipt;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not voided: {receipt:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(receipt.tx_hash.is_empty());
    // Several worker passes later: still nothing moved.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(balance(&stack, &payer).await, 10);
}

#[tokio::test]
async fn billing_authorize_and_settle_rpcs_move_the_money_once() {
    use base64::Engine;
    use rungate_proto::billing::v1::billing_service_client::BillingServiceClient;
    use rungate_proto::billing::v1::{AuthorizeRequest, QuoteRequest, SettleRequest};
    let stack = stack().await;
    let payer = funded_payer(&stack, 10).await;
    let unpaid = chat(&stack, None).await;
    let required = rungate_tests::x402::payment_required(unpaid.headers()).expect("402");
    let payment = rungate_tests::x402::signed(&payer, &required, now(), 300).expect("sign");
    let payload = base64::engine::general_purpose::STANDARD
        .decode(&payment.header)
        .expect("base64");
    let mut billing = BillingServiceClient::connect(stack.billing_url.clone())
        .await
        .expect("billing");
    let authorize = |request_id: &str| AuthorizeRequest {
        request_id: request_id.into(),
        payment_payload_json: String::from_utf8(payload.clone()).expect("utf-8"),
        // What the edge quoted: the fake echo model at the list price.
        quote: Some(QuoteRequest {
            model: "fake-echo".into(),
            prompt_tokens: 0,
            max_tokens: 0,
            resource: String::new(),
        }),
        stream: false,
        ..Default::default()
    };
    let verdict = billing
        .authorize(authorize("rpc-call-1"))
        .await
        .expect("authorize")
        .into_inner();
    assert!(verdict.is_valid, "{verdict:?}");
    assert_eq!(verdict.payer, payer.address().to_checksum(None));
    let replay = billing
        .authorize(authorize("rpc-call-2"))
        .await
        .expect("authorize")
        .into_inner();
    assert_eq!(
        replay.invalid_reason,
        "invalid_exact_evm_nonce_already_used"
    );
    let settled = billing
        .settle(SettleRequest {
            authorization_id: verdict.authorization_id.clone(),
        })
        .await
        .expect("settle")
        .into_inner();
    assert!(settled.success, "{settled:?}");
    assert!(settled.transaction.starts_with("0x"));
    assert_eq!(balance(&stack, &payer).await, 9);
    let again = billing
        .settle(SettleRequest {
            authorization_id: verdict.authorization_id,
        })
        .await
        .expect_err("settled already");
    assert_eq!(again.code(), tonic::Code::InvalidArgument);
    assert_eq!(balance(&stack, &payer).await, 9);
}
