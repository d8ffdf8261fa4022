//! The `http` backend against real worker servers (`quelea worker serve`)
//! on 127.0.0.1: the conformance set, and the front door's security.
//!
//! The servers are started once for the whole binary and killed by PID at
//! the end. Job storage is a local directory shared with the servers; with
//! `QTEST_STORAGE=s3` it is the S3 server of scripts/s3-server.sh (its
//! `QUELEA_S3_*` variables come from the environment), with
//! `QTEST_STORAGE=azure` the Azurite emulator of scripts/cloud-emulators.sh. The conformance set
//! every backend passes is `quelea_conformance`'s; the tests here are the
//! http backend's own.

mod common;
mod replay;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{storage_builder, WorkerServer};
use libtest_mimic::{Arguments, Failed, Trial};
use quelea::core::auth;
use quelea::core::ids::{CallId, ExecutorId, JobId, JobKind};
use quelea::core::keys::{self, JobKeys};
use quelea::core::model::{FunctionSpec, RunnerKind};
use quelea::core::protocol::{CallInput, Invocation, InvokedCall, Message};
use quelea::storage::Storage;
use quelea::{CallState, Config, ConfigBuilder, Executor, FailureReason, MapOptions};
use quelea_conformance::{check, final_statuses, wait_child, Backend, WAIT};

const SECRET: &str = "test-secret-of-the-http-front-door";

struct Fixture {
    dir: tempfile::TempDir,
    /// The conformance servers.
    urls: Vec<String>,
    /// A server with a small body limit, for the security tests.
    guarded: String,
}

impl Fixture {
    /// The client's config: the http backend over the conformance servers.
    fn builder(&self) -> ConfigBuilder {
        storage_builder(self.dir.path())
            .set("backend", "http")
            .set("http.urls", self.urls.clone())
            .set("http.secret", SECRET)
    }

    fn config(&self) -> Config {
        self.builder().build().unwrap()
    }

    fn executor(&self) -> Executor {
        Executor::with_config(self.config()).unwrap()
    }

    fn storage(&self) -> Storage {
        Storage::from_config(&self.config()).unwrap()
    }
}

/// One HTTP/1.1 request on its own connection; (status, body).
fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) before reading the whole body.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in `{text}`"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

fn signed(body: &[u8], now: u64) -> Vec<(&'static str, String)> {
    let headers = auth::sign(SECRET.as_bytes(), now, body);
    vec![
        (auth::TIMESTAMP_HEADER, headers.timestamp),
        (auth::NONCE_HEADER, headers.nonce),
        (auth::SIGNATURE_HEADER, headers.signature),
    ]
}

fn now() -> u64 {
    quelea::core::model::now_ts() as u64
}

/// A valid Invocation of `hello_square` for a job of its own (a fresh
/// executor id: S3 buckets outlive test runs), with the function object in
/// storage, so that only the front door decides whether it runs.
fn own_invocation(fx: &Fixture) -> (Vec<u8>, JobKeys) {
    let executor = ExecutorId::next();
    let job_id = JobId::new(JobKind::Map, 0);
    // A content hash is a hex digest; this one is unique to the executor.
    let hash = executor
        .to_string()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    fx.storage()
        .put_blocking(&keys::function(&executor, &hash), b"hello_square".to_vec())
        .unwrap();
    let invocation = Invocation {
        id: Some(quelea::core::protocol::new_invocation_id()),
        executor_id: executor.clone(),
        job_id,
        function: FunctionSpec {
            runner: RunnerKind::Rust,
            name: "hello_square".into(),
            hash,
        },
        calls: vec![InvokedCall {
            call_id: CallId(0),
            count: 1,
            input: CallInput::Inline(b"[7,0]".to_vec().into()),
            select: None,
        }],
        timeout_s: 10.0,
        memory_limit_mb: None,
        submit_ts: quelea::core::model::now_ts(),
        push: None,
        attempt: 0,
        retry_on: Vec::new(),
    };
    (
        Message::Invocation(invocation).encode(),
        JobKeys::new(&executor, job_id),
    )
}

