//! The edge reads every Generate stream to its end instead of resetting it:
//! under load, streams a client resets faster than h2 forgets them turn the
//! late frames into protocol errors, and 1,024 of those tear the connection
//! (and every call on it) down. A fake inference service that holds each
//! stream's trailers back a little records how each stream ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rungate_proto::inference::v1::inference_service_server::{
    InferenceService, InferenceServiceServer,
};
use rungate_proto::inference::v1::{
    CountTokensRequest, CountTokensResponse, FinishReason, Finished, GenerateEvent,
    GenerateRequest, ListModelsRequest, ListModelsResponse, Started, TextDelta,
    generate_event::Event,
};
use rungate_proto::types::v1::TokenUsage;
use serde_json::json;
use tonic::{Request, Response, Status};

#[derive(Clone, Default)]
struct Ends {
    /// Streams the edge read to their end.
    completed: Arc<AtomicUsize>,
    /// Streams dropped (reset) before their end.
    reset: Arc<AtomicUsize>,
}

/// Marks how its stream ended when the server drops it.
struct Watch {
    ends: Ends,
    finished: bool,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let counter = if self.finished {
            &self.ends.completed
        } else {
            &self.ends.reset
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

struct SlowTrailers(Ends);

#[tonic::async_trait]
impl InferenceService for SlowTrailers {
    type GenerateStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<GenerateEvent, Status>> + Send>>;

    async fn generate(
        &self,
        _request: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let watch = Watch {
            ends: self.0.clone(),
            finished: false,
        };
        // Dropping the stream mid-way (a reset) drops `watch` unfinished.
        let events = futures::stream::unfold((0u8, watch), |(step, mut watch)| async move {
            let event = match step {
                0 => Event::Started(Started {
                    served_by: "slow-trailers".into(),
                }),
                1 => Event::Delta(TextDelta {
                    text: "hi".into(),
                    ..Default::default()
                }),
                2 => Event::Finished(Finished {
                    finish_reason: FinishReason::Stop as i32,
                    usage: Some(TokenUsage {
                        prompt_tokens: 1,
                        completion_tokens: 1,
                    }),
                    ..Default::default()
                }),
                _ => {
                    // The trailers come a moment after the last message.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    watch.finished = true;
                    drop(watch);
                    return None;
                }
            };
            Some((Ok(GenerateEvent { event: Some(event) }), (step + 1, watch)))
        });
        Ok(Response::new(Box::pin(events)))
    }

    async fn list_models(
        &self,
        _request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        Ok(Response::new(ListModelsResponse::default()))
    }

    async fn count_tokens(
        &self,
        _request: Request<CountTokensRequest>,
    ) -> Result<Response<CountTokensResponse>, Status> {
        Ok(Response::new(CountTokensResponse::default()))
    }
}

#[tokio::test]
async fn every_generate_stream_is_read_to_its_end_streamed_or_not() {
    let ends = Ends::default();
    let (listener, inference_addr) = rungate_tests::cluster::bind().await.expect("bind");
    let service = InferenceServiceServer::new(SlowTrailers(ends.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let cluster = rungate_tests::cluster();
    let config = rungate_edge::Config::new(format!("http://{inference_addr}"), &cluster.ledger_url);
    let (listener, edge_addr) = rungate_tests::cluster::bind().await.expect("bind");
    tokio::spawn(rungate_edge::serve(
        listener,
        config,
        std::future::pending(),
    ));

    let url = format!("http://{edge_addr}/v1/chat/completions");
    let http = reqwest::Client::new();
    const CALLS: usize = 20;
    for call in 0..CALLS {
        let body = json!({"model": "any", "stream": call % 2 == 0,
            "messages": [{"role": "user", "content": "hi"}]});
        let response = http.post(&url).json(&body).send().await.expect("edge");
        assert_eq!(response.status(), 200);
        let text = response.text().await.expect("body");
        assert!(text.contains("hi"), "{text}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ends.completed.load(Ordering::SeqCst) + ends.reset.load(Ordering::SeqCst) < CALLS {
        assert!(tokio::time::Instant::now() < deadline, "streams still open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ends.reset.load(Ordering::SeqCst), 0, "streams reset");
    assert_eq!(ends.completed.load(Ordering::SeqCst), CALLS);
}
