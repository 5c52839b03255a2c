//! One trace follows a call across every hop: the caller's `traceparent`
//! reaches the edge (HTTP), inference (gRPC metadata) and the upstream (HTTP).

use serde_json::json;

#[tokio::test]
async fn the_callers_trace_reaches_the_upstream_through_edge_and_inference() {
    let trace_id = format!("{:032x}", uuid::Uuid::new_v4().as_u128());
    let url = format!("{}/v1/chat/completions", rungate_tests::cluster().edge_url);
    let question = format!("trace {trace_id}");
    let response = reqwest::Client::new()
        .post(url)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({"model": "fake-echo", "messages": [{"role": "user", "content": question}]}))
        .send()
        .await
        .expect("edge");
    assert_eq!(response.status(), 200);
    let received = rungate_tests::cluster().upstream.requests_under("ok");
    let request = received
        .iter()
        .find(|r| r.body["messages"][0]["content"] == question.as_str())
        .expect("the upstream saw the call");
    let traceparent = request
        .traceparent
        .as_deref()
        .expect("traceparent sent upstream");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[1], trace_id, "same trace id end to end");
    assert_ne!(parts[2], "00f067aa0ba902b7", "each hop adds its own span");
}
