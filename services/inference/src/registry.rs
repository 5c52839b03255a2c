//! Public model id → engine, built once from config.

use std::collections::BTreeMap;
use std::sync::Arc;

use rungate_proto::inference::v1::Model;

use crate::InferenceError;
use crate::config::{Config, EngineEntry};
use crate::engine::Engine;
use crate::local::LocalEngine;
use crate::upstream::UpstreamEngine;

pub struct Served {
    pub model: Model,
    pub engine: Engine,
}

#[derive(Clone)]
pub struct Registry {
    models: Arc<BTreeMap<String, Served>>,
}

impl Registry {
    pub fn from_config(config: &Config) -> Result<Self, InferenceError> {
        let file = config.registry_file()?;
        let created = i64::try_from(rungate_common::clock::now()).unwrap_or(i64::MAX);
        let mut models = BTreeMap::new();
        for entry in file.models {
            let (kind, engine, context_length) = match &entry.engine {
                EngineEntry::Upstream { upstreams } => (
                    "upstream",
                    Engine::Upstream(UpstreamEngine::new(&entry.id, upstreams)?),
                    entry.context_length,
                ),
                EngineEntry::Local(local) => {
                    let engine = LocalEngine::load(&entry.id, local)?;
                    let context = engine.context_length();
                    ("local", Engine::Local(engine), context)
                }
            };
            let model = Model {
                id: entry.id.clone(),
                owned_by: entry.owned_by.clone(),
                created,
                engine: kind.to_owned(),
                context_length,
                default_max_tokens: entry.default_max_tokens,
            };
            if models
                .insert(entry.id.clone(), Served { model, engine })
                .is_some()
            {
                return Err(InferenceError::Config(format!(
                    "model `{}` is listed twice",
                    entry.id
                )));
            }
        }
        Ok(Self {
            models: Arc::new(models),
        })
    }

    pub fn get(&self, id: &str) -> Result<&Served, InferenceError> {
        self.models
            .get(id)
            .ok_or_else(|| InferenceError::UnknownModel(id.to_owned()))
    }

    pub fn models(&self) -> impl Iterator<Item = &Model> {
        self.models.values().map(|served| &served.model)
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// The local engine serving `id`, if it is one (for metrics and benchmarks).
    pub fn local(&self, id: &str) -> Option<&LocalEngine> {
        match &self.models.get(id)?.engine {
            Engine::Local(engine) => Some(engine),
            Engine::Upstream(_) => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}
