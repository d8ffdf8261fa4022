//! The versioned wire protocol between clients and the worker runtime: the
//! Invocation a backend delivers, and the status batches the runtime writes.
//!
//! Every message is a JSON envelope `{"version": N, "type": ..., ...}`. A
//! reader first checks the version, so a message from a newer or older build
//! gets a clear error instead of a confusing field error or a panic.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{CallId, ExecutorId, JobId};
use crate::model::{b64, CallStatus, FailureReason, FunctionSpec, PushChannel};

/// The protocol version this build reads and writes.
pub const PROTOCOL_VERSION: u32 = 1;

/// A call's input: inside the Invocation, or a byte range of the job's data object.
/// `Bytes`, so that a front end's buffer (a Python `bytes`) travels to the
/// runner's pipe without a copy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallInput {
    Inline(#[serde(with = "b64")] bytes::Bytes),
    /// `[start, end)` of the job's `data` object.
    Range {
        start: u64,
        end: u64,
    },
}

/// One runner call of an Invocation: `count` consecutive elements of the
/// job from `call_id` (a batch; `chunksize` of them), with one input that
/// encodes them all (see `quelea_worker::runner_protocol`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InvokedCall {
    pub call_id: CallId,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub count: u32,
    pub input: CallInput,
    /// Run only this element of the batch (its index from `call_id`): a
    /// retry of one element of a batch, with the batch's input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<u32>,
}

impl InvokedCall {
    /// The elements this call runs: `(first call id, how many)`.
    pub fn elements(&self) -> (CallId, u32) {
        match self.select {
            Some(k) => (CallId(self.call_id.0 + k), 1),
            None => (self.call_id, self.count.max(1)),
        }
    }
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// A batch of calls of one job, delivered to a worker runtime. It carries no
/// credentials: a worker takes those from its own environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    /// Unique within its job (see [`new_invocation_id`]). A remote runtime
    /// claims it in storage with a create-if-absent before running anything,
    /// so an Invocation runs at most once across every worker sharing that
    /// storage; the HTTP front door refuses an Invocation without one. Inside
    /// the signed body, so a replay cannot change it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub executor_id: ExecutorId,
    pub job_id: JobId,
    pub function: FunctionSpec,
    pub calls: Vec<InvokedCall>,
    pub timeout_s: f64,
    pub memory_limit_mb: Option<u64>,
    pub submit_ts: f64,
    /// Where the worker also pushes the calls' status batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushChannel>,
    /// Which run of these calls this is (0 the first; see [`crate::retry`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// A call of this attempt that fails for one of these reasons runs
    /// again: its status is written `retried`, not final.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_on: Vec<FailureReason>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The longest [`Invocation::id`] a runtime takes.
pub const MAX_INVOCATION_ID_LEN: usize = 64;

/// A fresh Invocation id: this process's session, pid and a counter, unique
/// within any job of this process's executors (the claim lives under the
/// job's prefix).
pub fn new_invocation_id() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{}-{:x}-{:x}",
        crate::ids::session_id(),
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Whether `id` is a valid [`Invocation::id`]: 1 to
/// [`MAX_INVOCATION_ID_LEN`] ASCII letters, digits and dashes (it is part of
/// a storage key).
pub fn valid_invocation_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_INVOCATION_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// One Invocation per runner call (a batch of `chunksize` elements), as
/// remote backends send them: each lands on one runner of one worker, and
/// each has its own id.
pub fn group_invocations(spec: &crate::model::JobSpec, calls: Vec<InvokedCall>) -> Vec<Invocation> {
    calls
        .into_iter()
        .map(|call| Invocation {
            id: Some(new_invocation_id()),
            ..Invocation::of_job(spec, vec![call], 0)
        })
        .collect()
}

impl Invocation {
    /// Attempt `attempt` of `calls` of the job `spec`, as the job says (its
    /// limits, push channel and retry reasons), without an id: remote
    /// deliveries give each their own, in-process ones need none.
    pub fn of_job(spec: &crate::model::JobSpec, calls: Vec<InvokedCall>, attempt: u32) -> Self {
        Invocation {
            id: None,
            executor_id: spec.executor_id.clone(),
            job_id: spec.job_id,
            function: spec.function.clone(),
            calls,
            timeout_s: spec.timeout_s,
            memory_limit_mb: spec.memory_limit_mb,
            submit_ts: spec.submit_ts,
            push: spec.push.clone(),
            attempt,
            retry_on: spec.retry.retry_on(attempt),
        }
    }
}

/// Statuses of several calls of one job, written as one storage object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusBatch {
    pub statuses: Vec<CallStatus>,
}

/// Every message of the protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
// Messages are decoded and handled one at a time, never held in numbers:
// boxing the large variant would only add an allocation per message.
#[allow(clippy::large_enum_variant)]
pub enum Message {
    Invocation(Invocation),
    StatusBatch(StatusBatch),
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    version: u32,
    #[serde(flatten)]
    message: &'a Message,
}

