//! The gRPC face of the registry.

use rungate_proto::inference::v1::inference_service_server::InferenceService;
use rungate_proto::inference::v1::{
    CountTokensRequest, CountTokensResponse, GenerateEvent, GenerateRequest, ListModelsRequest,
    ListModelsResponse,
};
use tonic::{Request, Response, Status};

use crate::engine::EventStream;
use crate::genai;
use crate::registry::Registry;

pub struct InferenceApi {
    registry: Registry,
}

impl InferenceApi {
    pub fn new(registry: Registry) -> Self {
        Self { registry }
    }
}

#[tonic::async_trait]
impl InferenceService for InferenceApi {
    type GenerateStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<GenerateEvent, Status>> + Send>>;

    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        use futures::StreamExt;
        use tracing::Instrument;
        let request = request.into_inner();
        let served = self.registry.get(&request.model)?;
        // Lives as long as the stream: it ends with the generation.
        let span = genai::span(&request, &served.model);
        let events: EventStream = served
            .engine
            .generate(request, served.model.default_max_tokens)
            .instrument(span.clone())
            .await
            .inspect_err(|error| genai::failed(&span, error))?;
        Ok(Response::new(Box::pin(events.map(move |event| {
            genai::record(&span, &event);
            event.map_err(Status::from)
        }))))
    }

    async fn list_models(
        &self,
        _request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        Ok(Response::new(ListModelsResponse {
            models: self.registry.models().cloned().collect(),
        }))
    }

    async fn count_tokens(
        &self,
        request: Request<CountTokensRequest>,
    ) -> Result<Response<CountTokensResponse>, Status> {
        let request = request.into_inner();
        let served = self.registry.get(&request.model)?;
        Ok(Response::new(CountTokensResponse {
            prompt_tokens: served.engine.count_prompt_tokens(
                &request.model,
                &request.messages,
                &request.extra_json,
                request.max_tokens,
            )?,
            default_max_tokens: served.model.default_max_tokens,
        }))
    }
}
