//! The local engine: GGUF models run in-process with llama.cpp. Each model
//! has one engine thread and one context whose KV cache holds a sequence
//! per slot (`max_concurrent`), kept between calls; the calls in the slots
//! decode together in one batch (see `worker`). A bounded queue in front of
//! the slots gives back-pressure (a full queue is `RESOURCE_EXHAUSTED` → 503).

mod gguf;
mod openmp;
mod sequence;
mod structured;
mod template;
mod text;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use futures::StreamExt;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use rungate_proto::inference::v1::{ChatMessage, GenerateRequest};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use crate::InferenceError;
use crate::config::LocalEntry;
use crate::engine::EventStream;

pub use gguf::{GgufError, GgufSummary, inspect as inspect_gguf};
pub use openmp::release_threads;

/// llama.cpp's backend may be initialised once per process.
pub fn backend() -> Result<&'static LlamaBackend, InferenceError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| InferenceError::Config(format!("llama.cpp backend: {e}")))
}

/// Counters a test or an operator can watch.
#[derive(Debug, Default)]
pub struct EngineMetrics {
    /// Tokens sampled, over all requests.
    pub tokens_generated: AtomicU64,
    /// Generations stopped because the caller went away.
    pub cancelled: AtomicU64,
    /// Generations running now.
    pub running: AtomicUsize,
    /// Prompt tokens taken from a slot's KV cache instead of evaluated.
    pub prompt_tokens_reused: AtomicU64,
    /// Generation steps (batches of one token per generating call) and the
    /// tokens they evaluated: their ratio is how many calls shared a batch.
    pub decode_steps: AtomicU64,
    pub decode_step_tokens: AtomicU64,
}

/// What an operator scrapes of one model's engine (Prometheus gauges).
pub(crate) struct Gauges {
    /// Calls waiting for a slot.
    waiting: metrics::Gauge,
    /// Calls in a slot (evaluating their prompt or generating).
    pub(crate) running: metrics::Gauge,
}

pub const QUEUE_DEPTH: &str = "rungate_engine_queue_depth";
pub const RUNNING: &str = "rungate_engine_running";

impl Gauges {
    fn new(model: &str) -> Self {
        // The recorder first: handles taken before it exists record nothing.
        rungate_common::metrics::handle();
        metrics::describe_gauge!(QUEUE_DEPTH, "Calls waiting for a slot of a local model.");
        metrics::describe_gauge!(RUNNING, "Calls in a slot of a local model.");
        let label = || [("gen_ai.request.model", model.to_owned())];
        Self {
            waiting: metrics::gauge!(QUEUE_DEPTH, &label()),
            running: metrics::gauge!(RUNNING, &label()),
        }
    }
}

pub struct LocalEngine {
    inner: Arc<Inner>,
    /// To the engine thread; it ends when this is dropped.
    jobs: std::sync::mpsc::Sender<worker::Job>,
    slots: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_queue: usize,
}

pub(crate) struct Inner {
    model: LlamaModel,
    template: template::ChatTemplate,
    /// Creating contexts concurrently is unsound in llama.cpp (it mutates the model).
    context_lock: Mutex<()>,
    threads: i32,
    context_length: u32,
    reuse_prompt_prefix: bool,
    flash_attention: bool,
    temperature: f32,
    metrics: Arc<EngineMetrics>,
    gauges: Gauges,
}

impl Inner {
    /// How many tokens a call may generate after a prompt of `prompt`
    /// tokens: what it asked for, else `default` within the context.
    fn budget(
        &self,
        prompt: usize,
        asked: Option<u32>,
        default: u32,
    ) -> Result<u32, InferenceError> {
        let n_prompt = u32::try_from(prompt).unwrap_or(u32::MAX);
        if n_prompt == 0 {
            return Err(InferenceError::InvalidArgument {
                param: "messages",
                message: "the prompt is empty".into(),
            });
        }
        let room = self.context_length.saturating_sub(n_prompt);
        if room == 0 {
            return Err(InferenceError::InvalidArgument {
                param: "messages",
                message: format!(
                    "the prompt is {n_prompt} tokens; this model's context is {} tokens",
                    self.context_length
                ),
            });
        }
        match asked {
            Some(asked) if asked > room => Err(InferenceError::InvalidArgument {
                param: "max_tokens",
                message: format!(
                    "this model's context is {} tokens: the prompt uses {n_prompt}, so at most {room} can be generated (asked for {asked})",
                    self.context_length
                ),
            }),
            Some(asked) => Ok(asked),
            None => Ok(default.min(room)),
        }
    }
}

