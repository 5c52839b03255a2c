//! Errors as OpenAI error objects: every failure the edge reports, and the one
//! place gRPC statuses from internal services become HTTP statuses.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after_secs: Option<u32>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Object<'a>,
}

/// The `error` member of an OpenAI error body (also sent as an SSE event).
#[derive(Serialize)]
pub struct Object<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    pub fn invalid(param: impl Into<Option<String>>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: param.into(),
            code: None,
            retry_after_secs: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    fn server(status: StatusCode, kind: &'static str, message: String) -> Self {
        Self {
            status,
            kind,
            message,
            param: None,
            code: None,
            retry_after_secs: None,
        }
    }

    pub fn object(&self) -> Object<'_> {
        Object {
            message: &self.message,
            kind: self.kind,
            param: self.param.as_deref(),
            code: self.code,
        }
    }

    /// `{"error": {...}}`, the body of an error response or SSE event.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&Body {
            error: self.object(),
        })
        .unwrap_or_default()
    }

    /// 503 with Retry-After: more requests at once than this edge serves.
    pub fn overloaded() -> Self {
        Self {
            retry_after_secs: Some(1),
            code: Some("overloaded"),
            ..Self::server(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "The server is at capacity. Please retry shortly.".into(),
            )
        }
    }

    pub fn not_found(message: String) -> Self {
        Self::invalid(None, message).with_status(StatusCode::NOT_FOUND)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(http::header::CONTENT_TYPE, "application/json")],
            self.to_json(),
        )
            .into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

/// The single mapping from internal gRPC outcomes to what API clients see.
impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        let param = status
            .metadata()
            .get("x-rungate-param")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let message = status.message().to_owned();
        // Codes a service names for the client (only ones we know: the field is 'static).
        let code = match status
            .metadata()
            .get("x-rungate-code")
            .and_then(|v| v.to_str().ok())
        {
            Some("invalid_payment_header") => Some("invalid_payment_header"),
            _ => None,
        };
        match status.code() {
            Code::InvalidArgument | Code::OutOfRange => Self {
                code,
                ..Self::invalid(param, message)
            },
            Code::NotFound if param.as_deref() == Some("model") => Self::invalid(param, message)
                .with_status(StatusCode::NOT_FOUND)
                .with_code("model_not_found"),
            Code::NotFound => Self::not_found(message),
            // Unknown is what a broken connection or a crashed peer gives: retry.
            Code::ResourceExhausted | Code::Unavailable | Code::Unknown | Code::Aborted => Self {
                retry_after_secs: Some(
                    status
                        .metadata()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(1),
                ),
                ..Self::server(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
            },
            Code::DeadlineExceeded => Self {
                retry_after_secs: Some(1),
                ..Self::server(StatusCode::GATEWAY_TIMEOUT, "server_error", message)
            },
            Code::Unimplemented => Self::server(
                StatusCode::NOT_IMPLEMENTED,
                "invalid_request_error",
                message,
            ),
            Code::Cancelled => Self {
                retry_after_secs: Some(1),
                ..Self::server(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "the request was cancelled".into(),
                )
            },
            _ => {
                tracing::error!(code = ?status.code(), %message, "internal service failed");
                Self::server(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "The server had an error while processing your request.".into(),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_failures_map_to_retryable_statuses() {
        let cases = [
            (tonic::Code::Unavailable, 503),
            // A broken connection or a crashed peer: retry, not a 500.
            (tonic::Code::Unknown, 503),
            (tonic::Code::Cancelled, 503),
            (tonic::Code::ResourceExhausted, 503),
            (tonic::Code::DeadlineExceeded, 504),
        ];
        for (code, http) in cases {
            let error = ApiError::from(tonic::Status::new(code, "x"));
            assert_eq!(error.status.as_u16(), http, "{code:?}");
            assert_eq!(error.retry_after_secs, Some(1), "{code:?}");
        }
        let bug = ApiError::from(tonic::Status::internal("x"));
        assert_eq!(bug.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
