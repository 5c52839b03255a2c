//! One call in the engine's batch: its prompt, its sampler, the text it has
//! produced so far, and the events its caller has not taken yet. The batch
//! loop (`worker`) evaluates tokens; a sequence decides what each sampled
//! token means (end of generation, a stop sequence, the token limit) and
//! turns it into events.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use rungate_proto::inference::v1::{
    FinishReason, Finished, GenerateEvent, GenerateRequest, Started, TextDelta, ToolCallDelta,
    generate_event::Event,
};
use rungate_proto::types::v1::TokenUsage;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc::error::TrySendError;

use super::Inner;
use super::structured::{self, Answer};
use super::text::{Scan, StopScanner, Utf8Stream};
use crate::InferenceError;

pub(super) type Events = tokio::sync::mpsc::Sender<Result<GenerateEvent, InferenceError>>;

/// A request checked against the model: its prompt tokens and limits.
pub(super) struct Prepared {
    pub prompt: Vec<LlamaToken>,
    max_tokens: u32,
    sampler: LlamaSampler,
    stops: StopScanner,
    served_by: String,
    tool_calls: bool,
}

impl Prepared {
    pub fn new(
        inner: &Inner,
        request: GenerateRequest,
        default_max_tokens: u32,
    ) -> Result<Self, InferenceError> {
        let plan = inner.plan(&request.model, &request.messages, &request.extra_json)?;
        let sampling = request.sampling.unwrap_or_default();
        let max_tokens =
            inner.budget(plan.prompt.len(), sampling.max_tokens, default_max_tokens)?;
        let temperature = sampling.temperature.unwrap_or(inner.temperature);
        // The grammar first: the others choose among the tokens it allows.
        let mut chain: Vec<LlamaSampler> =
            inner.grammar_sampler(&plan.shape)?.into_iter().collect();
        if temperature <= 0.0 {
            chain.push(LlamaSampler::greedy());
        } else {
            let seed = sampling.seed.map_or_else(rand_seed, |s| s as u32);
            chain.extend([
                LlamaSampler::top_p(sampling.top_p.unwrap_or(1.0), 1),
                LlamaSampler::temp(temperature),
                LlamaSampler::dist(seed),
            ]);
        }
        let sampler = if chain.len() == 1 {
            chain.remove(0)
        } else {
            LlamaSampler::chain_simple(chain)
        };
        Ok(Self {
            prompt: plan.prompt,
            max_tokens,
            sampler,
            // Stop sequences apply to text, not to a tool call's JSON.
            stops: StopScanner::new(if plan.shape.tool_calls {
                Vec::new()
            } else {
                sampling.stop
            }),
            served_by: request.model,
            tool_calls: plan.shape.tool_calls,
        })
    }
}

pub(super) struct Sequence {
    /// The KV-cache sequence (and slot) it runs in.
    pub slot: usize,
    pub prompt: Vec<LlamaToken>,
    /// Prompt tokens in the slot's KV cache so far (reused or evaluated).
    pub evaluated: usize,
    /// Of those, taken from the cache rather than evaluated.
    reused: usize,
    max_tokens: u32,
    sampler: LlamaSampler,
    stops: StopScanner,
    served_by: String,
    utf8: Utf8Stream,
    piece: Vec<u8>,
    generated: u32,
    stopped_by_sequence: bool,
    /// The output is tool-format JSON, held until the end and then parsed.
    tool_output: Option<String>,
    /// Sampled and not yet evaluated: what the next batch step feeds in.
    pub next: Option<LlamaToken>,
    /// Events its caller's channel had no room for yet, in order.
    outbox: VecDeque<Result<GenerateEvent, InferenceError>>,
    events: Events,
    /// Finished (or failed): leaves the batch once its events are taken.
    pub done: bool,
    /// Held for the call's life: frees a place for the next caller.
    _permit: OwnedSemaphorePermit,
}

fn event(event: Event) -> Result<GenerateEvent, InferenceError> {
    Ok(GenerateEvent { event: Some(event) })
}

