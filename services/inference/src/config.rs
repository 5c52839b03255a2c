//! Inference configuration: flags (each also an env var) and the model registry file.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// TOML file listing the public models and the engines that serve them.
    #[arg(long, env = "RUNGATE_MODELS_FILE")]
    pub models_file: Option<PathBuf>,

    /// The same registry given inline as TOML (wins over --models-file).
    #[arg(long, env = "RUNGATE_MODELS", hide_env_values = true)]
    pub models_toml: Option<String>,

    /// How long in-flight streams may run after shutdown begins.
    #[arg(long, env = "RUNGATE_DRAIN_TIMEOUT", default_value = "10s",
          value_parser = rungate_common::args::parse_duration)]
    pub drain_timeout: Duration,
}

/// The registry file: `[[models]]` tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryFile {
    #[serde(default)]
    pub models: Vec<ModelEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Public model id clients send as `model`.
    pub id: String,
    #[serde(default = "default_owner")]
    pub owned_by: String,
    #[serde(default = "default_context")]
    pub context_length: u32,
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u32,
    pub engine: EngineEntry,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum EngineEntry {
    /// Any OpenAI-compatible server; the upstreams are tried in order before
    /// the first token (failover), never after.
    Upstream { upstreams: Vec<UpstreamEntry> },
    /// A GGUF model run in-process by llama.cpp.
    Local(LocalEntry),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalEntry {
    /// GGUF file; a relative path is under `RUNGATE_MODEL_DIR` (default `~/.cache/rungate/models`).
    pub path: String,
    /// Context window; defaults to the model's trained length, at most 4096.
    pub context_length: Option<u32>,
    /// CPU threads per generation; defaults to all cores.
    pub threads: Option<u32>,
    /// Generations run at once; more wait in the queue.
    #[serde(default = "default_concurrent")]
    pub max_concurrent: usize,
    /// Requests that may wait for a slot; beyond that, 503 with Retry-After.
    #[serde(default = "default_queue")]
    pub max_queue: usize,
    /// Temperature when the request sets none (OpenAI's default is 1).
    pub temperature: Option<f32>,
    /// Layers offloaded to the GPU (builds with the `cuda` feature).
    #[serde(default)]
    pub gpu_layers: u32,
    /// Keep each slot's KV cache between calls and evaluate only what a
    /// prompt adds to the longest prefix it shares with it.
    #[serde(default = "default_true")]
    pub reuse_prompt_prefix: bool,
    /// llama.cpp's flash attention (its default). Its CPU kernel's results
    /// depend on how many tokens share a batch, so an exact prefix reuse
    /// stops at 64-token boundaries; off, reuse is exact at any token (a
    /// faster first token for agents) and the numerics are those of plain
    /// attention (the same model may answer a few prompts differently).
    #[serde(default = "default_true")]
    pub flash_attention: bool,
}

fn default_true() -> bool {
    true
}

fn default_concurrent() -> usize {
    1
}
fn default_queue() -> usize {
    16
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamEntry {
    /// Base URL including the API version path, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// Name of the environment variable holding the API key (never the key itself).
    pub api_key_env: Option<String>,
    /// The model name the upstream knows; defaults to the public id.
    pub model: Option<String>,
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_first_token_ms")]
    pub first_token_timeout_ms: u64,
    #[serde(default = "default_idle_ms")]
    pub idle_timeout_ms: u64,
}

fn default_owner() -> String {
    "rungate".to_owned()
}
fn default_context() -> u32 {
    8192
}
fn default_max_tokens() -> u32 {
    256
}
fn default_connect_ms() -> u64 {
    3_000
}
fn default_first_token_ms() -> u64 {
    30_000
}
fn default_idle_ms() -> u64 {
    30_000
}

impl Config {
    pub fn registry_file(&self) -> Result<RegistryFile, crate::InferenceError> {
        let text = rungate_common::args::inline_or_file(
            self.models_toml.as_deref(),
            self.models_file.as_deref(),
        )
        .map_err(crate::InferenceError::Config)?;
        toml::from_str(&text)
            .map_err(|e| crate::InferenceError::Config(format!("model registry: {e}")))
    }
}
