//! `quelea dashboard`, run as a user runs it, asked over real HTTP: it
//! refuses to listen beyond loopback without a token, enforces a token when
//! it has one, never answers with a configured secret, reads the jobs real
//! runners left in storage, and cancels a job running on a real worker
//! server by writing its cancel marker.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use quelea::core::keys::JobKeys;
use quelea::{Executor, MapOptions, RunnerCommand, RunnerKind};

const HTTP_SECRET: &str = "http-secret-7f3a9c1e5b";
const S3_SECRET: &str = "s3-secret-2d8e4a6c0f";
const AWS_SECRET: &str = "aws-secret-9b1d3f5a7c";
const TOKEN: &str = "dashboard-token-4c2e8a0b6d";

/// A running `quelea dashboard`, stopped by PID.
struct Dashboard {
    child: Child,
    url: String,
    addr: String,
}

impl Dashboard {
    fn start(dir: &Path, args: &[&str]) -> Dashboard {
        let config = dir.join("dashboard.yaml");
        // Secrets the dashboard's process has in its config and environment.
        std::fs::write(&config, format!("s3:\n  secret_access_key: {S3_SECRET}\n")).unwrap();
        let mut child = quelea(dir, &config)
            .arg("dashboard")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the dashboard says where it listens");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in `{line}`"))
            .to_owned();
        let addr = url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        Dashboard { child, url, addr }
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        request(&self.addr, "GET", path, headers)
    }

    fn stop(self) {}
}

impl Drop for Dashboard {
    /// By PID, also when a test fails half-way.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stops a worker server when dropped, also when a test fails half-way.
struct ServerGuard(Option<common::WorkerServer>);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if let Some(server) = self.0.take() {
            server.stop();
        }
    }
}