/// What counting and generating both see: the output's shape and the
/// exact prompt tokens (the tools' description among them).
pub(super) struct Plan {
    pub prompt: Vec<LlamaToken>,
    pub shape: structured::Shape,
}

impl Inner {
    pub(super) fn plan(
        &self,
        model: &str,
        messages: &[ChatMessage],
        extra_json: &str,
    ) -> Result<Plan, InferenceError> {
        let extra = refuse_unsupported(model, extra_json)?;
        let shape = structured::Shape::from_request(&extra)?;
        let prompt = self.prompt_tokens(&shape.messages(messages))?;
        Ok(Plan { prompt, shape })
    }

    /// The sampler enforcing the shape's grammar, if it has one.
    pub(super) fn grammar_sampler(
        &self,
        shape: &structured::Shape,
    ) -> Result<Option<LlamaSampler>, InferenceError> {
        let Some(grammar) = &shape.grammar else {
            return Ok(None);
        };
        let param = if shape.tool_calls {
            "tools"
        } else {
            "response_format"
        };
        LlamaSampler::grammar(&self.model, grammar, "root")
            .map(Some)
            .map_err(|error| InferenceError::InvalidArgument {
                param,
                message: format!("llama.cpp cannot use the grammar made from `{param}`: {error}"),
            })
    }
}

/// Request fields the local engine cannot honour: refused, never ignored.
const UNSUPPORTED: &[&str] = &[
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
];

/// Model files named by a relative path live in the model directory.
pub fn model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RUNGATE_MODEL_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache/rungate/models")
}

impl LocalEngine {
    pub fn load(public_id: &str, entry: &LocalEntry) -> Result<Self, InferenceError> {
        let path = if Path::new(&entry.path).is_absolute() {
            PathBuf::from(&entry.path)
        } else {
            model_dir().join(&entry.path)
        };
        // Checked before llama.cpp opens it: a malformed file would abort the process.
        let summary = gguf::inspect(&path).map_err(|e| {
            InferenceError::Config(format!("model `{public_id}` ({}): {e}", path.display()))
        })?;
        let backend = backend()?;
        let params = LlamaModelParams::default().with_n_gpu_layers(entry.gpu_layers);
        let model = LlamaModel::load_from_file(backend, &path, &params).map_err(|e| {
            InferenceError::Config(format!(
                "model `{public_id}`: llama.cpp cannot load it: {e}"
            ))
        })?;
        let trained = summary
            .context_length
            .unwrap_or(2048)
            .min(u64::from(u32::MAX)) as u32;
        let context_length = entry
            .context_length
            .unwrap_or(trained.min(4096))
            .min(trained);
        let threads = entry
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
        let template = template::ChatTemplate::new(&model, summary.chat_template);
        tracing::info!(
            model = public_id,
            path = %path.display(),
            arch = %summary.architecture,
            context_length,
            threads,
            "local model loaded"
        );
        let inner = Arc::new(Inner {
            model,
            template,
            context_lock: Mutex::new(()),
            threads: threads.max(1) as i32,
            context_length,
            reuse_prompt_prefix: entry.reuse_prompt_prefix,
            flash_attention: entry.flash_attention,
            temperature: entry.temperature.unwrap_or(1.0),
            metrics: Arc::new(EngineMetrics::default()),
            gauges: Gauges::new(public_id),
        });
        let slots = entry.max_concurrent.max(1);
        if slots > worker::CHUNK {
            return Err(InferenceError::Config(format!(
                "model `{public_id}`: max_concurrent is at most {} (asked for {slots})",
                worker::CHUNK
            )));
        }
        let (jobs, queue) = std::sync::mpsc::channel();
        {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name(format!("llama-{public_id}"))
                .spawn(move || worker::serve(&inner, slots, &queue))
                .map_err(|e| {
                    InferenceError::Config(format!("cannot start the engine thread: {e}"))
                })?;
        }
        Ok(Self {
            inner,
            jobs,
            slots: Arc::new(Semaphore::new(slots)),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_queue: entry.max_queue,
        })
    }

