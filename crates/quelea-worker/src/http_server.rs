//! The HTTP front door: the worker runtime as an HTTP service
//! (`quelea worker serve`).
//!
//! `POST /invoke` takes one signed [`Invocation`] (see `quelea_core::auth`),
//! checks it, loads the function (cached per content hash) and the inputs
//! from storage, queues the calls on the same supervised [`Pool`] the local
//! backend uses, and answers `202 Accepted` at once: the client's fan-out is
//! never held up by how long calls take. Statuses and results go to storage
//! through the same [`StatusWriter`], which is how the client follows them.
//! `GET /health` needs no signature and tells nothing secret.
//!
//! Answers: 202 accepted; 400 not an Invocation this build reads (wrong
//! protocol version, malformed, no runner for its kind); 401 unsigned,
//! forged, expired or replayed; 404/405 other paths and methods; 413 body
//! over the limit; 422 the function or data object is missing from storage;
//! 503 too many calls queued (retry later); 500 storage failure.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use quelea_core::auth::{self, AuthError, SignedHeaders};
use quelea_core::ids::CallId;
use quelea_core::keys::{self, JobKeys};
use quelea_core::model::{now_ts, CallStats, RunnerKind};
use quelea_core::protocol::{CallInput, Invocation, Message, PROTOCOL_VERSION};
use quelea_storage::{io_runtime, Storage};

use crate::pool::{
    Completion, JobContext, JobSink, Pool, PoolConfig, PoolFunction, RunnerCommand, Task,
};
use crate::status_writer::{finished_status, JobTarget, StatusWriter};
use crate::{Error, Result};

/// How a worker server runs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    /// The shared secret requests are signed with; never empty.
    pub secret: Vec<u8>,
    pub replay_window: Duration,
    pub max_body_bytes: u64,
    pub max_queued_calls: u64,
    /// Runner processes per runner kind.
    pub workers: u32,
    pub inline_result_bytes: u64,
    /// How to start runners, per kind; a kind without one is refused.
    pub commands: HashMap<RunnerKind, RunnerCommand>,
}

/// Slow or stalled clients must not hold a connection's task forever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// A job's status target is forgotten after this long without Invocations
/// (a later one simply gets a new target; batch keys never collide).
const TARGET_IDLE: Duration = Duration::from_secs(600);

