//! The rows of `cargo xtask bench` on calls decoding together: several
//! sequences in one llama.cpp batch, driven directly (a loop like llama.cpp's
//! `batched` example: what batching gives at best on these cores) and
//! through the engine in-process (continuous batching, one slot per call).

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use rungate_inference::registry::Registry;
use rungate_proto::inference::v1::generate_event::Event;

use crate::bench::{DECODE_TOKENS, RawLlama, long_prompt, median, rendered_prompt, request};

const AT_ONCE: usize = 4;

/// Measures and prints the table; `served` is a model `bench` with at
/// least `AT_ONCE` slots that has not served a call yet.
pub fn run(
    runtime: &tokio::runtime::Runtime,
    served: &Registry,
    model: &Path,
    threads: u32,
    runs: usize,
) -> anyhow::Result<()> {
    let raw = RawLlama::load(model, threads, &rendered_prompt(&long_prompt()))?;
    raw.run_batched(1)?; // warm-up
    let (mut one, mut many) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        one.push(raw.run_batched(1)?);
        many.push(raw.run_batched(AT_ONCE)?);
    }
    let direct = (median(one), median(many), raw.prompt_len());
    drop(raw);
    let (mut one, mut many, mut slowest) = (Vec::new(), Vec::new(), Vec::new());
    runtime.block_on(async {
        streams(served, 1, 8).await?; // warm-up
        for _ in 0..runs {
            one.push(streams(served, 1, DECODE_TOKENS).await?.0);
            let (aggregate, slow) = streams(served, AT_ONCE, DECODE_TOKENS).await?;
            many.push(aggregate);
            slowest.push(slow);
        }
        anyhow::Ok(())
    })?;
    let (one, many, slowest) = (median(one), median(many), median(slowest));
    println!(
        "\n## Calls decoding together, in-process ({}-token prompt, {DECODE_TOKENS} tokens each, median of {runs})\n",
        direct.2
    );
    println!("| decode | llama.cpp direct, one batch | RunGate engine |");
    println!("|---|---|---|");
    println!("| one call | {:.1} tok/s | {one:.1} tok/s |", direct.0);
    println!(
        "| {AT_ONCE} at once, aggregate | {:.1} tok/s ({:.2}x) | {many:.1} tok/s ({:.2}x) |",
        direct.1,
        direct.1 / direct.0,
        many / one
    );
    println!(
        "| slowest of the {AT_ONCE} | – | {slowest:.1} tok/s ({:.0}%) |",
        100.0 * slowest / one
    );
    Ok(())
}

/// `n` greedy calls of `max_tokens` on the long prompt, started at once on
/// model `bench`: (aggregate decode tok/s, the slowest call's decode tok/s).
/// Decode time runs from a call's first token to its last; the aggregate
/// counts every token after each call's first over the span from the
/// earliest first token to the latest last one.
async fn streams(registry: &Registry, n: usize, max_tokens: u32) -> anyhow::Result<(f64, f64)> {
    use futures::StreamExt;
    let engine = registry.local("bench").context("bench model")?;
    let calls = (0..n).map(|_| async move {
        let mut events = engine
            .generate(request(long_prompt(), max_tokens), 256)
            .await?;
        let (mut first, mut last, mut tokens) = (None, Instant::now(), 0u32);
        while let Some(event) = events.next().await {
            if let Some(Event::Delta(_)) = event?.event {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                tokens += 1;
            }
        }
        let first = first.context("no delta")?;
        anyhow::Ok((first, last, tokens.saturating_sub(1)))
    });
    let runs = futures::future::try_join_all(calls).await?;
    let start = runs.iter().map(|r| r.0).min().context("no calls")?;
    let end = runs.iter().map(|r| r.1).max().context("no calls")?;
    let tokens: u32 = runs.iter().map(|r| r.2).sum();
    let slowest = runs
        .iter()
        .map(|&(first, last, tokens)| f64::from(tokens) / (last - first).as_secs_f64())
        .fold(f64::INFINITY, f64::min);
    Ok((f64::from(tokens) / (end - start).as_secs_f64(), slowest))
}
