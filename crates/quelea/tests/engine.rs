//! Engine integration tests on real runner processes.
//!
//! This binary is its own runner (the same-binary model): started by the pool
//! with `QUELEA_RUNNER=rust` it serves the functions below; started with
//! `QTEST_DRIVER=<mode>` it plays a second client process; otherwise it runs
//! the tests.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::io::Read;

use libtest_mimic::{Arguments, Failed, Trial};

#[path = "common/procs.rs"]
mod procs;
use procs::alive;
use quelea::objects::{ChunkObject, ObjOptions};
use quelea::{
    CallState, Config, ConfigBuilder, Error, Executor, FailureReason, Functions, JobHandle,
    JobKind, MapOptions, RawFunction, ReturnWhen, RunnerKind,
};

#[derive(Debug)]
struct Refused(String);
impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

struct Fns {
    functions: Functions,
    square: quelea::FunctionRef<i64, i64>,
    sum: quelea::FunctionRef<Vec<i64>, i64>,
    picky: quelea::FunctionRef<i64, i64>,
    boom: quelea::FunctionRef<i64, i64>,
    sleep_ms: quelea::FunctionRef<u64, u64>,
    alloc_mb: quelea::FunctionRef<usize, usize>,
    exit_with: quelea::FunctionRef<i32, i32>,
    segfault: quelea::FunctionRef<i32, i32>,
    add_extra: quelea::FunctionRef<(i64, i64), i64>,
    echo_len: quelea::FunctionRef<String, usize>,
    plus_100: quelea::FunctionRef<i64, u64>,
    chunk_text: quelea::FunctionRef<ChunkObject, (String, u32, String)>,
    line_count: quelea::FunctionRef<ChunkObject, usize>,
    total: quelea::FunctionRef<Vec<usize>, usize>,
    touch_len: quelea::FunctionRef<Gate, usize>,
}

fn functions() -> Fns {
    let mut functions = Functions::new();
    let square = functions.register("square", |x: i64| x * x);
    let sum = functions.register("sum", |xs: Vec<i64>| xs.iter().sum::<i64>());
    let picky = functions.register_fallible("picky", |x: i64| {
        if x == 3 {
            Err(Refused("three is not welcome".into()))
        } else {
            Ok(x)
        }
    });
    let boom = functions.register("boom", |x: i64| -> i64 {
        if x == 1 {
            panic!("kaboom at {x}");
        }
        x
    });
    let sleep_ms = functions.register("sleep_ms", |ms: u64| {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    });
    let alloc_mb = functions.register("alloc_mb", |mb: usize| {
        // Touch every page, slowly enough for the watchdog to see it grow.
        let mut blocks = Vec::new();
        for _ in 0..mb {
            blocks.push(vec![1u8; 1 << 20]);
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(200));
        blocks.iter().map(Vec::len).sum::<usize>() >> 20
    });
    let exit_with = functions.register("exit_with", |code: i32| {
        if code != 0 {
            std::process::exit(code);
        }
        code
    });
    let segfault = functions.register("segfault", |x: i32| {
        if x == 1 {
            // SAFETY: deliberately crashing the runner is the point of this test.
            unsafe {
                std::ptr::null_mut::<i32>().write_volatile(1);
            }
        }
        x
    });
    let add_extra = functions.register("add_extra", |(x, extra): (i64, i64)| x + extra);
    let echo_len = functions.register("echo_len", |s: String| s.len());
    let plus_100 = functions.register("plus_100", |x: i64| {
        std::thread::sleep(Duration::from_millis(50));
        (100 + x) as u64
    });
    let chunk_text = functions.register_fallible("chunk_text", |obj: ChunkObject| {
        let mut text = String::new();
        obj.data_stream()
            .map_err(|e| e.to_string())?
            .read_to_string(&mut text)
            .map_err(|e| e.to_string())?;
        let header = obj
            .header_line()
            .map_err(|e| e.to_string())?
            .map(|h| String::from_utf8_lossy(&h).into_owned());
        Ok::<_, String>((
            obj.key(),
            obj.part,
            text + &header.map(|h| format!("|{h}")).unwrap_or_default(),
        ))
    });
    let line_count = functions.register_fallible("line_count", |obj: ChunkObject| {
        let reader = obj.data_stream().map_err(|e| e.to_string())?;
        Ok::<_, String>(std::io::BufRead::lines(reader).count())
    });
    let total = functions.register("total", |xs: Vec<usize>| xs.iter().sum::<usize>());
    let touch_len = functions.register("touch_len", |gate: Gate| {
        std::fs::write(&gate.path, "ran").expect("the marker is written");
        gate.pad
    });
    Fns {
        functions,
        chunk_text,
        line_count,
        total,
        square,
        sum,
        picky,
        boom,
        sleep_ms,
        alloc_mb,
        exit_with,
        segfault,
        add_extra,
        echo_len,
        plus_100,
        touch_len,
    }
}

/// Local-directory job storage; with `QTEST_STORAGE=s3`, the S3 server of
/// scripts/s3-server.sh (its `QUELEA_S3_*` variables come from the env), and
/// so on for any storage kind.
fn config(dir: &std::path::Path) -> Config {
    let builder = if let Ok(kind) = std::env::var("QTEST_STORAGE") {
        ConfigBuilder::new()
            .no_file()
            .set("storage", kind)
            .set("bucket", "quelea-test")
    } else {
        ConfigBuilder::new().no_file().env(Vec::new())
    };
    builder
        .set("localdisk.root", dir.to_str().unwrap())
        .set("local.workers", 2)
        .build()
        .unwrap()
}

