//! Chat completions cross edge → inference (gRPC stream) → upstream engine →
//! fake OpenAI-compatible server, and back.

use serde_json::{Value, json};

use crate::support::{openai_error, post_chat, sse_data};

fn ask(model: &str, question: &str) -> Value {
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": question}
        ]
    })
}

#[tokio::test]
async fn non_streaming_completion_has_the_openai_shape_and_exact_usage() {
    let response = post_chat(&ask("fake-echo", "What is the capital of France?")).await;
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["id"], request_id.as_str());
    assert!(request_id.starts_with("chatcmpl-"));
    assert_eq!(body["model"], "fake-echo");
    assert!(body["created"].as_u64().is_some_and(|t| t > 1_700_000_000));
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(
        choice["message"]["content"],
        "You said: What is the capital of France?"
    );
    assert_eq!(choice["finish_reason"], "stop");
    // The fake upstream counts words: 2 (system) + 6 (user) prompt, 8 answer words.
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 8, "completion_tokens": 8, "total_tokens": 16, "prompt_tokens_details": {"cached_tokens": 0}})
    );
}

#[tokio::test]
async fn streaming_completion_sends_the_exact_chunk_sequence() {
    let mut request = ask("fake-echo", "Name three colours");
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let response = post_chat(&request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = sse_data(&response.text().await.expect("body"));
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk JSON"))
        .collect();
    let id = chunks[0]["id"].clone();
    let created = chunks[0]["created"].clone();
    for chunk in &chunks {
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["created"], created);
        assert_eq!(chunk["object"], "chat.completion.chunk");
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(chunks[0]["usage"], Value::Null);
    let n = chunks.len();
    let finish = &chunks[n - 2];
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = &chunks[n - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10, "prompt_tokens_details": {"cached_tokens": 0}})
    );
    let text: String = chunks[1..n - 2]
        .iter()
        .map(|c| {
            assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
            c["choices"][0]["delta"]["content"]
                .as_str()
                .expect("content delta")
                .to_owned()
        })
        .collect();
    assert_eq!(text, "You said: Name three colours");
}

#[tokio::test]
async fn streaming_without_include_usage_has_no_usage_chunk() {
    let mut request = ask("fake-echo", "hello");
    request["stream"] = json!(true);
    let events = sse_data(&post_chat(&request).await.text().await.expect("body"));
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    for event in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(event).expect("chunk");
        assert!(chunk.get("usage").is_none(), "{chunk}");
        assert_eq!(chunk["choices"].as_array().map(Vec::len), Some(1));
    }
}

#[tokio::test]
async fn max_tokens_ends_with_length_and_exactly_that_many_tokens() {
    let mut request = ask("fake-echo", "Tell me a very long story please");
    request["max_tokens"] = json!(3);
    let body: Value = post_chat(&request).await.json().await.expect("JSON");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 3);
    assert_eq!(body["choices"][0]["message"]["content"], "You said: Tell");
}

#[tokio::test]
async fn request_fields_reach_the_upstream_and_usage_is_always_requested() {
    let mut request = ask("fake-echo", "sampling check");
    request["temperature"] = json!(0.25);
    request["top_p"] = json!(0.5);
    request["seed"] = json!(42);
    request["stop"] = json!(["END"]);
    request["max_completion_tokens"] = json!(50);
    request["user"] = json!("agent-7");
    request["tools"] = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    assert_eq!(post_chat(&request).await.status(), 200);
    let sent = rungate_tests::cluster().upstream.received("ok");
    let body = sent
        .iter()
        .find(|b| b["messages"][1]["content"] == "sampling check")
        .expect("upstream saw the request");
    assert_eq!(
        body["model"], "echo-1",
        "public id mapped to the upstream's name"
    );
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["temperature"], 0.25);
    assert_eq!(body["top_p"], 0.5);
    assert_eq!(body["seed"], 42);
    assert_eq!(body["stop"], json!(["END"]));
    assert_eq!(body["max_tokens"], 50);
    assert_eq!(body["user"], "agent-7");
    assert_eq!(body["tools"][0]["function"]["name"], "f");
}

#[tokio::test]
async fn fails_over_past_500_and_429_before_the_first_token() {
    let response = post_chat(&ask("fake-failover", "are you there")).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "You said: are you there"
    );
    let upstream = &rungate_tests::cluster().upstream;
    let tried = |mode| {
        upstream
            .received(mode)
            .iter()
            .any(|b| b["messages"][1]["content"] == "are you there")
    };
    assert!(tried("fail500") && tried("fail429") && tried("ok"));
}

