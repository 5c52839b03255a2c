//! The local llama.cpp engine on a tiny random-weight GGUF: deterministic
//! greedy output, exact token counts, seeded sampling, stop sequences,
//! cancellation, back-pressure, and refusal of malformed files.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rungate_proto::inference::v1::inference_service_client::InferenceServiceClient;
use rungate_proto::inference::v1::{
    ChatMessage, CountTokensRequest, FinishReason, GenerateRequest, SamplingParams,
    generate_event::Event,
};
use rungate_tests::cluster;
use tonic::transport::Channel;

async fn inference() -> InferenceServiceClient<Channel> {
    InferenceServiceClient::connect(cluster().inference_url.clone())
        .await
        .expect("connect")
}

pub(crate) fn request(question: &str, sampling: SamplingParams) -> GenerateRequest {
    GenerateRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        model: "tiny-local".into(),
        messages: vec![ChatMessage {
            role: "user".into(),
            content: question.into(),
            ..Default::default()
        }],
        sampling: Some(sampling),
        ..Default::default()
    }
}

pub(crate) fn greedy(max_tokens: u32) -> SamplingParams {
    SamplingParams {
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        ..Default::default()
    }
}

#[derive(Debug)]
struct Outcome {
    text: String,
    /// Tool calls assembled from their fragments: id, name, arguments.
    calls: Vec<(String, String, String)>,
    finish: FinishReason,
    prompt_tokens: u32,
    completion_tokens: u32,
}

async fn run(request: GenerateRequest) -> Outcome {
    let mut events = inference()
        .await
        .generate(request)
        .await
        .expect("generate")
        .into_inner();
    let mut text = String::new();
    let mut calls: Vec<(String, String, String)> = Vec::new();
    while let Some(event) = events.message().await.expect("stream") {
        match event.event {
            Some(Event::Delta(delta)) => text.push_str(&delta.text),
            Some(Event::ToolCall(fragment)) => {
                let index = fragment.index as usize;
                if index == calls.len() {
                    calls.push(Default::default());
                }
                let call = &mut calls[index];
                call.0.push_str(&fragment.id);
                call.1.push_str(&fragment.name);
                call.2.push_str(&fragment.arguments);
            }
            Some(Event::Finished(finished)) => {
                let usage = finished.usage.expect("usage");
                return Outcome {
                    text,
                    calls,
                    finish: FinishReason::try_from(finished.finish_reason).expect("reason"),
                    prompt_tokens: usage.prompt_tokens,
                    completion_tokens: usage.completion_tokens,
                };
            }
            _ => {}
        }
    }
    panic!("stream ended without Finished");
}

#[tokio::test]
async fn greedy_output_is_identical_run_to_run_with_exact_counts() {
    let first = run(request("hello world", greedy(12))).await;
    let second = run(request("hello world", greedy(12))).await;
    assert_eq!(first.text, second.text);
    assert!(!first.text.is_empty());
    // The tiny model never picks an end-of-generation token greedily: it runs to the limit.
    assert_eq!(first.finish, FinishReason::Length);
    assert_eq!(first.completion_tokens, 12);
    let counted = inference()
        .await
        .count_tokens(CountTokensRequest {
            model: "tiny-local".into(),
            messages: request("hello world", greedy(1)).messages,
            ..Default::default()
        })
        .await
        .expect("count")
        .into_inner();
    assert_eq!(first.prompt_tokens, counted.prompt_tokens);
    assert!(counted.prompt_tokens > 4, "template tokens are counted too");
    // What the engine cannot honour is refused when counting, before payment.
    let refused = inference()
        .await
        .count_tokens(CountTokensRequest {
            model: "tiny-local".into(),
            messages: request("hello world", greedy(1)).messages,
            extra_json: r#"{"logprobs":true}"#.into(),
            ..Default::default()
        })
        .await
        .expect_err("logprobs are refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("logprobs"),
        "{}",
        refused.message()
    );
}

#[tokio::test]
async fn seeded_sampling_is_reproducible() {
    let seeded = |seed| SamplingParams {
        max_tokens: Some(16),
        temperature: Some(1.0),
        seed: Some(seed),
        ..Default::default()
    };
    let a = run(request("the capital", seeded(7))).await;
    let b = run(request("the capital", seeded(7))).await;
    let c = run(request("the capital", seeded(8))).await;
    assert_eq!(a.text, b.text);
    assert_ne!(a.text, c.text, "another seed samples another text");
}

