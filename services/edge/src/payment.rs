//! x402 on the HTTP side: reading the payment header (v1 `X-PAYMENT`, v2
//! `PAYMENT-SIGNATURE`), answering 402 with requirements in both versions'
//! forms, and the settlement result header. Billing does the verifying.

use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use rungate_proto::billing::v1::SettleResponse;
use serde_json::{Value, json};

use crate::ApiError;

pub const X_PAYMENT: &str = "x-payment";
pub const PAYMENT_SIGNATURE: &str = "payment-signature";
pub const PAYMENT_REQUIRED: &str = "payment-required";
pub const X_PAYMENT_RESPONSE: &str = "x-payment-response";
pub const PAYMENT_RESPONSE: &str = "payment-response";

/// The decoded payment JSON, if the request carries one. A header that is
/// not base64 of a JSON object is the client's mistake: 400, never a charge.
pub fn presented(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some((name, value)) = [PAYMENT_SIGNATURE, X_PAYMENT]
        .iter()
        .find_map(|name| headers.get(*name).map(|v| (*name, v)))
    else {
        return Ok(None);
    };
    let malformed = |why: &str| {
        ApiError::invalid(
            None,
            format!("The {name} header is malformed: {why}. It must be the base64 encoding of the x402 payment payload JSON."),
        )
        .with_code("invalid_payment_header")
    };
    let bytes = STANDARD
        .decode(value.as_bytes().trim_ascii())
        .map_err(|_| malformed("not base64"))?;
    let json: Value = serde_json::from_slice(&bytes).map_err(|_| malformed("not JSON"))?;
    if !json.is_object() {
        return Err(malformed("not a JSON object"));
    }
    Ok(Some(json.to_string()))
}

/// 402 Payment Required: the v1 body `{x402Version: 1, error, accepts}` and
/// the v2 `PAYMENT-REQUIRED` header, so clients of either version can pay.
pub fn required(
    error: &str,
    resource: &str,
    requirements_v1: &[String],
    requirements_v2: &[String],
) -> Response {
    let parse = |all: &[String]| -> Vec<Value> {
        all.iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect()
    };
    let accepts_v1 = parse(requirements_v1);
    let description = accepts_v1
        .first()
        .and_then(|r| r.get("description").cloned())
        .unwrap_or(Value::Null);
    let v2 = json!({
        "x402Version": 2,
        "error": error,
        "resource": {"url": resource, "description": description, "mimeType": "application/json"},
        "accepts": parse(requirements_v2),
    });
    let body = json!({"x402Version": 1, "error": error, "accepts": accepts_v1});
    let mut response = (StatusCode::PAYMENT_REQUIRED, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&STANDARD.encode(v2.to_string())) {
        headers.insert(PAYMENT_REQUIRED, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `X-PAYMENT-RESPONSE` (v1) or `PAYMENT-RESPONSE` (v2): base64 of the x402
/// SettleResponse.
pub fn set_response_header(response: &mut Response, version: u32, settled: &SettleResponse) {
    let mut body = json!({
        "success": settled.success,
        "payer": settled.payer,
        "transaction": settled.transaction,
        "network": settled.network,
    });
    if !settled.error_reason.is_empty() {
        body["errorReason"] = json!(settled.error_reason);
    }
    if let Some(amount) = settled.amount {
        body["amount"] = json!(amount.atomic().to_string());
    }
    let name = if version == 1 {
        X_PAYMENT_RESPONSE
    } else {
        PAYMENT_RESPONSE
    };
    if let Ok(value) = HeaderValue::from_str(&STANDARD.encode(body.to_string())) {
        response.headers_mut().insert(name, value);
    }
}

/// The resource URL the requirements are for: the public URL if configured,
/// else what the client called (behind a proxy, its forwarded scheme).
pub fn resource_url(public_url: Option<&str>, headers: &HeaderMap, path: &str) -> String {
    if let Some(base) = public_url {
        return format!("{}{path}", base.trim_end_matches('/'));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("http");
    format!("{scheme}://{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).expect("header"));
        headers
    }

    #[test]
    fn malformed_headers_are_the_clients_mistake() {
        assert!(presented(&HeaderMap::new()).expect("none").is_none());
        for bad in ["%%%", &STANDARD.encode("not json"), &STANDARD.encode("[1]")] {
            let error = presented(&with(X_PAYMENT, bad)).expect_err("malformed");
            assert_eq!(error.status, StatusCode::BAD_REQUEST);
        }
        let good = STANDARD.encode(r#"{"x402Version":2}"#);
        assert_eq!(
            presented(&with(PAYMENT_SIGNATURE, &good)).expect("ok"),
            Some(r#"{"x402Version":2}"#.into())
        );
    }
}
