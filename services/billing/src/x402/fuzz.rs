//! Hostile input never panics the payment decoders: arbitrary header bytes,
//! arbitrary JSON shapes and arbitrary batch payloads are refused with a
//! reason (or parsed), never crash billing. A few known-nasty inputs are
//! kept as a regression corpus; proptest keeps failing cases it finds in
//! `proptest-regressions/` next to this file.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::batch::offer::BatchTerms;
use super::networks::{NetworksFile, Offer, TEST_BASE};

const OFFER: Offer<'static> = Offer {
    amount: 1,
    resource: "http://x/v1/chat/completions",
    description: "d",
};

fn terms() -> BatchTerms {
    BatchTerms {
        receiver_authorizer: alloy_primitives::Address::repeat_byte(7),
        withdraw_delay: 900,
        min_deposit: 1_000_000,
    }
}

/// Every decoding step a payment header goes through.
fn decode_all(header: &str) {
    let Ok(json) = super::http::decode_header(header) else {
        return;
    };
    let networks = NetworksFile::from_toml(TEST_BASE)
        .expect("networks")
        .networks;
    let _ = super::payment::parse(json.clone(), &networks, &OFFER, Some(&terms()));
    if let Some(payload) = json.get("payload") {
        let _ = super::batch::payload::parse(payload);
    }
}

/// JSON values of any shape, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-zA-Z0-9x]{0,70}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("x402Version".to_owned()),
                    Just("accepted".to_owned()),
                    Just("payload".to_owned()),
                    Just("scheme".to_owned()),
                    Just("network".to_owned()),
                    Just("type".to_owned()),
                    Just("voucher".to_owned()),
                    Just("channelConfig".to_owned()),
                    Just("deposit".to_owned()),
                    "[a-z]{1,12}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn b64(value: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(value.to_string())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_header_bytes_never_panic(header in ".{0,400}") {
        decode_all(&header);
    }

    #[test]
    fn arbitrary_payment_json_never_panics(payment in any_json()) {
        decode_all(&b64(&payment));
    }

    #[test]
    fn arbitrary_batch_payloads_never_panic(payload in any_json(), kind in prop_oneof![Just("deposit"), Just("voucher"), Just("refund")]) {
        let mut payload = payload;
        if let Some(object) = payload.as_object_mut() {
            object.insert("type".into(), json!(kind));
        }
        let _ = super::batch::payload::parse(&payload);
    }
}

#[test]
fn the_regression_corpus_is_refused_cleanly() {
    let huge = "9".repeat(200);
    let corpus = [
        json!({"x402Version": 2, "accepted": {"scheme": "batch-settlement", "network": "eip155:8453"}, "payload": {"type": "voucher"}}),
        json!({"x402Version": 2, "accepted": {"scheme": "batch-settlement", "network": "eip155:8453"},
               "payload": {"type": "deposit", "channelConfig": {"withdrawDelay": huge}, "voucher": {}}}),
        json!({"x402Version": 2, "accepted": [], "payload": []}),
        json!({"x402Version": 1.5}),
        json!({"x402Version": -1, "scheme": "exact"}),
        json!({"x402Version": 2, "accepted": {"scheme": "exact", "network": "eip155:8453", "amount": huge}, "payload": {"signature": "0x", "authorization": {}}}),
    ];
    for payment in corpus {
        decode_all(&b64(&payment));
    }
    for header in ["", "=", "====", "e30=", "bnVsbA==", "W10=", "\u{0}\u{1}"] {
        decode_all(header);
    }
}
