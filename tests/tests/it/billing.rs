//! Billing prices calls over gRPC.

use rungate_proto::billing::v1::QuoteRequest;
use rungate_proto::billing::v1::billing_service_client::BillingServiceClient;
use rungate_tests::cluster;

#[tokio::test]
async fn quotes_the_list_price_and_the_same_request_gets_the_same_quote() {
    let mut billing = BillingServiceClient::connect(cluster().billing_url.clone())
        .await
        .expect("connect");
    let request = QuoteRequest {
        model: "fake-echo".into(),
        prompt_tokens: 120,
        max_tokens: 256,
        resource: "http://localhost/v1/chat/completions".into(),
    };
    let first = billing
        .quote(request.clone())
        .await
        .expect("quote")
        .into_inner();
    let second = billing.quote(request).await.expect("quote").into_inner();
    assert_eq!(
        first.amount.expect("amount").atomic(),
        1,
        "list price is 1 atomic unit a call"
    );
    assert_eq!(first.amount, second.amount);
}

/// A batch-settlement refund's probe (GET, no body) is quoted for no model:
/// the default price, with the offers a refund must match.
#[tokio::test]
async fn a_quote_without_a_model_is_at_the_default_price() {
    let mut billing = BillingServiceClient::connect(cluster().billing_url.clone())
        .await
        .expect("connect");
    let quote = billing
        .quote(QuoteRequest::default())
        .await
        .expect("quote")
        .into_inner();
    assert_eq!(quote.amount.expect("amount").atomic(), 1);
    assert!(quote.flat);
}

#[tokio::test]
async fn with_payment_networks_a_quote_offers_x402_requirements_in_both_versions() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let config = rungate_billing::Config {
        networks_toml: Some(
            r#"[[networks]]
network = "eip155:8453"
v1_name = "base"
chain_id = 8453
rpc_url = "http://127.0.0.1:8545"
asset = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
eip712_name = "USD Coin"
eip712_version = "2"
pay_to = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
"#
            .into(),
        ),
        prices_toml: Some("[default]\nper_call = \"1\"\nper_completion_token = \"0.5\"".into()),
        settlement_key: Some(rungate_billing::config::Redacted(
            rungate_tests::chain::SETTLER_KEY.into(),
        )),
        ..rungate_billing::Config::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(rungate_billing::serve(listener, config, async {
        let _ = stopped.await;
    }));
    rungate_tests::cluster::wait_serving(&url)
        .await
        .expect("serving");
    let mut billing = BillingServiceClient::connect(url).await.expect("connect");
    let quote = billing
        .quote(QuoteRequest {
            model: "m".into(),
            prompt_tokens: 10,
            max_tokens: 5,
            resource: "http://127.0.0.1:8080/v1/chat/completions".into(),
        })
        .await
        .expect("quote")
        .into_inner();
    // 1 + 5 × 0.5 = 3.5 → 4 (rounded up once).
    assert_eq!(quote.amount.expect("amount").atomic(), 4);
    let v1: serde_json::Value = serde_json::from_str(&quote.requirements_v1_json[0]).expect("v1");
    assert_eq!(v1["scheme"], "exact");
    assert_eq!(v1["network"], "base");
    assert_eq!(v1["maxAmountRequired"], "4");
    assert_eq!(v1["resource"], "http://127.0.0.1:8080/v1/chat/completions");
    assert_eq!(v1["asset"], "0x5FbDB2315678afecb367f032d93F642f64180aa3");
    assert_eq!(
        v1["extra"],
        serde_json::json!({"name": "USD Coin", "version": "2"})
    );
    let v2: serde_json::Value = serde_json::from_str(&quote.requirements_v2_json[0]).expect("v2");
    assert_eq!(v2["network"], "eip155:8453");
    assert_eq!(v2["amount"], "4");
    assert_eq!(v2["payTo"], "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC");
    stop.send(()).expect("running");
    server.await.expect("join").expect("clean exit");
}

#[tokio::test]
async fn payment_networks_without_a_settlement_key_refuse_to_start() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let config = rungate_billing::Config {
        networks_toml: Some(rungate_tests::chain::networks_toml("http://127.0.0.1:9")),
        ..rungate_billing::Config::default()
    };
    let error = rungate_billing::serve(listener, config, std::future::pending())
        .await
        .expect_err("no key");
    assert!(error.to_string().contains("settlement key"), "{error}");
}
