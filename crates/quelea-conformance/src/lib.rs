//! The conformance tests: one set of behaviours every backend must show,
//! run by each backend's own test binary against its real servers —
//! `local` (crates/quelea-cli/tests/local_conformance.rs), `http` (worker
//! servers, crates/quelea-cli/tests/http_backend.rs) and `aws_lambda` (the
//! cargo-lambda emulator, crates/quelea-lambda-testfn/tests/emulator.rs).
//!
//! The functions are the `quelea` CLI's builtins, which every runtime in
//! the tests serves: the `quelea` binary (local runners and worker
//! servers) and the Lambda test bootstrap.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};
use quelea::core::keys::JobKeys;
use quelea::core::protocol::Message;
use quelea::objects::{Chunking, ObjOptions};
use quelea::storage::Storage;
use quelea::{
    CallState, ConfigBuilder, Error, Executor, FailureReason, MapOptions, RunnerCommand, RunnerKind,
};

/// Every wait in the tests ends; a lost call fails its test instead of hanging.
pub const WAIT: Option<Duration> = Some(Duration::from_secs(120));

/// How the tests reach one backend.
#[derive(Clone)]
pub struct Backend {
    /// Prefixes the trial names (`local::map_...`).
    pub name: &'static str,
    /// A complete config for the backend, storage included; tests add to it.
    pub config: Arc<dyn Fn() -> ConfigBuilder + Send + Sync>,
    /// The Rust runner, for a backend that starts runners in this process
    /// (`local`): a binary that serves the CLI builtins.
    pub rust_runner: Option<RunnerCommand>,
}

impl Backend {
    fn executor_with(&self, config: ConfigBuilder) -> Result<Executor, Failed> {
        let mut builder = Executor::builder().config(config.build()?);
        if let Some(runner) = &self.rust_runner {
            builder = builder.runner(RunnerKind::Rust, runner.clone());
        }
        Ok(builder.build()?)
    }

    fn executor(&self) -> Result<Executor, Failed> {
        self.executor_with((self.config)())
    }
}

type Test = fn(&Backend) -> Result<(), Failed>;

const TESTS: &[(&str, Test)] = &[
    (
        "map_in_order_with_one_final_status_per_call",
        map_in_order_with_one_final_status_per_call,
    ),
    ("map_reduce_and_ranged_inputs", map_reduce_and_ranged_inputs),
    (
        "user_error_carries_the_remote_message",
        user_error_carries_the_remote_message,
    ),
    ("timeout_fails_only_that_call", timeout_fails_only_that_call),
    (
        "crashed_runner_fails_only_its_call",
        crashed_runner_fails_only_its_call,
    ),
    (
        "partitioned_objects_are_read_in_the_calls",
        partitioned_objects_are_read_in_the_calls,
    ),
];

/// The conformance trials for `backend`, named `<backend>::conformance::<test>`.
pub fn trials(backend: &Backend) -> Vec<Trial> {
    TESTS
        .iter()
        .map(|&(name, test)| {
            let backend = backend.clone();
            Trial::test(
                format!("{}::conformance::{name}", backend.name),
                move || test(&backend),
            )
        })
        .collect()
}

pub fn check(cond: bool, message: impl Into<String>) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(message.into().into())
    }
}

/// Waits for a child process; past `limit` it is killed (by PID) and the
/// test fails, naming `what`.
pub fn wait_child(
    child: &mut std::process::Child,
    limit: Duration,
    what: &str,
) -> Result<std::process::ExitStatus, Failed> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} did not finish within {limit:?}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every final status in storage for a job, by call.
pub fn final_statuses(storage: &Storage, keys: &JobKeys) -> HashMap<u32, Vec<CallState>> {
    let mut calls: HashMap<u32, Vec<CallState>> = HashMap::new();
    for object in storage.list_blocking(&keys.status_prefix()).unwrap() {
        let body = storage.get_blocking(&object.key).unwrap();
        let Ok(Message::StatusBatch(batch)) = Message::decode(&body) else {
            panic!("unreadable status batch {}", object.key);
        };
        for status in batch.statuses {
            if status.state.is_terminal() {
                calls
                    .entry(status.call_id.0)
                    .or_default()
                    .push(status.state);
            }
        }
    }
    calls
}

fn map_in_order_with_one_final_status_per_call(backend: &Backend) -> Result<(), Failed> {
    let b = quelea_cli::builtins();
    let exec = backend.executor()?;
    let futures = exec.map(
        &b.square,
        (0..200u64).map(|x| (x, 0)),
        MapOptions::default().chunksize(4),
    )?;
    let results = exec.get_result(&futures, WAIT)?;
    check(
        results == (0..200u64).map(|x| x * x).collect::<Vec<_>>(),
        "results in call order",
    )?;
    exec.flush_statuses()?;
    let keys = JobKeys::new(exec.id(), futures.get(0).unwrap().job_id());
    let statuses = final_statuses(exec.storage(), &keys);
    check(
        statuses.len() == 200 && statuses.values().all(|s| s == &[CallState::Success]),
        format!("one final status per call: {statuses:?}"),
    )
}

