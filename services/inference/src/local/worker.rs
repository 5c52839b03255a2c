//! A slot's thread: it keeps one llama.cpp context for its whole life and
//! runs one generation at a time on it: prompt → decode loop → events. The
//! context's KV cache is kept between calls, and a call evaluates only the
//! part of its prompt after the longest prefix it shares with what the cache
//! holds (an agent resends the same system prompt and a growing
//! conversation). The loop checks before every token whether the caller is
//! still there, so a dropped stream stops generation within one token.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use rungate_proto::inference::v1::{
    ChatMessage, FinishReason, Finished, GenerateEvent, GenerateRequest, Started, TextDelta,
    generate_event::Event,
};
use rungate_proto::types::v1::TokenUsage;
use tokio::sync::mpsc::Sender;

use super::Inner;
use super::text::{Scan, StopScanner, Utf8Stream};
use crate::InferenceError;

type Events = Sender<Result<GenerateEvent, InferenceError>>;

fn event(event: Event) -> Result<GenerateEvent, InferenceError> {
    Ok(GenerateEvent { event: Some(event) })
}

impl Inner {
    pub(super) fn prompt_tokens(
        &self,
        messages: &[ChatMessage],
    ) -> Result<Vec<LlamaToken>, InferenceError> {
        let prompt = self.template.render(&self.model, messages)?;
        tracing::debug!(%prompt, "rendered chat template");
        let vocab = self.model.vocab();
        // The template may already start with BOS; never add a second.
        let add_bos = vocab.should_add_bos()
            && (self.template.bos().is_empty() || !prompt.starts_with(self.template.bos()));
        Ok(vocab.tokenize(prompt.as_bytes(), add_bos, true))
    }
}

/// Prompts are evaluated in chunks of this many tokens, aligned on
/// multiples of it from position 0, with or without reuse. llama.cpp's
/// results depend (in the last bits) on how tokens were batched, so a
/// prompt's KV entries are only reused where they were computed exactly as a
/// fresh evaluation would: in the same full, aligned chunks. That keeps greedy
/// output token-for-token identical, at the price of re-evaluating up to a
/// chunk of the shared prefix.
const CHUNK: usize = 64;

/// One generation, handed to a slot's thread.
pub(super) struct Job {
    pub(super) request: GenerateRequest,
    pub(super) default_max_tokens: u32,
    pub(super) events: Events,
    /// Held until the generation ends: frees the slot for the next caller.
    pub(super) slot: tokio::sync::OwnedSemaphorePermit,
}

/// A slot's context and the tokens its KV cache holds, in order from position 0.
struct Cache<'m> {
    context: LlamaContext<'m>,
    tokens: Vec<LlamaToken>,
    /// How many of `tokens` were evaluated in full aligned prompt chunks
    /// (the rest: a prompt's last partial chunk, and generated tokens).
    reusable: usize,
}

/// A slot's thread: runs jobs until the engine (the sending side) is gone.
pub(super) fn serve(inner: &Inner, jobs: &Mutex<Receiver<Job>>) {
    let mut cache = None;
    loop {
        let job = match jobs.lock() {
            Ok(jobs) => jobs.recv(),
            Err(_) => return,
        };
        let Ok(Job {
            request,
            default_max_tokens,
            events,
            slot,
        }) = job
        else {
            return;
        };
        inner.metrics.running.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = run(inner, &mut cache, request, default_max_tokens, &events) {
            let _ = events.blocking_send(Err(error));
        }
        inner.metrics.running.fetch_sub(1, Ordering::Relaxed);
        drop(slot);
    }
}