fn executor(dir: &std::path::Path) -> Executor {
    Executor::with_config(config(dir)).unwrap()
}

fn check(cond: bool, message: impl Into<String>) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(message.into().into())
    }
}

fn map_10k_ordered() -> Result<(), Failed> {
    let fns = functions();
    let dir = tempfile::tempdir()?;
    let exec = executor(dir.path());
    let futures = exec.map(&fns.square, 0..10_000i64, MapOptions::default())?;
    let results = exec.get_result(&futures, Some(Duration::from_secs(120)))?;
    let expected: Vec<i64> = (0..10_000i64).map(|x| x * x).collect();
    check(results == expected, "results out of order or wrong")?;
    check(
        futures.iter().all(|f| f.state() == CallState::Success),
        "every call is a success",
    )?;
    let stats = futures.get(9_999).unwrap().stats();
    check(
        stats.start_ts.is_some() && stats.end_ts.is_some() && stats.worker_id.is_some(),
        format!("stats recorded: {stats:?}"),
    )?;
    check(stats.peak_memory_bytes > 0, "peak memory recorded")?;
    check(
        futures.iter().filter(|f| f.stats().cold_start).count() <= 2,
        "only a runner's first call is cold",
    )?;
    Ok(())
}

fn statuses_land_in_storage() -> Result<(), Failed> {
    let fns = functions();
    let dir = tempfile::tempdir()?;
    let exec = Executor::with_config(
        ConfigBuilder::new()
            .no_file()
            .env(Vec::new())
            .set("localdisk.root", dir.path().to_str().unwrap())
            .set("execution.data_cleaner", false)
            .set("execution.inline_result_bytes", 4)
            .build()?,
    )?;
    // A job nobody else can read keeps its large results in memory (the
    // status says so); handing it out stores them for other readers.
    let quiet = exec.map(&fns.square, 0..500i64, MapOptions::default())?;
    exec.get_result(&quiet, Some(Duration::from_secs(60)))?;
    exec.flush_statuses()?;
    let quiet_statuses = exec
        .storage()
        .list_blocking(&format!("quelea/jobs/{}/M000/status/", exec.id()))?;
    let mut held = 0;
    for object in quiet_statuses {
        let body = exec.storage().get_blocking(&object.key)?;
        if let quelea::core::protocol::Message::StatusBatch(batch) =
            quelea::core::protocol::Message::decode(&body)?
        {
            held += batch
                .statuses
                .iter()
                .filter(|s| matches!(s.result, Some(quelea::core::model::ResultRef::Held { .. })))
                .count();
        }
    }
    let output_200 = quelea::core::keys::JobKeys::new(exec.id(), quiet.get(0).unwrap().job_id())
        .output(quelea::CallId(200));
    check(
        held > 0 && exec.storage().head_blocking(&output_200).is_err(),
        format!("large results of a job not handed out stay in memory ({held} held)"),
    )?;
    let handle = exec.job_handle(&quiet.get(0).unwrap());
    check(
        &exec.storage().get_blocking(&output_200)?[..] == b"40000",
        "handing the job out stores its held results",
    )?;
    let attached: quelea::FuturesList<i64> = quelea::attach(&handle)?;
    let read = quelea::get_result(&attached, Some(Duration::from_secs(60)))?;
    check(
        read == (0..500i64).map(|x| x * x).collect::<Vec<_>>(),
        "another reader reads them",
    )?;

    // A job handed out as it starts stores them as they come.
    let futures = exec.map(&fns.square, 0..500i64, MapOptions::default())?;
    exec.job_handle(&futures.get(0).unwrap());
    exec.get_result(&futures, Some(Duration::from_secs(60)))?;
    exec.flush_statuses()?;
    let prefix = format!("quelea/jobs/{}/M001/status/", exec.id());
    let mut terminal = std::collections::HashMap::new();
    for object in exec.storage().list_blocking(&prefix)? {
        let body = exec.storage().get_blocking(&object.key)?;
        let quelea::core::protocol::Message::StatusBatch(batch) =
            quelea::core::protocol::Message::decode(&body)?
        else {
            return Err("a status object holds a status batch".into());
        };
        for status in batch.statuses {
            if status.state.is_terminal() {
                terminal.insert(status.call_id, status);
            }
        }
    }
    check(
        terminal.len() == 500,
        format!("one final status per call, got {}", terminal.len()),
    )?;
    // 99*99 = 9801 serializes to 4 bytes: inline; 100*100 to 5: an output object.
    // A result that ended just before the handle was given is stored by
    // the handle's own pass, its status saying `Held`: the same object.
    let big = &terminal[&quelea::CallId(200)];
    let key = match &big.result {
        Some(quelea::core::model::ResultRef::Object { key, .. }) => key.clone(),
        Some(quelea::core::model::ResultRef::Held { .. }) => {
            quelea::core::keys::JobKeys::new(exec.id(), futures.get(0).unwrap().job_id())
                .output(quelea::CallId(200))
        }
        other => return Err(format!("a large result goes to its own object: {other:?}").into()),
    };
    check(
        &exec.storage().get_blocking(&key)?[..] == b"40000",
        "output object holds the result",
    )?;
    check(
        matches!(
            terminal[&quelea::CallId(2)].result,
            Some(quelea::core::model::ResultRef::Inline(_))
        ),
        "a small result is inline",
    )?;
    Ok(())
}

