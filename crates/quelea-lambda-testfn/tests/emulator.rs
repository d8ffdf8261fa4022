//! The `aws_lambda` backend against the cargo-lambda emulator
//! (`cargo lambda watch` serving this crate's bootstrap on 127.0.0.1) and a
//! real S3 server (SeaweedFS): the conformance set every backend passes
//! (`quelea_conformance`), and what is Lambda's own: cost, panics, Python
//! functions, and the invoker's signing, throttling and refusals.
//!
//! scripts/test.sh starts both servers and sets `QTEST_LAMBDA_ENDPOINT`
//! (the emulator's URL), the `QUELEA_S3_*` variables, and `QTEST_PYTHON`
//! (an interpreter with the `quelea` package). The emulator cannot throttle
//! or refuse, so those tests put a small stand-in HTTP server in front of
//! it (see [`StandIn`]): it answers scripted AWS errors, records what the
//! invoker sent, and forwards the rest to the emulator.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use quelea::core::keys::JobKeys;
use quelea::core::protocol::Message;
use quelea::{CallState, Config, ConfigBuilder, Executor, FailureReason, Functions, MapOptions};
use quelea_conformance::{check, final_statuses, wait_child, Backend, WAIT};

const FUNCTION: &str = "quelea-lambda-testfn";
const ACCESS_KEY: &str = "AKIDQUELEATEST";
const SECRET_KEY: &str = "secret-key-that-must-never-travel";

fn emulator() -> String {
    std::env::var("QTEST_LAMBDA_ENDPOINT").expect(
        "QTEST_LAMBDA_ENDPOINT must name a running `cargo lambda watch` of \
         crates/quelea-lambda-testfn (scripts/test.sh starts one)",
    )
}

fn builder(endpoint: &str) -> ConfigBuilder {
    ConfigBuilder::new()
        .no_file()
        .set("storage", "s3")
        .set("bucket", "quelea-test")
        .set("backend", "aws_lambda")
        .set("aws_lambda.function_name", FUNCTION)
        .set("aws_lambda.endpoint", endpoint)
        .set("aws_lambda.region", "us-east-1")
        .set("aws_lambda.access_key_id", ACCESS_KEY)
        .set("aws_lambda.secret_access_key", SECRET_KEY)
}

fn config() -> Config {
    builder(&emulator()).build().unwrap()
}

fn executor() -> Executor {
    Executor::with_config(config()).unwrap()
}

fn calls_record_their_memory_and_jobs_are_priced() -> Result<(), Failed> {
    let b = quelea_cli::builtins();
    let exec = executor();
    let futures = exec.map(
        &b.square,
        (0..100u64).map(|x| (x, 0)),
        MapOptions::default().chunksize(4),
    )?;
    let results = exec.get_result(&futures, WAIT)?;
    check(
        results == (0..100u64).map(|x| x * x).collect::<Vec<_>>(),
        "results in call order",
    )?;
    let keys = JobKeys::new(exec.id(), futures.get(0).unwrap().job_id());
    let statuses = final_statuses(exec.storage(), &keys);
    check(
        statuses.len() == 100 && statuses.values().all(|s| s == &[CallState::Success]),
        format!("one final status per call: {statuses:?}"),
    )?;

    // Each call records the memory of the instance that ran it (the
    // emulator sets AWS_LAMBDA_FUNCTION_MEMORY_SIZE like Lambda does), and
    // the job summary prices the job at it.
    let memory = futures
        .get(0)
        .unwrap()
        .stats()
        .memory_mb
        .ok_or("no memory in the stats")?;
    check(
        futures.iter().all(|f| f.stats().memory_mb == Some(memory)),
        "every call has the instance's memory",
    )?;
    let summary = exec.job_summary(&futures);
    check(summary.len() == 1, format!("{summary:?}"))?;
    let job = &summary[0];
    let cost = job.cost.clone().ok_or("a Lambda job has a cost")?;
    check(
        job.calls == 100
            && job.success == 100
            && cost.memory_mb == memory
            && cost.invocations == 25
            && cost.gb_seconds > 0.0
            && (cost.gb_seconds - job.total_exec_time_s * f64::from(memory) / 1024.0).abs() < 1e-9
            && (cost.estimated_usd
                - (cost.gb_seconds * quelea::summary::LAMBDA_USD_PER_GB_SECOND
                    + 25.0 * 0.20 / 1e6))
                .abs()
                < 1e-15,
        format!("{job:?}"),
    )?;
    let local = ConfigBuilder::new().no_file().env(Vec::new()).build()?;
    check(
        quelea::summary::job_summary(&local, &futures)[0]
            .cost
            .is_none(),
        "only Lambda jobs are priced",
    )
}

