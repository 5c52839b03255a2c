//! `cargo xtask bench`: the local engine's prompt and decode speed on the
//! embedded default model next to llama.cpp driven directly (the vendored
//! build, a plain loop like llama.cpp's `simple` example, same threads; the
//! crate does not ship llama.cpp's tools, so llama-bench cannot be built from
//! it), time to first token through the edge against the engine in-process,
//! calls decoding together (`bench_batched`) and agent workloads next to
//! llama.cpp's own server (`bench_peer`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The ChatML prompt SmolLM2's template renders for `messages` (no system
/// message given, so the template's default one), for the direct loop.
pub(crate) fn rendered_prompt(messages: &[ChatMessage]) -> String {
    let mut prompt = String::from(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
    );
    for m in messages {
        prompt.push_str(&format!(
            "<|im_start|>{}\n{}<|im_end|>\n",
            m.role, m.content
        ));
    }
    prompt.push_str("<|im_start|>assistant\n");
    prompt
}
use rungate_inference::registry::Registry;
use rungate_proto::inference::v1::{
    ChatMessage, GenerateRequest, SamplingParams, generate_event::Event,
};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// CPU threads for both engines.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Repetitions per measurement (medians are reported).
    #[arg(long, default_value_t = 9)]
    runs: usize,
    /// Skip the rows next to llama.cpp's server (llama-cpp-python, built
    /// on first use).
    #[arg(long)]
    no_peer: bool,
}

const PROMPT_WORDS: usize = 200;
pub(crate) const DECODE_TOKENS: u32 = 128;

pub(crate) fn long_prompt() -> Vec<ChatMessage> {
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(PROMPT_WORDS / 9);
    vec![ChatMessage {
        role: "user".into(),
        content: format!("{text}\nWrite a long story about a dragon who learns to read."),
        ..Default::default()
    }]
}

