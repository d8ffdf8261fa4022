//! `quelea runtime deploy --backend aws_lambda`, run as a user runs it.
//!
//! The cargo-lambda emulator has no CreateFunction or UpdateFunctionCode,
//! so the Lambda API is a stand-in here: a small HTTP server on 127.0.0.1
//! that answers scripted replies and records the requests, which the tests
//! check for shape (paths, signing, JSON fields, the zip's `bootstrap`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;

const FUNCTION: &str = "quelea-deploy-test";
const ROLE: &str = "arn:aws:iam::123456789012:role/quelea-runtime";
const AWS_SECRET: &str = "aws-secret-that-must-not-be-deployed";
const S3_SECRET: &str = "s3-secret-that-must-not-be-deployed";

#[derive(Clone, Debug)]
struct Recorded {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: serde_json::Value,
}

/// The stand-in Lambda API: answers `replies` in order (status, AWS error
/// type), one request per connection.
fn stand_in(replies: Vec<(u16, &'static str)>) -> (String, Arc<Mutex<Vec<Recorded>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        let mut replies = replies.into_iter();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let mut words = line.split_whitespace();
            let method = words.next().unwrap_or_default().to_owned();
            let path = words.next().unwrap_or_default().to_owned();
            let mut headers = HashMap::new();
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                let (name, value) = header.split_once(':').unwrap();
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
            let length: usize = headers["content-length"].parse().unwrap();
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            record.lock().unwrap().push(Recorded {
                method,
                path,
                headers,
                body: serde_json::from_slice(&body).unwrap_or_default(),
            });
            let (status, kind) = replies.next().unwrap_or((500, "ServiceException"));
            let answer = format!(r#"{{"message":"stand-in answers {status} {kind}"}}"#);
            let mut out = &stream;
            let _ = write!(
                out,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                 x-amzn-ErrorType: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (url, seen)
}

/// A file that looks like a Linux executable to the packager.
fn fake_bootstrap(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.join("bootstrap-bin");
    let mut bytes = b"\x7fELF\x02\x01\x01".to_vec();
    bytes.extend((0..4096u32).map(|i| (i % 251) as u8));
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

fn deploy(endpoint: &str, bootstrap: &std::path::Path, extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_quelea"))
        .args([
            "runtime",
            "deploy",
            "--backend",
            "aws_lambda",
            "--bootstrap",
        ])
        .arg(bootstrap)
        .args(extra)
        .env_remove("QUELEA_CONFIG_FILE")
        .env("HOME", dir.path())
        .env("QUELEA_STORAGE", "s3")
        .env("QUELEA_BUCKET", "quelea-jobs")
        .env("QUELEA_S3_ENDPOINT", "http://127.0.0.1:8333")
        .env("QUELEA_S3_PATH_STYLE", "true")
        .env("QUELEA_S3_SECRET_ACCESS_KEY", S3_SECRET)
        .env("QUELEA_AWS_LAMBDA_FUNCTION_NAME", FUNCTION)
        .env("QUELEA_AWS_LAMBDA_ENDPOINT", endpoint)
        .env("QUELEA_AWS_LAMBDA_MEMORY_MB", "2048")
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_ACCESS_KEY_ID", "AKIDDEPLOY")
        .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The zip of a request, unpacked: its one entry's name, mode and bytes.
fn unzip(zip_b64: &serde_json::Value) -> (String, u32, Vec<u8>) {
    let zip = base64::engine::general_purpose::STANDARD
        .decode(zip_b64.as_str().unwrap())
        .unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    assert_eq!(archive.len(), 1, "one entry");
    let mut entry = archive.by_index(0).unwrap();
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes).unwrap();
    (
        entry.name().to_owned(),
        entry.unix_mode().unwrap_or(0),
        bytes,
    )
}

fn assert_signed(request: &Recorded) {
    let auth = &request.headers["authorization"];
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDDEPLOY/")
            && auth.contains("/eu-west-1/lambda/aws4_request"),
        "{auth}"
    );
    assert!(request.headers.contains_key("x-amz-date"));
}

#[test]
fn deploy_creates_the_function_with_a_zipped_executable_bootstrap() {
    let dir = tempfile::tempdir().unwrap();
    let (bootstrap, bytes) = fake_bootstrap(dir.path());
    let (url, seen) = stand_in(vec![(201, "")]);
    let out = deploy(&url, &bootstrap, &["--role", ROLE, "--timeout", "120"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("created Lambda function"),
        "{}",
        text(&out)
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let create = &seen[0];
    assert_eq!(
        (create.method.as_str(), create.path.as_str()),
        ("POST", "/2015-03-31/functions")
    );
    assert_signed(create);
    let body = &create.body;
    assert_eq!(body["FunctionName"], FUNCTION);
    assert_eq!(body["Runtime"], "provided.al2023");
    assert_eq!(body["Handler"], "bootstrap");
    assert_eq!(body["Role"], ROLE);
    assert_eq!(body["MemorySize"], 2048);
    assert_eq!(body["Timeout"], 120);
    assert_eq!(body["Architectures"], serde_json::json!(["x86_64"]));
    let env = &body["Environment"]["Variables"];
    assert_eq!(env["QUELEA_STORAGE"], "s3");
    assert_eq!(env["QUELEA_BUCKET"], "quelea-jobs");
    assert_eq!(env["QUELEA_S3_ENDPOINT"], "http://127.0.0.1:8333");
    assert_eq!(env["QUELEA_S3_PATH_STYLE"], "true");
    // The function reads storage with its role: no credentials deployed.
    let raw = body.to_string();
    assert!(
        !raw.contains(AWS_SECRET) && !raw.contains(S3_SECRET) && !raw.contains("AKIDDEPLOY"),
        "{raw}"
    );
    let (name, mode, unpacked) = unzip(&body["Code"]["ZipFile"]);
    assert_eq!(name, "bootstrap");
    assert_eq!(mode & 0o777, 0o755, "executable: {mode:o}");
    assert_eq!(unpacked, bytes);
}

#[test]
fn deploy_updates_the_code_of_an_existing_function() {
    let dir = tempfile::tempdir().unwrap();
    let (bootstrap, bytes) = fake_bootstrap(dir.path());
    let (url, seen) = stand_in(vec![(409, "ResourceConflictException"), (200, "")]);
    let out = deploy(&url, &bootstrap, &["--role", ROLE]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("updated the code of"),
        "{}",
        text(&out)
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let update = &seen[1];
    assert_eq!(
        (update.method.as_str(), update.path.as_str()),
        ("PUT", "/2015-03-31/functions/quelea-deploy-test/code")
    );
    assert_signed(update);
    let (name, mode, unpacked) = unzip(&update.body["ZipFile"]);
    assert_eq!((name.as_str(), mode & 0o777), ("bootstrap", 0o755));
    assert_eq!(unpacked, bytes);

    // Without a role only an update is tried.
    let (url, seen) = stand_in(vec![(200, "")]);
    let out = deploy(&url, &bootstrap, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let seen = seen.lock().unwrap().clone();
    assert_eq!((seen.len(), seen[0].method.as_str()), (1, "PUT"));
}

#[test]
fn deploy_errors_say_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (bootstrap, _) = fake_bootstrap(dir.path());

    // No function yet and no role to create it with.
    let (url, _) = stand_in(vec![(404, "ResourceNotFoundException")]);
    let out = deploy(&url, &bootstrap, &[]);
    assert!(
        !out.status.success() && text(&out).contains("--role"),
        "{}",
        text(&out)
    );

    // AWS's refusal is shown as AWS said it.
    let (url, _) = stand_in(vec![(403, "AccessDeniedException")]);
    let out = deploy(&url, &bootstrap, &["--role", ROLE]);
    assert!(
        !out.status.success()
            && text(&out).contains("CreateFunction")
            && text(&out).contains("AccessDeniedException"),
        "{}",
        text(&out)
    );

    // Not a Linux executable.
    let script = dir.path().join("script.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let (url, seen) = stand_in(Vec::new());
    let out = deploy(&url, &script, &["--role", ROLE]);
    assert!(
        !out.status.success() && text(&out).contains("not a Linux executable"),
        "{}",
        text(&out)
    );
    let out = deploy(&url, &dir.path().join("missing"), &["--role", ROLE]);
    assert!(
        !out.status.success() && text(&out).contains("missing"),
        "{}",
        text(&out)
    );
    let out = deploy(&url, &bootstrap, &["--role", ROLE, "--timeout", "901"]);
    assert!(
        !out.status.success() && text(&out).contains("--timeout"),
        "{}",
        text(&out)
    );
    assert!(seen.lock().unwrap().is_empty(), "nothing was sent");
}