fn panics_carry_the_remote_message() -> Result<(), Failed> {
    let exec = executor();
    // The client needs only the name; the function runs in the bootstrap.
    let mut names = Functions::new();
    let panic_with = names.register("panic_with", |m: String| m);
    let futures = exec.map(&panic_with, ["kaboom".to_owned()], MapOptions::default())?;
    exec.wait(&futures, quelea::ReturnWhen::AllCompleted, WAIT)?;
    let error = futures
        .get(0)
        .unwrap()
        .call_error()
        .ok_or("the call failed")?;
    check(
        error.reason == FailureReason::UserError
            && error.error_type == "panic"
            && error.message.contains("kaboom"),
        format!("{error:?}"),
    )
}

const PYTHON_SCRIPT: &str = r#"
import traceback
import quelea

def inc(x):
    return x + 1

def boom(x):
    raise ValueError(f"bad input {x}")

fexec = quelea.FunctionExecutor(backend="aws_lambda")
fexec.map(inc, [1, 2, 3])
print("results", fexec.get_result(timeout=120))
cost = fexec.job_summary()[0]["cost"]
print("cost", cost["invocations"], cost["memory_mb"] > 0, cost["gb_seconds"] > 0, cost["estimated_usd"] > 0)
fexec.map(boom, [7])
try:
    fexec.get_result(timeout=120)
except ValueError as e:
    print("caught", type(e).__name__, e)
    print(traceback.format_exc())
"#;

fn python_functions_run_in_the_function() -> Result<(), Failed> {
    let python = std::env::var("QTEST_PYTHON")
        .map_err(|_| "QTEST_PYTHON must name a Python with the quelea package")?;
    let mut child = std::process::Command::new(python)
        .args(["-c", PYTHON_SCRIPT])
        .env("QUELEA_STORAGE", "s3")
        .env("QUELEA_BUCKET", "quelea-test")
        .env("QUELEA_AWS_LAMBDA_FUNCTION_NAME", FUNCTION)
        .env("QUELEA_AWS_LAMBDA_ENDPOINT", emulator())
        .env("QUELEA_AWS_LAMBDA_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env_remove("QUELEA_CONFIG_FILE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // Read the pipes on threads so a chatty child never blocks; stop it by
    // PID if it outlives its deadline.
    let mut pipe_out = child.stdout.take().ok_or("no stdout")?;
    let mut pipe_err = child.stderr.take().ok_or("no stderr")?;
    let reader_out = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = pipe_out.read_to_end(&mut text);
        text
    });
    let reader_err = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = pipe_err.read_to_end(&mut text);
        text
    });
    let status = wait_child(&mut child, Duration::from_secs(180), "the Python client")?;
    let out = std::process::Output {
        status,
        stdout: reader_out.join().unwrap_or_default(),
        stderr: reader_err.join().unwrap_or_default(),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    check(
        out.status.success()
            && stdout.contains("results [2, 3, 4]")
            // job_summary() prices the job: one Invocation per call here.
            && stdout.contains("cost 3 True True True")
            && stdout.contains("caught ValueError bad input 7")
            // The remote traceback names the function that raised.
            && stdout.contains("in boom"),
        format!("stdout:\n{stdout}\nstderr:\n{stderr}"),
    )
}

