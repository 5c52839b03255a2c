//! Graceful shutdown: in-flight streams drain, bounded by the drain deadline,
//! and the listener closes.

use std::time::{Duration, Instant};

use rungate_proto::inference::v1::inference_service_client::InferenceServiceClient;
use rungate_proto::inference::v1::{ChatMessage, GenerateRequest, generate_event::Event};

struct Running {
    url: String,
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Its own inference service (not the shared one), serving the trickling upstream.
async fn start_inference(drain: Duration) -> Running {
    let upstream = &rungate_tests::cluster().upstream_url;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = rungate_inference::Config {
        models_file: None,
        models_toml: Some(format!(
            r#"[[models]]
id = "trickle"
engine = {{ kind = "upstream", upstreams = [{{ base_url = "{upstream}/trickle/v1" }}] }}"#
        )),
        drain_timeout: drain,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(rungate_inference::serve(listener, config, async {
        let _ = stopped.await;
    }));
    let url = format!("http://{addr}");
    rungate_tests::cluster::wait_serving(&url)
        .await
        .expect("serving");
    Running {
        url,
        addr,
        stop,
        server,
    }
}

fn request(words: usize) -> GenerateRequest {
    GenerateRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        model: "trickle".into(),
        messages: vec![ChatMessage {
            role: "user".into(),
            content: vec!["word"; words].join(" "),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A generation of `words` words, read up to its first event.
async fn started_stream(
    running: &Running,
    words: usize,
) -> tonic::Streaming<rungate_proto::inference::v1::GenerateEvent> {
    let mut client = InferenceServiceClient::connect(running.url.clone())
        .await
        .expect("connect");
    let mut events = client
        .generate(request(words))
        .await
        .expect("generate")
        .into_inner();
    events
        .message()
        .await
        .expect("first event")
        .expect("started");
    events
}

#[tokio::test]
async fn in_flight_streams_finish_before_the_server_exits() {
    let running = start_inference(Duration::from_secs(10)).await;
    let mut events = started_stream(&running, 3).await;

    running.stop.send(()).expect("server still running");
    let mut finished = false;
    while let Some(event) = events.message().await.expect("stream drains without error") {
        finished |= matches!(event.event, Some(Event::Finished(_)));
    }
    assert!(finished, "the in-flight stream ran to its end");
    running.server.await.expect("join").expect("clean exit");
    assert!(
        tokio::net::TcpStream::connect(running.addr).await.is_err(),
        "the listener is closed after shutdown"
    );
}

#[tokio::test]
async fn the_drain_deadline_bounds_shutdown() {
    let running = start_inference(Duration::from_millis(300)).await;
    // ~40 chunks at 100 ms each: far longer than the drain deadline.
    let mut events = started_stream(&running, 40).await;

    let began = Instant::now();
    running.stop.send(()).expect("server still running");
    running
        .server
        .await
        .expect("join")
        .expect("exit after the deadline");
    let took = began.elapsed();
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
    let mut finished = false;
    while let Ok(Some(event)) = events.message().await {
        finished |= matches!(event.event, Some(Event::Finished(_)));
    }
    assert!(!finished, "the long stream was cut at the deadline");
}