/// Nothing of the job reached storage, well after a status flush would have.
fn nothing_ran(fx: &Fixture, keys: &JobKeys) -> Result<(), Failed> {
    std::thread::sleep(Duration::from_millis(400));
    let statuses = fx.storage().list_blocking(&keys.status_prefix())?;
    check(
        statuses.is_empty(),
        format!("statuses appeared: {statuses:?}"),
    )
}

fn map_1000_in_order_spread_over_servers(fx: &Fixture) -> Result<(), Failed> {
    let b = quelea_cli::builtins();
    let exec = fx.executor();
    let futures = exec.map(
        &b.square,
        (0..1000u64).map(|x| (x, 0)),
        MapOptions::default(),
    )?;
    let results = exec.get_result(&futures, WAIT)?;
    check(
        results == (0..1000u64).map(|x| x * x).collect::<Vec<_>>(),
        "results in call order",
    )?;
    let keys = JobKeys::new(exec.id(), futures.get(0).unwrap().job_id());
    let statuses = final_statuses(exec.storage(), &keys);
    check(
        statuses.len() == 1000,
        format!("{} calls have a status", statuses.len()),
    )?;
    check(
        statuses.values().all(|s| s == &[CallState::Success]),
        "every call has exactly one final status",
    )?;
    for url in &fx.urls {
        let (code, body) = request(
            url.trim_start_matches("http://"),
            "GET",
            "/health",
            &[],
            b"",
        );
        let health: serde_json::Value = serde_json::from_str(&body)?;
        check(
            code == 200 && health["calls"].as_u64().unwrap_or(0) > 0,
            format!("{url} ran calls: {body}"),
        )?;
    }
    Ok(())
}

fn attach_follows_an_http_job(fx: &Fixture) -> Result<(), Failed> {
    let b = quelea_cli::builtins();
    let exec = fx.executor();
    let futures = exec.map(&b.square, (0..20u64).map(|x| (x, 5)), MapOptions::default())?;
    let handle = exec.job_handle(&futures.get(0).unwrap());
    let attached = quelea::attach_with::<u64>(storage_builder(fx.dir.path()), &handle)?;
    let results: Vec<u64> = attached
        .iter()
        .map(|f| f.result(WAIT))
        .collect::<Result<_, _>>()?;
    check(
        results == (0..20u64).map(|x| x * x).collect::<Vec<_>>(),
        format!("{results:?}"),
    )
}