/// One request as the stand-in received it.
#[derive(Clone, Debug)]
struct Recorded {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// What the stand-in answers.
#[derive(Clone, Copy)]
enum Reply {
    /// Status and AWS error type, with a JSON message.
    Error(u16, &'static str),
    /// Passes the body on to the emulator, answers 202 as real Lambda does.
    Forward,
}

/// A stand-in for the Lambda Invoke API on 127.0.0.1 (the emulator neither
/// throttles nor refuses): answers `script` in order, then `then`.
struct StandIn {
    url: String,
    seen: Arc<Mutex<Vec<Recorded>>>,
}

impl StandIn {
    fn start(script: Vec<Reply>, then: Reply) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let target = emulator();
        std::thread::spawn(move || {
            let mut script = script.into_iter();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let Some(request) = read_request(&stream) else {
                    continue;
                };
                let reply = script.next().unwrap_or(then);
                record.lock().unwrap().push(request.clone());
                let (status, kind, body) = match reply {
                    Reply::Error(status, kind) => (
                        status,
                        kind,
                        format!(r#"{{"Type":"User","message":"stand-in says {kind}"}}"#),
                    ),
                    Reply::Forward => {
                        let forwarded = forward(&target, &request);
                        (forwarded, "", String::new())
                    }
                };
                let mut out = &stream;
                let _ = write!(
                    out,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                     x-amzn-ErrorType: {kind}\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        StandIn { url, seen }
    }

    fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }
}

fn read_request(stream: &TcpStream) -> Option<Recorded> {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let length: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Recorded {
        path,
        headers,
        body,
    })
}

/// The request, passed to the emulator; its HTTP status, 202 for success
/// (the real Event answer).
fn forward(target: &str, request: &Recorded) -> u16 {
    let addr = target.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    write!(
        stream,
        "POST {} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         X-Amz-Invocation-Type: Event\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        request.path,
        request.body.len()
    )
    .unwrap();
    stream.write_all(&request.body).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    match answer.split_whitespace().nth(1) {
        Some(code) if code.starts_with('2') => 202,
        Some(code) => code.parse().unwrap_or(502),
        None => 502,
    }
}

fn throttled_invocations_are_retried_and_signed() -> Result<(), Failed> {
    let stand_in = StandIn::start(
        vec![
            Reply::Error(429, "TooManyRequestsException"),
            Reply::Error(500, "ServiceException"),
            Reply::Error(429, "TooManyRequestsException"),
        ],
        Reply::Forward,
    );
    let exec = Executor::with_config(builder(&stand_in.url).build()?)?;
    let b = quelea_cli::builtins();
    let futures = exec.map(&b.square, [(3u64, 0u64), (4, 0)], MapOptions::default())?;
    let results = exec.get_result(&futures, WAIT)?;
    check(results == vec![9, 16], format!("{results:?}"))?;
    let seen = stand_in.seen();
    // Two Invocations, three throttled answers: five requests.
    check(seen.len() == 5, format!("{} requests", seen.len()))?;
    for request in &seen {
        check(
            request.path == format!("/2015-03-31/functions/{FUNCTION}/invocations"),
            request.path.clone(),
        )?;
        check(
            request
                .headers
                .get("x-amz-invocation-type")
                .map(String::as_str)
                == Some("Event"),
            format!("{:?}", request.headers),
        )?;
        let auth = request
            .headers
            .get("authorization")
            .cloned()
            .unwrap_or_default();
        check(
            auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/"))
                && auth.contains("/us-east-1/lambda/aws4_request")
                && auth.contains("SignedHeaders=host;x-amz-date;x-amz-invocation-type"),
            auth.clone(),
        )?;
        let body = String::from_utf8_lossy(&request.body);
        check(
            !body.contains(SECRET_KEY)
                && !body.contains(ACCESS_KEY)
                && !body.contains("testsecret"),
            "no credentials in an Invocation",
        )?;
        check(
            matches!(Message::decode(&request.body), Ok(Message::Invocation(_))),
            "the body is an Invocation message",
        )?;
    }
    Ok(())
}

fn refusals_fail_the_calls_with_the_aws_error() -> Result<(), Failed> {
    let stand_in = StandIn::start(Vec::new(), Reply::Error(403, "AccessDeniedException"));
    let exec = Executor::with_config(builder(&stand_in.url).build()?)?;
    let b = quelea_cli::builtins();
    let err = exec
        .map(&b.square, [(3u64, 0u64)], MapOptions::default())
        .unwrap_err()
        .to_string();
    check(
        err.contains("403")
            && err.contains("AccessDeniedException")
            && err.contains("stand-in says"),
        err,
    )?;
    check(stand_in.seen().len() == 1, "a refusal is not retried")?;

    // Throttled past the invoke deadline: the calls fail, naming the throttle.
    let stand_in = StandIn::start(Vec::new(), Reply::Error(429, "TooManyRequestsException"));
    let exec = Executor::with_config(
        builder(&stand_in.url)
            .set("aws_lambda.invoke_deadline", 0.5)
            .build()?,
    )?;
    let err = exec
        .map(&b.square, [(3u64, 0u64)], MapOptions::default())
        .unwrap_err()
        .to_string();
    check(
        err.contains("TooManyRequestsException") && err.contains("retries"),
        err,
    )?;
    check(stand_in.seen().len() > 1, "throttles are retried")
}

fn refused_invocations_fail_their_calls_in_storage() -> Result<(), Failed> {
    use quelea::core::ids::{CallId, ExecutorId, JobId, JobKind};
    use quelea::core::model::{FunctionSpec, RunnerKind};
    use quelea::core::protocol::{CallInput, Invocation, InvokedCall};
    // An Invocation whose function object is not in storage: the function
    // cannot run it, and says so through the call's status.
    let executor = ExecutorId::next();
    let job_id = JobId::new(JobKind::Map, 0);
    let invocation = Invocation {
        id: Some(quelea::core::protocol::new_invocation_id()),
        executor_id: executor.clone(),
        job_id,
        function: FunctionSpec {
            runner: RunnerKind::Rust,
            name: "hello_square".into(),
            hash: format!("{executor}-never-stored"),
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
    let request = Recorded {
        path: format!("/2015-03-31/functions/{FUNCTION}/invocations"),
        headers: HashMap::new(),
        body: Message::Invocation(invocation).encode(),
    };
    // Not a handler error: retrying the event could not help.
    let status = forward(&emulator(), &request);
    check(status == 202, format!("the emulator answered {status}"))?;
    let storage = quelea::storage::Storage::from_config(&config())?;
    let keys = JobKeys::new(&executor, job_id);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for object in storage.list_blocking(&keys.status_prefix())? {
            let body = storage.get_blocking(&object.key)?;
            if let Ok(Message::StatusBatch(batch)) = Message::decode(&body) {
                if let Some(status) = batch.statuses.into_iter().find(|s| s.state.is_terminal()) {
                    let error = status.error.ok_or("a refused call has an error")?;
                    storage.delete_prefix_blocking(keys.prefix())?;
                    return check(
                        status.state == CallState::Error
                            && error.error_type == "InvocationRefused"
                            && error.message.contains("never-stored"),
                        format!("{error:?}"),
                    );
                }
            }
        }
        if Instant::now() > deadline {
            return Err("no status for the refused call within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The SigV4 signer against an independent verifier: SeaweedFS checks S3
/// request signatures, so a PUT it accepts was signed right, and one with
/// the wrong secret must be refused.
fn sigv4_signatures_satisfy_a_real_s3_server() -> Result<(), Failed> {
    use quelea::core::sigv4::{self, Credentials};
    use sha2::Digest;
    let endpoint = std::env::var("QUELEA_S3_ENDPOINT")?;
    let host = endpoint.trim_start_matches("http://").to_owned();
    let put = |secret: &str, key: &str| -> Result<String, Failed> {
        let body = format!("signed by quelea's sigv4 for {key}");
        let hash: String = sha2::Sha256::digest(body.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        // Each segment encoded; S3 signs the path as sent.
        let segments: Vec<String> = key.split('/').map(sigv4::encode).collect();
        let path = format!("/quelea-test/{}", segments.join("/"));
        let signed = sigv4::sign(
            &Credentials {
                access_key_id: std::env::var("QUELEA_S3_ACCESS_KEY_ID")?,
                secret_access_key: secret.to_owned(),
                session_token: None,
            },
            "us-east-1",
            "s3",
            quelea::core::model::now_ts() as u64,
            &sigv4::Request {
                method: "PUT",
                host: &host,
                path: &path,
                query: &[],
                headers: &[("x-amz-content-sha256", &hash)],
                body: body.as_bytes(),
            },
        );
        let mut stream = TcpStream::connect(&host)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut head = format!(
            "PUT {path} HTTP/1.1\r\nHost: {host}\r\nx-amz-content-sha256: {hash}\r\n\
             Content-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (name, value) in &signed.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        stream.write_all(format!("{head}\r\n{body}").as_bytes())?;
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        Ok(answer)
    };
    let secret = std::env::var("QUELEA_S3_SECRET_ACCESS_KEY")?;
    let answer = put(&secret, "sigv4 probe/ok.txt")?;
    check(answer.starts_with("HTTP/1.1 200"), answer)?;
    let stored = executor().storage().get_blocking("sigv4 probe/ok.txt")?;
    check(
        stored.as_ref() == b"signed by quelea's sigv4 for sigv4 probe/ok.txt",
        "the signed PUT stored its body",
    )?;
    let answer = put("not-the-secret", "sigv4 probe/forged.txt")?;
    check(
        answer.starts_with("HTTP/1.1 403") && answer.contains("SignatureDoesNotMatch"),
        answer,
    )?;
    executor()
        .storage()
        .delete_prefix_blocking("sigv4 probe/")?;
    Ok(())
}

fn main() {
    quelea_conformance::serve_second_client_if_asked();
    let args = Arguments::from_args();
    type Test = fn() -> Result<(), Failed>;
    let tests: &[(&str, Test)] = &[
        (
            "calls_record_their_memory_and_jobs_are_priced",
            calls_record_their_memory_and_jobs_are_priced,
        ),
        (
            "panics_carry_the_remote_message",
            panics_carry_the_remote_message,
        ),
        (
            "python_functions_run_in_the_function",
            python_functions_run_in_the_function,
        ),
        (
            "throttled_invocations_are_retried_and_signed",
            throttled_invocations_are_retried_and_signed,
        ),
        (
            "refusals_fail_the_calls_with_the_aws_error",
            refusals_fail_the_calls_with_the_aws_error,
        ),
        (
            "refused_invocations_fail_their_calls_in_storage",
            refused_invocations_fail_their_calls_in_storage,
        ),
        (
            "sigv4_signatures_satisfy_a_real_s3_server",
            sigv4_signatures_satisfy_a_real_s3_server,
        ),
    ];
    let mut trials: Vec<Trial> = tests
        .iter()
        .map(|&(name, test)| Trial::test(name, test))
        .collect();
    let conformance = Backend {
        name: "aws_lambda",
        config: Arc::new(|| builder(&emulator())),
        rust_runner: None,
    };
    trials.extend(quelea_conformance::trials(&conformance));
    libtest_mimic::run(&args, trials).exit();
}
