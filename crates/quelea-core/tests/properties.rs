//! Property tests of what a hostile or careless caller controls: the bytes
//! of an Invocation (the HTTP front door and the Lambda handler decode
//! whatever arrives) and every numeric config key, from a file or the
//! environment. Whatever the input: no panic, and a refusal is a named
//! error. (The checks an Invocation passes after decoding, `Runtime::check`,
//! have their own property test in quelea-worker.)

use proptest::prelude::*;
use serde_json::{json, Value};

use quelea_core::config::ConfigBuilder;
use quelea_core::protocol::{Message, PROTOCOL_VERSION};

/// A valid Invocation, as a client sends it.
fn invocation() -> Value {
    json!({
        "version": PROTOCOL_VERSION,
        "type": "invocation",
        "id": "abc123-1f-0",
        "executor_id": "abc123-0",
        "job_id": "M000",
        "function": {"runner": "python", "name": "f", "hash": "00ff"},
        "calls": [
            {"call_id": 0, "input": {"inline": "AAEC"}},
            {"call_id": 1, "count": 3, "input": {"range": {"start": 5, "end": 9}}},
        ],
        "timeout_s": 10.0,
        "memory_limit_mb": 256,
        "submit_ts": 1.5,
    })
}

/// Numbers at and past every edge a field could have.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        Just(json!(1e308)),
        Just(json!(-1e308)),
        Just(json!(5e-324)),
        Just(json!(0)),
        Just(json!(-0.0)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
    ]
}

/// Any JSON value a field could be replaced with.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// JSON pointers to every field of [`invocation`] a caller controls.
const FIELDS: &[&str] = &[
    "/version",
    "/type",
    "/id",
    "/executor_id",
    "/job_id",
    "/function",
    "/function/runner",
    "/function/hash",
    "/calls",
    "/calls/0",
    "/calls/0/call_id",
    "/calls/0/input",
    "/calls/0/input/inline",
    "/calls/1/count",
    "/calls/1/input/range/start",
    "/calls/1/input/range/end",
    "/timeout_s",
    "/memory_limit_mb",
    "/submit_ts",
];

const NUMERIC_FIELDS: &[&str] = &[
    "/version",
    "/calls/1/count",
    "/calls/1/input/range/start",
    "/calls/1/input/range/end",
    "/timeout_s",
    "/memory_limit_mb",
    "/submit_ts",
];

fn decoded_or_named(bytes: &[u8]) {
    if let Err(e) = Message::decode(bytes) {
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn the_valid_invocation_decodes() {
    let bytes = serde_json::to_vec(&invocation()).unwrap();
    let decoded = Message::decode(&bytes);
    assert!(matches!(decoded, Ok(Message::Invocation(_))), "{decoded:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        decoded_or_named(&bytes);
    }

    #[test]
    fn an_invocation_with_any_field_replaced_decodes_or_is_refused(
        field in prop::sample::select(FIELDS),
        value in any_json(),
    ) {
        let mut message = invocation();
        *message.pointer_mut(field).unwrap() = value;
        decoded_or_named(&serde_json::to_vec(&message).unwrap());
    }

    #[test]
    fn any_number_in_any_numeric_field_decodes_or_is_refused(
        field in prop::sample::select(NUMERIC_FIELDS),
        value in number(),
    ) {
        let mut message = invocation();
        *message.pointer_mut(field).unwrap() = value;
        decoded_or_named(&serde_json::to_vec(&message).unwrap());
    }

    #[test]
    fn truncated_invocations_are_refused(cut in 0usize..400) {
        let bytes = serde_json::to_vec(&invocation()).unwrap();
        let cut = cut.min(bytes.len() - 1);
        prop_assert!(Message::decode(&bytes[..cut]).is_err());
    }
}

/// Every numeric config key, with its environment variable where it has one.
const NUMERIC_KEYS: &[(&str, Option<&str>)] = &[
    ("execution.timeout", None),
    ("execution.memory_limit_mb", None),
    ("execution.chunksize", None),
    ("execution.inline_input_bytes", None),
    ("execution.inline_result_bytes", None),
    (
        "storage_client.connect_timeout",
        Some("QUELEA_STORAGE_CLIENT_CONNECT_TIMEOUT"),
    ),
    (
        "storage_client.read_timeout",
        Some("QUELEA_STORAGE_CLIENT_READ_TIMEOUT"),
    ),
    (
        "storage_client.timeout",
        Some("QUELEA_STORAGE_CLIENT_TIMEOUT"),
    ),
    (
        "storage_client.retry_timeout",
        Some("QUELEA_STORAGE_CLIENT_RETRY_TIMEOUT"),
    ),
    (
        "storage_client.max_retries",
        Some("QUELEA_STORAGE_CLIENT_MAX_RETRIES"),
    ),
    ("local.workers", None),
    ("http.max_workers", Some("QUELEA_HTTP_MAX_WORKERS")),
    ("http.invoke_deadline", None),
    ("http.replay_window", None),
    ("http.max_body_bytes", None),
    ("http.max_queued_calls", None),
    ("aws_lambda.memory_mb", Some("QUELEA_AWS_LAMBDA_MEMORY_MB")),
    (
        "aws_lambda.max_workers",
        Some("QUELEA_AWS_LAMBDA_MAX_WORKERS"),
    ),
    (
        "aws_lambda.invoke_deadline",
        Some("QUELEA_AWS_LAMBDA_INVOKE_DEADLINE"),
    ),
    ("nats.max_age", None),
    (
        "push_fallback_interval",
        Some("QUELEA_PUSH_FALLBACK_INTERVAL"),
    ),
];

fn with_variable() -> impl Strategy<Value = (&'static str, &'static str)> {
    prop::sample::select(
        NUMERIC_KEYS
            .iter()
            .filter_map(|(k, v)| v.map(|v| (*k, v)))
            .collect::<Vec<_>>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_value_of_a_numeric_config_key_is_taken_or_refused_by_name(
        (key, _) in prop::sample::select(NUMERIC_KEYS),
        value in prop_oneof![number(), any_json()],
    ) {
        let built = ConfigBuilder::new().no_file().env(Vec::new()).set(key, value.clone()).build();
        if let Err(e) = built {
            let leaf = key.rsplit('.').next().unwrap();
            let message = e.to_string();
            prop_assert!(
                message.contains(key) || message.contains(leaf),
                "{key} = {value}: {message}"
            );
        }
    }

    #[test]
    fn any_text_in_a_numeric_variable_is_taken_or_refused_by_name(
        (key, var) in with_variable(),
        text in prop_oneof![".{0,24}", "-?[0-9]{1,40}(\\.[0-9]{0,10})?(e-?[0-9]{1,4})?"],
    ) {
        let built = ConfigBuilder::new()
            .no_file()
            .env(vec![(var.to_owned(), text.clone())])
            .build();
        if let Err(e) = built {
            let message = e.to_string();
            prop_assert!(
                message.contains(var) || message.contains(key),
                "{var}={text}: {message}"
            );
        }
    }
}
