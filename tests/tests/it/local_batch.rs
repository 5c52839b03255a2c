//! Concurrent calls on one local model run together, one KV sequence each
//! and one token each per batch (continuous batching): every call keeps the
//! output, order, counts, stop sequences and sampling it has alone, a call
//! waiting for a slot joins between steps, and a cancelled call leaves the
//! others whole.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use rungate_inference::local::LocalEngine;
use rungate_proto::inference::v1::{GenerateRequest, SamplingParams, generate_event::Event};

use super::local_engine::{generate_on, greedy, registry_of, request};

async fn registry(slots: usize) -> rungate_inference::registry::Registry {
    let path = rungate_tests::fixtures::tiny_gguf().expect("tiny model");
    registry_of(format!(
        "[[models]]\nid = \"batched\"\nengine = {{ kind = \"local\", path = \"{}\", threads = 1, max_concurrent = {slots}, max_queue = 8 }}\n",
        path.display()
    ))
    .await
}

fn ask(question: &str, sampling: SamplingParams) -> GenerateRequest {
    GenerateRequest {
        model: "batched".into(),
        ..request(question, sampling)
    }
}

/// How many calls shared each generation step so far: (steps, tokens).
fn steps(engine: &LocalEngine) -> (u64, u64) {
    let metrics = engine.metrics();
    (
        metrics.decode_steps.load(Ordering::Relaxed),
        metrics.decode_step_tokens.load(Ordering::Relaxed),
    )
}

#[tokio::test]
async fn calls_decoding_together_each_get_what_they_get_alone() {
    let registry = registry(4).await;
    let engine = registry.local("batched").expect("local");
    let (greedy_text, _, _) = generate_on(engine, ask("hello world", greedy(24))).await;
    // A stop sequence from the middle of that answer.
    let middle: String = greedy_text.chars().skip(8).take(3).collect();
    let asks = [
        ask("hello world", greedy(24)),
        ask("a different and somewhat longer question", greedy(16)),
        ask(
            "hello world",
            SamplingParams {
                stop: vec![middle.clone()],
                ..greedy(24)
            },
        ),
        ask(
            "tell me something",
            SamplingParams {
                max_tokens: Some(20),
                temperature: Some(0.8),
                seed: Some(7),
                ..Default::default()
            },
        ),
    ];
    let mut alone = Vec::new();
    for asked in &asks {
        alone.push(generate_on(engine, asked.clone()).await);
    }
    assert!(!alone[2].0.contains(&middle), "the stop sequence cut it");
    assert!(alone[2].2 < alone[0].2);

    let before = steps(engine);
    let together =
        futures::future::join_all(asks.iter().map(|asked| generate_on(engine, asked.clone())))
            .await;
    assert_eq!(together, alone);
    let after = steps(engine);
    let shared = (after.1 - before.1) as f64 / (after.0 - before.0) as f64;
    assert!(
        shared > 1.5,
        "calls shared generation steps ({shared:.2} tokens a step)"
    );
}

#[tokio::test]
async fn a_cancelled_call_leaves_the_others_whole_and_a_waiting_call_joins() {
    let registry = registry(2).await;
    let engine = registry.local("batched").expect("local");
    let first = ask("the first caller", greedy(40));
    let waiting = ask("the one that waits for a slot", greedy(20));
    let alone_first = generate_on(engine, first.clone()).await;
    let alone_waiting = generate_on(engine, waiting.clone()).await;
    // Long enough that, unread, it fills its event channel (64) and waits
    // long before its end: it is still running when dropped.
    let long = ask("a long answer, dropped early", greedy(400));
    let (_, _, long_tokens) = generate_on(engine, long.clone()).await;
    assert_eq!(long_tokens, 400, "alone, it runs to its limit");
    let cancelled_before = engine.metrics().cancelled.load(Ordering::Relaxed);

    // Two slots: the long call and the first call decode together; the
    // third waits, and takes the long call's slot once it is dropped.
    let mut long = engine.generate(long, 16).await.expect("generate");
    let mut deltas = 0;
    while deltas < 2 {
        match long.next().await.expect("event").expect("ok").event {
            Some(Event::Delta(_)) => deltas += 1,
            Some(Event::Finished(_)) => panic!("finished before it was dropped"),
            _ => {}
        }
    }
    let served = async {
        futures::join!(
            generate_on(engine, first.clone()),
            generate_on(engine, waiting.clone())
        )
    };
    let drop_long = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(long);
    };
    let ((first_out, waiting_out), ()) = tokio::join!(served, drop_long);
    assert_eq!(first_out, alone_first);
    assert_eq!(waiting_out, alone_waiting);
    assert_eq!(
        engine.metrics().cancelled.load(Ordering::Relaxed),
        cancelled_before + 1
    );
    // Each call leaves the batch a moment after its last event went out.
    let idle = async {
        while engine.metrics().running.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), idle)
        .await
        .expect("every call left the batch");
}

#[tokio::test]
async fn a_call_starting_next_to_another_copies_its_shared_prefix_exactly() {
    let path = rungate_tests::fixtures::tiny_gguf().expect("tiny model");
    let registry = registry_of(format!(
        "[[models]]\nid = \"batched\"\nengine = {{ kind = \"local\", path = \"{0}\", threads = 1, max_concurrent = 2 }}\n\
         [[models]]\nid = \"fresh\"\nengine = {{ kind = \"local\", path = \"{0}\", threads = 1, reuse_prompt_prefix = false }}\n",
        path.display()
    ))
    .await;
    let (engine, fresh) = (
        registry.local("batched").expect("local"),
        registry.local("fresh").expect("local"),
    );
    let system = rungate_proto::inference::v1::ChatMessage {
        role: "system".into(),
        content: "You are a careful agent with tools. ".repeat(4),
        ..Default::default()
    };
    let agent = |model: &str, question: &str| GenerateRequest {
        model: model.into(),
        messages: vec![system.clone(), ask(question, greedy(1)).messages[0].clone()],
        ..ask(question, greedy(12))
    };
    // One slot learns the system prompt; then two agents start at once: one
    // takes that slot, the other an empty one, which copies the prefix.
    generate_on(engine, agent("batched", "first")).await;
    let reused_before = engine
        .metrics()
        .prompt_tokens_reused
        .load(Ordering::Relaxed);
    let (a, b) = futures::join!(
        generate_on(engine, agent("batched", "second")),
        generate_on(engine, agent("batched", "third"))
    );
    let reused = engine
        .metrics()
        .prompt_tokens_reused
        .load(Ordering::Relaxed)
        - reused_before;
    assert_eq!(a, generate_on(fresh, agent("fresh", "second")).await);
    assert_eq!(b, generate_on(fresh, agent("fresh", "third")).await);
    // More than one prompt's worth: the agent in the empty slot reused too.
    assert!(
        reused as u32 > (a.1 + b.1) / 2,
        "both reused the system prompt ({reused} of {} prompt tokens)",
        a.1 + b.1
    );
}
