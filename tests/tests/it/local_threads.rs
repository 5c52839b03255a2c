//! A local engine with nothing to do hands its llama.cpp worker threads
//! (an OpenMP team) back: libgomp slows every team's barriers once a process
//! holds more such threads than CPUs, so an idle model's team would slow the
//! busy one's decode. The next call gets a team again and the same answer.

use std::time::{Duration, Instant};

use futures::StreamExt;
use rungate_proto::inference::v1::{GenerateRequest, generate_event::Event};

use super::local_engine::{generate_on, greedy, registry_of, request};

/// Linux names a thread's children after it: the engine thread and its
/// OpenMP workers all carry the engine thread's name.
const THREAD: &str = "llama-omp-idle";

fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

fn ask(question: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        model: "omp-idle".into(),
        ..request(question, greedy(max_tokens))
    }
}

#[tokio::test]
async fn an_idle_engine_lets_its_worker_threads_go_and_gets_them_back() {
    let path = rungate_tests::fixtures::tiny_gguf().expect("tiny model");
    let registry = registry_of(format!(
        "[[models]]\nid = \"omp-idle\"\nengine = {{ kind = \"local\", path = \"{}\", threads = 2 }}\n",
        path.display()
    ))
    .await;
    let engine = registry.local("omp-idle").expect("local");
    let (alone, _, _) = generate_on(engine, ask("hello world", 12)).await;

    // A call that waits on its caller keeps the engine busy: the team stays.
    let mut events = engine
        .generate(ask("a long story", 400), 16)
        .await
        .expect("generate");
    loop {
        let event = events.next().await.expect("an event").expect("event");
        if let Some(Event::Delta(_)) = event.event {
            break;
        }
    }
    assert_eq!(
        threads_named(THREAD),
        2,
        "the engine thread and one OpenMP worker while a call runs"
    );

    drop(events); // the engine stops that call and has nothing left to do
    let deadline = Instant::now() + Duration::from_secs(10);
    while threads_named(THREAD) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(threads_named(THREAD), 1, "only the engine thread once idle");

    let (again, _, _) = generate_on(engine, ask("hello world", 12)).await;
    assert_eq!(again, alone, "a new team, the same greedy answer");
}