fn map_reduce_in_call_order() -> Result<(), Failed> {
    let fns = functions();
    let dir = tempfile::tempdir()?;
    let exec = executor(dir.path());
    let future = exec.map_reduce(&fns.square, 1..=100i64, &fns.sum, MapOptions::default())?;
    check(
        future.job_id().to_string() == "R000",
        format!("reduce job id: {}", future.job_id()),
    )?;
    let total = future.result(Some(Duration::from_secs(60)))?;
    check(
        total == (1..=100i64).map(|x| x * x).sum::<i64>(),
        format!("sum of squares: {total}"),
    )?;

    // A failed map call fails the reduce with the map call's error.
    let future = exec.map_reduce(&fns.picky, 0..5i64, &fns.sum, MapOptions::default())?;
    let err = future
        .result(Some(Duration::from_secs(60)))
        .unwrap_err()
        .to_string();
    check(
        err.contains("three is not welcome") && err.contains("map call 00003"),
        err,
    )?;
    Ok(())
}

fn user_errors_carry_message_and_backtrace() -> Result<(), Failed> {
    let fns = functions();
    let dir = tempfile::tempdir()?;
    let exec = executor(dir.path());
    let futures = exec.map(&fns.picky, 0..6i64, MapOptions::default())?;
    let err = exec
        .get_result(&futures, Some(Duration::from_secs(60)))
        .unwrap_err();
    let Error::CallFailed { call_id, error, .. } = &err else {
        return Err(format!("expected a call failure, got {err}").into());
    };
    check(
        call_id.0 == 3 && error.reason == FailureReason::UserError,
        format!("{err}"),
    )?;
    check(
        error.error_type == "Refused" && error.message == "three is not welcome",
        format!("{error:?}"),
    )?;
    check(
        futures.iter().filter(|f| f.success()).count() == 5,
        "the other calls succeed",
    )?;

    let futures = exec.map(&fns.boom, 0..3i64, MapOptions::default())?;
    exec.wait(
        &futures,
        ReturnWhen::AllCompleted,
        Some(Duration::from_secs(60)),
    )?;
    let error = futures
        .get(1)
        .unwrap()
        .call_error()
        .ok_or("call 1 panicked")?;
    check(
        error.message == "kaboom at 1" && error.error_type == "panic",
        format!("{error:?}"),
    )?;
    check(
        error.traceback.contains("kaboom at 1") && error.traceback.contains("engine"),
        format!("backtrace: {}", error.traceback),
    )?;
    check(
        futures.get(2).unwrap().success(),
        "the runner survives a panic",
    )?;
    Ok(())
}

fn timeout_kills_only_that_call() -> Result<(), Failed> {
    let fns = functions();
    let dir = tempfile::tempdir()?;
    let exec = executor(dir.path());
    let started = Instant::now();
    let futures = exec.map(
        &fns.sleep_ms,
        [10, 30_000, 10, 10, 20],
        MapOptions::default().timeout(Duration::from_millis(700)),
    )?;
    exec.wait(
        &futures,
        ReturnWhen::AllCompleted,
        Some(Duration::from_secs(30)),
    )?;
    check(
        started.elapsed() < Duration::from_secs(10),
        "no waiting for the sleeper",
    )?;
    let error = futures
        .get(1)
        .unwrap()
        .call_error()
        .ok_or("call 1 timed out")?;
    check(error.reason == FailureReason::Timeout, format!("{error:?}"))?;
    check(
        error.message.contains("timeout of 0.700 s"),
        error.message.clone(),
    )?;
    for i in [0, 2, 3, 4] {
        check(
            futures.get(i).unwrap().success(),
            format!("call {i} succeeds"),
        )?;
    }
    Ok(())
}

fn memory_limit_is_enforced() -> Result<(), Failed> {
    let fns = functions();
    let dir = tempfile::tempdir()?;
    let exec = executor(dir.path());
    let futures = exec.map(
        &fns.alloc_mb,
        [400, 1],
        MapOptions::default().memory_limit_mb(128),
    )?;
    exec.wait(
        &futures,
        ReturnWhen::AllCompleted,
        Some(Duration::from_secs(60)),
    )?;
    let error = futures
        .get(0)
        .unwrap()
        .call_error()
        .ok_or("call 0 went over its limit")?;
    check(
        error.reason == FailureReason::OutOfMemory,
        format!("{error:?}"),
    )?;
    check(
        error.message.contains("memory limit of 128 MiB"),
        error.message.clone(),
    )?;
    check(futures.get(1).unwrap().success(), "the small call succeeds")?;
    Ok(())
}

fn sigkill_fails_only_the_running_call() -> Result<(), Failed> {
    let fns = functions();
    let dir = tempfile::tempdir()?;
    let exec = executor(dir.path());
    exec.warm_up()?;
    let futures = exec.map(&fns.sleep_ms, vec![400u64; 8], MapOptions::default())?;
    // Wait until both runners are busy, then kill one.
    let deadline = Instant::now() + Duration::from_secs(20);
    while futures
        .iter()
        .filter(|f| f.state() == CallState::Running)
        .count()
        < 2
    {
        check(Instant::now() < deadline, "two calls start running")?;
        std::thread::sleep(Duration::from_millis(5));
    }
    let victim = exec.runner_pids()[0];
    let status = Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()?;
    check(status.success(), "kill -KILL works")?;
    exec.wait(
        &futures,
        ReturnWhen::AllCompleted,
        Some(Duration::from_secs(30)),
    )?;
    let failed: Vec<_> = futures.iter().filter_map(|f| f.call_error()).collect();
    check(
        failed.len() == 1,
        format!("exactly one call fails: {failed:?}"),
    )?;
    check(
        failed[0].reason == FailureReason::WorkerCrashed,
        format!("{:?}", failed[0]),
    )?;
    check(
        failed[0].message.contains("SIGKILL"),
        failed[0].message.clone(),
    )?;
    check(
        futures.iter().filter(|f| f.success()).count() == 7,
        "the rest complete",
    )?;
    check(
        !exec.runner_pids().contains(&victim),
        "the dead runner was replaced",
    )?;
    Ok(())
}