impl Sequence {
    pub fn new(
        prepared: Prepared,
        slot: usize,
        reused: usize,
        events: Events,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            slot,
            prompt: prepared.prompt,
            evaluated: reused,
            reused,
            max_tokens: prepared.max_tokens,
            sampler: prepared.sampler,
            stops: prepared.stops,
            served_by: prepared.served_by,
            utf8: Utf8Stream::default(),
            piece: Vec::with_capacity(16),
            generated: 0,
            stopped_by_sequence: false,
            tool_output: prepared.tool_calls.then(String::new),
            next: None,
            outbox: VecDeque::new(),
            events,
            done: false,
            _permit: permit,
        }
    }

    pub fn prefilled(&self) -> bool {
        self.evaluated == self.prompt.len()
    }

    /// Its caller is not keeping up: it waits out the batch's next steps.
    pub fn backed_up(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// The prompt is in the cache and its last logits are at `logits` in
    /// the batch just decoded: the call starts and takes its first token.
    pub fn prompt_done(&mut self, inner: &Inner, context: &LlamaContext<'_>, logits: i32) {
        self.outbox.push_back(event(Event::Started(Started {
            served_by: std::mem::take(&mut self.served_by),
        })));
        if self.max_tokens == 0 {
            self.finish(FinishReason::Length);
        } else {
            self.sample(inner, context, logits);
        }
    }

    /// Samples from the logits at `logits` in the batch just decoded.
    pub fn sample(&mut self, inner: &Inner, context: &LlamaContext<'_>, logits: i32) {
        let token = self.sampler.sample(context, logits);
        let vocab = inner.model.vocab();
        if vocab.is_eog(token) {
            return self.finish(FinishReason::Stop);
        }
        self.generated += 1;
        inner
            .metrics
            .tokens_generated
            .fetch_add(1, Ordering::Relaxed);
        self.piece.clear();
        vocab.token_to_piece_into(token, &mut self.piece, false, None);
        let text = self.utf8.push(&self.piece);
        if let Some(output) = &mut self.tool_output {
            output.push_str(&text);
            if self.generated == self.max_tokens {
                self.finish(FinishReason::Length);
            } else {
                self.next = Some(token);
            }
            return;
        }
        let (emit, stopped) = match self.stops.push(&text) {
            Scan::Emit(text) => (text, false),
            Scan::Stopped(text) => (text, true),
        };
        self.delta(emit);
        if stopped {
            self.stopped_by_sequence = true;
            self.finish(FinishReason::Stop);
        } else if self.generated == self.max_tokens {
            self.finish(FinishReason::Length);
        } else {
            self.next = Some(token);
        }
    }

    fn delta(&mut self, text: String) {
        if text.is_empty() {
            return;
        }
        self.outbox.push_back(event(Event::Delta(TextDelta {
            text,
            ..Default::default()
        })));
    }

    fn finish(&mut self, mut finish: FinishReason) {
        if let Some(mut output) = self.tool_output.take() {
            output.push_str(&self.utf8.finish());
            finish = self.tool_answer(output, finish);
        } else if !self.stopped_by_sequence {
            // Release what was held back (unless it completes a stop).
            let tail = self.utf8.finish();
            let rest = match self.stops.push(&tail) {
                Scan::Emit(text) => text + &self.stops.finish(),
                Scan::Stopped(text) => {
                    finish = FinishReason::Stop;
                    text
                }
            };
            self.delta(rest);
        }
        self.outbox.push_back(event(Event::Finished(Finished {
            finish_reason: finish as i32,
            usage: Some(TokenUsage {
                prompt_tokens: self.prompt.len() as u32,
                completion_tokens: self.generated,
            }),
            cached_prompt_tokens: self.reused as u32,
        })));
        self.next = None;
        self.done = true;
    }

    /// Events for a tool-format answer: its calls (each as a first fragment
    /// with id and name, then its arguments) or its text; output the token
    /// limit cut short goes out as the text it is.
    fn tool_answer(&mut self, output: String, finish: FinishReason) -> FinishReason {
        match structured::parse(&output) {
            Some(Answer::Calls(calls)) => {
                for (index, call) in calls.into_iter().enumerate() {
                    let index = index as u32;
                    self.outbox.push_back(event(Event::ToolCall(ToolCallDelta {
                        index,
                        id: format!("call_{}", uuid::Uuid::new_v4().simple()),
                        name: call.name,
                        arguments: String::new(),
                    })));
                    self.outbox.push_back(event(Event::ToolCall(ToolCallDelta {
                        index,
                        arguments: call.arguments,
                        ..Default::default()
                    })));
                }
                FinishReason::ToolCalls
            }
            Some(Answer::Text(text)) => {
                self.delta(text);
                finish
            }
            None => {
                self.delta(output);
                finish
            }
        }
    }

    /// Ends the call with an error.
    pub fn fail(&mut self, error: InferenceError) {
        self.outbox.push_back(Err(error));
        self.next = None;
        self.done = true;
    }

    /// Hands the caller what its channel has room for; false once the
    /// caller has gone away.
    pub fn flush(&mut self) -> bool {
        if self.events.is_closed() {
            return false;
        }
        while let Some(event) = self.outbox.pop_front() {
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(event)) => {
                    self.outbox.push_front(event);
                    break;
                }
                Err(TrySendError::Closed(_)) => return false,
            }
        }
        true
    }

    /// How many tokens it generated (for the log of a cancelled call).
    pub fn generated(&self) -> u32 {
        self.generated
    }
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
