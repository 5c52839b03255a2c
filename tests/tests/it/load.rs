//! Sustained load through the edge never breaks its gRPC connections: h2
//! tears a connection down after 1,024 protocol errors on it, which a client
//! that resets its streams instead of reading them to the end runs into
//! after a few thousand calls. Every call here must succeed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;

const CALLS: usize = 4_000;
const CLIENTS: usize = 32;

#[tokio::test]
async fn thousands_of_calls_from_32_clients_all_succeed() {
    let url = format!("{}/v1/chat/completions", rungate_tests::cluster().edge_url);
    let next = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (url, next) = (url.clone(), next.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut failures = Vec::new();
                loop {
                    let call = next.fetch_add(1, Ordering::Relaxed);
                    if call >= CALLS {
                        return failures;
                    }
                    let body = json!({"model": "fake-echo", "stream": call % 2 == 0,
                        "messages": [{"role": "user", "content": "load"}], "max_tokens": 2});
                    match http.post(&url).json(&body).send().await {
                        Ok(response) => {
                            let status = response.status();
                            let text = response.text().await.unwrap_or_default();
                            if status != 200 || text.contains("\"error\"") {
                                failures.push(format!("{status}: {text}"));
                            }
                        }
                        Err(error) => failures.push(error.to_string()),
                    }
                }
            })
        })
        .collect();
    let mut failures = Vec::new();
    for client in clients {
        failures.extend(client.await.expect("client task"));
    }
    assert!(
        failures.is_empty(),
        "{} of {CALLS} calls failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
}
