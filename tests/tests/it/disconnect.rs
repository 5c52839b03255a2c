//! A client that goes away cancels the work behind it: the edge drops its
//! gRPC stream, inference drops the engine's work (for the upstream engine:
//! the upstream HTTP response). Observed on the fake upstream, which records
//! responses abandoned before their end. (The local engine's side is in
//! local_engine.rs: dropping the gRPC stream stops generation.)

use std::time::Duration;

use rungate_proto::inference::v1::inference_service_client::InferenceServiceClient;
use rungate_proto::inference::v1::{ChatMessage, GenerateRequest};
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// A unique prompt: the fake answers one word per 100 ms, so ~25 chunks take
/// seconds unless the call is cancelled.
fn prompt() -> String {
    format!(
        "{} a b c d e f g h i j k l m n o p q r s t u v w",
        uuid::Uuid::new_v4()
    )
}

fn trickle(prompt: &str) -> serde_json::Value {
    json!({"model": "fake-trickle", "messages": [{"role": "user", "content": prompt}]})
}

async fn wait_for_abort(prompt: &str) {
    let upstream = &rungate_tests::cluster().upstream;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !upstream.was_aborted(prompt) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream call was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn disconnecting_mid_stream_cancels_the_upstream_call() {
    let prompt = prompt();
    let mut request = trickle(&prompt);
    request["stream"] = json!(true);
    let url = format!("{}/v1/chat/completions", rungate_tests::cluster().edge_url);
    let mut response = reqwest::Client::new()
        .post(url)
        .json(&request)
        .send()
        .await
        .expect("edge");
    response
        .chunk()
        .await
        .expect("first bytes")
        .expect("a chunk");
    drop(response);
    wait_for_abort(&prompt).await;
}

#[tokio::test]
async fn disconnecting_before_a_non_streamed_answer_cancels_the_upstream_call() {
    let prompt = prompt();
    let body = trickle(&prompt).to_string();
    let addr = rungate_tests::cluster()
        .edge_url
        .trim_start_matches("http://")
        .to_owned();
    let mut socket = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.expect("write");
    socket.write_all(body.as_bytes()).await.expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(socket);
    wait_for_abort(&prompt).await;
}

#[tokio::test]
async fn dropping_the_generate_stream_cancels_the_upstream_call() {
    let prompt = prompt();
    let mut client =
        InferenceServiceClient::connect(rungate_tests::cluster().inference_url.clone())
            .await
            .expect("connect");
    let mut events = client
        .generate(GenerateRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            model: "fake-trickle".into(),
            messages: vec![ChatMessage {
                role: "user".into(),
                content: prompt.clone(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("generate")
        .into_inner();
    events.message().await.expect("first event");
    drop(events);
    wait_for_abort(&prompt).await;
}
