//! Inference errors, mapped to gRPC codes in one place.

use tonic::{Code, Status};

/// gRPC metadata key naming the request field an error is about, so the edge
/// can fill the OpenAI error's `param`.
pub const PARAM_METADATA: &str = "x-rungate-param";

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("the model `{0}` does not exist")]
    UnknownModel(String),
    #[error("{message}")]
    InvalidArgument {
        param: &'static str,
        message: String,
    },
    #[error("overloaded: {0}")]
    Overloaded(String),
    #[error("engine failure: {0}")]
    Engine(String),
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    #[error("upstream timed out: {0}")]
    UpstreamTimeout(String),
    #[error("upstream broke the protocol: {0}")]
    UpstreamProtocol(String),
    #[error("upstream rejected the request ({status}): {message}")]
    UpstreamRejected { status: u16, message: String },
}

impl InferenceError {
    /// A short, stable name for the kind of failure (traces' `error.type`).
    pub fn kind(&self) -> &'static str {
        match self {
            InferenceError::Config(_) => "config",
            InferenceError::UnknownModel(_) => "unknown_model",
            InferenceError::InvalidArgument { .. } => "invalid_argument",
            InferenceError::Overloaded(_) => "overloaded",
            InferenceError::Engine(_) => "engine",
            InferenceError::UpstreamUnavailable(_) => "upstream_unavailable",
            InferenceError::UpstreamTimeout(_) => "upstream_timeout",
            InferenceError::UpstreamProtocol(_) => "upstream_protocol",
            InferenceError::UpstreamRejected { .. } => "upstream_rejected",
        }
    }
}

impl From<InferenceError> for Status {
    fn from(error: InferenceError) -> Self {
        let code = match &error {
            InferenceError::Config(_) => Code::FailedPrecondition,
            InferenceError::UnknownModel(_) => Code::NotFound,
            InferenceError::InvalidArgument { .. } => Code::InvalidArgument,
            InferenceError::UpstreamRejected { status, .. } if *status < 500 && *status != 429 => {
                Code::InvalidArgument
            }
            InferenceError::UpstreamRejected { .. } | InferenceError::UpstreamUnavailable(_) => {
                Code::Unavailable
            }
            InferenceError::UpstreamTimeout(_) => Code::DeadlineExceeded,
            InferenceError::UpstreamProtocol(_) | InferenceError::Engine(_) => Code::Internal,
            InferenceError::Overloaded(_) => Code::ResourceExhausted,
        };
        let mut status = Status::new(code, error.to_string());
        let param = match &error {
            InferenceError::UnknownModel(_) => Some("model"),
            InferenceError::InvalidArgument { param, .. } => Some(*param),
            _ => None,
        };
        if let Some(param) = param {
            status.metadata_mut().insert(
                PARAM_METADATA,
                tonic::metadata::MetadataValue::from_static(param),
            );
        }
        status
    }
}