struct State {
    config: ServerConfig,
    storage: Storage,
    writer: Arc<StatusWriter>,
    pools: Mutex<HashMap<RunnerKind, Arc<Pool>>>,
    functions: Mutex<HashMap<String, Arc<PoolFunction>>>,
    targets: Mutex<HashMap<String, (Arc<JobTarget>, Instant)>>,
    /// Accepted signatures and their timestamps, kept for the replay window.
    seen: Mutex<(HashMap<String, u64>, Instant)>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    /// Accepted calls that have not finished.
    queued: AtomicU64,
    running: AtomicU64,
    invocations: AtomicU64,
    calls: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A bound worker server; [`Server::run`] serves until stopped through its
/// [`StopHandle`].
pub struct Server {
    state: Arc<State>,
    listener: std::net::TcpListener,
    stop: StopHandle,
}

/// Stops a running [`Server`] gracefully (a platform's SIGTERM): it stops
/// accepting, lets accepted calls finish for up to the drain time, and
/// writes every status before `run` returns.
#[derive(Clone, Default)]
pub struct StopHandle(Arc<tokio::sync::Notify>);

impl StopHandle {
    pub fn stop(&self) {
        self.0.notify_one();
    }
}

impl Server {
    /// Checks the config and binds the listening socket.
    pub fn bind(config: ServerConfig, storage: Storage) -> Result<Server> {
        if config.secret.is_empty() {
            return Err(Error::NoSecret);
        }
        let listener = std::net::TcpListener::bind(config.addr).map_err(|source| Error::Bind {
            addr: config.addr.to_string(),
            source,
        })?;
        listener.set_nonblocking(true)?;
        Ok(Server {
            state: Arc::new(State {
                config,
                storage,
                writer: Arc::new(StatusWriter::new()),
                pools: Mutex::new(HashMap::new()),
                functions: Mutex::new(HashMap::new()),
                targets: Mutex::new(HashMap::new()),
                seen: Mutex::new((HashMap::new(), Instant::now())),
                counters: Arc::new(Counters::default()),
            }),
            listener,
            stop: StopHandle::default(),
        })
    }

    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves requests until stopped; then drains for up to `drain`.
    /// Returns how many accepted calls had not finished by then.
    pub fn run(self, drain: Duration) -> Result<u64> {
        let runtime = io_runtime();
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(self.listener)?
        };
        let state = self.state;
        let stop = self.stop.0;
        let serving = state.clone();
        runtime.block_on(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = stop.notified() => break,
                };
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        eprintln!("quelea worker: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let deadline = Instant::now() + drain;
        while state.counters.queued.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for error in state.writer.flush() {
            eprintln!("quelea worker: status write failed: {error}");
        }
        Ok(state.counters.queued.load(Ordering::Relaxed))
    }
}

type Answer = Response<Full<Bytes>>;

fn json(status: StatusCode, body: serde_json::Value) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn refuse(status: StatusCode, message: impl std::fmt::Display) -> Answer {
    let mut answer = json(status, serde_json::json!({ "error": message.to_string() }));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        answer
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    answer
}

/// Why an Invocation was not accepted; becomes the answer.
struct Refusal {
    status: StatusCode,
    message: String,
}

fn refusal(status: StatusCode, message: impl std::fmt::Display) -> Refusal {
    Refusal {
        status,
        message: message.to_string(),
    }
}

async fn handle(state: &State, req: Request<Incoming>) -> Answer {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => health(state),
        (&Method::POST, "/invoke") => invoke(state, req).await,
        (_, "/health" | "/invoke") => refuse(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        (_, path) => refuse(StatusCode::NOT_FOUND, format!("no route `{path}`")),
    }
}

fn health(state: &State) -> Answer {
    let c = &state.counters;
    json(
        StatusCode::OK,
        serde_json::json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "protocol_version": PROTOCOL_VERSION,
            "pool_size": state.config.workers,
            "runners": lock(&state.pools).keys().collect::<Vec<_>>(),
            "queued_calls": c.queued.load(Ordering::Relaxed),
            "running_calls": c.running.load(Ordering::Relaxed),
            "invocations": c.invocations.load(Ordering::Relaxed),
            "calls": c.calls.load(Ordering::Relaxed),
        }),
    )
}

fn header(req: &Request<Incoming>, name: &'static str) -> Result<String, AuthError> {
    req.headers()
        .get(name)
        .ok_or(AuthError::Missing(name))?
        .to_str()
        .map(str::to_owned)
        .map_err(|_| AuthError::Malformed(name))
}

async fn invoke(state: &State, req: Request<Incoming>) -> Answer {
    let limit = state.config.max_body_bytes;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over the server's limit of {limit} bytes"),
        );
    }
    let signed = match (|| {
        Ok::<_, AuthError>(SignedHeaders {
            timestamp: header(&req, auth::TIMESTAMP_HEADER)?,
            nonce: header(&req, auth::NONCE_HEADER)?,
            signature: header(&req, auth::SIGNATURE_HEADER)?,
        })
    })() {
        Ok(signed) => signed,
        Err(e) => return refuse(StatusCode::UNAUTHORIZED, e),
    };
    let body = Limited::new(req.into_body(), limit as usize);
    let body = match tokio::time::timeout(BODY_READ_TIMEOUT, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over the server's limit of {limit} bytes"),
            )
        }
        Ok(Err(e)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            )
        }
        Err(_) => {
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                "the body took too long to arrive",
            )
        }
    };
    if let Err(e) = authenticate(state, &signed, &body) {
        return refuse(StatusCode::UNAUTHORIZED, e);
    }
    let invocation = match Message::decode(&body) {
        Ok(Message::Invocation(invocation)) => invocation,
        Ok(_) => return refuse(StatusCode::BAD_REQUEST, "expected an `invocation` message"),
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    match accept(state, invocation).await {
        Ok(calls) => json(
            StatusCode::ACCEPTED,
            serde_json::json!({ "accepted_calls": calls }),
        ),
        Err(refusal) => refuse(refusal.status, refusal.message),
    }
}