    pub fn context_length(&self) -> u32 {
        self.inner.context_length
    }

    pub fn metrics(&self) -> Arc<EngineMetrics> {
        self.inner.metrics.clone()
    }

    /// Exact prompt tokens: the chat template applied, then the model's
    /// tokenizer. Refuses what `generate` would refuse, before payment.
    /// A prompt that leaves no room in the context, or a `max_tokens`
    /// beyond it, is refused here as it would be when generating.
    pub fn count_prompt_tokens(
        &self,
        model: &str,
        messages: &[ChatMessage],
        extra_json: &str,
        max_tokens: Option<u32>,
    ) -> Result<u32, InferenceError> {
        let plan = self.inner.plan(model, messages, extra_json)?;
        // A grammar llama.cpp cannot parse is refused here, before payment.
        self.inner.grammar_sampler(&plan.shape)?;
        let tokens = plan.prompt.len();
        self.inner.budget(tokens, max_tokens, 0)?;
        Ok(u32::try_from(tokens).unwrap_or(u32::MAX))
    }

    pub async fn generate(
        &self,
        request: GenerateRequest,
        default_max_tokens: u32,
    ) -> Result<EventStream, InferenceError> {
        // Admission: a bounded queue in front of the slots.
        if self.waiting.fetch_add(1, Ordering::AcqRel)
            >= self.max_queue + self.slots.available_permits()
        {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(InferenceError::Overloaded(
                "the local engine's queue is full; retry shortly".into(),
            ));
        }
        let gauges = &self.inner.gauges;
        gauges.waiting.increment(1.0);
        let slot = self.slots.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        gauges.waiting.decrement(1.0);
        let slot = slot.map_err(|_| InferenceError::Overloaded("engine shutting down".into()))?;

        let (events, mut rx) = tokio::sync::mpsc::channel(64);
        // A permit is held per job, so the engine has a free slot for it.
        self.jobs
            .send(worker::Job {
                request,
                default_max_tokens,
                events,
                permit: slot,
            })
            .map_err(|_| InferenceError::Engine("the local engine has stopped".into()))?;
        // The first event (Started, or an error such as a prompt too long)
        // arrives before we answer, so early errors get a proper status.
        match rx.recv().await {
            Some(Ok(first)) => {
                let rest = tokio_stream::wrappers::ReceiverStream::new(rx);
                Ok(futures::stream::once(async { Ok(first) })
                    .chain(rest)
                    .boxed())
            }
            Some(Err(error)) => Err(error),
            None => Err(InferenceError::Engine(
                "the generation thread ended early".into(),
            )),
        }
    }
}

/// The request's pass-through fields; those the engine cannot honour are
/// refused.
fn refuse_unsupported(model: &str, extra_json: &str) -> Result<Map<String, Value>, InferenceError> {
    if extra_json.is_empty() {
        return Ok(Map::new());
    }
    let extra: Map<String, Value> =
        serde_json::from_str(extra_json).map_err(|_| InferenceError::InvalidArgument {
            param: "extra_json",
            message: "extra_json must be a JSON object".into(),
        })?;
    for (param, value) in &extra {
        let harmless = value.is_null()
            || (param.ends_with("_penalty") && value.as_f64() == Some(0.0))
            || (param == "logprobs" && value == &Value::Bool(false));
        if let Some(param) = UNSUPPORTED.iter().find(|p| **p == param.as_str())
            && !harmless
        {
            return Err(InferenceError::InvalidArgument {
                param,
                message: format!(
                    "`{param}` is not supported by the local engine serving `{model}`"
                ),
            });
        }
    }
    Ok(extra)
}