/// The servers see a job's `cancelled` marker and stop its calls: queued
/// ones never run, running ones are killed, and every one of them has a
/// final `cancelled` status in storage well before the calls would end.
fn cancel_stops_the_calls_on_the_servers(fx: &Fixture) -> Result<(), Failed> {
    let b = quelea_cli::builtins();
    let exec = fx.executor();
    // 8 calls of 30 s on 2 servers x 2 runners: some run, the others wait
    // (queued, or already sent to a busy runner: other tests' quick calls
    // may have made the runners pipeline).
    let futures = exec.map(&b.sleep_ms, vec![30_000u64; 8], MapOptions::default())?;
    let keys = JobKeys::new(exec.id(), futures.get(0).unwrap().job_id());
    let storage = exec.storage();
    let deadline = Instant::now() + Duration::from_secs(20);
    while started_calls(storage, &keys) < 2 {
        check(Instant::now() < deadline, "the servers started the calls")?;
        std::thread::sleep(Duration::from_millis(50));
    }
    let cancelled_at = Instant::now();
    exec.cancel(&futures)?;
    loop {
        let reasons = final_reasons(storage, &keys);
        if reasons.len() == 8 {
            return check(
                reasons
                    .values()
                    .all(|r| *r == Some(FailureReason::Cancelled)),
                format!("every call ends cancelled: {reasons:?}"),
            );
        }
        check(
            cancelled_at.elapsed() < Duration::from_secs(15),
            format!(
                "only {} calls ended within 15 s of the cancel",
                reasons.len()
            ),
        )?;
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn started_calls(storage: &Storage, keys: &JobKeys) -> usize {
    status_batches(storage, keys)
        .flat_map(|batch| batch.statuses)
        .filter(|s| s.state == CallState::Running)
        .map(|s| s.call_id)
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// The failure reason of each call with a final status.
fn final_reasons(storage: &Storage, keys: &JobKeys) -> HashMap<u32, Option<FailureReason>> {
    status_batches(storage, keys)
        .flat_map(|batch| batch.statuses)
        .filter(|s| s.state.is_terminal())
        .map(|s| (s.call_id.0, s.error.map(|e| e.reason)))
        .collect()
}

fn status_batches(
    storage: &Storage,
    keys: &JobKeys,
) -> impl Iterator<Item = quelea::core::protocol::StatusBatch> {
    let objects = storage.list_blocking(&keys.status_prefix()).unwrap();
    let storage = storage.clone();
    objects.into_iter().filter_map(move |object| {
        match Message::decode(&storage.get_blocking(&object.key).ok()?) {
            Ok(Message::StatusBatch(batch)) => Some(batch),
            _ => None,
        }
    })
}

fn unreachable_servers_are_a_clear_error(fx: &Fixture) -> Result<(), Failed> {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = storage_builder(fx.dir.path())
        .set("backend", "http")
        .set("http.urls", vec![format!("http://127.0.0.1:{port}")])
        .set("http.secret", SECRET)
        .set("http.invoke_deadline", 0.5)
        .build()?;
    let exec = Executor::with_config(config)?;
    let b = quelea_cli::builtins();
    let err = exec
        .map(&b.square, [(1u64, 0u64)], MapOptions::default())
        .unwrap_err()
        .to_string();
    check(
        err.contains(&port.to_string()) && err.contains("retries"),
        err,
    )?;

    let config = storage_builder(fx.dir.path())
        .set("backend", "http")
        .set("http.urls", fx.urls.clone())
        .set("http.secret", "not-the-secret")
        .build()?;
    let exec = Executor::with_config(config)?;
    let err = exec
        .map(&b.square, [(1u64, 0u64)], MapOptions::default())
        .unwrap_err()
        .to_string();
    check(err.contains("401") && err.contains("signature"), err)
}

fn unsigned_and_forged_requests_run_nothing(fx: &Fixture) -> Result<(), Failed> {
    let (body, keys) = own_invocation(fx);
    let addr = fx.guarded.trim_start_matches("http://");
    let (code, text) = request(addr, "POST", "/invoke", &[], &body);
    check(
        code == 401 && text.contains("not signed"),
        format!("{code} {text}"),
    )?;

    let mut forged = signed(&body, now());
    forged[2].1 = format!("v1={}", "0".repeat(64));
    let (code, text) = request(addr, "POST", "/invoke", &forged, &body);
    check(
        code == 401 && text.contains("signature"),
        format!("{code} {text}"),
    )?;

    // Signed for another body.
    let headers = signed(b"{}", now());
    let (code, _) = request(addr, "POST", "/invoke", &headers, &body);
    check(code == 401, format!("{code}"))?;

    // Signed with another secret.
    let other = auth::sign(b"guess", now(), &body);
    let headers = [
        (auth::TIMESTAMP_HEADER, other.timestamp),
        (auth::NONCE_HEADER, other.nonce),
        (auth::SIGNATURE_HEADER, other.signature),
    ];
    let (code, _) = request(addr, "POST", "/invoke", &headers, &body);
    check(code == 401, format!("{code}"))?;
    nothing_ran(fx, &keys)
}

fn old_timestamps_are_refused(fx: &Fixture) -> Result<(), Failed> {
    let (body, keys) = own_invocation(fx);
    let addr = fx.guarded.trim_start_matches("http://");
    for ts in [now() - 3600, now() + 3600] {
        let (code, text) = request(addr, "POST", "/invoke", &signed(&body, ts), &body);
        check(
            code == 401 && text.contains("clock"),
            format!("{code} {text}"),
        )?;
    }
    nothing_ran(fx, &keys)
}

fn replayed_requests_are_refused(fx: &Fixture) -> Result<(), Failed> {
    let (body, keys) = own_invocation(fx);
    let addr = fx.guarded.trim_start_matches("http://");
    let headers = signed(&body, now());
    let (code, text) = request(addr, "POST", "/invoke", &headers, &body);
    check(code == 202, format!("first delivery: {code} {text}"))?;
    let (code, text) = request(addr, "POST", "/invoke", &headers, &body);
    check(
        code == 401 && text.contains("replay"),
        format!("{code} {text}"),
    )?;
    // The one accepted delivery ran once, and only once.
    let deadline = Instant::now() + Duration::from_secs(30);
    let storage = fx.storage();
    while final_statuses(&storage, &keys).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let statuses = final_statuses(&storage, &keys);
    check(
        statuses.get(&0).map(Vec::len) == Some(1) && statuses.len() == 1,
        format!("{statuses:?}"),
    )
}

fn oversized_bodies_get_413(fx: &Fixture) -> Result<(), Failed> {
    let (_, keys) = own_invocation(fx);
    let addr = fx.guarded.trim_start_matches("http://");
    let body = vec![b' '; 200_000];
    let (code, _) = request(addr, "POST", "/invoke", &signed(&body, now()), &body);
    check(code == 413, format!("{code}"))?;
    nothing_ran(fx, &keys)
}

fn wrong_protocol_version_is_a_clear_400(fx: &Fixture) -> Result<(), Failed> {
    let (body, keys) = own_invocation(fx);
    let mut value: serde_json::Value = serde_json::from_slice(&body)?;
    value["version"] = 99.into();
    let body = serde_json::to_vec(&value)?;
    let addr = fx.guarded.trim_start_matches("http://");
    let (code, text) = request(addr, "POST", "/invoke", &signed(&body, now()), &body);
    check(
        code == 400 && text.contains("version 99"),
        format!("{code} {text}"),
    )?;
    let body = b"{\"version\": 1, \"type\": \"invocation\"}";
    let (code, text) = request(addr, "POST", "/invoke", &signed(body, now()), body);
    check(
        code == 400 && text.contains("malformed"),
        format!("{code} {text}"),
    )?;
    nothing_ran(fx, &keys)
}

fn health_needs_no_signature(fx: &Fixture) -> Result<(), Failed> {
    let (code, body) = request(
        fx.guarded.trim_start_matches("http://"),
        "GET",
        "/health",
        &[],
        b"",
    );
    let health: serde_json::Value = serde_json::from_str(&body)?;
    check(
        code == 200 && health["status"] == "ok" && health["pool_size"] == 2,
        body.clone(),
    )?;
    check(!body.contains(SECRET), "no secret in the health answer")
}

fn server_refuses_to_start_without_a_secret(fx: &Fixture) -> Result<(), Failed> {
    let out = Command::new(env!("CARGO_BIN_EXE_quelea"))
        .args(["worker", "serve", "--port", "0"])
        .env_remove("QUELEA_HTTP_SECRET")
        .env_remove("QUELEA_CONFIG_FILE")
        .env("QUELEA_STORAGE_DIR", fx.dir.path())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    check(
        !out.status.success() && stderr.contains("QUELEA_HTTP_SECRET"),
        stderr.into_owned(),
    )
}

fn sigterm_drains_accepted_calls(fx: &Fixture) -> Result<(), Failed> {
    let server = WorkerServer::start(fx.dir.path(), "draining", SECRET, "{}\n", &[]);
    let config = storage_builder(fx.dir.path())
        .set("backend", "http")
        .set("http.urls", vec![server.url.clone()])
        .set("http.secret", SECRET)
        .build()?;
    let exec = Executor::with_config(config)?;
    let b = quelea_cli::builtins();
    let futures = exec.map(&b.sleep_ms, [400u64, 400, 400], MapOptions::default())?;
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()?;
    check(status.success(), "kill -TERM")?;
    let mut child = server.child;
    let exit = wait_child(
        &mut child,
        Duration::from_secs(30),
        "the server after SIGTERM",
    )?;
    check(exit.success(), format!("server exit: {exit}"))?;
    // Every accepted call finished and its status was written before exit.
    let results = exec.get_result(&futures, Some(Duration::from_secs(10)))?;
    check(results == vec![400, 400, 400], format!("{results:?}"))
}

/// `quelea test`, the self-check a user runs when setting up a backend,
/// passes against the worker servers.
fn self_check_passes_on_the_servers(fx: &Fixture) -> Result<(), Failed> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quelea"));
    cmd.arg("test")
        .env_remove("QUELEA_CONFIG_FILE")
        .env("HOME", fx.dir.path())
        .env("QUELEA_BACKEND", "http")
        .env("QUELEA_HTTP_URLS", fx.urls.join(","))
        .env("QUELEA_HTTP_SECRET", SECRET);
    if let Some(kind) = common::shared_storage() {
        cmd.env("QUELEA_STORAGE", kind)
            .env("QUELEA_BUCKET", "quelea-test");
    } else {
        cmd.env("QUELEA_STORAGE_DIR", fx.dir.path());
    }
    let out = cmd.output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)).into());
    }
    if !stdout.starts_with("quelea test: backend http") || !stdout.contains("all 5 checks passed") {
        return Err(format!("unexpected report: {stdout}").into());
    }
    Ok(())
}

