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
    (
        "batches_keep_each_elements_outcome",
        batches_keep_each_elements_outcome,
    ),
    (
        "a_dead_batch_fails_only_its_guilty_element",
        a_dead_batch_fails_only_its_guilty_element,
    ),
    (
        "cancel_stops_queued_and_running_calls",
        cancel_stops_queued_and_running_calls,
    ),
    (
        "memory_limit_fails_only_that_call",
        memory_limit_fails_only_that_call,
    ),
    (
        "retries_run_a_failing_call_until_its_last_attempt",
        retries_run_a_failing_call_until_its_last_attempt,
    ),
    (
        "a_runner_killed_on_the_first_attempt_succeeds_on_the_second",
        a_runner_killed_on_the_first_attempt_succeeds_on_the_second,
    ),
    ("attach_from_a_second_process", attach_from_a_second_process),
    (
        "a_detached_job_outlives_its_client",
        a_detached_job_outlives_its_client,
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

/// Every final status in storage for a job, by call (an attempt's failure
/// that was retried, `retried`, is not final).
pub fn final_statuses(storage: &Storage, keys: &JobKeys) -> HashMap<u32, Vec<CallState>> {
    let mut calls: HashMap<u32, Vec<CallState>> = HashMap::new();
    for object in storage.list_blocking(&keys.status_prefix()).unwrap() {
        let body = storage.get_blocking(&object.key).unwrap();
        let Ok(Message::StatusBatch(batch)) = Message::decode(&body) else {
            panic!("unreadable status batch {}", object.key);
        };
        for status in batch.statuses {
            if status.is_final() {
                // A batch's shared record stands for each of its calls.
                for k in 0..status.count.max(1) {
                    calls
                        .entry(status.call_id.0 + k)
                        .or_default()
                        .push(status.state);
                }
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
    let data = exec
        .storage()
        .head_blocking(&JobKeys::new(exec.id(), futures.get(0).unwrap().job_id()).data());
    if backend.rust_runner.is_some() {
        // The local runtime runs in the client's process: inputs reach it
        // in memory, never through storage.
        check(
            data.is_err(),
            "local inputs do not go through the data object",
        )
    } else {
        check(data.is_ok(), "the inputs went through the data object")
    }
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

fn batches_keep_each_elements_outcome(backend: &Backend) -> Result<(), Failed> {
    let b = quelea_cli::builtins();
    let exec = backend.executor()?;
    // 23 elements, 5 to a runner call: five calls, the last of three.
    let futures = exec.map(&b.fail_odd, 0..23u64, MapOptions::default().chunksize(5))?;
    check(futures.len() == 23, format!("{} futures", futures.len()))?;
    exec.wait(&futures, quelea::ReturnWhen::AllCompleted, WAIT)?;
    for (i, future) in futures.iter().enumerate() {
        if i % 2 == 1 {
            let error = future.call_error().ok_or(format!("call {i} failed"))?;
            check(
                error.reason == FailureReason::UserError
                    && error.message == format!("refused input `{i}`"),
                format!("call {i}: {error:?}"),
            )?;
        } else {
            check(future.result(WAIT)? == i as u64, format!("call {i}"))?;
        }
    }
    // All even: every batch succeeds as a whole, results still per element.
    let evens = exec.map(
        &b.fail_odd,
        (0..40u64).map(|x| x * 2),
        MapOptions::default().chunksize(8),
    )?;
    check(
        exec.get_result(&evens, WAIT)? == (0..40u64).map(|x| x * 2).collect::<Vec<_>>(),
        "even results in order",
    )?;
    exec.flush_statuses()?;
    for (futures, n) in [(&futures, 23), (&evens, 40)] {
        let keys = JobKeys::new(exec.id(), futures.get(0).unwrap().job_id());
        let statuses = final_statuses(exec.storage(), &keys);
        check(
            statuses.len() == n && statuses.values().all(|s| s.len() == 1),
            format!("one final status per element: {statuses:?}"),
        )?;
    }
    Ok(())
}

fn a_dead_batch_fails_only_its_guilty_element(backend: &Backend) -> Result<(), Failed> {
    let b = quelea_cli::builtins();
    let exec = backend.executor()?;
    // One batch of eight: the sixth element ends its runner; the runtime runs
    // the batch's elements again one per call, so only that one fails.
    let codes = [0, 0, 0, 0, 0, 7, 0, 0];
    let futures = exec.map(&b.exit_with, codes, MapOptions::default().chunksize(8))?;
    exec.wait(&futures, quelea::ReturnWhen::AllCompleted, WAIT)?;
    let error = futures
        .get(5)
        .unwrap()
        .call_error()
        .ok_or("call 5 failed")?;
    check(
        error.reason == FailureReason::WorkerCrashed
            && error.message.contains("call 00005")
            && error.message.contains("exited with code 7"),
        format!("{error:?}"),
    )?;
    check(
        (0..8)
            .filter(|&i| i != 5)
            .all(|i| futures.get(i).unwrap().success()),
        "the other elements succeed",
    )?;
    exec.flush_statuses()?;
    let keys = JobKeys::new(exec.id(), futures.get(0).unwrap().job_id());
    let statuses = final_statuses(exec.storage(), &keys);
    check(
        statuses.len() == 8 && statuses.values().all(|s| s.len() == 1),
        format!("one final status per element: {statuses:?}"),
    )?;
    // A timeout inside a batch: the slow element alone times out.
    let started = Instant::now();
    let futures = exec.map(
        &b.sleep_ms,
        [10, 10, 60_000, 10],
        MapOptions::default()
            .chunksize(4)
            .timeout(Duration::from_secs(1)),
    )?;
    exec.wait(&futures, quelea::ReturnWhen::AllCompleted, WAIT)?;
    check(
        started.elapsed() < Duration::from_secs(30),
        format!("took {:?}", started.elapsed()),
    )?;
    let error = futures
        .get(2)
        .unwrap()
        .call_error()
        .ok_or("call 2 failed")?;
    check(error.reason == FailureReason::Timeout, format!("{error:?}"))?;
    check(
        [0, 1, 3].iter().all(|&i| futures.get(i).unwrap().success()),
        "the quick elements succeed",
    )
}

fn cancel_stops_queued_and_running_calls(backend: &Backend) -> Result<(), Failed> {
    let b = quelea_cli::builtins();
    let exec = backend.executor()?;
    // Cancelled from another thread by the job's marker alone, as any
    // process can, once a call is seen running in storage (on a backend
    // whose `map` returns only when the calls have run, too).
    let keys = JobKeys::new(exec.id(), quelea::JobId::new(quelea::JobKind::Map, 0));
    let storage = exec.storage().clone();
    let canceller = {
        let keys = keys.clone();
        std::thread::spawn(move || -> Result<Instant, String> {
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if any_running(&storage, &keys) {
                    storage
                        .put_blocking(&keys.cancelled(), Vec::new())
                        .map_err(|e| e.to_string())?;
                    return Ok(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err("no call was seen running within 60 s".into())
        })
    };
    let futures = exec.map(&b.sleep_ms, [60_000u64; 4], MapOptions::default())?;
    check(
        futures.get(0).unwrap().job_id() == keys_job(&keys),
        "the first job is M000",
    )?;
    exec.wait(&futures, quelea::ReturnWhen::AllCompleted, WAIT)?;
    let cancelled_at = canceller.join().map_err(|_| "the canceller panicked")??;
    check(
        futures.iter().all(|f| {
            f.call_error()
                .is_some_and(|e| e.reason == FailureReason::Cancelled)
        }),
        format!(
            "every call ends cancelled: {:?}",
            futures.iter().map(|f| f.call_error()).collect::<Vec<_>>()
        ),
    )?;
    check(
        cancelled_at.elapsed() < Duration::from_secs(30),
        format!(
            "the calls ended {:?} after the cancel",
            cancelled_at.elapsed()
        ),
    )?;
    // The runtime stopped the work: a new job runs at once.
    let quick = exec.map(&b.sleep_ms, [1u64; 4], MapOptions::default())?;
    check(
        exec.get_result(&quick, Some(Duration::from_secs(30)))? == vec![1; 4],
        "a job after the cancel runs",
    )
}

fn keys_job(keys: &JobKeys) -> quelea::JobId {
    keys.prefix()
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .and_then(|job| job.parse().ok())
        .expect("job keys end in the job id")
}

/// Whether a status in storage says one of the job's calls is running.
fn any_running(storage: &Storage, keys: &JobKeys) -> bool {
    let Ok(objects) = storage.list_blocking(&keys.status_prefix()) else {
        return false;
    };
    objects.iter().any(|object| {
        storage.get_blocking(&object.key).is_ok_and(|body| {
            matches!(Message::decode(&body), Ok(Message::StatusBatch(batch))
                if batch.statuses.iter().any(|s| s.state == CallState::Running))
        })
    })
}

fn memory_limit_fails_only_that_call(backend: &Backend) -> Result<(), Failed> {
    let b = quelea_cli::builtins();
    let exec = backend.executor()?;
    let futures = exec.map(
        &b.hold_mb,
        [1u64, 400, 1],
        MapOptions::default().memory_limit_mb(150),
    )?;
    exec.wait(&futures, quelea::ReturnWhen::AllCompleted, WAIT)?;
    let error = futures
        .get(1)
        .unwrap()
        .call_error()
        .ok_or("call 1 failed")?;
    check(
        error.reason == FailureReason::OutOfMemory && error.message.contains("150 MiB"),
        format!("{error:?}"),
    )?;
    check(
        [0, 2].iter().all(|&i| futures.get(i).unwrap().success()),
        "the small calls succeed",
    )
}

/// One ended attempt as stored: `(attempt, state, retried)`.
pub type Attempt = (u32, CallState, bool);

/// Every ended attempt in storage for a job, by call, in attempt order.
pub fn ended_attempts(
    storage: &Storage,
    keys: &JobKeys,
) -> Result<HashMap<u32, Vec<Attempt>>, Failed> {
    let mut calls: HashMap<u32, Vec<Attempt>> = HashMap::new();
    for object in storage.list_blocking(&keys.status_prefix())? {
        let body = storage.get_blocking(&object.key)?;
        let Ok(Message::StatusBatch(batch)) = Message::decode(&body) else {
            return Err(format!("unreadable status batch {}", object.key).into());
        };
        for status in batch.statuses.into_iter().filter(|s| s.state.is_terminal()) {
            for k in 0..status.count.max(1) {
                calls.entry(status.call_id.0 + k).or_default().push((
                    status.stats.attempt,
                    status.state,
                    status.retried,
                ));
            }
        }
    }
    for attempts in calls.values_mut() {
        attempts.sort_by_key(|a| a.0);
    }
    Ok(calls)
}

/// The input of the builtin `flaky`: fail the first `fail_first` attempts
/// (`how`: `error` or `kill`), counted by marker objects under `prefix`.
fn flaky(prefix: &str, fail_first: u32, how: &str) -> (String, u32, String) {
    (prefix.to_owned(), fail_first, how.to_owned())
}

fn retries_run_a_failing_call_until_its_last_attempt(backend: &Backend) -> Result<(), Failed> {
    let b = quelea_cli::builtins();
    let exec = backend.executor()?;
    let storage = exec.storage().clone();
    let root = format!("retry-markers/{}/", exec.id());
    let marker = |name: &str| format!("{root}{name}/");
    // Fails its first two attempts: retries=2 gets the third's result;
    // retries=1 fails cleanly with the second attempt's error.
    let options = MapOptions::default().retry_user_errors(true);
    let twice = exec.map(
        &b.flaky,
        [
            flaky(&marker("a"), 2, "error"),
            flaky(&marker("b"), 2, "error"),
        ],
        options.clone().retries(2),
    )?;
    let once = exec.map(
        &b.flaky,
        [flaky(&marker("c"), 2, "error")],
        options.clone().retries(1),
    )?;
    // User errors are retried only when asked.
    let not_asked = exec.map(
        &b.flaky,
        [flaky(&marker("d"), 1, "error")],
        MapOptions::default().retries(3),
    )?;
    // In a batch: the failing element alone runs again, by itself.
    let batch = exec.map(
        &b.flaky,
        [
            flaky(&marker("e0"), 0, "error"),
            flaky(&marker("e1"), 1, "error"),
            flaky(&marker("e2"), 0, "error"),
        ],
        options.clone().retries(1).chunksize(3),
    )?;
    check(
        exec.get_result(&twice, WAIT)? == vec![2, 2],
        "third attempts' results",
    )?;
    check(
        twice.iter().all(|f| f.stats().attempt == 2),
        format!(
            "attempt 2 in the stats: {:?}",
            twice.iter().map(|f| f.stats()).collect::<Vec<_>>()
        ),
    )?;
    let err = exec.get_result(&once, WAIT).unwrap_err();
    let Error::CallFailed { error, .. } = &err else {
        return Err(format!("expected a call failure, got {err}").into());
    };
    check(
        error.reason == FailureReason::UserError
            && error.message.contains("attempt 1")
            && once.get(0).unwrap().stats().attempt == 1,
        format!("the last attempt's error: {error:?}"),
    )?;
    exec.wait(&not_asked, quelea::ReturnWhen::AllCompleted, WAIT)?;
    let f = not_asked.get(0).unwrap();
    check(
        f.call_error().is_some_and(|e| {
            e.reason == FailureReason::UserError && e.message.contains("attempt 0")
        }) && f.stats().attempt == 0,
        format!("not retried: {:?}", f.call_error()),
    )?;
    check(
        exec.get_result(&batch, WAIT)? == vec![0, 1, 0],
        "the batch's results",
    )?;
    let attempts: Vec<u32> = batch.iter().map(|f| f.stats().attempt).collect();
    check(attempts == [0, 1, 0], format!("attempts {attempts:?}"))?;
    // Storage: every attempt's end, exactly one of them final per call.
    exec.flush_statuses()?;
    for (futures, expected) in [
        (
            &twice,
            vec![
                (0, CallState::Error, true),
                (1, CallState::Error, true),
                (2, CallState::Success, false),
            ],
        ),
        (
            &once,
            vec![(0, CallState::Error, true), (1, CallState::Error, false)],
        ),
        (&not_asked, vec![(0, CallState::Error, false)]),
    ] {
        let keys = JobKeys::new(exec.id(), futures.get(0).unwrap().job_id());
        let ended = ended_attempts(&storage, &keys)?;
        check(
            ended.len() == futures.len() && ended.values().all(|a| a == &expected),
            format!("attempts in storage {ended:?}, expected {expected:?} per call"),
        )?;
        let finals = final_statuses(&storage, &keys);
        check(
            finals.values().all(|s| s.len() == 1),
            format!("one final status per call: {finals:?}"),
        )?;
    }
    let keys = JobKeys::new(exec.id(), batch.get(0).unwrap().job_id());
    let finals = final_statuses(&storage, &keys);
    check(
        finals.len() == 3 && finals.values().all(|s| s == &[CallState::Success]),
        format!("one final status per element: {finals:?}"),
    )?;
    storage.delete_prefix_blocking(&root)?;
    Ok(())
}

fn a_runner_killed_on_the_first_attempt_succeeds_on_the_second(
    backend: &Backend,
) -> Result<(), Failed> {
    let b = quelea_cli::builtins();
    let exec = backend.executor()?;
    let storage = exec.storage().clone();
    let root = format!("retry-markers/{}/", exec.id());
    let futures = exec.map(
        &b.flaky,
        [
            flaky(&format!("{root}k0/"), 1, "kill"),
            flaky(&format!("{root}k1/"), 0, "kill"),
        ],
        MapOptions::default().retries(1),
    )?;
    check(
        exec.get_result(&futures, WAIT)? == vec![1, 0],
        "the second attempt's result",
    )?;
    let attempts: Vec<u32> = futures.iter().map(|f| f.stats().attempt).collect();
    check(attempts == [1, 0], format!("attempts {attempts:?}"))?;
    exec.flush_statuses()?;
    let keys = JobKeys::new(exec.id(), futures.get(0).unwrap().job_id());
    let ended = ended_attempts(&storage, &keys)?;
    let first = ended.get(&0).cloned().unwrap_or_default();
    check(
        first == [(0, CallState::Error, true), (1, CallState::Success, false)],
        format!("call 0's attempts in storage: {first:?}"),
    )?;
    let finals = final_statuses(&storage, &keys);
    check(
        finals.len() == 2 && finals.values().all(|s| s == &[CallState::Success]),
        format!("one final status per call: {finals:?}"),
    )?;
    // Without retries the same crash is final.
    let once = exec.map(
        &b.flaky,
        [flaky(&format!("{root}k2/"), 1, "kill")],
        MapOptions::default(),
    )?;
    exec.wait(&once, quelea::ReturnWhen::AllCompleted, WAIT)?;
    check(
        once.get(0)
            .unwrap()
            .call_error()
            .is_some_and(|e| e.reason == FailureReason::WorkerCrashed),
        format!(
            "a crash without retries: {:?}",
            once.get(0).unwrap().call_error()
        ),
    )?;
    storage.delete_prefix_blocking(&root)?;
    Ok(())
}

/// Names the part a re-executed test binary plays (see [`second_client`]).
const SECOND_CLIENT_ENV: &str = "QTEST_SECOND_CLIENT";
/// The second client's [`Setup`], as JSON.
const SETUP_ENV: &str = "QTEST_SECOND_CLIENT_SETUP";
/// Calls of the detached map a second client submits and abandons.
const DETACHED_CALLS: u64 = 40;

/// What a second client needs to reach the same backend: the config as the
/// trial built it, the Rust runner, and a job handle to attach to.
#[derive(serde::Serialize, serde::Deserialize)]
struct Setup {
    builder: ConfigBuilder,
    runner: Option<Runner>,
    handle: Option<String>,
}

/// A runner command as text: program, arguments, environment.
type Runner = (String, Vec<String>, Vec<(String, String)>);

impl Setup {
    fn new(backend: &Backend, handle: Option<String>) -> Self {
        let runner = backend.rust_runner.as_ref().map(|r| {
            let text = |s: &std::ffi::OsStr| s.to_string_lossy().into_owned();
            (
                r.program.to_string_lossy().into_owned(),
                r.args.iter().map(|a| text(a)).collect(),
                r.env.iter().map(|(k, v)| (text(k), text(v))).collect(),
            )
        });
        Setup {
            builder: (backend.config)(),
            runner,
            handle,
        }
    }

    fn executor(&self) -> Result<Executor, Failed> {
        let mut builder = Executor::builder().config(self.builder.clone().build()?);
        if let Some((program, args, env)) = &self.runner {
            let command = |mode: &str| RunnerCommand {
                program: program.into(),
                args: args.iter().map(Into::into).collect(),
                env: env
                    .iter()
                    .filter(|(k, _)| k != "QUELEA_RUNNER")
                    .map(|(k, v)| (k.into(), v.into()))
                    .chain([("QUELEA_RUNNER".into(), mode.into())])
                    .collect(),
            };
            // The same binary serves runners and the detached-job host.
            builder = builder
                .runner(RunnerKind::Rust, command("rust"))
                .host(command("host"));
        }
        Ok(builder.build()?)
    }
}

/// Call first in a conformance test binary's `main`: when the binary was
/// started as a trial's second client, plays that part and exits.
pub fn serve_second_client_if_asked() {
    let Ok(part) = std::env::var(SECOND_CLIENT_ENV) else {
        return;
    };
    let result = std::env::var(SETUP_ENV)
        .map_err(|e| Failed::from(format!("{SETUP_ENV}: {e}")))
        .and_then(|json| Ok(serde_json::from_str::<Setup>(&json)?))
        .and_then(|setup| second_client(&part, &setup));
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!(
                "second client ({part}): {}",
                e.message().unwrap_or("failed")
            );
            std::process::exit(1);
        }
    }
}

fn second_client(part: &str, setup: &Setup) -> Result<(), Failed> {
    let b = quelea_cli::builtins();
    match part {
        // Submits a detached map, says its handle, and dies without a word.
        "abandon" => {
            let exec = setup.executor()?;
            let futures = exec.map(
                &b.sleep_ms,
                vec![200u64; DETACHED_CALLS as usize],
                MapOptions::default().chunksize(1).detach(true),
            )?;
            println!("{}", exec.job_handle(&futures.get(0).unwrap()).to_json());
            std::process::Command::new("kill")
                .args(["-KILL", &std::process::id().to_string()])
                .status()?;
            std::thread::sleep(Duration::from_secs(60));
            Err("still alive after SIGKILL".into())
        }
        // Attaches to the handle and prints the results it reads.
        "attach" => {
            let handle = setup.handle.as_deref().ok_or("no handle")?;
            let handle = quelea::JobHandle::from_json(handle)?;
            let futures: quelea::FuturesList<u64> =
                quelea::attach_with(setup.builder.clone(), &handle)?;
            let mut done = 0;
            let deadline = Instant::now() + Duration::from_secs(120);
            while done < futures.len() && Instant::now() < deadline {
                quelea::wait_until(&futures, quelea::ReturnWhen::AnyCompleted, WAIT)?;
                done = futures.done_count();
                // Progress as it rises, for the trial to see.
                println!("progress {done}");
                std::thread::sleep(Duration::from_millis(20));
            }
            let results = quelea::get_result(&futures, WAIT)?;
            println!("results {}", serde_json::to_string(&results)?);
            Ok(())
        }
        other => Err(format!("unknown second client part `{other}`").into()),
    }
}

/// Starts this test binary again as a second client playing `part`.
fn start_second_client(part: &str, setup: &Setup) -> Result<std::process::Child, Failed> {
    Ok(std::process::Command::new(std::env::current_exe()?)
        .env(SECOND_CLIENT_ENV, part)
        .env(SETUP_ENV, serde_json::to_string(setup)?)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?)
}

fn child_output(child: std::process::Child, what: &str) -> Result<String, Failed> {
    let output = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() && what != "abandon" {
        return Err(format!(
            "the second client ({what}) failed: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(stdout)
}

fn attach_from_a_second_process(backend: &Backend) -> Result<(), Failed> {
    let b = quelea_cli::builtins();
    let exec = backend.executor_with((backend.config)().set("execution.data_cleaner", false))?;
    let futures = exec.map(&b.sleep_ms, vec![150u64; 24], MapOptions::default())?;
    let handle = exec.job_handle(&futures.get(0).unwrap()).to_json();
    let child = start_second_client("attach", &Setup::new(backend, Some(handle)))?;
    let ours = exec.get_result(&futures, WAIT)?;
    exec.flush_statuses()?;
    let out = child_output(child, "attach")?;
    let progress: Vec<usize> = out
        .lines()
        .filter_map(|l| l.strip_prefix("progress ")?.parse().ok())
        .collect();
    let theirs: Vec<u64> = out
        .lines()
        .find_map(|l| l.strip_prefix("results "))
        .map(serde_json::from_str)
        .transpose()?
        .unwrap_or_default();
    check(
        ours == vec![150u64; 24],
        format!("the submitter's results: {ours:?}"),
    )?;
    check(
        theirs == ours,
        format!("the attached process read {theirs:?}"),
    )?;
    check(
        progress.windows(2).all(|w| w[0] <= w[1]) && progress.last() == Some(&24),
        format!("progress counted in elements, rising to 24: {progress:?}"),
    )
}

fn a_detached_job_outlives_its_client(backend: &Backend) -> Result<(), Failed> {
    let setup = Setup::new(backend, None);
    let mut child = start_second_client("abandon", &setup)?;
    let status = wait_child(&mut child, Duration::from_secs(60), "the abandoning client")?;
    let out = child_output(child, "abandon")?;
    check(
        !status.success(),
        format!("the client was killed: {status:?}"),
    )?;
    let handle = out.lines().next().ok_or("the client printed no handle")?;
    let handle = quelea::JobHandle::from_json(handle)?;
    let futures: quelea::FuturesList<u64> = quelea::attach_with((backend.config)(), &handle)?;
    let results = quelea::get_result(&futures, WAIT)?;
    check(
        results == vec![200u64; DETACHED_CALLS as usize],
        format!("every call ran after its client died: {results:?}"),
    )?;
    let deleted = quelea::clean_job_with((backend.config)(), &handle)?;
    check(deleted > 0, "the reader cleans the job's objects")
}
