//! The model's engine thread: one llama.cpp context whose KV cache holds a
//! sequence per slot, and a loop that runs every admitted call together
//! (continuous batching). Each step evaluates one prompt chunk of a call
//! that is starting, then one token of every call that is generating, all
//! of them in one batch; a call joins and leaves between steps. A slot's KV
//! cache is kept between calls, and a call evaluates only the part of its
//! prompt after the longest prefix it shares with a free slot's cache (an
//! agent resends the same system prompt and a growing conversation). Before
//! every step the loop checks which callers are still there, so a dropped
//! stream stops its generation within one token.

use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;
use rungate_proto::inference::v1::{ChatMessage, GenerateRequest};

use super::Inner;
use super::sequence::{Events, Prepared, Sequence};
use crate::InferenceError;

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

/// Prompts are evaluated in pieces of this many tokens, aligned on its
/// multiples from position 0, one piece per step, so a long prompt does not
/// hold up the calls already generating.
///
/// Reuse is exact: greedy output with a reused prefix is token for token
/// what a full evaluation gives (tested on the tiny GGUF and SmolLM2).
/// llama.cpp's CPU results for a token depend on whether it was evaluated
/// alone (the per-token path, as in decoding) or with others of its
/// sequence (the prompt matmuls, whose results do not depend on how many);
/// so every prompt token is evaluated with at least one other, with or
/// without reuse, a reused prefix stops two tokens short of the prompt's
/// end, and generated tokens (one per sequence a pass) are never reused.
/// The CPU flash-attention kernel does depend on how many tokens share a
/// piece: with it on, reuse also stops at a multiple of CHUNK, so reused
/// entries were computed in the same pieces as a fresh evaluation's.
///
/// Calls decoding together share each pass, and llama.cpp may pick a
/// batched kernel for several tokens' matmuls (the output layer's, for
/// SmolLM2) that rounds differently from the single-token one: next to
/// other calls a greedy call could, at a near tie, take another token than
/// alone. Tests on both models see the same outputs together and alone.
pub(super) const CHUNK: usize = 64;

/// llama.cpp's `LLAMA_FLASH_ATTN_TYPE_DISABLED` and `_AUTO` (its default:
/// on where the backend supports it).
const FLASH_ATTENTION_OFF: i32 = 0;
const FLASH_ATTENTION_AUTO: i32 = -1;

/// How long an idle engine thread keeps its OpenMP workers (back-to-back
/// calls keep them; see `openmp`).
const IDLE_BEFORE_RELEASE: Duration = Duration::from_millis(100);

/// One generation, handed to the engine thread.
pub(super) struct Job {
    pub(super) request: GenerateRequest,
    pub(super) default_max_tokens: u32,
    pub(super) events: Events,
    /// Held until the generation ends: frees a slot for the next caller.
    pub(super) permit: tokio::sync::OwnedSemaphorePermit,
}

/// What one slot's KV sequence holds, in order from position 0.
#[derive(Default)]
struct Slot {
    tokens: Vec<LlamaToken>,
    /// How many of `tokens` a later prompt may reuse: those evaluated as
    /// prompt pieces (not the generated ones after them).
    reusable: usize,
    busy: bool,
    /// When a call last took it (for least-recently-used choice).
    used: u64,
}

struct Batcher<'m> {
    inner: &'m Inner,
    /// Made on the first call: holds a KV sequence of the whole context
    /// length per slot.
    context: Option<LlamaContext<'m>>,
    slots: Vec<Slot>,
    /// Admitted calls, oldest first (prompts are evaluated in this order).
    running: Vec<Sequence>,
    batch: LlamaBatch<'static>,
    /// Indices into `running` of this step's generating calls.
    stepping: Vec<usize>,
    clock: u64,
}