#[derive(Deserialize)]
struct VersionOnly {
    version: Option<u32>,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    #[allow(dead_code)]
    version: u32,
    #[serde(flatten)]
    message: Message,
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&EnvelopeOut {
            version: PROTOCOL_VERSION,
            message: self,
        })
        .expect("protocol messages always serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<Message> {
        let malformed = |e: serde_json::Error| Error::Malformed {
            what: "protocol message",
            message: e.to_string(),
        };
        let header: VersionOnly = serde_json::from_slice(bytes).map_err(malformed)?;
        match header.version {
            Some(PROTOCOL_VERSION) => {}
            Some(found) => {
                return Err(Error::UnsupportedVersion {
                    what: "wire",
                    found,
                    supported: PROTOCOL_VERSION,
                })
            }
            None => {
                return Err(Error::Malformed {
                    what: "protocol message",
                    message: "missing `version`".into(),
                })
            }
        }
        let envelope: EnvelopeIn = serde_json::from_slice(bytes).map_err(malformed)?;
        Ok(envelope.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::JobKind;
    use crate::model::{CallState, CallStats, ResultRef, RunnerKind};

    fn invocation() -> Invocation {
        Invocation {
            id: Some(new_invocation_id()),
            executor_id: "abcdef-0".parse().unwrap(),
            job_id: JobId::new(JobKind::Map, 0),
            function: FunctionSpec {
                runner: RunnerKind::Rust,
                name: "add".into(),
                hash: "00".into(),
            },
            calls: vec![
                InvokedCall {
                    call_id: CallId(0),
                    count: 1,
                    input: CallInput::Inline(bytes::Bytes::from_static(b"[1,2]")),
                    select: None,
                },
                InvokedCall {
                    call_id: CallId(1),
                    count: 3,
                    input: CallInput::Range { start: 5, end: 9 },
                    select: Some(2),
                },
            ],
            timeout_s: 10.0,
            memory_limit_mb: None,
            submit_ts: 1.5,
            push: Some(PushChannel::Nats {
                subject: "quelea.status.abcdef-0.M000".into(),
            }),
            attempt: 1,
            retry_on: vec![FailureReason::Timeout],
        }
    }

    #[test]
    fn round_trip() {
        let msg = Message::Invocation(invocation());
        assert_eq!(Message::decode(&msg.encode()).unwrap(), msg);
        let batch = Message::StatusBatch(StatusBatch {
            statuses: vec![
                CallStatus {
                    call_id: CallId(3),
                    count: 1,
                    state: CallState::Success,
                    stats: CallStats::default(),
                    result: Some(ResultRef::Inline(vec![0, 255, 3])),
                    error: None,
                    retried: false,
                },
                CallStatus {
                    call_id: CallId(4),
                    count: 8,
                    state: CallState::Success,
                    stats: CallStats::default(),
                    result: Some(ResultRef::Inline(vec![2])),
                    error: None,
                    retried: false,
                },
            ],
        });
        let encoded = batch.encode();
        assert_eq!(Message::decode(&encoded).unwrap(), batch);
        // A single call's status and a single-element call stay as before.
        let text = String::from_utf8(encoded).unwrap();
        assert_eq!(text.matches("\"count\"").count(), 1, "{text}");
    }

    #[test]
    fn each_runner_call_is_its_own_invocation() {
        let spec = crate::model::JobSpec {
            executor_id: "abcdef-0".parse().unwrap(),
            job_id: JobId::new(JobKind::Map, 0),
            function: invocation().function,
            total_calls: 7,
            chunksize: 3,
            timeout_s: 1.0,
            memory_limit_mb: None,
            submit_ts: 0.0,
            push: Some(PushChannel::Rabbitmq {
                exchange: "quelea.status".into(),
                routing_key: "abcdef-0.M000".into(),
            }),
            retry: Default::default(),
        };
        // Seven elements, three to a runner call.
        let calls = [(0, 3), (3, 3), (6, 1)]
            .into_iter()
            .map(|(first, count)| InvokedCall {
                call_id: CallId(first),
                count,
                input: CallInput::Inline(vec![first as u8].into()),
                select: None,
            })
            .collect();
        let grouped = group_invocations(&spec, calls);
        let sizes: Vec<(usize, u32)> = grouped
            .iter()
            .map(|i| (i.calls.len(), i.calls[0].count))
            .collect();
        assert_eq!(sizes, vec![(1, 3), (1, 3), (1, 1)]);
        assert_eq!(grouped[2].calls[0].call_id, CallId(6));
        // Every Invocation names the job's push channel (and only a channel).
        assert!(grouped.iter().all(|i| i.push == spec.push));
        // Each has an id of its own, a valid one.
        let ids: std::collections::HashSet<_> = grouped.iter().map(|i| i.id.clone()).collect();
        assert_eq!(ids.len(), 3);
        assert!(grouped
            .iter()
            .all(|i| valid_invocation_id(i.id.as_deref().unwrap())));
    }

    #[test]
    fn an_invocation_without_push_reads_as_storage_only() {
        let mut value = serde_json::to_value(Message::Invocation(invocation())).unwrap();
        value.as_object_mut().unwrap().remove("push");
        value["version"] = PROTOCOL_VERSION.into();
        let Message::Invocation(read) = Message::decode(value.to_string().as_bytes()).unwrap()
        else {
            panic!("not an invocation");
        };
        assert_eq!(read.push, None);
    }

    #[test]
    fn unknown_version_is_a_clear_error() {
        let mut value: serde_json::Value =
            serde_json::from_slice(&Message::Invocation(invocation()).encode()).unwrap();
        value["version"] = 99.into();
        let err = Message::decode(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert!(matches!(err, Error::UnsupportedVersion { found: 99, .. }));
        assert!(err.to_string().contains("version 99"), "{err}");
        let err = Message::decode(b"{\"type\":\"invocation\"}").unwrap_err();
        assert!(err.to_string().contains("missing `version`"), "{err}");
        assert!(Message::decode(b"not json").is_err());
    }
}
