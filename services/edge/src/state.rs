//! What every handler shares: gRPC clients to the internal services.

use rungate_common::propagation::TracePropagator;
use rungate_proto::inference::v1::inference_service_client::InferenceServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::Config;

pub type InferenceClient = InferenceServiceClient<InterceptedService<Channel, TracePropagator>>;

#[derive(Clone)]
pub struct AppState {
    pub inference: InferenceClient,
}

impl AppState {
    pub fn connect(config: &Config) -> anyhow::Result<Self> {
        let channel = rungate_common::grpc::lazy_channel(&config.inference_url)?;
        Ok(Self {
            inference: InferenceServiceClient::with_interceptor(channel, TracePropagator),
        })
    }
}