/// Signature, clock window, then the replay cache (only signed requests
/// enter it, so forged ones cannot fill it).
fn authenticate(state: &State, signed: &SignedHeaders, body: &[u8]) -> Result<(), AuthError> {
    let now = now_ts() as u64;
    let window = state.config.replay_window.as_secs().max(1);
    auth::verify(&state.config.secret, signed, body, now, window)?;
    let mut seen = lock(&state.seen);
    let (signatures, last_purge) = &mut *seen;
    if last_purge.elapsed() > Duration::from_secs(1) {
        signatures.retain(|_, ts| now.saturating_sub(*ts) <= window * 2);
        *last_purge = Instant::now();
    }
    let ts = signed.timestamp.parse().unwrap_or(now);
    if signatures.insert(signed.signature.clone(), ts).is_some() {
        return Err(AuthError::Replayed);
    }
    Ok(())
}

async fn accept(state: &State, invocation: Invocation) -> Result<usize, Refusal> {
    let n = invocation.calls.len();
    if n == 0 {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "the invocation has no calls",
        ));
    }
    if !(invocation.timeout_s.is_finite() && invocation.timeout_s > 0.0) {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            format!("`timeout_s` must be positive, got {}", invocation.timeout_s),
        ));
    }
    let counters = &state.counters;
    if counters.queued.load(Ordering::Relaxed) + n as u64 > state.config.max_queued_calls {
        return Err(refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} calls are queued, the limit is {}",
                counters.queued.load(Ordering::Relaxed),
                state.config.max_queued_calls
            ),
        ));
    }
    let kind = invocation.function.runner;
    let pool = pool(state, kind)?;
    let function = function(state, &pool, &invocation).await?;
    let inputs = inputs(state, &invocation).await?;
    let keys = JobKeys::new(&invocation.executor_id, invocation.job_id);
    let target = target(state, keys);
    let sink = Arc::new(ServerSink {
        target,
        writer: state.writer.clone(),
        submit_ts: invocation.submit_ts,
        counters: counters.clone(),
    });
    let ctx = Arc::new(JobContext::new(
        pool.next_job_serial(),
        function,
        Duration::from_secs_f64(invocation.timeout_s),
        invocation.memory_limit_mb.map(|mb| mb << 20),
        sink,
    ));
    let tasks: Vec<Task> = invocation
        .calls
        .iter()
        .zip(inputs)
        .map(|(call, input)| Task {
            ctx: ctx.clone(),
            call_id: call.call_id,
            input,
        })
        .collect();
    counters.queued.fetch_add(n as u64, Ordering::Relaxed);
    counters.invocations.fetch_add(1, Ordering::Relaxed);
    counters.calls.fetch_add(n as u64, Ordering::Relaxed);
    pool.submit(tasks);
    Ok(n)
}

fn pool(state: &State, kind: RunnerKind) -> Result<Arc<Pool>, Refusal> {
    let mut pools = lock(&state.pools);
    if let Some(pool) = pools.get(&kind) {
        return Ok(pool.clone());
    }
    let Some(command) = state.config.commands.get(&kind) else {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            format!("this server has no runner for {kind:?} functions"),
        ));
    };
    let pool = Arc::new(Pool::new(PoolConfig {
        workers: state.config.workers,
        command: command.clone(),
    }));
    pools.insert(kind, pool.clone());
    Ok(pool)
}

fn storage_refusal(what: &str, key: &str, e: quelea_storage::Error) -> Refusal {
    match e {
        quelea_storage::Error::NotFound { .. } => refusal(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the {what} `{key}` is not in this server's storage"),
        ),
        other => refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the {what} `{key}`: {other}"),
        ),
    }
}

