//! Chat completions through the edge on the local engine (tiny GGUF).

use serde_json::{Value, json};

use crate::support::{openai_error, post_chat, sse_data};

fn tiny(max_tokens: u32) -> Value {
    json!({
        "model": "tiny-local",
        "messages": [{"role": "user", "content": "hello world"}],
        "max_tokens": max_tokens,
        "temperature": 0
    })
}

#[tokio::test]
async fn streamed_and_non_streamed_greedy_answers_match_with_exact_usage() {
    let body: Value = post_chat(&tiny(8)).await.json().await.expect("JSON");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 8);
    let text = body["choices"][0]["message"]["content"]
        .as_str()
        .expect("text")
        .to_owned();

    let mut request = tiny(8);
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let events = sse_data(&post_chat(&request).await.text().await.expect("body"));
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk"))
        .collect();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text);
    let usage = &chunks[chunks.len() - 1]["usage"];
    for field in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage[field], body["usage"][field], "{field}");
    }
    // The second call found its prompt in the engine's cache (all of it
    // but the last token, which is always evaluated), unless another
    // test's call took the slot in between.
    let cached = usage["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .expect("cached tokens");
    assert!(cached < usage["prompt_tokens"].as_u64().expect("prompt tokens"));
}

#[tokio::test]
async fn fields_the_local_engine_cannot_honour_are_a_400_naming_them() {
    let mut request = tiny(4);
    request["logprobs"] = json!(true);
    let error = openai_error(post_chat(&request).await, 400).await;
    assert_eq!(error["param"], "logprobs");

    let mut request = tiny(4);
    // A schema llama.cpp cannot make a grammar of: refused, never unconstrained.
    request["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}});
    let error = openai_error(post_chat(&request).await, 400).await;
    assert_eq!(error["param"], "response_format");

    let mut request = tiny(4);
    request["max_tokens"] = json!(100_000);
    let error = openai_error(post_chat(&request).await, 400).await;
    assert_eq!(error["param"], "max_tokens");
}