#[tokio::test]
async fn a_stream_dropped_mid_generation_ends_with_an_error_event_not_done() {
    let mut request = ask("fake-drop", "one two three four five");
    request["stream"] = json!(true);
    let response = post_chat(&request).await;
    assert_eq!(
        response.status(),
        200,
        "the first token arrived, so the stream began"
    );
    let events = sse_data(&response.text().await.expect("body"));
    assert!(!events.contains(&"[DONE]".to_owned()), "{events:?}");
    let last: Value = serde_json::from_str(events.last().expect("events")).expect("JSON");
    assert_eq!(last["error"]["type"], "server_error", "{last}");
}

#[tokio::test]
async fn an_upstream_that_stalls_mid_stream_hits_the_idle_timeout() {
    let mut request = ask("fake-stall", "one two three four five");
    request["stream"] = json!(true);
    let started = std::time::Instant::now();
    let events = sse_data(&post_chat(&request).await.text().await.expect("body"));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "the 5 s stall was cut short"
    );
    let last: Value = serde_json::from_str(events.last().expect("events")).expect("JSON");
    assert!(
        last["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("sent nothing")),
        "{last}"
    );
}

#[tokio::test]
async fn a_dropped_non_streaming_call_is_a_503_not_a_partial_answer() {
    let error = openai_error(post_chat(&ask("fake-drop", "one two three")).await, 503).await;
    assert_eq!(error["type"], "server_error");
}

#[tokio::test]
async fn an_upstream_that_never_sends_a_first_token_times_out() {
    let error = openai_error(post_chat(&ask("fake-slow", "hello")).await, 504).await;
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("first token")),
        "{error}"
    );
}

#[tokio::test]
async fn an_unreachable_upstream_is_503_with_retry_after() {
    let response = post_chat(&ask("fake-refused", "hello")).await;
    assert!(response.headers().contains_key("retry-after"));
    openai_error(response, 503).await;
}

#[tokio::test]
async fn unknown_model_is_404_model_not_found() {
    let error = openai_error(post_chat(&ask("no-such-model", "hi")).await, 404).await;
    assert_eq!(error["code"], "model_not_found");
    assert_eq!(error["param"], "model");
    assert_eq!(error["type"], "invalid_request_error");
}

#[tokio::test]
async fn bad_requests_are_400_naming_the_field() {
    let url = format!("{}/v1/chat/completions", rungate_tests::cluster().edge_url);
    let response = crate::support::http()
        .post(&url)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("edge");
    let error = openai_error(response, 400).await;
    assert_eq!(error["param"], Value::Null);

    let error = openai_error(post_chat(&json!({"model": "fake-echo"})).await, 400).await;
    assert_eq!(error["param"], "messages");
    let error = openai_error(post_chat(&json!({"messages": []})).await, 400).await;
    assert_eq!(error["param"], "model");
    let mut request = ask("fake-echo", "hi");
    request["temperature"] = json!("hot");
    let error = openai_error(post_chat(&request).await, 400).await;
    assert_eq!(error["param"], "temperature");
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let mut request = ask("fake-echo", "hi");
    request["messages"][1]["content"] = json!("x".repeat(2 << 20));
    openai_error(post_chat(&request).await, 413).await;
}

#[tokio::test]
async fn models_come_from_the_inference_registry() {
    let edge = &rungate_tests::cluster().edge_url;
    let list: Value = reqwest::get(format!("{edge}/v1/models"))
        .await
        .expect("edge")
        .json()
        .await
        .expect("JSON");
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(
        ids.contains(&"fake-echo") && ids.contains(&"fake-failover"),
        "{ids:?}"
    );

    let one: Value = reqwest::get(format!("{edge}/v1/models/fake-echo"))
        .await
        .expect("edge")
        .json()
        .await
        .expect("JSON");
    assert_eq!(one["id"], "fake-echo");
    assert_eq!(one["object"], "model");
    assert!(one["owned_by"].is_string() && one["created"].is_i64());

    let missing = reqwest::get(format!("{edge}/v1/models/nope"))
        .await
        .expect("edge");
    let error = openai_error(missing, 404).await;
    assert_eq!(error["code"], "model_not_found");
}
