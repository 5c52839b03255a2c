//! x402 at the edge is only headers and status: which request headers carry
//! a payment (passed to billing as they came), and copying the replies
//! billing builds (the 402, the payment response header, a refund's answer)
//! onto the HTTP response. Billing decodes, verifies and words everything.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use rungate_proto::billing::v1::HttpReply;

pub const X_PAYMENT: &str = "x-payment";
pub const PAYMENT_SIGNATURE: &str = "payment-signature";
pub const PAYMENT_REQUIRED: &str = "payment-required";
pub const X_PAYMENT_RESPONSE: &str = "x-payment-response";
pub const PAYMENT_RESPONSE: &str = "payment-response";

/// The payment header the request carries (v2 first), as it came: its name and value.
pub fn presented(headers: &HeaderMap) -> Option<(&'static str, String)> {
    [PAYMENT_SIGNATURE, X_PAYMENT].iter().find_map(|name| {
        let value = headers.get(*name)?;
        Some((
            *name,
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        ))
    })
}

/// Adds billing's headers to `response`.
pub fn add_headers(response: &mut Response, reply: &HttpReply) {
    let headers = response.headers_mut();
    for (name, value) in &reply.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
}

/// A whole answer billing built (a 402, a refund's acknowledgement).
pub fn response(reply: &HttpReply) -> Response {
    let status = u16::try_from(reply.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::PAYMENT_REQUIRED);
    let mut response = Response::new(Body::from(reply.body.clone()));
    *response.status_mut() = status;
    if !reply.body.is_empty() {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    add_headers(&mut response, reply);
    response
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

    #[test]
    fn billing_replies_are_copied_as_they_are() {
        let reply = HttpReply {
            status: 402,
            headers: [(PAYMENT_REQUIRED.to_owned(), "e30=".to_owned())].into(),
            body: br#"{"x402Version":1}"#.to_vec(),
        };
        let response = response(&reply);
        assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
        assert_eq!(response.headers()[PAYMENT_REQUIRED], "e30=");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let mut headers = HeaderMap::new();
        headers.insert(X_PAYMENT, HeaderValue::from_static("abc"));
        assert_eq!(presented(&headers), Some((X_PAYMENT, "abc".to_owned())));
    }
}
