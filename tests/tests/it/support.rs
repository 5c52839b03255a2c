//! Small helpers for talking to the cluster like a client would.

use serde_json::Value;

pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

pub async fn post_chat(body: &Value) -> reqwest::Response {
    let url = format!("{}/v1/chat/completions", rungate_tests::cluster().edge_url);
    http()
        .post(url)
        .json(body)
        .send()
        .await
        .expect("edge reachable")
}

/// Splits an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// Asserts an OpenAI error body and returns its `error` object.
pub async fn openai_error(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response.headers()["content-type"].to_str().ok(),
        Some("application/json")
    );
    let body: Value = response.json().await.expect("JSON error body");
    let error = body["error"].clone();
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    error
}