fn map_reduce_and_ranged_inputs(backend: &Backend) -> Result<(), Failed> {
    let b = quelea_cli::builtins();
    let exec = backend.executor()?;
    let total = exec
        .map_reduce(
            &b.square,
            (0..60u64).map(|x| (x, 0)),
            &b.sum,
            MapOptions::default().chunksize(7),
        )?
        .result(WAIT)?;
    check(
        total == (0..60u64).map(|x| x * x).sum::<u64>(),
        format!("sum {total}"),
    )?;
    // Inputs over `inline_input_bytes` travel as byte ranges of one data object.
    let exec = backend.executor_with((backend.config)().set("execution.inline_input_bytes", 2))?;
    let futures = exec.map(
        &b.square,
        (0..20u64).map(|x| (x, 0)),
        MapOptions::default().chunksize(3),
    )?;
    let results = exec.get_result(&futures, WAIT)?;
    check(
        results == (0..20u64).map(|x| x * x).collect::<Vec<_>>(),
        format!("{results:?}"),
    )?;
    check(
        exec.storage()
            .head_blocking(&JobKeys::new(exec.id(), futures.get(0).unwrap().job_id()).data())
            .is_ok(),
        "the inputs went through the data object",
    )
}

fn user_error_carries_the_remote_message(backend: &Backend) -> Result<(), Failed> {
    let b = quelea_cli::builtins();
    let exec = backend.executor()?;
    let futures = exec.map(&b.fail, ["apple".to_owned()], MapOptions::default())?;
    let err = exec.get_result(&futures, WAIT).unwrap_err();
    let Error::CallFailed { error, .. } = &err else {
        return Err(format!("expected a call failure, got {err}").into());
    };
    check(
        error.reason == FailureReason::UserError
            && error.error_type == "BuiltinFailure"
            && error.message == "refused input `apple`",
        format!("{error:?}"),
    )
}

fn timeout_fails_only_that_call(backend: &Backend) -> Result<(), Failed> {
    let b = quelea_cli::builtins();
    let exec = backend.executor()?;
    let started = Instant::now();
    let futures = exec.map(
        &b.sleep_ms,
        [30_000u64, 10],
        MapOptions::default().timeout(Duration::from_secs(1)),
    )?;
    exec.wait(&futures, quelea::ReturnWhen::AllCompleted, WAIT)?;
    check(
        started.elapsed() < Duration::from_secs(20),
        format!("took {:?}", started.elapsed()),
    )?;
    let error = futures
        .get(0)
        .unwrap()
        .call_error()
        .ok_or("call 0 failed")?;
    check(error.reason == FailureReason::Timeout, format!("{error:?}"))?;
    check(futures.get(1).unwrap().success(), "call 1 succeeds")
}

fn crashed_runner_fails_only_its_call(backend: &Backend) -> Result<(), Failed> {
    let b = quelea_cli::builtins();
    let exec = backend.executor()?;
    // Four calls in one Invocation on remote backends: the crash must not
    // take the other three with it.
    let futures = exec.map(
        &b.exit_with,
        [0, 3, 0, 0],
        MapOptions::default().chunksize(4),
    )?;
    exec.wait(&futures, quelea::ReturnWhen::AllCompleted, WAIT)?;
    let error = futures
        .get(1)
        .unwrap()
        .call_error()
        .ok_or("call 1 failed")?;
    check(
        error.reason == FailureReason::WorkerCrashed
            && error.message.contains("exited with code 3"),
        format!("{error:?}"),
    )?;
    check(
        [0, 2, 3].iter().all(|&i| futures.get(i).unwrap().success()),
        "the other calls succeed",
    )
}

fn partitioned_objects_are_read_in_the_calls(backend: &Backend) -> Result<(), Failed> {
    let b = quelea_cli::builtins();
    let exec = backend.executor()?;
    // Objects in the job storage; the calls read their chunks with their
    // runtime's own storage settings.
    let prefix = format!("inputs/{}/", exec.id());
    let storage = exec.storage();
    storage.put_blocking(
        &format!("{prefix}a.txt"),
        "alpha\nbeta\ngamma\n".as_bytes().to_vec(),
    )?;
    storage.put_blocking(&format!("{prefix}b.txt"), "one\ntwo".as_bytes().to_vec())?;
    let input = format!("{}/{prefix}", exec.config().bucket);
    let options = ObjOptions {
        chunking: Chunking::Size(4),
        ..ObjOptions::default()
    };
    let per_object = exec.get_result(
        &exec.map_reduce_objects(
            &b.count_lines,
            [input],
            &b.sum,
            &options,
            true,
            MapOptions::default(),
        )?,
        WAIT,
    )?;
    storage.delete_prefix_blocking(&prefix)?;
    check(per_object == vec![3, 2], format!("{per_object:?}"))
}