#[tokio::test]
async fn stop_sequences_cut_the_text_and_finish_with_stop() {
    let full = run(request("one two", greedy(16))).await;
    let chars: Vec<char> = full.text.chars().collect();
    assert!(chars.len() > 6, "{:?}", full.text);
    let stop: String = chars[3..5].iter().collect();
    let expected: String = full.text[..full.text.find(&stop).expect("stop in text")].to_owned();
    let stopped = run(request(
        "one two",
        SamplingParams {
            stop: vec![stop.clone()],
            ..greedy(16)
        },
    ))
    .await;
    assert_eq!(stopped.text, expected, "cut before {stop:?}");
    assert_eq!(stopped.finish, FinishReason::Stop);
    assert!(stopped.completion_tokens < 16);
}

#[tokio::test]
async fn dropping_the_stream_stops_generation() {
    let metrics = cluster()
        .registry
        .local("tiny-local")
        .expect("local engine")
        .metrics();
    let cancelled_before = metrics.cancelled.load(Ordering::Relaxed);
    let mut events = inference()
        .await
        .generate(request("a long story", greedy(400)))
        .await
        .expect("generate")
        .into_inner();
    let mut deltas = 0;
    while deltas < 3 {
        if let Some(Event::Delta(_)) = events
            .message()
            .await
            .expect("stream")
            .and_then(|e| e.event)
        {
            deltas += 1;
        }
    }
    drop(events);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metrics.cancelled.load(Ordering::Relaxed) == cancelled_before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "generation was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_full_queue_is_refused_with_resource_exhausted() {
    let path = rungate_tests::fixtures::tiny_gguf().expect("tiny model");
    let registry = registry_of(format!(
        r#"[[models]]
id = "tiny-local"
engine = {{ kind = "local", path = "{}", threads = 1, max_concurrent = 1, max_queue = 1 }}"#,
        path.display()
    ))
    .await;
    let engine = registry.local("tiny-local").expect("local");
    let long = || request("story", greedy(400));
    let running = engine.generate(long(), 16).await.expect("first runs");
    let queued = tokio::spawn({
        let registry = registry.clone();
        async move {
            let engine = registry.local("tiny-local").expect("local");
            engine.generate(long(), 16).await.map(|_| ())
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = engine
        .generate(long(), 16)
        .await
        .err()
        .expect("queue is full");
    let status = tonic::Status::from(refused);
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    drop(running);
    queued
        .await
        .expect("join")
        .expect("the queued call runs once the slot frees");
}

#[tokio::test]
async fn unsupported_fields_are_refused_naming_the_field() {
    let mut with_logprobs = request("hi", greedy(4));
    with_logprobs.extra_json = r#"{"logprobs":true}"#.into();
    let status = inference()
        .await
        .generate(with_logprobs)
        .await
        .expect_err("logprobs refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(param_of(&status), Some("logprobs"));

    let mut text_format = request("hi", greedy(4));
    text_format.extra_json = r#"{"response_format":{"type":"text"},"presence_penalty":0}"#.into();
    run(text_format).await;
}

fn param_of(status: &tonic::Status) -> Option<&str> {
    status
        .metadata()
        .get("x-rungate-param")
        .and_then(|v| v.to_str().ok())
}

/// Two functions, kept short for the tiny model's 512-token context (its
/// vocabulary spells JSON a byte a token); `get_weather`'s one argument is
/// an enum, so that even random weights end a call within a few tokens.
const TOOLS: &str = r#"[
  {"type":"function","function":{"name":"get_weather",
    "parameters":{"type":"object","properties":{"unit":{"enum":["C","F"]}},"required":["unit"]}}},
  {"type":"function","function":{"name":"get_time"}}
]"#;

#[tokio::test]
async fn a_named_tool_choice_calls_that_function_with_arguments_matching_its_schema() {
    let mut call = request("the weather in Paris", greedy(90));
    call.extra_json = format!(
        r#"{{"tools":{TOOLS},"parallel_tool_calls":false,"tool_choice":{{"type":"function","function":{{"name":"get_weather"}}}}}}"#
    );
    let outcome = run(call).await;
    assert_eq!(outcome.finish, FinishReason::ToolCalls, "{outcome:?}");
    assert_eq!(outcome.text, "");
    let [(id, name, arguments)] = &outcome.calls[..] else {
        panic!("one call: {outcome:?}");
    };
    assert!(id.starts_with("call_"), "{id}");
    assert_eq!(name, "get_weather");
    let arguments: serde_json::Value = serde_json::from_str(arguments).expect("JSON arguments");
    let unit = arguments["unit"].as_str().expect("unit");
    assert!(["C", "F"].contains(&unit), "{arguments}");
    assert_eq!(arguments.as_object().map(|a| a.len()), Some(1));
}

#[tokio::test]
async fn a_json_schema_response_format_gives_json_matching_the_schema() {
    let mut call = request("is it", greedy(90));
    call.extra_json = r#"{"response_format":{"type":"json_schema","json_schema":{"name":"answer","strict":true,"schema":
        {"type":"object","properties":{"ok":{"type":"boolean"},"city":{"enum":["Paris","Rome"]}},"required":["ok","city"],"additionalProperties":false}}}}"#
        .into();
    let outcome = run(call).await;
    assert_eq!(outcome.finish, FinishReason::Stop, "{outcome:?}");
    let answer: serde_json::Value = serde_json::from_str(&outcome.text).expect("JSON content");
    assert!(answer["ok"].is_boolean(), "{answer}");
    assert!(
        ["Paris", "Rome"].contains(&answer["city"].as_str().unwrap_or("")),
        "{answer}"
    );
    // The schema's order, as a strict schema promises.
    assert!(
        outcome.text.find("ok") < outcome.text.find("city"),
        "{}",
        outcome.text
    );
}

