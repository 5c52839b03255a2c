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

#[tokio::test]
async fn a_quote_without_a_model_is_invalid() {
    let mut billing = BillingServiceClient::connect(cluster().billing_url.clone())
        .await
        .expect("connect");
    let error = billing
        .quote(QuoteRequest::default())
        .await
        .expect_err("no model");
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
}