async fn function(
    state: &State,
    pool: &Pool,
    invocation: &Invocation,
) -> Result<Arc<PoolFunction>, Refusal> {
    let hash = &invocation.function.hash;
    if let Some(function) = lock(&state.functions).get(hash) {
        return Ok(function.clone());
    }
    let key = keys::function(&invocation.executor_id, hash);
    let payload = state
        .storage
        .get(&key)
        .await
        .map_err(|e| storage_refusal("function object", &key, e))?;
    // Two Invocations may race to load it: the first one in wins.
    Ok(lock(&state.functions)
        .entry(hash.clone())
        .or_insert_with(|| pool.function(payload.to_vec()))
        .clone())
}

/// The calls' inputs; ranges are read with one GET spanning them all.
async fn inputs(state: &State, invocation: &Invocation) -> Result<Vec<Vec<u8>>, Refusal> {
    let ranges: Vec<(u64, u64)> = invocation
        .calls
        .iter()
        .filter_map(|c| match c.input {
            CallInput::Range { start, end } => Some((start, end)),
            CallInput::Inline(_) => None,
        })
        .collect();
    let span = match (
        ranges.iter().map(|r| r.0).min(),
        ranges.iter().map(|r| r.1).max(),
    ) {
        (Some(lo), Some(hi)) if ranges.iter().all(|(s, e)| s <= e) => Some(lo..hi),
        (None, None) => None,
        _ => {
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                "a call has an empty range",
            ))
        }
    };
    let data = match &span {
        Some(span) => {
            let key = JobKeys::new(&invocation.executor_id, invocation.job_id).data();
            Some(
                state
                    .storage
                    .get_range(&key, span.clone())
                    .await
                    .map_err(|e| storage_refusal("data object", &key, e))?,
            )
        }
        None => None,
    };
    invocation
        .calls
        .iter()
        .map(|call| match &call.input {
            CallInput::Inline(bytes) => Ok(bytes.clone()),
            CallInput::Range { start, end } => {
                let base = span.as_ref().map_or(0, |s| s.start);
                data.as_ref()
                    .and_then(|d| d.get((start - base) as usize..(end - base) as usize))
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| {
                        refusal(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            format!(
                                "call {} names bytes {start}..{end} outside the job's data",
                                call.call_id
                            ),
                        )
                    })
            }
        })
        .collect()
}

fn target(state: &State, keys: JobKeys) -> Arc<JobTarget> {
    let mut targets = lock(&state.targets);
    let now = Instant::now();
    targets.retain(|_, (_, used)| now.duration_since(*used) < TARGET_IDLE);
    let entry = targets.entry(keys.prefix().to_owned()).or_insert_with(|| {
        (
            Arc::new(JobTarget::new(
                keys,
                state.storage.clone(),
                state.config.inline_result_bytes,
            )),
            now,
        )
    });
    entry.1 = now;
    entry.0.clone()
}

/// Call events of one Invocation: to storage, and to the health counters.
struct ServerSink {
    target: Arc<JobTarget>,
    writer: Arc<StatusWriter>,
    submit_ts: f64,
    counters: Arc<Counters>,
}

impl JobSink for ServerSink {
    fn started(&self, call_id: CallId, worker_id: u32, ts: f64) {
        self.counters.running.fetch_add(1, Ordering::Relaxed);
        self.writer.started(
            &self.target,
            call_id,
            CallStats {
                submit_ts: self.submit_ts,
                start_ts: Some(ts),
                worker_id: Some(worker_id),
                ..CallStats::default()
            },
        );
    }

    fn completed(&self, completion: Completion) {
        let sub = |counter: &AtomicU64| {
            let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
        };
        sub(&self.counters.queued);
        if completion.start_ts.is_some() {
            sub(&self.counters.running);
        }
        let status = finished_status(self.submit_ts, &completion);
        self.writer
            .finished(&self.target, status, completion.outcome.ok());
    }
}