#[tokio::test]
async fn tool_definitions_are_prompt_tokens_and_a_schema_without_a_grammar_is_refused_when_counting()
 {
    let count = |extra_json: String| CountTokensRequest {
        model: "tiny-local".into(),
        messages: request("the weather", greedy(1)).messages,
        extra_json,
        ..Default::default()
    };
    let mut client = inference().await;
    let plain = client
        .count_tokens(count(String::new()))
        .await
        .expect("count");
    let with_tools = client
        .count_tokens(count(format!(r#"{{"tools":{TOOLS}}}"#)))
        .await
        .expect("count");
    assert!(
        with_tools.get_ref().prompt_tokens > plain.get_ref().prompt_tokens + 20,
        "{with_tools:?} vs {plain:?}"
    );
    let unusable = r##"{"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"$ref":"#/nowhere"}}}}"##;
    let status = client
        .count_tokens(count(unusable.into()))
        .await
        .expect_err("no grammar");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(param_of(&status), Some("response_format"));
}

#[tokio::test]
async fn a_prompt_longer_than_the_context_is_invalid() {
    let huge = "word ".repeat(2_000);
    let status = inference()
        .await
        .generate(request(&huge, greedy(4)))
        .await
        .expect_err("too long");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("context"), "{}", status.message());
    // Refused as well when counting (what the edge does before asking for payment).
    let count = |question: &str, max_tokens: Option<u32>| CountTokensRequest {
        model: "tiny-local".into(),
        messages: request(question, greedy(1)).messages,
        max_tokens,
        ..Default::default()
    };
    for (asked, param) in [
        (count(&huge, None), "messages"),
        (count("hello", Some(100_000)), "max_tokens"),
    ] {
        let status = inference()
            .await
            .count_tokens(asked)
            .await
            .expect_err("does not fit");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("context"),
            "{param}: {}",
            status.message()
        );
    }
}

#[test]
fn malformed_or_missing_gguf_files_are_refused_before_llama_cpp_loads_them() {
    let tiny = rungate_tests::fixtures::tiny_gguf().expect("tiny model");
    let bytes = std::fs::read(&tiny).expect("read");
    let dir = std::env::temp_dir().join(format!("rungate-bad-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cases = [
        ("truncated.gguf", bytes[..bytes.len() / 2].to_vec()),
        ("header-only.gguf", bytes[..64].to_vec()),
        (
            "noise.gguf",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
                .collect(),
        ),
    ];
    for (name, content) in cases {
        let path = dir.join(name);
        std::fs::write(&path, content).expect("write");
        let error = load(&path).expect_err(name);
        assert!(error.contains(name), "{name}: {error}");
    }
    let missing = load(&dir.join("missing.gguf")).expect_err("missing");
    assert!(missing.contains("missing.gguf"), "{missing}");
    let _ = std::fs::remove_dir_all(dir);
}

fn load(path: &std::path::Path) -> Result<(), String> {
    let config = rungate_inference::Config {
        models_file: None,
        models_toml: Some(format!(
            "[[models]]\nid = \"bad\"\nengine = {{ kind = \"local\", path = \"{}\" }}",
            path.display()
        )),
        drain_timeout: Duration::from_secs(1),
    };
    rungate_inference::registry::Registry::from_config(&config)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Greedy text and token counts from an engine called directly.
pub(crate) async fn generate_on(
    engine: &rungate_inference::local::LocalEngine,
    request: GenerateRequest,
) -> (String, u32, u32) {
    use futures::StreamExt;
    let mut events = engine.generate(request, 16).await.expect("generate");
    let mut text = String::new();
    while let Some(event) = events.next().await {
        match event.expect("event").event {
            Some(Event::Delta(delta)) => text.push_str(&delta.text),
            Some(Event::Finished(finished)) => {
                let usage = finished.usage.expect("usage");
                return (text, usage.prompt_tokens, usage.completion_tokens);
            }
            _ => {}
        }
    }
    panic!("stream ended without Finished");
}

#[tokio::test]
async fn reusing_the_prompt_prefix_gives_the_same_greedy_output_as_evaluating_it_all() {
    let path = rungate_tests::fixtures::tiny_gguf().expect("tiny model");
    // With flash attention (reuse stops at 64-token boundaries) and without
    // (reuse stops at any token), each against a full evaluation alike.
    for flash in [true, false] {
        reuse_matches_full_evaluation(&path, flash).await;
    }
}

async fn reuse_matches_full_evaluation(path: &std::path::Path, flash: bool) {
    let model = |id: &str, reuse: bool| {
        format!(
            "[[models]]\nid = \"{id}\"\nengine = {{ kind = \"local\", path = \"{}\", threads = 1, reuse_prompt_prefix = {reuse}, flash_attention = {flash} }}\n",
            path.display()
        )
    };
    let registry = registry_of(model("reuse", true) + &model("fresh", false)).await;
    let (reuse, fresh) = (
        registry.local("reuse").expect("local"),
        registry.local("fresh").expect("local"),
    );
    let message = |role: &str, content: &str| ChatMessage {
        role: role.into(),
        content: content.into(),
        ..Default::default()
    };
    let system = message("system", &"You are a careful agent with tools. ".repeat(6));
    // An agent's calls: a growing conversation, a new one on the same
    // system prompt, and the first call again.
    let mut conversation = vec![system.clone(), message("user", "first question")];
    let mut calls = Vec::new();
    for turn in ["second question", "third question"] {
        calls.push(conversation.clone());
        let asked = GenerateRequest {
            messages: conversation.clone(),
            ..request("", greedy(12))
        };
        let (answer, _, _) = generate_on(fresh, asked).await;
        conversation.push(message("assistant", &answer));
        conversation.push(message("user", turn));
    }
    calls.push(conversation);
    calls.push(vec![system, message("user", "another conversation")]);
    calls.push(calls[0].clone());

    let reused_before = reuse.metrics().prompt_tokens_reused.load(Ordering::Relaxed);
    for messages in calls {
        let asked = |model: &str| GenerateRequest {
            model: model.into(),
            messages: messages.clone(),
            ..request("", greedy(12))
        };
        let with_reuse = generate_on(reuse, asked("reuse")).await;
        let without = generate_on(fresh, asked("fresh")).await;
        assert_eq!(with_reuse, without, "{} messages", messages.len());
    }
    let reused = reuse.metrics().prompt_tokens_reused.load(Ordering::Relaxed) - reused_before;
    assert!(
        reused > 200,
        "the shared system prompt was reused ({reused} tokens)"
    );
    assert_eq!(
        fresh.metrics().prompt_tokens_reused.load(Ordering::Relaxed),
        0
    );
}

/// An in-process registry of `models_toml` (loading runs on a blocking thread).
pub(crate) async fn registry_of(models_toml: String) -> rungate_inference::registry::Registry {
    let config = rungate_inference::Config {
        models_file: None,
        models_toml: Some(models_toml),
        drain_timeout: Duration::from_secs(1),
    };
    tokio::task::spawn_blocking(move || rungate_inference::registry::Registry::from_config(&config))
        .await
        .expect("join")
        .expect("registry")
}