fn main() {
    quelea_conformance::serve_second_client_if_asked();
    let args = Arguments::from_args();
    let dir = tempfile::tempdir().unwrap();
    let servers: Vec<WorkerServer> = (0..2)
        .map(|i| WorkerServer::start(dir.path(), &format!("w{i}"), SECRET, "{}\n", &[]))
        .collect();
    let guarded = WorkerServer::start(
        dir.path(),
        "guarded",
        SECRET,
        "http:\n  max_body_bytes: 65536\n  replay_window: 60\n",
        &[],
    );
    let fx = Arc::new(Fixture {
        urls: servers.iter().map(|s| s.url.clone()).collect(),
        guarded: guarded.url.clone(),
        dir,
    });
    type Test = fn(&Fixture) -> Result<(), Failed>;
    let tests: &[(&str, Test)] = &[
        (
            "map_1000_in_order_spread_over_servers",
            map_1000_in_order_spread_over_servers,
        ),
        ("attach_follows_an_http_job", attach_follows_an_http_job),
        (
            "cancel_stops_the_calls_on_the_servers",
            cancel_stops_the_calls_on_the_servers,
        ),
        (
            "unreachable_servers_are_a_clear_error",
            unreachable_servers_are_a_clear_error,
        ),
        (
            "security_unsigned_and_forged_requests_run_nothing",
            unsigned_and_forged_requests_run_nothing,
        ),
        (
            "security_old_timestamps_are_refused",
            old_timestamps_are_refused,
        ),
        (
            "security_replayed_requests_are_refused",
            replayed_requests_are_refused,
        ),
        (
            "security_oversized_bodies_get_413",
            oversized_bodies_get_413,
        ),
        (
            "security_captured_invocations_never_run_twice",
            replay::captured_invocations_never_run_twice,
        ),
        (
            "security_invocations_without_an_id_are_refused",
            replay::invocations_without_an_id_are_refused,
        ),
        (
            "security_absurd_numbers_and_hashes_get_a_named_400",
            replay::absurd_numbers_and_hashes_get_a_named_400,
        ),
        (
            "wrong_protocol_version_is_a_clear_400",
            wrong_protocol_version_is_a_clear_400,
        ),
        ("health_needs_no_signature", health_needs_no_signature),
        (
            "self_check_passes_on_the_servers",
            self_check_passes_on_the_servers,
        ),
        (
            "server_refuses_to_start_without_a_secret",
            server_refuses_to_start_without_a_secret,
        ),
        (
            "sigterm_drains_accepted_calls",
            sigterm_drains_accepted_calls,
        ),
    ];
    let mut trials: Vec<Trial> = tests
        .iter()
        .map(|&(name, test)| {
            let fx = fx.clone();
            Trial::test(name, move || test(&fx))
        })
        .collect();
    let conformance = {
        let fx = fx.clone();
        Backend {
            name: "http",
            config: Arc::new(move || fx.builder()),
            rust_runner: None,
        }
    };
    trials.extend(quelea_conformance::trials(&conformance));
    let conclusion = libtest_mimic::run(&args, trials);
    for server in servers {
        server.stop();
    }
    guarded.stop();
    drop(fx);
    conclusion.exit();
}