fn crashes_report_exit_code_and_signal() -> Result<(), Failed> {
    let fns = functions();
    let dir = tempfile::tempdir()?;
    let exec = executor(dir.path());
    let futures = exec.map(&fns.exit_with, [0, 7, 0, 0], MapOptions::default())?;
    exec.wait(
        &futures,
        ReturnWhen::AllCompleted,
        Some(Duration::from_secs(30)),
    )?;
    let error = futures
        .get(1)
        .unwrap()
        .call_error()
        .ok_or_else(|| format!("call 1 crashed: {futures:?} {:?}", futures.get(1)))?;
    check(
        error.reason == FailureReason::WorkerCrashed
            && error.message.contains("exited with code 7"),
        format!("{error:?}"),
    )?;
    check(
        futures.iter().filter(|f| f.success()).count() == 3,
        "the rest complete",
    )?;

    let futures = exec.map(&fns.segfault, [0, 1, 0], MapOptions::default())?;
    exec.wait(
        &futures,
        ReturnWhen::AllCompleted,
        Some(Duration::from_secs(30)),
    )?;
    let error = futures
        .get(1)
        .unwrap()
        .call_error()
        .ok_or("call 1 crashed")?;
    check(error.message.contains("SIGSEGV"), format!("{error:?}"))?;
    check(
        futures.iter().filter(|f| f.success()).count() == 2,
        "the rest complete",
    )?;
    Ok(())
}

