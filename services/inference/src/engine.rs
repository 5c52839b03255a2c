//! The engines a model can be served by. An enum, not a trait object: the set
//! is closed and known at build time.

use futures::stream::BoxStream;
use rungate_proto::inference::v1::{ChatMessage, GenerateEvent, GenerateRequest};

use crate::InferenceError;
use crate::local::LocalEngine;
use crate::upstream::UpstreamEngine;

pub type EventStream = BoxStream<'static, Result<GenerateEvent, InferenceError>>;

pub enum Engine {
    Upstream(UpstreamEngine),
    Local(LocalEngine),
}

impl Engine {
    /// Starts generation. Dropping the returned stream cancels it.
    pub async fn generate(
        &self,
        request: GenerateRequest,
        default_max_tokens: u32,
    ) -> Result<EventStream, InferenceError> {
        match self {
            Engine::Upstream(engine) => engine.generate(request, default_max_tokens).await,
            Engine::Local(engine) => engine.generate(request, default_max_tokens).await,
        }
    }

    /// Prompt tokens for pricing before the call runs: exact for local
    /// models, an estimate for upstreams (their tokenizer is not ours).
    /// Refuses what the engine cannot honour (`extra_json`: the request's
    /// pass-through fields) or cannot fit (a local model's context), so a
    /// refusal comes before any payment.
    pub fn count_prompt_tokens(
        &self,
        model: &str,
        messages: &[ChatMessage],
        extra_json: &str,
        max_tokens: Option<u32>,
    ) -> Result<u32, InferenceError> {
        match self {
            Engine::Upstream(_) => UpstreamEngine::estimate_prompt_tokens(messages, extra_json),
            Engine::Local(engine) => {
                engine.count_prompt_tokens(model, messages, extra_json, max_tokens)
            }
        }
    }
}
