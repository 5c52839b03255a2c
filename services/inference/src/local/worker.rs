//! One generation on a blocking thread: prompt → decode loop → events. The
//! loop checks before every token whether the caller is still there, so a
//! dropped stream stops generation within one token.

use std::num::NonZeroU32;
use std::sync::atomic::Ordering;

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

pub(super) fn generate(
    inner: &Inner,
    request: GenerateRequest,
    default_max_tokens: u32,
    events: &Events,
) {
    inner.metrics.running.fetch_add(1, Ordering::Relaxed);
    if let Err(error) = run(inner, request, default_max_tokens, events) {
        let _ = events.blocking_send(Err(error));
    }
    inner.metrics.running.fetch_sub(1, Ordering::Relaxed);
}

fn run(
    inner: &Inner,
    request: GenerateRequest,
    default_max_tokens: u32,
    events: &Events,
) -> Result<(), InferenceError> {
    let prompt = inner.prompt_tokens(&request.messages)?;
    let n_prompt = prompt.len() as u32;
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

    let n_ctx = n_prompt + max_tokens;
    let n_batch = n_prompt.max(1);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(n_batch)
        .with_n_ubatch(n_batch.min(512))
        .with_n_threads(inner.threads)
        .with_n_threads_batch(inner.threads);
    let backend = super::backend()?;
    let mut context = {
        let _guard = inner
            .context_lock
            .lock()
            .map_err(|_| engine("context lock poisoned"))?;
        inner
            .model
            .new_context(backend, params)
            .map_err(|e| engine(format!("cannot create a context: {e}")))?
    };

    let mut batch = LlamaBatch::new(n_batch as usize, 1);
    let last = prompt.len() as i32 - 1;
    for (i, token) in prompt.iter().enumerate() {
        batch
            .add(*token, i as i32, &[0], i as i32 == last)
            .map_err(|e| engine(format!("batch: {e}")))?;
    }
    context
        .decode(&mut batch)
        .map_err(|e| engine(format!("prompt decode failed: {e}")))?;
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
    let mut position = n_prompt as i32;
    let mut piece = Vec::with_capacity(16);
    while generated < max_tokens {
        if events.is_closed() {
            return cancelled(inner, generated);
        }
        let token = sampler.sample(&context, batch.n_tokens() - 1);
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
        batch.clear();
        batch
            .add(token, position, &[0], true)
            .map_err(|e| engine(format!("batch: {e}")))?;
        position += 1;
        context
            .decode(&mut batch)
            .map_err(|e| engine(format!("decode failed: {e}")))?;
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
