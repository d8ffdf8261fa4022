//! The job and call model: what a job is, the states a call goes through, why
//! a call failed, and the stats recorded for it.

use serde::{Deserialize, Serialize};

use crate::ids::{CallId, ExecutorId, JobId};

/// Seconds since the Unix epoch, as Lithops records its timestamps.
pub fn now_ts() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Which runner executes a function: the payload format follows from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerKind {
    /// A Rust function registered by name in the driver binary; arguments and
    /// results are JSON through serde.
    Rust,
    /// A cloudpickled Python function run by `python -m quelea.worker`.
    Python,
}

/// A function as stored once per content hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionSpec {
    pub runner: RunnerKind,
    /// Human-readable name (the Rust registration name, the Python qualname).
    pub name: String,
    /// Hex SHA-256 of the payload; the storage key of the function object.
    pub hash: String,
}

/// Everything a reader needs to follow a job from storage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub executor_id: ExecutorId,
    pub job_id: JobId,
    pub function: FunctionSpec,
    pub total_calls: u32,
    pub chunksize: u32,
    /// Per-call time limit in seconds.
    pub timeout_s: f64,
    /// Per-runner resident memory limit; `None` is unlimited.
    pub memory_limit_mb: Option<u64>,
    pub submit_ts: f64,
    /// Where workers also push the job's status batches; `None` is storage
    /// only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushChannel>,
    /// Which failed calls run again, and how often.
    #[serde(default, skip_serializing_if = "crate::retry::RetryPolicy::is_none")]
    pub retry: crate::retry::RetryPolicy,
}

/// Where a job's status batches are pushed: a broker kind and a channel
/// name, never a URL or a credential (each side takes the broker URL from
/// its own config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PushChannel {
    /// A NATS subject captured by a JetStream stream.
    Nats { subject: String },
    /// A RabbitMQ direct exchange and routing key.
    Rabbitmq {
        exchange: String,
        routing_key: String,
    },
}

impl JobSpec {
    /// `<executor_id>-<job_id>`, the name Lithops users know a job by.
    pub fn job_key(&self) -> String {
        format!("{}-{}", self.executor_id, self.job_id)
    }
}

/// The life of a call. `Success` and `Error` are terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    New,
    Invoked,
    Running,
    Success,
    Error,
}

impl CallState {
    pub fn is_terminal(self) -> bool {
        matches!(self, CallState::Success | CallState::Error)
    }
}

/// Why a call ended in `Error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The function raised (Python) or returned an error or panicked (Rust).
    UserError,
    /// The call ran past its `timeout`; its runner was killed and replaced.
    Timeout,
    /// The runner went over its memory limit and was killed.
    OutOfMemory,
    /// The runner died on its own (signal or exit) while running the call.
    WorkerCrashed,
    /// The job was cancelled before the call finished.
    Cancelled,
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailureReason::UserError => "user error",
            FailureReason::Timeout => "timeout",
            FailureReason::OutOfMemory => "out of memory",
            FailureReason::WorkerCrashed => "worker crashed",
            FailureReason::Cancelled => "cancelled",
        })
    }
}

/// A failed call: why, and what the remote side said.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallError {
    pub reason: FailureReason,
    /// The remote exception type (`ValueError`, `panic`, ...) or the reason.
    pub error_type: String,
    pub message: String,
    /// The remote traceback or backtrace, when there is one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub traceback: String,
    /// The runner's own encoding of the exception (a pickled Python
    /// exception), so a client can re-raise the original type.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "b64_opt")]
    pub payload: Option<Vec<u8>>,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.error_type, self.reason, self.message)
    }
}

/// Stats recorded for every call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CallStats {
    pub submit_ts: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ts: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ts: Option<f64>,
    /// The runner that ran the call (a pool slot number locally).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<u32>,
    /// True for the first call a fresh runner process ran.
    #[serde(default)]
    pub cold_start: bool,
    /// The runner's peak resident memory after the call, in bytes.
    #[serde(default)]
    pub peak_memory_bytes: u64,
    #[serde(default)]
    pub result_size: u64,
    /// The memory of the function instance that ran the call, in MB, where
    /// the platform bills by it (Lambda's configured memory size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// Which run of the call this is: 0 the first, `k` its `k`-th retry.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Where a successful call's result lives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultRef {
    Inline(#[serde(with = "b64")] Vec<u8>),
    /// Too large to inline: the object at this key under the job's prefix.
    Object {
        key: String,
        size: u64,
    },
    /// Too large to inline, and kept in memory by the process that submitted
    /// the job (the local backend's client): it writes the object at
    /// `output/<call>` when it hands the job out (`job_handle`), so a reader
    /// elsewhere finds it there, or is told where it stayed.
    Held {
        size: u64,
    },
}

/// One call's status as stored and pushed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallStatus {
    pub call_id: CallId,
    /// How many consecutive calls from `call_id` this status stands for: a
    /// batch whose elements all succeeded shares one result (the runner's
    /// encoding of all their values, see [`Output::Shared`]) and one record.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub count: u32,
    pub state: CallState,
    pub stats: CallStats,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CallError>,
    /// This attempt failed and the call runs again (attempt + 1): the
    /// record is not the call's final status, only its history.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retried: bool,
}

impl CallStatus {
    /// The call's final status (success, or an error that is not retried).
    pub fn is_final(&self) -> bool {
        self.state.is_terminal() && !self.retried
    }
}

/// Base64 for byte payloads inside JSON documents.
fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// A successful call's result bytes: its own, or its element of the result
/// its batch shares (the runner's encoding of every element's value at once,
/// which the front end decodes once for all of them).
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Own(Vec<u8>),
    Shared {
        blob: std::sync::Arc<Vec<u8>>,
        index: u32,
        count: u32,
    },
}

impl Output {
    /// The bytes as stored: the call's own, or the whole shared blob.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Output::Own(bytes) => bytes,
            Output::Shared { blob, .. } => blob,
        }
    }
}

pub mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: From<Vec<u8>>>(d: D) -> Result<T, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(T::from)
            .map_err(serde::de::Error::custom)
    }
}

mod b64_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => super::b64::serialize(b, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::b64")] Vec<u8>);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}
