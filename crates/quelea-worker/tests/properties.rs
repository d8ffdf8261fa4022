//! Property test of the checks every decoded Invocation passes before
//! anything runs (`Runtime::check`, through `accept_in_process`): whatever
//! its numbers (timeout, memory limit, counts, ids), no panic, and a refusal
//! that names what is wrong. The runtime here has no runner commands, so an
//! Invocation that passes the checks is refused for its runner kind, and
//! nothing is ever started.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use proptest::prelude::*;
use quelea_core::config::{ConfigBuilder, StorageKind};
use quelea_core::ids::{CallId, JobId, JobKind};
use quelea_core::model::{FunctionSpec, RunnerKind};
use quelea_core::protocol::{CallInput, Invocation, InvokedCall};
use quelea_storage::Storage;
use quelea_worker::runtime::{CallObserver, Ended, RefusalKind, Runtime, RuntimeConfig};

struct Nobody;

impl CallObserver for Nobody {
    fn started(&self, _: CallId, _: u32, _: u32, _: f64) {}
    fn finished(&self, _: CallId, _: Ended) {}
}

fn runtime() -> Runtime {
    let config = ConfigBuilder::new()
        .no_file()
        .env(Vec::new())
        .set("storage", StorageKind::Memory.name())
        .build()
        .unwrap();
    Runtime::new(
        RuntimeConfig {
            workers: 1,
            inline_result_bytes: 1024,
            max_queued_calls: 1000,
            commands: HashMap::new(),
            instance_memory_mb: None,
            brokers: Default::default(),
        },
        Storage::from_config(&config).unwrap(),
    )
}

fn timeout() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        Just(1e30),
        Just(f64::MAX),
        Just(-0.0),
        Just(5e-324),
        0.0..1e7,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_numbers_are_refused_by_name_and_never_panic(
        timeout_s in timeout(),
        memory in prop::option::of(prop_oneof![any::<u64>(), Just(u64::MAX), Just(1u64 << 44), Just(0)]),
        count in prop_oneof![any::<u32>(), Just(0u32), Just(1)],
        id in prop::option::of(".{0,80}"),
        hash in prop_oneof!["[0-9a-f]{1,130}", ".{0,20}"],
    ) {
        let runtime = runtime();
        let invocation = Invocation {
            id,
            executor_id: "abcdef-0".parse().unwrap(),
            job_id: JobId::new(JobKind::Map, 0),
            function: FunctionSpec { runner: RunnerKind::Python, name: "f".into(), hash },
            calls: vec![InvokedCall {
                call_id: CallId(0),
                count,
                input: CallInput::Inline(vec![1].into()),
                select: None,
            }],
            timeout_s,
            memory_limit_mb: memory,
            submit_ts: 0.0,
            push: None,
            attempt: 0,
            retry_on: Vec::new(),
        };
        let refused = runtime
            .accept_in_process(
                invocation.clone(),
                b"payload",
                Arc::new(Nobody),
                Arc::new(AtomicBool::new(false)),
            )
            .err()
            .expect("a runtime without runners runs nothing");
        prop_assert!(!refused.message.is_empty());
        let named = match refused.kind {
            RefusalKind::Invalid => [
                "timeout_s", "memory_limit_mb", "count", "hash", "id", "runner", "queued",
            ]
            .iter()
            .any(|what| refused.message.contains(what)),
            RefusalKind::Busy => refused.message.contains("queued"),
            _ => false,
        };
        prop_assert!(named, "{invocation:?}: {:?}", refused);
    }
}
