//! Hostile request bodies never panic the request decoder, and every
//! refusal is a client error (4xx) in OpenAI's format, never a 5xx.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::ChatRequest;

fn assert_clean(bytes: &[u8]) {
    if let Err(error) = ChatRequest::parse(bytes) {
        assert!(error.status.is_client_error(), "{error:?}");
        assert!(!error.message.is_empty());
    }
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("model".to_owned()),
                    Just("messages".to_owned()),
                    Just("role".to_owned()),
                    Just("content".to_owned()),
                    Just("max_tokens".to_owned()),
                    Just("stream".to_owned()),
                    Just("stop".to_owned()),
                    Just("temperature".to_owned()),
                    Just("tools".to_owned()),
                    "[a-z_]{1,12}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_are_a_clean_400(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        assert_clean(&bytes);
    }

    #[test]
    fn arbitrary_json_is_parsed_or_a_clean_400(body in any_json()) {
        assert_clean(body.to_string().as_bytes());
    }

    #[test]
    fn arbitrary_messages_are_parsed_or_a_clean_400(messages in prop::collection::vec(any_json(), 0..4)) {
        let body = json!({"model": "m", "messages": messages});
        assert_clean(body.to_string().as_bytes());
    }
}

#[test]
fn the_regression_corpus_is_refused_cleanly() {
    let corpus: [&[u8]; 8] = [
        b"",
        b"\xff\xfe",
        br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}"#,
        br#"{"model":"m","messages":[{"role":"user","content":null}],"max_tokens":-1}"#,
        br#"{"model":"m","messages":[],"max_tokens":18446744073709551616}"#,
        br#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":1e400}"#,
        br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":[1,2]}"#,
        br#"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"#,
    ];
    for body in corpus {
        assert_clean(body);
    }
}
