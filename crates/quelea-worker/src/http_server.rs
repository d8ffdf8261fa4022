//! The HTTP front door: the worker runtime as an HTTP service
//! (`quelea worker serve`).
//!
//! `POST /invoke` takes one signed [`Invocation`] (see `quelea_core::auth`),
//! hands it to the shared worker [`Runtime`] (function and inputs from
//! storage, calls on the same supervised pool the local backend uses,
//! statuses to storage), and answers `202 Accepted` as soon as the calls are
//! queued: the client's fan-out is never held up by how long calls take.
//! `GET /health` needs no signature and tells nothing secret.
//!
//! Answers: 202 accepted; 400 not an Invocation this build reads (wrong
//! protocol version, malformed, no runner for its kind); 401 unsigned,
//! forged, expired or replayed; 404/405 other paths and methods; 413 body
//! over the limit; 422 the function or data object is missing from storage;
//! 503 too many calls queued (retry later); 500 storage failure; 200 with
//! `duplicate` an Invocation whose id was claimed before (by this server or
//! another one sharing the storage, before or after a restart): nothing runs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
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
use quelea_core::model::{now_ts, RunnerKind};
use quelea_core::protocol::{Invocation, Message, PROTOCOL_VERSION};
use quelea_storage::{io_runtime, Storage};

use crate::pool::RunnerCommand;
use crate::push::BrokerUrls;
use crate::runtime::{Refusal, RefusalKind, Runtime, RuntimeConfig};
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

struct State {
    config: ServerConfig,
    runtime: Runtime,
    /// Accepted MACs (decoded: one per request, however it is spelled) and
    /// their timestamps, kept for the replay window.
    seen: Mutex<(HashMap<[u8; 32], u64>, Instant)>,
    /// Invocations being accepted (loading, claiming) but not queued yet:
    /// a graceful stop waits for them too.
    accepting: std::sync::atomic::AtomicU64,
    /// A lease per job with calls here, so followers learn if this server dies.
    leases: Arc<crate::lease::Leases>,
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
        Self::bind_with_brokers(config, storage, BrokerUrls::default())
    }

    /// Like [`Server::bind`], pushing statuses to these brokers for jobs
    /// that ask for push monitoring.
    pub fn bind_with_brokers(
        config: ServerConfig,
        storage: Storage,
        brokers: BrokerUrls,
    ) -> Result<Server> {
        if config.secret.is_empty() {
            return Err(Error::NoSecret);
        }
        let listener = std::net::TcpListener::bind(config.addr).map_err(|source| Error::Bind {
            addr: config.addr.to_string(),
            source,
        })?;
        listener.set_nonblocking(true)?;
        let leases = crate::lease::Leases::new(storage.clone(), "server");
        Ok(Server {
            state: Arc::new(State {
                leases,
                runtime: Runtime::new(
                    RuntimeConfig {
                        workers: config.workers,
                        inline_result_bytes: config.inline_result_bytes,
                        max_queued_calls: config.max_queued_calls,
                        commands: config.commands.clone(),
                        instance_memory_mb: None,
                        brokers,
                    },
                    storage,
                ),
                config,
                seen: Mutex::new((HashMap::new(), Instant::now())),
                accepting: Default::default(),
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
        let queued = || {
            state.runtime.counters().queued.load(Ordering::Relaxed)
                + state.accepting.load(Ordering::Relaxed)
        };
        while queued() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for error in state.runtime.flush() {
            eprintln!("quelea worker: status write failed: {error}");
        }
        Ok(queued())
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

fn refusal_status(kind: RefusalKind) -> StatusCode {
    match kind {
        RefusalKind::Invalid => StatusCode::BAD_REQUEST,
        RefusalKind::Missing => StatusCode::UNPROCESSABLE_ENTITY,
        RefusalKind::Busy => StatusCode::SERVICE_UNAVAILABLE,
        RefusalKind::Storage => StatusCode::INTERNAL_SERVER_ERROR,
        // Answered in `invoke`, as a success that ran nothing.
        RefusalKind::Duplicate => StatusCode::OK,
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
    let c = state.runtime.counters();
    json(
        StatusCode::OK,
        serde_json::json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "protocol_version": PROTOCOL_VERSION,
            "pool_size": state.config.workers,
            "runners": state.runtime.running_kinds(),
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
    if invocation.id.is_none() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the invocation has no `id`: a worker server runs each invocation at most once, by its id",
        );
    }
    match accept(state, invocation).await {
        Ok(calls) => json(
            StatusCode::ACCEPTED,
            serde_json::json!({ "accepted_calls": calls }),
        ),
        // The sender's own retry of a delivery whose answer it lost is fine;
        // a replay learns nothing, and nothing runs again either way.
        Err(refusal) if refusal.kind == RefusalKind::Duplicate => json(
            StatusCode::OK,
            serde_json::json!({ "accepted_calls": 0, "duplicate": refusal.message }),
        ),
        Err(refusal) => refuse(refusal_status(refusal.kind), refusal.message),
    }
}

/// Signature, clock window, then the replay cache (only signed requests
/// enter it, so forged ones cannot fill it).
fn authenticate(state: &State, signed: &SignedHeaders, body: &[u8]) -> Result<(), AuthError> {
    let now = now_ts() as u64;
    let window = state.config.replay_window.as_secs().max(1);
    let mac = auth::verify(&state.config.secret, signed, body, now, window)?;
    let mut seen = lock(&state.seen);
    let (signatures, last_purge) = &mut *seen;
    if last_purge.elapsed() > Duration::from_secs(1) {
        signatures.retain(|_, ts| now.saturating_sub(*ts) <= window * 2);
        *last_purge = Instant::now();
    }
    let ts = signed.timestamp.parse().unwrap_or(now);
    if signatures.insert(mac, ts).is_some() {
        return Err(AuthError::Replayed);
    }
    Ok(())
}

async fn accept(state: &State, invocation: Invocation) -> Result<usize, Refusal> {
    state.accepting.fetch_add(1, Ordering::Relaxed);
    let lease = quelea_core::keys::JobKeys::new(&invocation.executor_id, invocation.job_id)
        .server_lease(&crate::lease::server_lease_name());
    let accepted = match state.runtime.accept(invocation).await {
        // The lease is in storage before the client hears the calls were taken.
        Ok(accepted) => {
            let (leases, remaining) = (state.leases.clone(), accepted.watch_remaining());
            let _ = tokio::task::spawn_blocking(move || leases.add(lease, remaining)).await;
            Ok(accepted.calls)
        }
        Err(refusal) => Err(refusal),
    };
    state.accepting.fetch_sub(1, Ordering::Relaxed);
    accepted
}