fn quelea(dir: &Path, config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quelea"));
    cmd.env("QUELEA_STORAGE_DIR", dir)
        .env("QUELEA_CONFIG_FILE", config)
        .env("QUELEA_HTTP_SECRET", HTTP_SECRET)
        .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
        .env_remove("QUELEA_DASHBOARD_TOKEN")
        .env_remove("QUELEA_STORAGE")
        .env_remove("QUELEA_BACKEND");
    cmd
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request on its own connection, read to the end.
fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut text =
        format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        text.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("\r\n");
    stream.write_all(text.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in `{head}`"));
    Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

fn runner() -> RunnerCommand {
    RunnerCommand {
        program: env!("CARGO_BIN_EXE_quelea").into(),
        args: Vec::new(),
        env: vec![("QUELEA_RUNNER".into(), "rust".into())],
    }
}

/// Two finished local jobs in `dir`, run by real runners of the `quelea`
/// binary: `M000` with 2 failed calls, `M001` with 10 squares. Returns
/// `M000`'s key.
fn finished_job(dir: &Path) -> String {
    let config = common::storage_builder(dir)
        .set("storage", "localdisk")
        .set("execution.data_cleaner", false)
        .build()
        .unwrap();
    let exec = Executor::builder()
        .config(config)
        .runner(RunnerKind::Rust, runner())
        .build()
        .unwrap();
    let b = quelea_cli::builtins();
    let futures = exec
        .map(
            &b.fail,
            ["pear".to_owned(), "apple".to_owned()],
            MapOptions::default(),
        )
        .unwrap();
    let _ = exec.get_result(&futures, Some(Duration::from_secs(60)));
    let squares = exec
        .map(&b.square, (0..10u64).map(|x| (x, 0)), MapOptions::default())
        .unwrap();
    exec.get_result(&squares, Some(Duration::from_secs(60)))
        .unwrap();
    exec.flush_statuses().unwrap();
    format!("{}-M000", exec.id())
}

#[test]
fn a_bind_beyond_loopback_needs_a_long_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("none.yaml");
    std::fs::write(&config, "").unwrap();
    // Refused before anything listens.
    let out = quelea(dir.path(), &config)
        .args(["dashboard", "--bind", "0.0.0.0:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("refusing to serve the dashboard on 0.0.0.0:0 without a token"),
        "{stderr}"
    );
    let out = quelea(dir.path(), &config)
        .args(["dashboard", "--bind", "0.0.0.0:0"])
        .env("QUELEA_DASHBOARD_TOKEN", "short")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("use at least 16"), "{stderr}");
    let out = quelea(dir.path(), &config)
        .args(["dashboard", "--token", "a token with spaces!"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("only letters, digits"));
}

#[test]
fn a_token_is_enforced_on_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let dashboard = Dashboard::start(dir.path(), &["--bind", "127.0.0.1:0", "--token", TOKEN]);
    assert!(
        dashboard.url.ends_with(&format!("/?token={TOKEN}")),
        "{}",
        dashboard.url
    );
    for path in ["/", "/api/jobs", "/static/app.js", "/job/a1b2c3-0-M000"] {
        let reply = dashboard.get(path, &[]);
        assert_eq!(reply.status, 401, "{path}: {}", reply.body);
        assert!(reply.body.contains("needs its token"), "{}", reply.body);
        assert!(!reply.body.contains(TOKEN));
        let wrong = dashboard.get(
            path,
            &[("Authorization", "Bearer dashboard-token-4c2e8a0b6e")],
        );
        assert_eq!(wrong.status, 401, "{path}");
    }
    // The URL's token answers and becomes a cookie for the page's requests.
    let page = dashboard.get(&format!("/?token={TOKEN}"), &[]);
    assert_eq!(page.status, 200);
    assert!(
        page.head.contains(&format!(
            "quelea_dashboard={TOKEN}; Path=/; HttpOnly; SameSite=Strict"
        )),
        "{}",
        page.head
    );
    assert!(!page.body.contains(TOKEN));
    let cookie = format!("quelea_dashboard={TOKEN}");
    assert_eq!(
        dashboard.get("/api/jobs", &[("Cookie", &cookie)]).status,
        200
    );
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(
        dashboard
            .get("/api/jobs", &[("Authorization", &bearer)])
            .status,
        200
    );
    dashboard.stop();
}

#[test]
fn it_shows_jobs_from_storage_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let failed_job = finished_job(dir.path());
    let squares_job = failed_job.replace("-M000", "-M001");
    let dashboard = Dashboard::start(dir.path(), &["--bind", "127.0.0.1:0"]);
    assert!(
        dashboard.url.starts_with("http://127.0.0.1:"),
        "{}",
        dashboard.url
    );

    let mut replies = Vec::new();
    let jobs = dashboard.get("/api/jobs", &[]);
    assert_eq!(jobs.status, 200, "{}", jobs.body);
    let listing = jobs.json();
    let by_key = |key: &str| {
        listing["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["key"] == key)
            .cloned()
            .unwrap_or_else(|| panic!("{key} not listed: {listing}"))
    };
    let failed = by_key(&failed_job);
    assert_eq!(
        (
            failed["total"].as_u64(),
            failed["done"].as_u64(),
            failed["failed"].as_u64()
        ),
        (Some(2), Some(2), Some(2)),
        "{failed}"
    );
    assert_eq!(failed["function"], "fail");
    assert_eq!(failed["kind"], "map");
    assert_eq!(failed["live"], false);
    let squares = by_key(&squares_job);
    assert_eq!(
        (squares["done"].as_u64(), squares["failed"].as_u64()),
        (Some(10), Some(0))
    );
    assert!(squares["duration_s"].as_f64().unwrap() >= 0.0);
    assert!(
        squares["cost"].is_null(),
        "no billed memory on the local backend"
    );
    replies.push(jobs);

    let detail = dashboard.get(&format!("/api/jobs/{failed_job}"), &[]);
    let body = detail.json();
    assert_eq!(
        body["calls"]["outcome"],
        serde_json::json!([3, 3]),
        "{body}"
    );
    let failures = body["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 2);
    assert_eq!(failures[1]["message"], "refused input `apple`");
    assert_eq!(failures[1]["reason"], "user_error");
    // Unchanged since this version: a small answer.
    let version = body["version"].as_u64().unwrap();
    let again = dashboard.get(&format!("/api/jobs/{failed_job}?v={version}"), &[]);
    assert_eq!(again.json()["unchanged"], true, "{}", again.body);
    replies.push(detail);
    replies.push(again);

    let squares_detail = dashboard
        .get(&format!("/api/jobs/{squares_job}"), &[])
        .json();
    let starts = squares_detail["calls"]["start_us"].as_array().unwrap();
    let ends = squares_detail["calls"]["end_us"].as_array().unwrap();
    assert_eq!(starts.len(), 10);
    assert!(starts
        .iter()
        .zip(ends)
        .all(|(s, e)| s.as_i64().unwrap() >= 0 && e.as_i64() >= s.as_i64()));

    let call = dashboard.get(&format!("/api/jobs/{failed_job}/calls/1"), &[]);
    let c = call.json();
    assert_eq!(c["state"], "error");
    assert_eq!(c["error"]["type"], "BuiltinFailure");
    assert!(c["stats"]["start_ts"].as_f64().is_some(), "{c}");
    replies.push(call);

    // Bad input names what is wrong.
    let bad = dashboard.get("/api/jobs/M000", &[]);
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("is not a job key"), "{}", bad.body);
    let missing = dashboard.get(
        &format!("/api/jobs/{}", failed_job.replace("M000", "M042")),
        &[],
    );
    assert_eq!(missing.status, 404);
    assert!(
        missing.body.contains("is not in local directory"),
        "{}",
        missing.body
    );
    let beyond = dashboard.get(&format!("/api/jobs/{failed_job}/calls/9"), &[]);
    assert_eq!(beyond.status, 404);
    assert!(
        beyond.body.contains("has calls 00000 to 00001, not 00009"),
        "{}",
        beyond.body
    );
    let not_a_number = dashboard.get(&format!("/api/jobs/{failed_job}/calls/x"), &[]);
    assert_eq!(not_a_number.status, 400);
    replies.extend([bad, missing, beyond, not_a_number]);

    // A page of another site cannot reach it by a rebound name.
    let rebound = dashboard.get("/api/jobs", &[("Host", "evil.example:8265")]);
    assert_eq!(rebound.status, 403, "{}", rebound.body);

    for path in [
        "/".to_owned(),
        format!("/job/{failed_job}"),
        "/static/app.js".to_owned(),
        "/static/style.css".to_owned(),
        "/favicon.ico".to_owned(),
        "/nowhere".to_owned(),
    ] {
        let reply = dashboard.get(&path, &[]);
        assert!(reply.head.contains("content-security-policy"), "{path}");
        replies.push(reply);
    }
    assert!(replies
        .iter()
        .any(|r| r.body.contains("<canvas id=\"timeline\"")));
    for reply in &replies {
        for secret in [HTTP_SECRET, S3_SECRET, AWS_SECRET] {
            assert!(
                !reply.head.contains(secret) && !reply.body.contains(secret),
                "a response holds a secret: {}\n{}",
                reply.head,
                reply.body
            );
        }
    }
    dashboard.stop();
}

#[test]
fn cancel_writes_the_marker_and_a_worker_server_stops_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerGuard(Some(common::WorkerServer::start(
        dir.path(),
        "w1",
        HTTP_SECRET,
        "",
        &[],
    )));
    let url = server.0.as_ref().unwrap().url.clone();
    let config = common::storage_builder(dir.path())
        .set("storage", "localdisk")
        .set("backend", "http")
        .set("http.urls", vec![url])
        .set("http.secret", HTTP_SECRET)
        .build()
        .unwrap();
    let exec = Executor::builder()
        .config(config.clone())
        .runner(RunnerKind::Rust, runner())
        .build()
        .unwrap();
    let b = quelea_cli::builtins();
    // 40 calls of 500 ms on 2 runners: 10 s of work unless cancelled.
    let futures = exec
        .map(
            &b.sleep_ms,
            std::iter::repeat_n(500u64, 40),
            MapOptions::default(),
        )
        .unwrap();
    let job = format!("{}-M000", exec.id());
    let dashboard = Dashboard::start(dir.path(), &[]);

    let path = format!("/api/jobs/{job}/cancel");
    let no_header = request(&dashboard.addr, "POST", &path, &[]);
    assert_eq!(no_header.status, 403);
    assert!(
        no_header.body.contains("x-quelea-dashboard"),
        "{}",
        no_header.body
    );
    let cross_site = request(
        &dashboard.addr,
        "POST",
        &path,
        &[
            ("X-Quelea-Dashboard", "cancel"),
            ("Origin", "http://evil.example"),
        ],
    );
    assert_eq!(cross_site.status, 403, "{}", cross_site.body);
    let get = dashboard.get(&path, &[]);
    assert_eq!(get.status, 405);
    let storage = quelea::storage::Storage::from_config(&config).unwrap();
    let keys = JobKeys::new(exec.id(), "M000".parse().unwrap());
    assert!(
        storage.head_blocking(&keys.cancelled()).is_err(),
        "nothing cancelled yet"
    );

    let origin = format!("http://{}", dashboard.addr);
    let cancelled = request(
        &dashboard.addr,
        "POST",
        &path,
        &[("X-Quelea-Dashboard", "cancel"), ("Origin", &origin)],
    );
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert!(storage.head_blocking(&keys.cancelled()).is_ok());

    // The worker server sees the marker and ends every call as cancelled,
    // long before the 10 s the calls would take.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(8);
    let summary = loop {
        let listing = dashboard.get("/api/jobs", &[]).json();
        let this = listing["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["key"] == job)
            .cloned()
            .unwrap();
        if this["done"] == 40 || Instant::now() > deadline {
            break this;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(summary["done"], 40, "{summary}");
    assert_eq!(summary["cancelled"], true);
    assert_eq!(summary["live"], false);
    let detail = dashboard.get(&format!("/api/jobs/{job}"), &[]).json();
    let outcomes = detail["calls"]["outcome"].as_array().unwrap();
    let cancelled_calls = outcomes.iter().filter(|o| o.as_u64() == Some(7)).count();
    assert!(cancelled_calls >= 30, "{outcomes:?}");
    drop(futures);
    dashboard.stop();
    drop(server);
}
