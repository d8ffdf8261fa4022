//! The client's errors.

use std::time::Duration;

use quelea_core::ids::CallId;
use quelea_core::model::CallError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Config(#[from] quelea_core::Error),
    #[error(transparent)]
    Storage(#[from] quelea_storage::Error),
    #[error(transparent)]
    Worker(#[from] quelea_worker::Error),
    /// A call failed remotely; carries the remote message and traceback.
    #[error("call {call_id} of job {job_key} failed: {error}{}", traceback_suffix(.error))]
    CallFailed {
        job_key: String,
        call_id: CallId,
        error: Box<CallError>,
    },
    #[error("timed out after {:.3} s waiting for {pending} call(s)", waited.as_secs_f64())]
    Timeout { waited: Duration, pending: usize },
    #[error("interrupted (Ctrl-C); the job was cancelled")]
    Interrupted,
    #[error("cannot serialize {what}: {message}")]
    Serialize { what: String, message: String },
    #[error("cannot deserialize the result of call {call_id} of job {job_key} as `{type_name}`: {message}")]
    Deserialize {
        job_key: String,
        call_id: CallId,
        type_name: &'static str,
        message: String,
    },
    #[error("invalid argument `{name}`: {message}")]
    InvalidArgument { name: &'static str, message: String },
    #[error("the {backend} backend cannot deliver Invocations: {message}")]
    Invoke {
        backend: &'static str,
        message: String,
    },
    /// Push monitoring was asked for and its broker cannot be reached.
    #[error("push monitoring through {broker} at {url} is unavailable: {message}")]
    Monitor {
        broker: &'static str,
        /// With any password redacted.
        url: String,
        message: String,
    },
    #[error("invalid job handle: {0}")]
    Handle(String),
    #[error(transparent)]
    Partition(Box<quelea_partition::Error>),
}

fn traceback_suffix(error: &CallError) -> String {
    if error.traceback.is_empty() {
        String::new()
    } else {
        format!("\nremote traceback:\n{}", error.traceback)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