pub(crate) fn request(messages: Vec<ChatMessage>, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        request_id: uuid_like(),
        model: "bench".into(),
        messages,
        sampling: Some(SamplingParams {
            max_tokens: Some(max_tokens),
            temperature: Some(0.0),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn uuid_like() -> String {
    format!("bench-{}", Instant::now().elapsed().as_nanos())
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

struct EngineRun {
    prompt_tokens: u32,
    completion_tokens: u32,
    ttft: Duration,
    decode: Duration,
}

async fn engine_run(registry: &Registry, max_tokens: u32) -> anyhow::Result<EngineRun> {
    use futures::StreamExt;
    let engine = registry.local("bench").context("bench model")?;
    let start = Instant::now();
    let mut events = engine
        .generate(request(long_prompt(), max_tokens), 256)
        .await?;
    let mut first_delta = None;
    while let Some(event) = events.next().await {
        match event?.event {
            Some(Event::Started(_)) => {}
            Some(Event::Delta(_) | Event::ToolCall(_) | Event::Refusal(_)) => {
                first_delta.get_or_insert_with(Instant::now);
            }
            Some(Event::Finished(finished)) => {
                let usage = finished.usage.unwrap_or_default();
                let first = first_delta.unwrap_or_else(Instant::now);
                return Ok(EngineRun {
                    prompt_tokens: usage.prompt_tokens,
                    completion_tokens: usage.completion_tokens,
                    ttft: first - start,
                    decode: first.elapsed(),
                });
            }
            None => {}
        }
    }
    bail!("no Finished event")
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let root = crate::dev::root();
    let model = crate::dev::fetch_default_model(&root)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if !args.no_peer {
        // The embedded model as `cargo xtask dev` configures it (prefix
        // reuse, four slots decoding together), on the same threads, with
        // flash attention off as the peer runs (llama-cpp-python's default),
        // which also lets reuse stop at any token. These rows run first, while
        // no other engine of this process has kept an OpenMP team (libgomp
        // cuts its busy-wait to 100 spins once a process holds more OpenMP
        // threads than CPUs; idle engines and the direct loop hand theirs back).
        let config = rungate_inference::Config {
            models_file: None,
            models_toml: Some(format!(
                "[[models]]\nid = \"bench\"\nengine = {{ kind = \"local\", path = \"{}\", threads = {}, context_length = 2048, max_concurrent = 4, max_queue = 16, flash_attention = false }}",
                model.display(),
                args.threads
            )),
            drain_timeout: Duration::from_secs(1),
        };
        let served = Registry::from_config(&config)?;
        crate::bench_batched::run(&runtime, &served, &model, args.threads, args.runs)?;
        runtime.block_on(async {
            let ours = serve_edge(served).await?;
            crate::bench_peer::run(&root, &model, args.threads, args.runs, &ours).await
        })?;
    }
    let config = rungate_inference::Config {
        models_file: None,
        models_toml: Some(format!(
            // `bench` evaluates every prompt in full (what the rows against
            // llama.cpp compare); `bench-agent` reuses prompt prefixes.
            "[[models]]\nid = \"bench\"\nengine = {{ kind = \"local\", path = \"{0}\", threads = {1}, context_length = 2048, reuse_prompt_prefix = false }}\n\
             [[models]]\nid = \"bench-agent\"\nengine = {{ kind = \"local\", path = \"{0}\", threads = {1}, context_length = 2048 }}",
            model.display(),
            args.threads
        )),
        drain_timeout: Duration::from_secs(1),
    };
    let registry = Registry::from_config(&config)?;

    let raw = RawLlama::load(&model, args.threads, &rendered_prompt(&long_prompt()))?;
    // Engine and direct runs alternate, so drift on a noisy machine hits both.
    let (mut pp, mut tg, mut ttft) = (Vec::new(), Vec::new(), Vec::new());
    let (mut raw_pp, mut raw_tg) = (Vec::new(), Vec::new());
    let mut prompt_tokens = 0;
    runtime.block_on(engine_run(&registry, 8))?; // warm-up
    raw.run()?;
    for _ in 0..args.runs {
        let run = runtime.block_on(engine_run(&registry, DECODE_TOKENS))?;
        prompt_tokens = run.prompt_tokens;
        pp.push(f64::from(run.prompt_tokens) / run.ttft.as_secs_f64());
        tg.push(f64::from(run.completion_tokens.saturating_sub(1)) / run.decode.as_secs_f64());
        ttft.push(run.ttft.as_secs_f64() * 1000.0);
        let (p, t) = raw.run()?;
        raw_pp.push(p);
        raw_tg.push(t);
    }
    let (engine_pp, engine_tg, engine_ttft) = (median(pp), median(tg), median(ttft));
    let llama = Some((median(raw_pp), median(raw_tg)));
    let edge_ttft = runtime.block_on(edge_ttft(registry.clone(), args.runs))?;
    let agent = runtime.block_on(agent_ttft(&registry, args.runs))?;

    println!(
        "\n## Local engine, SmolLM2-135M-Instruct Q4_1, {} threads\n",
        args.threads
    );
    println!("| measurement | RunGate engine | llama.cpp direct | ratio |");
    println!("|---|---|---|---|");
    let row = |name: &str, ours: f64, theirs: Option<f64>| match theirs {
        Some(t) => println!(
            "| {name} | {ours:.1} tok/s | {t:.1} tok/s | {:.0}% |",
            100.0 * ours / t
        ),
        None => println!("| {name} | {ours:.1} tok/s | – | – |"),
    };
    row(
        &format!("prompt processing ({prompt_tokens} tokens)"),
        engine_pp,
        llama.map(|l| l.0),
    );
    row(
        &format!("decode ({DECODE_TOKENS} tokens)"),
        engine_tg,
        llama.map(|l| l.1),
    );
    println!("\n| time to first token (median of {}) | ms |", args.runs);
    println!("|---|---|");
    println!("| engine in-process | {engine_ttft:.1} |");
    println!("| through the edge (HTTP → gRPC → engine, streamed) | {edge_ttft:.1} |");
    println!(
        "\n| agent calls: {}-token prompts, the same system prompt and a new user turn each (median of {}) | TTFT ms |",
        agent.system_tokens, args.runs
    );
    println!("|---|---|");
    println!("| prefix reuse (default) | {:.1} |", agent.reused_ms);
    println!("| every prompt evaluated in full | {:.1} |", agent.full_ms);
    println!(
        "| ratio | {:.1}x faster |",
        agent.full_ms / agent.reused_ms.max(f64::MIN_POSITIVE)
    );
    Ok(())
}

struct AgentRun {
    system_tokens: u32,
    reused_ms: f64,
    full_ms: f64,
}

/// What an agent sends: the same long system prompt (rules, tools) and a
/// new question each call; TTFT with and without prefix reuse, alternating.
async fn agent_ttft(registry: &Registry, runs: usize) -> anyhow::Result<AgentRun> {
    use futures::StreamExt;
    let system = ChatMessage {
        role: "system".into(),
        content: "You are an agent that books travel. Rules: confirm dates, prefer trains under 600 km, never invent prices, cite the tool you used. Tools: search_trains(from, to, date), search_flights(from, to, date), book(offer_id). "
            .repeat(24),
        ..Default::default()
    };
    let ttft = |model: &'static str, turn: usize| {
        let system = system.clone();
        async move {
            let engine = registry.local(model).context("bench model")?;
            let messages = vec![
                system,
                ChatMessage {
                    role: "user".into(),
                    content: format!(
                        "Question {turn}: how do I get from city {turn} to city {}?",
                        turn + 1
                    ),
                    ..Default::default()
                },
            ];
            let start = Instant::now();
            let mut events = engine
                .generate(
                    GenerateRequest {
                        model: model.into(),
                        ..request(messages, 4)
                    },
                    4,
                )
                .await?;
            let mut prompt_tokens = 0;
            let mut first = None;
            while let Some(event) = events.next().await {
                match event?.event {
                    Some(Event::Delta(_)) => {
                        first.get_or_insert_with(|| start.elapsed());
                    }
                    Some(Event::Finished(finished)) => {
                        prompt_tokens = finished.usage.unwrap_or_default().prompt_tokens;
                    }
                    _ => {}
                }
            }
            anyhow::Ok((first.unwrap_or_else(|| start.elapsed()), prompt_tokens))
        }
    };
    ttft("bench-agent", 0).await?; // fills the cache with the system prompt
    let (mut reused, mut full, mut tokens) = (Vec::new(), Vec::new(), 0);
    for turn in 1..=runs {
        let (t, _) = ttft("bench-agent", turn).await?;
        reused.push(t.as_secs_f64() * 1000.0);
        let (t, n) = ttft("bench", turn).await?;
        full.push(t.as_secs_f64() * 1000.0);
        tokens = n;
    }
    Ok(AgentRun {
        system_tokens: tokens,
        reused_ms: median(reused),
        full_ms: median(full),
    })
}

/// An in-process edge (free mode) over an inference service serving
/// `registry`, on loopback (real HTTP and gRPC hops); its URL.
async fn serve_edge(registry: Registry) -> anyhow::Result<String> {
    let inference = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let inference_url = format!("http://{}", inference.local_addr()?);
    tokio::spawn(rungate_inference::serve_registry(
        inference,
        registry,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    let edge = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let edge_url = format!("http://{}", edge.local_addr()?);
    tokio::spawn(rungate_edge::serve(
        edge,
        // No ledger runs here: usage records queue and retry, off the measured path.
        rungate_edge::Config::new(inference_url.clone(), "http://127.0.0.1:9"),
        std::future::pending(),
    ));
    rungate_tests::cluster::wait_serving(&inference_url).await?;
    Ok(edge_url)
}

/// TTFT of a streamed chat completion through an in-process edge and
/// inference service on loopback (real HTTP and gRPC hops).
async fn edge_ttft(registry: Registry, runs: usize) -> anyhow::Result<f64> {
    let edge_url = serve_edge(registry).await?;
    let body = serde_json::json!({
        "model": "bench",
        "messages": long_prompt().iter().map(|m| serde_json::json!({"role": m.role, "content": m.content})).collect::<Vec<_>>(),
        "max_tokens": 1,
        "temperature": 0,
        "stream": true,
    });
    let client = reqwest::Client::new();
    let mut samples = Vec::new();
    for i in 0..=runs {
        let start = Instant::now();
        let mut response = client
            .post(format!("{edge_url}/v1/chat/completions"))
            .json(&body)
            .send()
            .await?;
        // The first content delta is the second SSE event (after the role delta).
        let mut seen = String::new();
        while let Some(chunk) = response.chunk().await? {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.matches("data: ").count() >= 2 {
                break;
            }
        }
        let elapsed = start.elapsed().as_secs_f64() * 1000.0;
        while response.chunk().await?.is_some() {}
        if i > 0 {
            samples.push(elapsed); // run 0 warms the connections up
        }
    }
    Ok(median(samples))
}

/// llama.cpp driven directly through llama-cpp-2, the way its `simple`
/// example does (same vendored build, same threads): one synchronous loop, no
/// threads, channels or gRPC.
pub(crate) struct RawLlama {
    model: llama_cpp_2::model::LlamaModel,
    tokens: Vec<llama_cpp_2::token::LlamaToken>,
    threads: u32,
}

impl RawLlama {
    pub(crate) fn load(model: &Path, threads: u32, prompt: &str) -> anyhow::Result<Self> {
        use llama_cpp_2::model::LlamaModel;
        use llama_cpp_2::model::params::LlamaModelParams;
        let backend = rungate_inference::local::backend()?;
        let model = LlamaModel::load_from_file(backend, model, &LlamaModelParams::default())?;
        let tokens = model.vocab().tokenize(prompt.as_bytes(), false, true);
        Ok(Self {
            model,
            tokens,
            threads,
        })
    }

    pub(crate) fn prompt_len(&self) -> usize {
        self.tokens.len()
    }

    /// One run: (prompt, decode) tokens/s.
    fn run(&self) -> anyhow::Result<(f64, f64)> {
        team_released(|| self.run_once())
    }

    fn run_once(&self) -> anyhow::Result<(f64, f64)> {
        use llama_cpp_2::context::params::LlamaContextParams;
        use llama_cpp_2::llama_batch::LlamaBatch;
        use llama_cpp_2::sampling::LlamaSampler;
        let backend = rungate_inference::local::backend()?;
        let n_prompt = self.tokens.len() as u32;
        let params = LlamaContextParams::default()
            .with_n_ctx(std::num::NonZeroU32::new(n_prompt + DECODE_TOKENS + 8))
            .with_n_batch(n_prompt)
            .with_n_ubatch(n_prompt.min(512))
            .with_n_threads(self.threads as i32)
            .with_n_threads_batch(self.threads as i32);
        let mut context = self.model.new_context(backend, params)?;
        let mut batch = LlamaBatch::new(n_prompt as usize, 1);
        for (i, token) in self.tokens.iter().enumerate() {
            batch.add(*token, i as i32, &[0], i + 1 == self.tokens.len())?;
        }
        let start = Instant::now();
        context.decode(&mut batch)?;
        let prompt_time = start.elapsed();
        let mut sampler = LlamaSampler::greedy();
        let start = Instant::now();
        for step in 0..DECODE_TOKENS {
            let token = sampler.sample(&context, batch.n_tokens() - 1);
            batch.clear();
            batch.add(token, (n_prompt + step) as i32, &[0], true)?;
            context.decode(&mut batch)?;
        }
        Ok((
            f64::from(n_prompt) / prompt_time.as_secs_f64(),
            f64::from(DECODE_TOKENS) / start.elapsed().as_secs_f64(),
        ))
    }

    /// Aggregate decode tokens/s of `n` sequences (the same prompt, then
    /// one token of each per step) decoded together in one batch, the way
    /// llama.cpp's `batched` example does: what batching can give at best.
    pub(crate) fn run_batched(&self, n: usize) -> anyhow::Result<f64> {
        team_released(|| self.run_batched_once(n))
    }

    fn run_batched_once(&self, n: usize) -> anyhow::Result<f64> {
        use llama_cpp_2::context::params::LlamaContextParams;
        use llama_cpp_2::llama_batch::LlamaBatch;
        use llama_cpp_2::sampling::LlamaSampler;
        let backend = rungate_inference::local::backend()?;
        let n_prompt = self.tokens.len();
        let params = LlamaContextParams::default()
            .with_n_ctx(std::num::NonZeroU32::new(
                (n_prompt + n * (DECODE_TOKENS as usize + 8)) as u32,
            ))
            .with_n_seq_max(n as u32)
            // One cache the sequences share: the prompt is held once.
            .with_kv_unified(true)
            .with_n_batch(n_prompt.max(n) as u32)
            .with_n_ubatch(n_prompt.clamp(n, 512) as u32)
            .with_n_threads(self.threads as i32)
            .with_n_threads_batch(self.threads as i32);
        let mut context = self.model.new_context(backend, params)?;
        let mut batch = LlamaBatch::new(n_prompt.max(n), n as i32);
        let all: Vec<i32> = (0..n as i32).collect();
        for (i, token) in self.tokens.iter().enumerate() {
            batch.add(*token, i as i32, &all, i + 1 == n_prompt)?;
        }
        context.decode(&mut batch)?;
        let mut sampler = LlamaSampler::greedy();
        let first = sampler.sample(&context, batch.n_tokens() - 1);
        let mut next = vec![first; n];
        let start = Instant::now();
        for step in 0..DECODE_TOKENS {
            batch.clear();
            for (seq, token) in next.iter().enumerate() {
                batch.add(
                    *token,
                    (n_prompt + step as usize) as i32,
                    &[seq as i32],
                    true,
                )?;
            }
            context.decode(&mut batch)?;
            for (seq, token) in next.iter_mut().enumerate() {
                *token = sampler.sample(&context, seq as i32);
            }
        }
        Ok((n * DECODE_TOKENS as usize) as f64 / start.elapsed().as_secs_f64())
    }
}

/// Runs `run`, then hands this thread's OpenMP team back, so that between
/// direct runs it does not slow the engines' (see
/// `rungate_inference::local::release_threads`).
fn team_released<T>(run: impl FnOnce() -> T) -> T {
    let result = run();
    rungate_inference::local::release_threads();
    result
}
