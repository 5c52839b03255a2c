//! Every served call leaves a receipt in the ledger, named by the id in the
//! response's `x-rungate-receipt` header and readable at `GET /v1/receipts/{id}`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{openai_error, post_chat};

async fn receipt(id: &str) -> Value {
    let url = format!("{}/v1/receipts/{id}", rungate_tests::cluster().edge_url);
    // Usage is recorded off the response path: give it a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let response = reqwest::get(&url).await.expect("edge");
        if response.status() == 200 {
            return response.json().await.expect("JSON");
        }
        assert_eq!(response.status(), 404);
        assert!(
            tokio::time::Instant::now() < deadline,
            "no receipt for {id}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_served_call_has_a_receipt_with_its_exact_usage() {
    let response = post_chat(&json!({
        "model": "fake-echo",
        "messages": [{"role": "user", "content": "receipt please"}]
    }))
    .await;
    let id = response.headers()["x-rungate-receipt"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["id"], id.as_str());
    let receipt = receipt(&id).await;
    assert_eq!(receipt["object"], "receipt");
    assert_eq!(receipt["id"], id.as_str());
    assert_eq!(receipt["model"], "fake-echo");
    for count in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(receipt["usage"][count], body["usage"][count], "{count}");
    }
    assert!(body["usage"]["prompt_tokens"].as_u64() > Some(0));
    assert_eq!(receipt["amount"], "0", "free mode charges nothing");
    assert_eq!(receipt["settlement"], Value::Null, "nothing to settle");
}

#[tokio::test]
async fn a_streamed_call_has_a_receipt_too() {
    let response = post_chat(&json!({
        "model": "fake-echo",
        "messages": [{"role": "user", "content": "streamed receipt"}],
        "stream": true
    }))
    .await;
    let id = response.headers()["x-rungate-receipt"]
        .to_str()
        .expect("ascii")
        .to_owned();
    response.text().await.expect("body");
    let receipt = receipt(&id).await;
    assert_eq!(receipt["usage"]["completion_tokens"], 4);
}

#[tokio::test]
async fn unknown_receipts_are_404_and_ids_are_not_guessable() {
    let url = format!(
        "{}/v1/receipts/chatcmpl-nope",
        rungate_tests::cluster().edge_url
    );
    openai_error(reqwest::get(url).await.expect("edge"), 404).await;
    let a =
        post_chat(&json!({"model": "fake-echo", "messages": [{"role": "user", "content": "a"}]}))
            .await;
    let b =
        post_chat(&json!({"model": "fake-echo", "messages": [{"role": "user", "content": "b"}]}))
            .await;
    let id = |r: &reqwest::Response| {
        r.headers()["x-rungate-receipt"]
            .to_str()
            .expect("ascii")
            .to_owned()
    };
    let (a, b) = (id(&a), id(&b));
    // chatcmpl- + 32 hex digits of a random (v4) UUID.
    assert_eq!(a.len(), "chatcmpl-".len() + 32);
    assert_eq!(&a[9 + 12..9 + 13], "4", "UUID version 4");
    assert_ne!(a[9..17], b[9..17], "no shared time prefix");
}
