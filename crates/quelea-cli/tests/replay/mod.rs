//! The replay test of the HTTP front door: a recording proxy (a real HTTP
//! proxy on 127.0.0.1, between the client and `quelea worker serve`)
//! captures the signed Invocations of a real map; then each is sent again,
//! as a captured request could be: unchanged and with other spellings to the
//! same server, to a second server with the same secret, and to the first
//! one after a restart. Nothing may run twice, counted in storage: one final
//! status per call, one claim per Invocation.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use quelea::core::auth;
use quelea::core::keys::JobKeys;
use quelea::MapOptions;
use quelea_conformance::{check, final_statuses};

use super::common::{storage_builder, WorkerServer};
use super::{request, Fixture, SECRET};

/// One captured request: its headers (lower-cased names) and body.
#[derive(Clone, Debug)]
struct Captured {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Captured {
    fn header(&self, name: &str) -> String {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    /// The three signature headers, with `signature` in place of the captured one.
    fn signed_with(&self, signature: String) -> Vec<(&'static str, String)> {
        vec![
            (auth::TIMESTAMP_HEADER, self.header(auth::TIMESTAMP_HEADER)),
            (auth::NONCE_HEADER, self.header(auth::NONCE_HEADER)),
            (auth::SIGNATURE_HEADER, signature),
        ]
    }

    fn as_sent(&self) -> Vec<(&'static str, String)> {
        self.signed_with(self.header(auth::SIGNATURE_HEADER))
    }
}

/// A recording HTTP/1.1 proxy to one upstream: each request is read whole,
/// recorded, forwarded on a connection of its own, and its answer relayed;
/// then the client connection is closed (`Connection: close`), so the client
/// opens a new one for its next request.
struct RecordingProxy {
    addr: String,
    captured: Arc<Mutex<Vec<Captured>>>,
}

impl RecordingProxy {
    fn start(upstream: &str) -> RecordingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let captured = Arc::new(Mutex::new(Vec::new()));
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let record = captured.clone();
        // Ends with the test binary; it only ever talks to 127.0.0.1.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let upstream = upstream.clone();
                let record = record.clone();
                std::thread::spawn(move || {
                    let _ = relay(stream, &upstream, &record);
                });
            }
        });
        RecordingProxy { addr, captured }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn captured(&self) -> Vec<Captured> {
        self.captured.lock().unwrap().clone()
    }
}

fn relay(client: TcpStream, upstream: &str, record: &Mutex<Vec<Captured>>) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    record.lock().unwrap().push(Captured {
        headers: headers.clone(),
        body: body.clone(),
    });
    let mut server = TcpStream::connect(upstream)?;
    server.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = request_line;
    for (name, value) in &headers {
        if name != "connection" {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("connection: close\r\n\r\n");
    server.write_all(head.as_bytes())?;
    server.write_all(&body)?;
    let mut answer = Vec::new();
    server.read_to_end(&mut answer)?;
    let mut client = client;
    client.write_all(&answer)?;
    client.shutdown(std::net::Shutdown::Both)
}

/// Waits until the storage holds `calls` final statuses, then a little
/// longer (a second run would have shown by then), and checks that each
/// call of the job has exactly one.
fn each_call_ran_once(
    storage: &quelea::storage::Storage,
    keys: &JobKeys,
    calls: u32,
) -> Result<(), Failed> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while final_statuses(storage, keys).len() < calls as usize && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(800));
    let statuses = final_statuses(storage, keys);
    check(
        statuses.len() == calls as usize && statuses.values().all(|s| s.len() == 1),
        format!("one final status per call: {statuses:?}"),
    )
}

/// The servers of a test, stopped by PID however the test ends.
struct Servers(Vec<WorkerServer>);

impl Drop for Servers {
    fn drop(&mut self) {
        for server in self.0.drain(..) {
            server.stop();
        }
    }
}

