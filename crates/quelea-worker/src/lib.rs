//! quelea's worker runtime.
//!
//! - [`runner_protocol`]: the framed pipe protocol between the runtime and a
//!   runner process (Rust or Python).
//! - [`rust_runner`]: Rust functions registered by name, and the loop a binary
//!   runs when it is started as a runner (the same-binary model).
//! - [`pool`]: the local backend's pool of warm runner processes, with
//!   supervision (timeouts, memory limits, crashes, cancellation).
//! - [`status_writer`]: writes call statuses and large results to storage in
//!   batches, so any process can follow a job.
//! - [`push`]: pushes stored status batches to NATS JetStream or RabbitMQ
//!   for jobs followed with push monitoring.
//! - [`runtime`]: runs one Invocation (function and inputs from storage,
//!   calls on a [`pool::Pool`], statuses to storage); every remote front door
//!   shares it.
//! - [`http_server`]: the runtime as an HTTP service (`quelea worker serve`),
//!   taking signed Invocations.
//! - [`lease`]: the heartbeat a runtime keeps in a job's storage while it
//!   runs calls of the job (a detached job's host, a worker server).

pub mod http_server;
pub mod lease;
pub mod pool;
pub mod push;
pub mod runner_protocol;
pub mod runtime;
pub mod rust_runner;
pub mod status_writer;

/// Errors of the worker runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot start runner `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("runner protocol: {0}")]
    Protocol(String),
    #[error("the worker server needs a shared secret (`QUELEA_HTTP_SECRET` or `http.secret`): it runs code it is sent, so it must never be open")]
    NoSecret,
    #[error("cannot listen on `{addr}`: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