/// A job whose inputs come in parts (`Executor::submit_fed`) runs its first
/// calls before the rest are given, retries a call of a later part, and is
/// cancelled, with no call left waiting, when its feed gets too many or too
/// few inputs or is dropped unfinished.
fn inputs_given_in_parts() -> Result<(), Failed> {
    let _fns = functions();
    let dir = tempfile::tempdir()?;
    let exec = executor(dir.path());
    let json = |v: i64| bytes::Bytes::from(serde_json::to_vec(&v).unwrap());
    let wait = |futures: &quelea::FuturesList<quelea::Raw>| {
        quelea::wait(
            futures,
            ReturnWhen::AllCompleted,
            Some(Duration::from_secs(60)),
        )
    };
    let rust = |name: &str| RawFunction::new(RunnerKind::Rust, name, name.as_bytes().to_vec());
    let once = MapOptions {
        chunksize: Some(1),
        ..MapOptions::default()
    };

    // The first part runs while the second is still to come.
    let (futures, mut feed) = exec.submit_fed(JobKind::Map, &rust("square"), 5, 1, &once)?;
    feed.send(vec![json(2)])?;
    let first = futures.get(0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !first.done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    check(
        first.success(),
        format!("call 0 ran alone: {:?}", first.state()),
    )?;
    check(
        futures.get(1).unwrap().state() == CallState::New,
        "calls not given yet are new",
    )?;
    feed.send(vec![json(3), json(4)])?;
    feed.send(vec![json(5), json(6)])?;
    feed.finish()?;
    wait(&futures)?;
    let outputs: Vec<i64> = futures
        .iter()
        .map(|f| serde_json::from_slice(f.output().unwrap().bytes()).unwrap())
        .collect();
    check(outputs == vec![4, 9, 16, 25, 36], format!("{outputs:?}"))?;

    // A crash in a later part is retried from that part's input.
    let retried = MapOptions {
        retries: Some(1),
        ..once.clone()
    };
    let (futures, mut feed) = exec.submit_fed(JobKind::Map, &rust("exit_with"), 3, 1, &retried)?;
    feed.send(vec![json(0)])?;
    feed.send(vec![json(0), json(9)])?;
    feed.finish()?;
    wait(&futures)?;
    let crashed = futures.get(2).unwrap();
    check(
        crashed.stats().attempt == 1
            && crashed
                .call_error()
                .is_some_and(|e| e.reason == FailureReason::WorkerCrashed),
        format!(
            "call 2 ran twice and crashed: {:?} {:?}",
            crashed.stats(),
            crashed.call_error()
        ),
    )?;
    check(futures.get(1).unwrap().success(), "call 1 succeeded")?;

    // Too many, too few, dropped: the job ends cancelled, nothing waits.
    let cancelled = |futures: &quelea::FuturesList<quelea::Raw>, why: &str| {
        futures.iter().all(|f| {
            f.call_error()
                .is_some_and(|e| e.reason == FailureReason::Cancelled && e.message.contains(why))
        })
    };
    let (futures, mut feed) = exec.submit_fed(JobKind::Map, &rust("sleep_ms"), 2, 1, &once)?;
    let error = feed
        .send(vec![json(10_000), json(10_000), json(1)])
        .expect_err("three inputs for two calls");
    check(
        error.to_string().contains("2 runner calls, but 3 inputs"),
        error.to_string(),
    )?;
    wait(&futures)?;
    check(
        cancelled(&futures, "3 inputs"),
        format!("{:?}", futures.states()),
    )?;

    let (futures, mut feed) = exec.submit_fed(JobKind::Map, &rust("sleep_ms"), 3, 1, &once)?;
    feed.send(vec![json(10_000)])?;
    let error = feed.finish().expect_err("one input of three");
    check(
        error.to_string().contains("only 1 inputs were given"),
        error.to_string(),
    )?;
    let started = Instant::now();
    wait(&futures)?;
    check(
        cancelled(&futures, "only 1 inputs") && started.elapsed() < Duration::from_secs(9),
        format!("the sent call is stopped too: {:?}", futures.states()),
    )?;

    let (futures, mut feed) = exec.submit_fed(JobKind::Map, &rust("square"), 2, 1, &once)?;
    feed.send(vec![json(1)])?;
    drop(feed);
    wait(&futures)?;
    check(
        futures.get(1).unwrap().call_error().is_some_and(|e| {
            e.reason == FailureReason::Cancelled && e.message.contains("stopped before all")
        }),
        format!("{:?}", futures.get(1).unwrap().call_error()),
    )?;
    check(
        exec.submit_fed(JobKind::Reduce, &rust("square"), 1, 1, &once)
            .is_err(),
        "reduce jobs are not fed",
    )?;
    // The pool serves on.
    check(
        exec.get_result(
            &exec.map(&_fns.square, [3i64], MapOptions::default())?,
            None,
        )? == vec![9],
        "serves on",
    )?;
    Ok(())
}

/// A map argument that serializes (as `(path, pad)`) only once `path`
/// exists, if `wait`: the map's first call must have run by then.
struct Gate {
    path: String,
    pad: usize,
    wait: bool,
}

impl serde::Serialize for Gate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.wait && !std::path::Path::new(&self.path).exists() {
            if Instant::now() > deadline {
                return Err(serde::ser::Error::custom(
                    "the map's first call never ran while the rest was serialized",
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        serde::Serialize::serialize(&(&self.path, "x".repeat(self.pad)), s)
    }
}

impl<'de> serde::Deserialize<'de> for Gate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (path, pad): (String, String) = serde::Deserialize::deserialize(d)?;
        Ok(Gate {
            path,
            pad: pad.len(),
            wait: false,
        })
    }
}

fn map_runs_its_first_calls_while_serializing() -> Result<(), Failed> {
    let fns = functions();
    let dir = tempfile::tempdir()?;
    let exec = executor(dir.path());
    let path = dir
        .path()
        .join("first-call-ran")
        .to_str()
        .unwrap()
        .to_owned();
    let gates = [(2 << 20, false), (3, true)].map(|(pad, wait)| Gate {
        path: path.clone(),
        pad,
        wait,
    });
    let futures = exec.map(&fns.touch_len, gates, MapOptions::default())?;
    let lens = exec.get_result(&futures, Some(Duration::from_secs(60)))?;
    check(lens == vec![2 << 20, 3], format!("{lens:?}"))?;
    Ok(())
}

fn extra_args_chunksize_and_large_inputs() -> Result<(), Failed> {
    let fns = functions();
    let dir = tempfile::tempdir()?;
    let exec = executor(dir.path());
    let futures = exec.map_with_extra(
        &fns.add_extra,
        0..50i64,
        1000i64,
        MapOptions::default().chunksize(7),
    )?;
    let results = exec.get_result(&futures, Some(Duration::from_secs(60)))?;
    check(
        results == (1000..1050).collect::<Vec<i64>>(),
        format!("{results:?}"),
    )?;

    // Inputs over the inline limit travel through one data object.
    let inputs: Vec<String> = (0..20).map(|i| "x".repeat(10_000 + i)).collect();
    let futures = exec.map(&fns.echo_len, inputs, MapOptions::default())?;
    let results = exec.get_result(&futures, Some(Duration::from_secs(60)))?;
    check(
        results == (10_000..10_020).collect::<Vec<usize>>(),
        format!("{results:?}"),
    )?;
    Ok(())
}

fn wait_modes_and_timeouts() -> Result<(), Failed> {
    let fns = functions();
    let dir = tempfile::tempdir()?;
    let exec = executor(dir.path());
    let futures = exec.map(&fns.sleep_ms, [1, 1500, 1500, 1500], MapOptions::default())?;
    let (done, not_done) = exec.wait(
        &futures,
        ReturnWhen::AnyCompleted,
        Some(Duration::from_secs(30)),
    )?;
    check(
        !done.is_empty() && !not_done.is_empty(),
        format!("any: {} done", done.len()),
    )?;
    let (done, not_done) = exec.wait(&futures, ReturnWhen::Always, None)?;
    check(done.len() + not_done.len() == 4, "always partitions")?;
    let err = exec
        .wait(
            &futures,
            ReturnWhen::AllCompleted,
            Some(Duration::from_millis(50)),
        )
        .unwrap_err();
    check(matches!(err, Error::Timeout { .. }), format!("{err}"))?;
    let (done, _) = exec.wait(
        &futures,
        ReturnWhen::Percentage(50.0),
        Some(Duration::from_secs(30)),
    )?;
    check(done.len() >= 2, "half")?;
    let err = exec
        .wait(&futures, ReturnWhen::Percentage(150.0), None)
        .unwrap_err();
    check(
        err.to_string().contains("between 0 and 100"),
        err.to_string(),
    )?;
    check(
        exec.get_result(&futures, Some(Duration::from_secs(30)))? == vec![1, 1500, 1500, 1500],
        "results",
    )?;

    let err = exec
        .map(&fns.square, Vec::<i64>::new(), MapOptions::default())
        .unwrap_err();
    check(
        err.to_string().contains("input list is empty"),
        err.to_string(),
    )?;
    let err = exec
        .map(&fns.square, [1], MapOptions::default().chunksize(0))
        .unwrap_err();
    check(err.to_string().contains("chunksize"), err.to_string())?;
    Ok(())
}

/// Pipelining depth is learned per function: after thousands of quick calls
/// of one function, a job of slow calls still spreads over every runner
/// instead of queueing behind one.
fn slow_calls_after_quick_ones_use_every_runner() -> Result<(), Failed> {
    let fns = functions();
    let dir = tempfile::tempdir()?;
    let exec = executor(dir.path());
    exec.warm_up()?;
    exec.get_result(
        &exec.map(&fns.square, 0..5_000i64, MapOptions::default())?,
        None,
    )?;
    let futures = exec.map(&fns.sleep_ms, vec![300u64; 4], MapOptions::default())?;
    exec.get_result(&futures, Some(Duration::from_secs(60)))?;
    let mut workers: Vec<u32> = futures.iter().filter_map(|f| f.stats().worker_id).collect();
    workers.sort();
    check(
        workers == [0, 0, 1, 1],
        format!("runners per call: {workers:?}"),
    )
}

fn warm_pool_is_reused_and_cancel_works() -> Result<(), Failed> {
    let fns = functions();
    let dir = tempfile::tempdir()?;
    let exec = executor(dir.path());
    // Both runners up first: ten quick calls can finish on one of them
    // before the other has started.
    exec.warm_up()?;
    exec.get_result(
        &exec.map(&fns.square, 0..10i64, MapOptions::default())?,
        None,
    )?;
    let before = {
        let mut pids = exec.runner_pids();
        pids.sort();
        pids
    };
    exec.get_result(
        &exec.map(&fns.square, 0..10i64, MapOptions::default())?,
        None,
    )?;
    let mut after = exec.runner_pids();
    after.sort();
    check(
        before == after && before.len() == 2,
        format!("same runners: {before:?} {after:?}"),
    )?;

    let futures = exec.map(&fns.sleep_ms, vec![5_000u64; 6], MapOptions::default())?;
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    exec.cancel(&futures)?;
    exec.wait(
        &futures,
        ReturnWhen::AllCompleted,
        Some(Duration::from_secs(10)),
    )?;
    check(
        started.elapsed() < Duration::from_secs(3),
        "cancel is prompt",
    )?;
    check(
        futures.iter().all(|f| {
            f.call_error()
                .is_some_and(|e| e.reason == FailureReason::Cancelled)
        }),
        "all cancelled",
    )?;
    // The pool keeps serving after a cancel.
    check(
        exec.get_result(&exec.map(&fns.square, [3i64], MapOptions::default())?, None)? == vec![9],
        "serves on",
    )?;
    Ok(())
}

fn objects_are_chunked_by_lines_and_reduced_by_key() -> Result<(), Failed> {
    let fns = functions();
    let dir = tempfile::tempdir()?;
    let data = tempfile::tempdir()?;
    std::fs::write(data.path().join("a.txt"), "alpha\nbeta\ngamma\n")?;
    std::fs::write(data.path().join("b.txt"), "one\ntwo")?;
    let exec = executor(dir.path());
    let input = data.path().to_str().unwrap().to_owned();
    let options = ObjOptions {
        chunking: quelea::objects::Chunking::Size(4),
        ..ObjOptions::default()
    };
    let chunks = exec.get_result(
        &exec.map_objects(
            &fns.chunk_text,
            [input.clone()],
            &options,
            MapOptions::default(),
        )?,
        None,
    )?;
    let mut rebuilt = std::collections::BTreeMap::<String, String>::new();
    for (key, _, text) in &chunks {
        rebuilt.entry(key.clone()).or_default().push_str(text);
    }
    check(
        rebuilt["a.txt"] == "alpha\nbeta\ngamma\n" && rebuilt["b.txt"] == "one\ntwo",
        format!("{rebuilt:?}"),
    )?;
    let per_file = exec.get_result(
        &exec.map_reduce_objects(
            &fns.line_count,
            [input.clone()],
            &fns.total,
            &options,
            true,
            MapOptions::default(),
        )?,
        None,
    )?;
    check(per_file == vec![3, 2], format!("per object: {per_file:?}"))?;
    let all = exec.get_result(
        &exec.map_reduce_objects(
            &fns.line_count,
            [input.clone()],
            &fns.total,
            &options,
            false,
            MapOptions::default(),
        )?,
        None,
    )?;
    check(all == vec![5], format!("all: {all:?}"))?;

    // The header option hands every chunk the first line and keeps it out of the data.
    let header = ObjOptions {
        header: true,
        ..options.clone()
    };
    let a = format!("{input}/a.txt");
    let chunks = exec.get_result(
        &exec.map_objects(&fns.chunk_text, [a], &header, MapOptions::default())?,
        None,
    )?;
    let (data, headers): (Vec<&str>, Vec<&str>) =
        chunks.iter().filter_map(|c| c.2.split_once('|')).unzip();
    check(data.concat() == "beta\ngamma\n", format!("{chunks:?}"))?;
    check(
        headers.len() == chunks.len() && headers.iter().all(|h| *h == "alpha\n"),
        format!("{chunks:?}"),
    )?;

    let err = exec
        .map_objects(
            &fns.chunk_text,
            [format!("{input}/missing.txt")],
            &options,
            MapOptions::default(),
        )
        .unwrap_err()
        .to_string();
    check(err.contains("missing.txt"), err)?;
    Ok(())
}

fn attach_from_a_second_process() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let mut driver = Command::new(std::env::current_exe()?)
        .env("QTEST_DRIVER", "attach")
        .env("QUELEA_STORAGE_DIR", dir.path())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
    let handle_line = lines.next().ok_or("the driver prints a handle")??;
    let handle = JobHandle::from_json(&handle_line)?;
    check(
        handle.total_calls == 20 && !handle_line.contains("secret"),
        handle_line.clone(),
    )?;
    let futures =
        quelea::attach_with::<u64>(ConfigBuilder::new().no_file().env(Vec::new()), &handle)?;
    let results: Vec<u64> = futures
        .iter()
        .map(|f| f.result(Some(Duration::from_secs(60))))
        .collect::<Result<_, _>>()?;
    check(
        results == (0..20u64).map(|i| 100 + i).collect::<Vec<_>>(),
        format!("{results:?}"),
    )?;
    let status = driver.wait()?;
    check(status.success(), format!("driver exit: {status}"))?;

    let err = JobHandle::from_json("{\"version\": 9}")
        .unwrap_err()
        .to_string();
    check(err.contains("invalid job handle"), err)?;
    Ok(())
}

