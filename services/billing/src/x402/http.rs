//! x402 over HTTP, built here so the edge only copies headers and status:
//! reading the payment header, the 402 Payment Required (v1 JSON body and v2
//! `PAYMENT-REQUIRED` header, so clients of either version can pay), the
//! payment response header, and a handled request's own answer.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rungate_proto::billing::v1::{HttpReply, SettleResponse};
use serde_json::{Value, json};

pub const X_PAYMENT: &str = "x-payment";
pub const PAYMENT_SIGNATURE: &str = "payment-signature";
pub const PAYMENT_REQUIRED: &str = "payment-required";
pub const X_PAYMENT_RESPONSE: &str = "x-payment-response";
pub const PAYMENT_RESPONSE: &str = "payment-response";

/// The payment JSON in a header value: base64 of a JSON object, or why not.
pub fn decode_header(value: &str) -> Result<Value, &'static str> {
    let bytes = STANDARD
        .decode(value.trim().as_bytes())
        .map_err(|_| "not base64")?;
    let json: Value = serde_json::from_slice(&bytes).map_err(|_| "not JSON")?;
    if !json.is_object() {
        return Err("not a JSON object");
    }
    Ok(json)
}

fn encode(value: &Value) -> String {
    STANDARD.encode(value.to_string())
}

/// 402 with both versions' forms. `accepts_v1` are v1 requirements (with
/// their resource inside); `accepts_v2` go in the v2 envelope.
pub fn payment_required(
    error: &str,
    resource: &str,
    accepts_v1: Vec<Value>,
    accepts_v2: Vec<Value>,
) -> HttpReply {
    let description = accepts_v1
        .first()
        .and_then(|r| r.get("description").cloned())
        .unwrap_or(Value::Null);
    let v2 = json!({
        "x402Version": 2,
        "error": error,
        "resource": {"url": resource, "description": description, "mimeType": "application/json"},
        "accepts": accepts_v2,
    });
    let body = json!({"x402Version": 1, "error": error, "accepts": accepts_v1});
    HttpReply {
        status: 402,
        headers: [
            (PAYMENT_REQUIRED.to_owned(), encode(&v2)),
            ("cache-control".to_owned(), "no-store".to_owned()),
        ]
        .into(),
        body: body.to_string().into_bytes(),
    }
}

/// The x402 SettleResponse as the payer's version names its header, with a
/// scheme's `extra` (batch-settlement: chargedAmount, channelState).
pub fn settle_response_json(settled: &SettleResponse, extra: Option<&Value>) -> Value {
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
    if let Some(extra) = extra {
        body["extra"] = extra.clone();
    }
    body
}

/// Puts the payment response header on `settled` (and, when it failed, the
/// 402 to answer with: nothing was delivered).
pub fn attach_reply(
    mut settled: SettleResponse,
    version: u32,
    extra: Option<&Value>,
) -> SettleResponse {
    let name = if version == 1 {
        X_PAYMENT_RESPONSE
    } else {
        PAYMENT_RESPONSE
    };
    let header = encode(&settle_response_json(&settled, extra));
    let mut reply = if settled.success {
        HttpReply::default()
    } else {
        payment_required(&settled.error_reason, "", Vec::new(), Vec::new())
    };
    reply.headers.insert(name.to_owned(), header);
    settled.reply = Some(reply);
    settled
}

/// A request billing answered itself (a refund): 200 with `body`.
pub fn handled(
    body: &Value,
    version: u32,
    settled: &SettleResponse,
    extra: Option<&Value>,
) -> HttpReply {
    let mut reply = attach_reply(settled.clone(), version, extra)
        .reply
        .unwrap_or_default();
    reply.status = 200;
    reply
        .headers
        .insert("content-type".into(), "application/json".into());
    reply.body = body.to_string().into_bytes();
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_headers_say_why() {
        assert_eq!(decode_header("%%%"), Err("not base64"));
        assert_eq!(decode_header(&STANDARD.encode("nope")), Err("not JSON"));
        assert_eq!(
            decode_header(&STANDARD.encode("[1]")),
            Err("not a JSON object")
        );
        assert_eq!(
            decode_header(&STANDARD.encode(r#"{"x402Version":2}"#)),
            Ok(json!({"x402Version": 2}))
        );
    }

    #[test]
    fn a_402_carries_both_versions() {
        let v1 = json!({"scheme": "exact", "description": "d"});
        let v2 = json!({"scheme": "batch-settlement"});
        let reply = payment_required("why", "http://x/r", vec![v1], vec![v2]);
        assert_eq!(reply.status, 402);
        let body: Value = serde_json::from_slice(&reply.body).expect("json");
        assert_eq!(body["x402Version"], 1);
        assert_eq!(body["accepts"][0]["scheme"], "exact");
        let header = decode_header(&reply.headers[PAYMENT_REQUIRED]).expect("v2");
        assert_eq!(header["accepts"][0]["scheme"], "batch-settlement");
        assert_eq!(header["resource"]["description"], "d");
        assert_eq!(reply.headers["cache-control"], "no-store");
    }
}