/// The engine thread: runs calls until the engine (the sending side) is gone.
pub(super) fn serve(inner: &Inner, slots: usize, jobs: &Receiver<Job>) {
    let mut batcher = Batcher {
        inner,
        context: None,
        slots: (0..slots).map(|_| Slot::default()).collect(),
        running: Vec::with_capacity(slots),
        batch: LlamaBatch::new(CHUNK.max(slots), 1),
        stepping: Vec::with_capacity(slots),
        clock: 0,
    };
    loop {
        // Block while there is nothing to do; otherwise take what arrived.
        if batcher.running.is_empty() {
            let job = match jobs.recv_timeout(IDLE_BEFORE_RELEASE) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    super::openmp::release_threads();
                    match jobs.recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            batcher.admit(job);
        }
        while let Ok(job) = jobs.try_recv() {
            batcher.admit(job);
        }
        if !batcher.step() {
            // Every call waits on its caller: pause (or take a new call).
            match jobs.recv_timeout(Duration::from_millis(1)) {
                Ok(job) => batcher.admit(job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }
}

impl<'m> Batcher<'m> {
    fn admit(&mut self, job: Job) {
        let Job {
            request,
            default_max_tokens,
            events,
            permit,
        } = job;
        let prepared = Prepared::new(self.inner, request, default_max_tokens)
            .and_then(|prepared| self.ensure_context().map(|()| prepared));
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                // A fresh channel: there is room for this first event.
                let _ = events.try_send(Err(error));
                return;
            }
        };
        let slot = self.pick_slot(&prepared.prompt);
        self.copy_longer_prefix(slot, &prepared.prompt);
        let reused = self.trim(slot, &prepared.prompt);
        let metrics = &self.inner.metrics;
        metrics
            .prompt_tokens_reused
            .fetch_add(reused as u64, Ordering::Relaxed);
        metrics.running.fetch_add(1, Ordering::Relaxed);
        self.inner.gauges.running.increment(1.0);
        self.running
            .push(Sequence::new(prepared, slot, reused, events, permit));
    }

    fn ensure_context(&mut self) -> Result<(), InferenceError> {
        if self.context.is_some() {
            return Ok(());
        }
        let inner = self.inner;
        let slots = self.slots.len() as u32;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(inner.context_length.saturating_mul(slots)))
            .with_n_seq_max(slots)
            // A KV stream per sequence: each slot has the whole context length.
            .with_kv_unified(false)
            .with_flash_attention_policy(if inner.flash_attention {
                FLASH_ATTENTION_AUTO
            } else {
                FLASH_ATTENTION_OFF
            })
            .with_n_batch(CHUNK.max(self.slots.len()) as u32)
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
        self.context = Some(context);
        Ok(())
    }

    /// A free slot (there is one: callers hold a permit per slot), the one
    /// whose cache shares the longest reusable prefix with `prompt`, else the
    /// least recently used.
    fn pick_slot(&mut self, prompt: &[LlamaToken]) -> usize {
        let reuse = self.inner.reuse_prompt_prefix;
        let (index, _) = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| !slot.busy)
            .map(|(i, slot)| {
                let shared = if reuse {
                    common_prefix(&slot.tokens[..slot.reusable], prompt)
                } else {
                    0
                };
                (i, (shared, std::cmp::Reverse(slot.used)))
            })
            .max_by_key(|(_, score)| *score)
            .unwrap_or((0, (0, std::cmp::Reverse(0))));
        self.clock += 1;
        let slot = &mut self.slots[index];
        slot.busy = true;
        slot.used = self.clock;
        index
    }

    /// If another slot (busy or not) holds a longer reusable prefix of
    /// `prompt` than `index` does (agents at once share a system prompt),
    /// copies that slot's KV sequence into `index` first: llama.cpp copies
    /// the whole stream (bit for bit) before its next evaluation, and `trim`
    /// then cuts it to the shared prefix.
    fn copy_longer_prefix(&mut self, index: usize, prompt: &[LlamaToken]) {
        if !self.inner.reuse_prompt_prefix {
            return;
        }
        let shared = |slot: &Slot| common_prefix(&slot.tokens[..slot.reusable], prompt);
        let own = shared(&self.slots[index]);
        let donor = self
            .slots
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != index)
            .map(|(i, slot)| (shared(slot), i))
            .max();
        let Some((longest, donor)) = donor else {
            return;
        };
        // Worth a copy of the stream only when it saves a prompt piece.
        if longest < own + CHUNK {
            return;
        }
        let Some(context) = self.context.as_mut() else {
            return;
        };
        if context
            .copy_kv_cache_seq(donor as i32, index as i32, None, None)
            .is_err()
        {
            return;
        }
        // The copy holds all of the donor's sequence: keep only the prefix.
        let seq = Some(index as u32);
        if !context
            .clear_kv_cache_seq(seq, Some(longest as u32), None)
            .unwrap_or(false)
        {
            let _ = context.clear_kv_cache_seq(seq, None, None);
            let slot = &mut self.slots[index];
            slot.tokens.clear();
            slot.reusable = 0;
            return;
        }
        let tokens = self.slots[donor].tokens[..longest].to_vec();
        let slot = &mut self.slots[index];
        slot.reusable = tokens.len();
        slot.tokens = tokens;
    }

    /// Keeps the longest reusable prefix the slot's cache shares with
    /// `prompt`, short of its last two tokens (they are evaluated as one
    /// piece; the last one's logits pick the first output token) and, with
    /// flash attention, at a multiple of CHUNK; drops the rest; returns its
    /// length.
    fn trim(&mut self, index: usize, prompt: &[LlamaToken]) -> usize {
        let shared = if self.inner.reuse_prompt_prefix {
            let slot = &self.slots[index];
            common_prefix(&slot.tokens[..slot.reusable], prompt)
        } else {
            0
        };
        let mut kept = self.reusable_up_to(shared.min(prompt.len().saturating_sub(2)));
        let slot = &mut self.slots[index];
        if kept < slot.tokens.len() {
            let Some(context) = self.context.as_mut() else {
                return 0;
            };
            let seq = Some(index as u32);
            let trimmed = context
                .clear_kv_cache_seq(seq, Some(kept as u32), None)
                .unwrap_or(false);
            if !trimmed {
                // Some memories (recurrent models) cannot drop a suffix.
                let _ = context.clear_kv_cache_seq(seq, None, None);
                kept = 0;
            }
            slot.tokens.truncate(kept);
        }
        slot.reusable = kept;
        kept
    }

    /// One step of the batch; false if there was nothing to evaluate.
    fn step(&mut self) -> bool {
        self.sweep();
        let prompt = self.prompt_chunk();
        let tokens = self.next_tokens();
        self.sweep();
        prompt || tokens
    }

    /// Hands out pending events; lets finished and abandoned calls go.
    fn sweep(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            let sequence = &mut self.running[i];
            let here = sequence.flush();
            let unfinished = !sequence.done || sequence.backed_up();
            if here && unfinished {
                i += 1;
                continue;
            }
            let sequence = self.running.remove(i);
            if !here && !sequence.done {
                self.inner.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    generated = sequence.generated(),
                    "caller went away; generation stopped"
                );
            }
            self.slots[sequence.slot].busy = false;
            self.inner.metrics.running.fetch_sub(1, Ordering::Relaxed);
            self.inner.gauges.running.decrement(1.0);
        }
    }

    /// Evaluates the next prompt chunk of the oldest call still starting.
    fn prompt_chunk(&mut self) -> bool {
        let Some(index) = self.running.iter().position(|s| !s.done && !s.prefilled()) else {
            return false;
        };
        let Some(context) = self.context.as_mut() else {
            return false;
        };
        let sequence = &mut self.running[index];
        let slot = &mut self.slots[sequence.slot];
        let start = sequence.evaluated;
        let len = sequence.prompt.len();
        let mut end = (start + CHUNK).min(len);
        if len - end == 1 {
            // Never leave a last piece of one token (see CHUNK).
            end -= 1;
        }
        let chunk = &sequence.prompt[start..end];
        self.batch.clear();
        let seq = [sequence.slot as i32];
        for (i, token) in chunk.iter().enumerate() {
            if let Err(error) =
                self.batch
                    .add(*token, (start + i) as i32, &seq, start + i + 1 == end)
            {
                sequence.fail(engine(format!("batch: {error}")));
                return true;
            }
        }
        if let Err(error) = context.decode(&mut self.batch) {
            // The sequence's cache is in an unknown state: start it afresh.
            let _ = context.clear_kv_cache_seq(Some(sequence.slot as u32), None, None);
            slot.tokens.clear();
            slot.reusable = 0;
            sequence.fail(engine(format!("decode failed: {error}")));
            return true;
        }
        slot.tokens.extend_from_slice(chunk);
        slot.reusable = slot.tokens.len();
        sequence.evaluated = end;
        if sequence.prefilled() {
            sequence.prompt_done(self.inner, context, self.batch.n_tokens() - 1);
        }
        true
    }

    /// Evaluates one token of every generating call whose caller keeps up,
    /// together in one batch, and samples each call's next token.
    fn next_tokens(&mut self) -> bool {
        self.stepping.clear();
        self.stepping.extend(
            self.running
                .iter()
                .enumerate()
                .filter(|(_, s)| s.next.is_some() && !s.backed_up())
                .map(|(i, _)| i),
        );
        if self.stepping.is_empty() {
            return false;
        }
        // In slot order: with a KV stream per slot, llama.cpp evaluates in one
        // pass only runs of consecutive sequence ids, in increasing order, and
        // splits the rest into a pass each (as costly as decoding alone).
        let running = &self.running;
        self.stepping.sort_unstable_by_key(|&i| running[i].slot);
        let Some(context) = self.context.as_mut() else {
            return false;
        };
        self.batch.clear();
        for &i in &self.stepping {
            let sequence = &self.running[i];
            let Some(token) = sequence.next else { continue };
            let position = self.slots[sequence.slot].tokens.len() as i32;
            if let Err(error) = self
                .batch
                .add(token, position, &[sequence.slot as i32], true)
            {
                // Cannot happen: the batch holds a token per slot.
                tracing::error!(%error, "batch full");
                return false;
            }
        }
        let decoded = context.decode(&mut self.batch);
        let metrics = &self.inner.metrics;
        metrics.decode_steps.fetch_add(1, Ordering::Relaxed);
        metrics
            .decode_step_tokens
            .fetch_add(self.stepping.len() as u64, Ordering::Relaxed);
        for (logits, &i) in self.stepping.iter().enumerate() {
            let sequence = &mut self.running[i];
            let slot = &mut self.slots[sequence.slot];
            let Some(token) = sequence.next.take() else {
                continue;
            };
            match &decoded {
                Ok(()) => {
                    slot.tokens.push(token);
                    sequence.sample(self.inner, context, logits as i32);
                }
                Err(error) => {
                    let _ = context.clear_kv_cache_seq(Some(sequence.slot as u32), None, None);
                    slot.tokens.clear();
                    slot.reusable = 0;
                    sequence.fail(engine(format!("decode failed: {error}")));
                }
            }
        }
        true
    }
}

impl Batcher<'_> {
    /// Where an exact reuse may stop (see CHUNK).
    fn reusable_up_to(&self, shared: usize) -> usize {
        if self.inner.flash_attention {
            shared / CHUNK * CHUNK
        } else {
            shared
        }
    }
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn engine(message: impl Into<String>) -> InferenceError {
    InferenceError::Engine(message.into())
}