/// The children of `pid` (over all its threads), from /proc.
fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

fn wait_gone(pids: &[i32], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !pids.iter().any(|&p| alive(p)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Starts a driver that submits a detached map of 40 sleeps of `ms` and
/// kills itself; returns the handle and the host's pid.
fn detached_driver(dir: &std::path::Path, ms: u64) -> Result<(JobHandle, i32), Failed> {
    let mut driver = Command::new(std::env::current_exe()?)
        .env("QTEST_DRIVER", "detach")
        .env("QTEST_SLEEP_MS", ms.to_string())
        .env("QUELEA_STORAGE_DIR", dir)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
    let handle = JobHandle::from_json(&lines.next().ok_or("the driver prints a handle")??)?;
    let host: i32 = lines
        .next()
        .ok_or("the driver prints the host pid")??
        .parse()?;
    let status = driver.wait()?;
    check(
        !status.success(),
        format!("the driver was killed: {status}"),
    )?;
    Ok((handle, host))
}

fn detached_jobs_outlive_their_client() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let (handle, host) = detached_driver(dir.path(), 30)?;
    check(handle.total_calls == 40, "the handle counts elements")?;
    // The client is gone; the job goes on and another process reads it.
    let base = || ConfigBuilder::new().no_file().env(Vec::new());
    let futures = quelea::attach_with::<u64>(base(), &handle)?;
    let results = quelea::get_result(&futures, Some(Duration::from_secs(120)))?;
    check(results == vec![30; 40], format!("{results:?}"))?;
    check(
        wait_gone(&[host], Duration::from_secs(20)),
        "the host exits once its job is done",
    )?;

    // Cancelled from a third process by the marker: the calls end, and the
    // host and its runners are gone.
    let (handle, host) = detached_driver(dir.path(), 60_000)?;
    let futures = quelea::attach_with::<u64>(base(), &handle)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !futures.iter().any(|f| f.state() == CallState::Running) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let runners = children(host);
    check(!runners.is_empty(), "the host runs runners")?;
    quelea::cancel(&futures);
    let again = quelea::attach_with::<u64>(base(), &handle)?;
    quelea::wait(
        &again,
        quelea::ReturnWhen::AllCompleted,
        Some(Duration::from_secs(60)),
    )?;
    check(
        again.iter().all(|f| {
            f.call_error()
                .is_some_and(|e| e.reason == FailureReason::Cancelled)
        }),
        "a follower sees every call cancelled",
    )?;
    let mut all = runners.clone();
    all.push(host);
    check(
        wait_gone(&all, Duration::from_secs(20)),
        format!("host {host} and runners {runners:?} are gone"),
    )
}

fn ctrl_c_cancels_and_leaves_no_orphans() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let mut driver = Command::new(std::env::current_exe()?)
        .env("QTEST_DRIVER", "ctrlc")
        .env("QUELEA_STORAGE_DIR", dir.path())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
    let pids_line = lines.next().ok_or("the driver prints its runner pids")??;
    let pids: Vec<u32> = pids_line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    check(pids.len() == 2, pids_line.clone())?;
    let started = Instant::now();
    Command::new("kill")
        .args(["-INT", &driver.id().to_string()])
        .status()?;
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = driver.wait()?;
    check(
        started.elapsed() < Duration::from_secs(10),
        "the driver stops promptly",
    )?;
    check(
        rest.iter().any(|l| l.contains("interrupted")),
        format!("driver said: {rest:?}"),
    )?;
    check(status.code() == Some(130), format!("driver exit: {status}"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive: Vec<_> = pids
            .iter()
            .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
            .collect();
        if alive.is_empty() {
            break;
        }
        check(
            Instant::now() < deadline,
            format!("orphaned runners: {alive:?}"),
        )?;
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn bad_config_is_a_clear_error() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, "local:\n  wokers: 2\n")?;
    let err = ConfigBuilder::new()
        .file(&file)
        .env(Vec::new())
        .build()
        .unwrap_err()
        .to_string();
    check(err.contains("wokers") && err.contains("config.yaml"), err)?;
    // Through the executor: a broken environment variable.
    let output = Command::new(std::env::current_exe()?)
        .env("QTEST_DRIVER", "default_executor")
        .env("QUELEA_WORKERS", "lots")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    check(
        !output.status.success() && stderr.contains("QUELEA_WORKERS=lots"),
        stderr.to_string(),
    )?;
    Ok(())
}

/// A second client process, for the tests above.
fn driver(mode: &str) -> ! {
    let fns = functions();
    match mode {
        "detach" => {
            let exec = Executor::with_config(
                ConfigBuilder::new()
                    .set("local.workers", 2)
                    .build()
                    .unwrap(),
            )
            .unwrap();
            let ms: u64 = std::env::var("QTEST_SLEEP_MS").unwrap().parse().unwrap();
            let futures = exec
                .map(
                    &fns.sleep_ms,
                    vec![ms; 40],
                    MapOptions::default().chunksize(1).detach(true),
                )
                .unwrap();
            println!("{}", exec.job_handle(&futures.get(0).unwrap()).to_json());
            println!("{}", exec.host_pid().unwrap());
            // Die at once, as a client killed mid-job would.
            let _ = Command::new("kill")
                .args(["-KILL", &std::process::id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(60));
            std::process::exit(1);
        }
        "attach" => {
            let config = ConfigBuilder::new()
                .set("execution.data_cleaner", false)
                .build()
                .unwrap();
            let exec = Executor::with_config(config).unwrap();
            let futures = exec
                .map(&fns.plus_100, 0..20i64, MapOptions::default())
                .unwrap();
            println!("{}", exec.job_handle(&futures.get(0).unwrap()).to_json());
            let results = exec
                .get_result(&futures, Some(Duration::from_secs(60)))
                .unwrap();
            assert_eq!(results.len(), 20);
            exec.flush_statuses().unwrap();
            // Stay until the attaching process has read everything.
            std::thread::sleep(Duration::from_millis(1500));
            std::process::exit(0);
        }
        "ctrlc" => {
            quelea::interrupt::install_ctrl_c_handler();
            let exec = Executor::with_config(
                ConfigBuilder::new()
                    .set("local.workers", 2)
                    .build()
                    .unwrap(),
            )
            .unwrap();
            exec.warm_up().unwrap();
            let futures = exec
                .map(&fns.sleep_ms, vec![60_000u64; 10], MapOptions::default())
                .unwrap();
            while futures.iter().all(|f| f.state() != CallState::Running) {
                std::thread::sleep(Duration::from_millis(5));
            }
            let pids: Vec<String> = exec.runner_pids().iter().map(u32::to_string).collect();
            println!("{}", pids.join(" "));
            match exec.get_result(&futures, Some(Duration::from_secs(120))) {
                Err(Error::Interrupted) => {
                    println!("interrupted");
                    drop(exec);
                    std::process::exit(130);
                }
                other => {
                    println!("unexpected: {other:?}");
                    std::process::exit(1);
                }
            }
        }
        "default_executor" => match Executor::new() {
            Ok(_) => std::process::exit(0),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        },
        other => panic!("unknown driver mode {other}"),
    }
}

type TestFn = fn() -> Result<(), Failed>;

fn main() {
    let fns = functions();
    quelea::serve_if_runner(&fns.functions);
    if let Ok(mode) = std::env::var("QTEST_DRIVER") {
        driver(&mode);
    }
    let mut args = Arguments::from_args();
    // Runner pools and timing-sensitive supervision: one test at a time.
    args.test_threads.get_or_insert(1);
    let tests: Vec<(&str, TestFn)> = vec![
        ("map_10k_ordered", map_10k_ordered),
        (
            "detached_jobs_outlive_their_client",
            detached_jobs_outlive_their_client,
        ),
        ("statuses_land_in_storage", statuses_land_in_storage),
        ("map_reduce_in_call_order", map_reduce_in_call_order),
        (
            "user_errors_carry_message_and_backtrace",
            user_errors_carry_message_and_backtrace,
        ),
        ("timeout_kills_only_that_call", timeout_kills_only_that_call),
        ("memory_limit_is_enforced", memory_limit_is_enforced),
        (
            "sigkill_fails_only_the_running_call",
            sigkill_fails_only_the_running_call,
        ),
        (
            "crashes_report_exit_code_and_signal",
            crashes_report_exit_code_and_signal,
        ),
        (
            "extra_args_chunksize_and_large_inputs",
            extra_args_chunksize_and_large_inputs,
        ),
        ("wait_modes_and_timeouts", wait_modes_and_timeouts),
        ("inputs_given_in_parts", inputs_given_in_parts),
        (
            "map_runs_its_first_calls_while_serializing",
            map_runs_its_first_calls_while_serializing,
        ),
        (
            "warm_pool_is_reused_and_cancel_works",
            warm_pool_is_reused_and_cancel_works,
        ),
        (
            "slow_calls_after_quick_ones_use_every_runner",
            slow_calls_after_quick_ones_use_every_runner,
        ),
        (
            "objects_are_chunked_by_lines_and_reduced_by_key",
            objects_are_chunked_by_lines_and_reduced_by_key,
        ),
        ("attach_from_a_second_process", attach_from_a_second_process),
        (
            "ctrl_c_cancels_and_leaves_no_orphans",
            ctrl_c_cancels_and_leaves_no_orphans,
        ),
        ("bad_config_is_a_clear_error", bad_config_is_a_clear_error),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, f)| Trial::test(name, f))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
