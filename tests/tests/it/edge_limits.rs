//! The edge keeps slow, idle, oversized and excess clients in check, and no
//! internal call can hold a request forever: each case against an edge of
//! its own (tight limits) over the shared cluster's services.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::openai_error;

/// An edge over the shared cluster with `tweak` applied to its config.
async fn edge(tweak: impl FnOnce(&mut rungate_edge::Config)) -> String {
    let cluster = rungate_tests::cluster();
    let mut config = rungate_edge::Config::new(&cluster.inference_url, &cluster.ledger_url);
    tweak(&mut config);
    let (listener, addr) = rungate_tests::cluster::bind().await.expect("bind");
    tokio::spawn(rungate_edge::serve(
        listener,
        config,
        std::future::pending(),
    ));
    format!("{addr}")
}

/// Reads until the server closes the connection; how long that took.
async fn time_to_close(stream: &mut TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the edge kept the connection open for {within:?}"),
        }
    }
}

#[tokio::test]
async fn a_client_that_sends_its_headers_slowly_is_cut_off() {
    let addr = edge(|c| c.header_timeout = Duration::from_millis(500)).await;
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    // One byte every 100 ms: a request head that never completes in time.
    let dripping = async {
        for byte in b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            .iter()
            .cycle()
        {
            if stream.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let cut = tokio::time::timeout(Duration::from_secs(5), dripping).await;
    assert!(cut.is_ok(), "the slow client was never cut off");
}

#[tokio::test]
async fn a_connection_that_never_speaks_is_closed() {
    let addr = edge(|c| c.header_timeout = Duration::from_millis(300)).await;
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    time_to_close(&mut stream, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let addr = edge(|c| c.header_timeout = Duration::from_millis(500)).await;
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let took = time_to_close(&mut stream, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(400),
        "closed too early: {took:?}"
    );
}

#[tokio::test]
async fn an_announced_oversized_body_is_413_before_any_byte_of_it() {
    let addr = edge(|_| {}).await;
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    stream
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 20000000\r\n\r\n",
        )
        .await
        .expect("write");
    let mut answer = vec![0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut answer))
        .await
        .expect("answered without waiting for the body")
        .expect("read");
    let head = String::from_utf8_lossy(&answer[..read]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
}

#[tokio::test]
async fn a_body_that_never_arrives_is_408() {
    let addr = edge(|c| c.body_timeout = Duration::from_millis(300)).await;
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    stream
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\":",
        )
        .await
        .expect("write");
    let mut answer = vec![0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut answer))
        .await
        .expect("answered")
        .expect("read");
    let head = String::from_utf8_lossy(&answer[..read]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
}

#[tokio::test]
async fn a_malformed_chunked_body_is_400() {
    let addr = edge(|_| {}).await;
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    stream
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        )
        .await
        .expect("write");
    let mut answer = vec![0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut answer))
        .await
        .expect("answered")
        .expect("read");
    let head = String::from_utf8_lossy(&answer[..read]);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

#[tokio::test]
async fn requests_past_the_concurrency_cap_are_shed_with_503_and_retry_after() {
    let addr = edge(|c| c.max_concurrent_requests = 1).await;
    let url = format!("http://{addr}/v1/chat/completions");
    let client = reqwest::Client::new();
    // A trickling stream holds the one slot until its last byte.
    let holding = client
        .post(&url)
        .json(&json!({"model": "fake-trickle", "stream": true,
            "messages": [{"role": "user", "content": "one two three four five six"}]}))
        .send()
        .await
        .expect("edge");
    assert_eq!(holding.status(), 200);
    let shed = client
        .post(&url)
        .json(&json!({"model": "fake-echo", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("edge");
    assert_eq!(shed.headers()["retry-after"], "1");
    let error = openai_error(shed, 503).await;
    assert_eq!(error["code"], "overloaded");
    // Health still answers, so a balancer keeps seeing this edge.
    let health = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .expect("edge");
    assert_eq!(health.status(), 200);
    holding.text().await.expect("the held stream completes");
    let after = client
        .post(&url)
        .json(&json!({"model": "fake-echo", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("edge");
    assert_eq!(after.status(), 200, "the slot is free again");
}

#[tokio::test]
async fn a_billing_that_never_answers_is_504_within_the_deadline() {
    // Accepts connections, never speaks: a stuck service.
    let (stuck, stuck_addr) = rungate_tests::cluster::bind().await.expect("bind");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = stuck.accept().await {
            held.push(socket);
        }
    });
    let addr = edge(|c| {
        *c = c.clone().with_billing(format!("http://{stuck_addr}"));
        c.rpc_timeout = Duration::from_millis(300);
    })
    .await;
    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&json!({"model": "fake-echo", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("edge");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(response.headers()["retry-after"], "1");
    openai_error(response, 504).await;
}