pub(crate) fn captured_invocations_never_run_twice(fx: &Fixture) -> Result<(), Failed> {
    let dir = fx.dir.path();
    let mut servers = Servers(vec![
        WorkerServer::start(dir, "replay-a", SECRET, "{}\n", &[]),
        WorkerServer::start(dir, "replay-b", SECRET, "{}\n", &[]),
    ]);
    let first_url = servers.0[0].url.clone();
    let second_url = servers.0[1].url.clone();
    let proxy = RecordingProxy::start(&first_url);

    // A real map through the proxy: 6 Invocations of one call each.
    let config = storage_builder(dir)
        .set("backend", "http")
        .set("http.urls", vec![proxy.url()])
        .set("http.secret", SECRET)
        .build()?;
    let exec = quelea::Executor::with_config(config)?;
    let b = quelea_cli::builtins();
    let inputs: Vec<(u64, u64)> = (0..6).map(|i| (i, 0)).collect();
    let futures = exec.map(&b.square, inputs, MapOptions::default())?;
    let results = exec.get_result(&futures, Some(Duration::from_secs(60)))?;
    check(results.len() == 6, format!("{results:?}"))?;
    let keys = JobKeys::new(exec.id(), futures.get(0).unwrap().job_id());
    let storage = exec.storage().clone();
    each_call_ran_once(&storage, &keys, 6)?;
    let captured: Vec<Captured> = proxy
        .captured()
        .into_iter()
        .filter(|c| !c.body.is_empty())
        .collect();
    check(
        captured.len() == 6,
        format!("{} invocations captured", captured.len()),
    )?;
    let claims = storage.list_blocking(&format!("{}claims/", keys.prefix()))?;
    check(
        claims.len() == 6,
        format!("one claim per invocation: {claims:?}"),
    )?;

    let addr = |url: &str| url.trim_start_matches("http://").to_owned();
    let (first, second) = (first_url.as_str(), second_url.as_str());
    for c in &captured {
        let signature = c.header(auth::SIGNATURE_HEADER);
        // The same server, unchanged: its replay cache refuses it.
        let (code, text) = request(&addr(first), "POST", "/invoke", &c.as_sent(), &c.body);
        check(
            code == 401 && text.contains("replay"),
            format!("same server: {code} {text}"),
        )?;
        // Other spellings of the same MAC are not accepted at all.
        let digits = signature.trim_start_matches("v1=");
        for other in [
            format!("v1={}", digits.to_ascii_uppercase()),
            format!("v1=+{digits}"),
            format!("V1={digits}"),
            format!("v1={digits} "),
        ] {
            let (code, text) = request(
                &addr(first),
                "POST",
                "/invoke",
                &c.signed_with(other.clone()),
                &c.body,
            );
            check(code == 401, format!("`{other}`: {code} {text}"))?;
        }
        // The body re-encoded (the same JSON, other bytes) or its id changed
        // breaks the MAC.
        let value: serde_json::Value = serde_json::from_slice(&c.body)?;
        let pretty = serde_json::to_vec_pretty(&value)?;
        let mut renamed = value.clone();
        renamed["id"] = "someone-else-1".into();
        for body in [pretty, serde_json::to_vec(&renamed)?] {
            let (code, text) = request(&addr(first), "POST", "/invoke", &c.as_sent(), &body);
            check(
                code == 401 && text.contains("signature"),
                format!("altered body: {code} {text}"),
            )?;
        }
        // A second server with the same secret has no memory of it, but the
        // claim in the shared storage says it ran: 200, nothing runs.
        let (code, text) = request(&addr(second), "POST", "/invoke", &c.as_sent(), &c.body);
        check(
            code == 200 && text.contains("duplicate"),
            format!("second server: {code} {text}"),
        )?;
    }

    // The first server restarted (its replay cache gone): still nothing runs.
    servers.0.remove(0).stop();
    let restarted = WorkerServer::start(dir, "replay-a", SECRET, "{}\n", &[]);
    let restarted_url = restarted.url.clone();
    servers.0.push(restarted);
    for c in &captured {
        let (code, text) = request(
            &addr(&restarted_url),
            "POST",
            "/invoke",
            &c.as_sent(),
            &c.body,
        );
        check(
            code == 200 && text.contains("duplicate"),
            format!("after a restart: {code} {text}"),
        )?;
    }
    each_call_ran_once(&storage, &keys, 6)?;
    drop(servers);
    // No claim was added by the replays.
    let claims = storage.list_blocking(&format!("{}claims/", keys.prefix()))?;
    check(claims.len() == 6, format!("{claims:?}"))
}

/// A signed Invocation without an id is refused (400) by a worker server:
/// it could not be run at most once.
pub(crate) fn invocations_without_an_id_are_refused(fx: &Fixture) -> Result<(), Failed> {
    let (body, keys) = super::own_invocation(fx);
    let mut value: serde_json::Value = serde_json::from_slice(&body)?;
    value.as_object_mut().unwrap().remove("id");
    let body = serde_json::to_vec(&value)?;
    let addr = fx.guarded.trim_start_matches("http://");
    let (code, text) = request(
        addr,
        "POST",
        "/invoke",
        &super::signed(&body, super::now()),
        &body,
    );
    check(
        code == 400 && text.contains("`id`"),
        format!("{code} {text}"),
    )?;
    super::nothing_ran(fx, &keys)
}

/// Issue case 3 through `quelea worker serve`: a signed Invocation with a
/// timeout no `Duration` holds, or a hash that is not a hex digest (`..`),
/// gets a 400 naming the field; the connection is answered, nothing runs,
/// and the server goes on serving.
pub(crate) fn absurd_numbers_and_hashes_get_a_named_400(fx: &Fixture) -> Result<(), Failed> {
    let (body, keys) = super::own_invocation(fx);
    let value: serde_json::Value = serde_json::from_slice(&body)?;
    let addr = fx.guarded.trim_start_matches("http://");
    for (pointer, bad, named) in [
        ("/timeout_s", serde_json::json!(1e30), "timeout_s"),
        ("/timeout_s", serde_json::json!(-1.0), "timeout_s"),
        (
            "/memory_limit_mb",
            serde_json::json!(u64::MAX),
            "memory_limit_mb",
        ),
        ("/function/hash", serde_json::json!("../../etc"), "hash"),
        ("/calls/0/count", serde_json::json!(0), "count"),
        ("/id", serde_json::json!("a/../b"), "id"),
    ] {
        let mut altered = value.clone();
        // `count` 1 is left out of the encoding: put the field in first.
        altered["calls"][0]["count"] = 1.into();
        *altered.pointer_mut(pointer).unwrap() = bad.clone();
        let body = serde_json::to_vec(&altered)?;
        let (code, text) = request(
            addr,
            "POST",
            "/invoke",
            &super::signed(&body, super::now()),
            &body,
        );
        check(
            code == 400 && text.contains(named),
            format!("{pointer} = {bad}: {code} {text}"),
        )?;
    }
    let (code, _) = request(addr, "GET", "/health", &[], b"");
    check(code == 200, format!("health after: {code}"))?;
    super::nothing_ran(fx, &keys)
}