impl<'m> Cache<'m> {
    /// The context holds the model's whole context length, so any call fits.
    fn new(inner: &'m Inner) -> Result<Self, InferenceError> {
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(inner.context_length))
            .with_n_batch(CHUNK as u32)
            .with_n_ubatch(CHUNK as u32)
            .with_n_threads(inner.threads)
            .with_n_threads_batch(inner.threads);
        let backend = super::backend()?;
        let _guard = inner
            .context_lock
            .lock()
            .map_err(|_| engine("context lock poisoned"))?;
        let context = inner
            .model
            .new_context(backend, params)
            .map_err(|e| engine(format!("cannot create a context: {e}")))?;
        Ok(Self {
            context,
            tokens: Vec::new(),
            reusable: 0,
        })
    }

    /// Brings the KV cache to `prompt`: keeps the longest prefix it shares
    /// with what the cache holds and evaluates the rest. Returns how many
    /// tokens were reused and where the last token's logits are in `batch`.
    fn evaluate_prompt(
        &mut self,
        prompt: &[LlamaToken],
        reuse: bool,
        batch: &mut LlamaBatch<'_>,
    ) -> Result<(usize, i32), InferenceError> {
        // The last prompt token is always evaluated: its logits pick the
        // first output token.
        let shared = if reuse {
            common_prefix(&self.tokens[..self.reusable], prompt)
        } else {
            0
        };
        let mut reused = shared.min(prompt.len() - 1) / CHUNK * CHUNK;
        if reused < self.tokens.len() {
            let trimmed = self
                .context
                .clear_kv_cache_seq(Some(0), Some(reused as u32), None)
                .unwrap_or(false);
            if !trimmed {
                // Some memories (recurrent models) cannot drop a suffix.
                self.context.clear_kv_cache();
                reused = 0;
            }
            self.tokens.truncate(reused);
        }
        self.reusable = reused;
        for chunk in prompt[reused..].chunks(CHUNK) {
            self.evaluate(chunk, batch)?;
            if chunk.len() == CHUNK {
                self.reusable = self.tokens.len();
            }
        }
        Ok((reused, batch.n_tokens() - 1))
    }

    /// Evaluates `tokens` after what the cache holds (logits for the last).
    /// A failure leaves the cache empty rather than unknown.
    fn evaluate(
        &mut self,
        tokens: &[LlamaToken],
        batch: &mut LlamaBatch<'_>,
    ) -> Result<(), InferenceError> {
        batch.clear();
        let start = self.tokens.len();
        for (i, token) in tokens.iter().enumerate() {
            batch
                .add(*token, (start + i) as i32, &[0], i + 1 == tokens.len())
                .map_err(|e| engine(format!("batch: {e}")))?;
        }
        if let Err(error) = self.context.decode(batch) {
            self.context.clear_kv_cache();
            self.tokens.clear();
            self.reusable = 0;
            return Err(engine(format!("decode failed: {error}")));
        }
        self.tokens.extend_from_slice(tokens);
        Ok(())
    }
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn run<'m>(
    inner: &'m Inner,
    cache: &mut Option<Cache<'m>>,
    request: GenerateRequest,
    default_max_tokens: u32,
    events: &Events,
) -> Result<(), InferenceError> {
    let prompt = inner.prompt_tokens(&request.messages)?;
    let n_prompt = prompt.len() as u32;
    if n_prompt == 0 {
        return Err(InferenceError::InvalidArgument {
            param: "messages",
            message: "the prompt is empty".into(),
        });
    }
    let room = inner.context_length.saturating_sub(n_prompt);
    if room == 0 {
        return Err(InferenceError::InvalidArgument {
            param: "messages",
            message: format!(
                "the prompt is {n_prompt} tokens; this model's context is {} tokens",
                inner.context_length
            ),
        });
    }
    let sampling = request.sampling.unwrap_or_default();
    let max_tokens = match sampling.max_tokens {
        Some(asked) if asked > room => {
            return Err(InferenceError::InvalidArgument {
                param: "max_tokens",
                message: format!(
                    "this model's context is {} tokens: the prompt uses {n_prompt}, so at most {room} can be generated (asked for {asked})",
                    inner.context_length
                ),
            });
        }
        Some(asked) => asked,
        None => default_max_tokens.min(room),
    };

    let cache = match cache {
        Some(cache) => cache,
        None => cache.insert(Cache::new(inner)?),
    };
    let mut batch = LlamaBatch::new(CHUNK, 1);
    let (reused, mut logits) =
        cache.evaluate_prompt(&prompt, inner.reuse_prompt_prefix, &mut batch)?;
    inner
        .metrics
        .prompt_tokens_reused
        .fetch_add(reused as u64, Ordering::Relaxed);
    if events
        .blocking_send(event(Event::Started(Started {
            served_by: request.model.clone(),
        })))
        .is_err()
    {
        return cancelled(inner, 0);
    }

    let temperature = sampling.temperature.unwrap_or(inner.temperature);
    let mut sampler = if temperature <= 0.0 {
        LlamaSampler::greedy()
    } else {
        let seed = sampling.seed.map_or_else(rand_seed, |s| s as u32);
        LlamaSampler::chain_simple([
            LlamaSampler::top_p(sampling.top_p.unwrap_or(1.0), 1),
            LlamaSampler::temp(temperature),
            LlamaSampler::dist(seed),
        ])
    };

    let vocab = inner.model.vocab();
    let mut utf8 = Utf8Stream::default();
    let mut stops = StopScanner::new(sampling.stop);
    let mut generated = 0u32;
    let mut finish = FinishReason::Length;
    let mut stopped_by_sequence = false;
    let mut piece = Vec::with_capacity(16);
    while generated < max_tokens {
        if events.is_closed() {
            return cancelled(inner, generated);
        }
        let token = sampler.sample(&cache.context, logits);
        if vocab.is_eog(token) {
            finish = FinishReason::Stop;
            break;
        }
        generated += 1;
        inner
            .metrics
            .tokens_generated
            .fetch_add(1, Ordering::Relaxed);
        piece.clear();
        vocab.token_to_piece_into(token, &mut piece, false, None);
        let text = utf8.push(&piece);
        let (emit, stopped) = match stops.push(&text) {
            Scan::Emit(text) => (text, false),
            Scan::Stopped(text) => (text, true),
        };
        if !emit.is_empty()
            && events
                .blocking_send(event(Event::Delta(TextDelta {
                    text: emit,
                    ..Default::default()
                })))
                .is_err()
        {
            return cancelled(inner, generated);
        }
        if stopped {
            finish = FinishReason::Stop;
            stopped_by_sequence = true;
            break;
        }
        if generated == max_tokens {
            break;
        }
        cache.evaluate(&[token], &mut batch)?;
        logits = 0;
    }
    if !stopped_by_sequence {
        // End of generation: release what was held back (unless it completes a stop).
        let tail = utf8.finish();
        let rest = match stops.push(&tail) {
            Scan::Emit(text) => text + &stops.finish(),
            Scan::Stopped(text) => {
                finish = FinishReason::Stop;
                text
            }
        };
        if !rest.is_empty() {
            let _ = events.blocking_send(event(Event::Delta(TextDelta {
                text: rest,
                ..Default::default()
            })));
        }
    }
    let _ = events.blocking_send(event(Event::Finished(Finished {
        finish_reason: finish as i32,
        usage: Some(TokenUsage {
            prompt_tokens: n_prompt,
            completion_tokens: generated,
        }),
        cached_prompt_tokens: reused as u32,
    })));
    Ok(())
}

fn engine(message: impl Into<String>) -> InferenceError {
    InferenceError::Engine(message.into())
}

fn cancelled(inner: &Inner, generated: u32) -> Result<(), InferenceError> {
    inner.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
    tracing::info!(generated, "caller went away; generation stopped");
    Ok(())
}

fn rand_seed() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish() as u32
}
