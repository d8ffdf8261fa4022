//! Following a job through storage, from any process: the attach path, and
//! the jobs the `http` backend runs on remote worker servers.
//!
//! One thread per followed job lists the job's status prefix once per
//! interval (20 ms while statuses keep arriving, doubling to 500 ms when
//! nothing changes), reads the batches it has not seen, and applies them.
//! A call `running` past its timeout plus a grace, and every unfinished call
//! past the job's deadline, fail as timeouts: a follower never hangs.
//!
//! With push monitoring (see [`crate::push`]) the thread applies pushed
//! batches as they arrive and lists storage only once per
//! `push_fallback_interval`, so a lost message or a dead broker costs
//! latency, never a call. A pushed batch's storage key is remembered, so
//! the listing does not read it again.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use quelea_core::config::ConfigBuilder;
use quelea_core::keys::JobKeys;
use quelea_core::model::{now_ts, CallError, CallState, FailureReason, JobSpec, ResultRef};
use quelea_core::protocol::Message;
use quelea_storage::Storage;

use crate::error::{Error, Result};
use crate::future::FuturesList;
use crate::handle::JobHandle;
use crate::job::{JobState, Notifier, RunOutcome};
use crate::push::{Pushed, Subscription};

const FAST: Duration = Duration::from_millis(20);
const SLOW: Duration = Duration::from_millis(500);
/// With push, the longest wait for a batch before the deadlines are checked.
const PUSH_WAIT: Duration = Duration::from_millis(250);
/// A running call with no final status this long past its timeout is failed:
/// platforms can kill workers silently.
const GRACE_S: f64 = 5.0;

/// Attaches to a job started elsewhere, with credentials from this process's
/// own config and environment.
pub fn attach<O>(handle: &JobHandle) -> Result<FuturesList<O>> {
    attach_with(ConfigBuilder::new(), handle)
}

/// Like [`attach`], taking credentials from `base`.
pub fn attach_with<O>(base: ConfigBuilder, handle: &JobHandle) -> Result<FuturesList<O>> {
    let config = handle.storage.to_config(base)?;
    let storage = Storage::from_config(&config)?;
    let keys = JobKeys::new(&handle.executor_id, handle.job_id);
    let spec_bytes = storage.get_blocking(&keys.spec()).map_err(|e| match e {
        quelea_storage::Error::NotFound { .. } => Error::Handle(format!(
            "job {}-{} has no objects in {} (finished and cleaned, or never started)",
            handle.executor_id,
            handle.job_id,
            storage.location().describe()
        )),
        other => other.into(),
    })?;
    let spec: JobSpec = serde_json::from_slice(&spec_bytes)
        .map_err(|e| Error::Handle(format!("unreadable job spec: {e}")))?;
    if spec.total_calls != handle.total_calls {
        return Err(Error::Handle(format!(
            "the handle says {} calls but the job has {}",
            handle.total_calls, spec.total_calls
        )));
    }
    let job = Arc::new(JobState::new(
        spec,
        keys,
        Arc::new(Notifier::default()),
        CallState::Invoked,
    ));
    follow(&job, storage, handle.deadline_ts, true, None)?;
    Ok(FuturesList::for_job(&job))
}

/// Deletes every object of the job behind `handle` (its last reader cleans
/// a detached job) and its executor's functions once no other job of it is
/// left, with credentials from `base`; returns how many.
pub fn clean_job_with(base: ConfigBuilder, handle: &JobHandle) -> Result<usize> {
    let config = handle.storage.to_config(base)?;
    let storage = Storage::from_config(&config)?;
    delete_job(&storage, handle, false)
}

/// Deletes the objects of the job behind `handle` and, unless
/// `keep_functions`, its executor's functions once no other job of that
/// executor has objects left (functions are shared by an executor's jobs).
pub(crate) fn delete_job(
    storage: &Storage,
    handle: &JobHandle,
    keep_functions: bool,
) -> Result<usize> {
    let keys = JobKeys::new(&handle.executor_id, handle.job_id);
    let mut deleted = storage.delete_prefix_blocking(keys.prefix())?;
    if !keep_functions {
        let prefix = quelea_core::keys::executor_prefix(&handle.executor_id);
        let functions = format!("{prefix}functions/");
        let rest = storage.list_blocking(&prefix)?;
        if !rest.is_empty() && rest.iter().all(|o| o.key.starts_with(&functions)) {
            deleted += storage.delete_prefix_blocking(&functions)?;
        }
    }
    Ok(deleted)
}

/// The push side of a followed job: its subscription, and how often storage
/// is still listed behind it.
pub(crate) struct PushFollow {
    pub subscription: Subscription,
    pub fallback_interval: Duration,
}

/// Follows `job` through `storage` (and `push`, when subscribed) on a
/// thread of its own until the job is complete or dropped. `watch_cancel`:
/// also look for the cancelled marker (an owner that cancels its own job
/// already knows).
pub(crate) fn follow(
    job: &Arc<JobState>,
    storage: Storage,
    deadline_ts: f64,
    watch_cancel: bool,
    push: Option<PushFollow>,
) -> Result<()> {
    // Cancelling a followed job stops its remote work too: worker runtimes
    // (and other followers) watch for this marker.
    let marker = job.keys.cancelled();
    let marker_storage = storage.clone();
    job.set_cancel_hook(Box::new(move || {
        if let Err(e) = marker_storage.put_blocking(&marker, Vec::new()) {
            eprintln!("quelea: the job is cancelled here, but its workers were not told: {e}");
        }
    }));
    let weak = Arc::downgrade(job);
    std::thread::Builder::new()
        .name(format!("quelea-monitor-{}", job.spec.job_id))
        .spawn(move || monitor_main(weak, storage, deadline_ts, watch_cancel, push))
        .map_err(|e| Error::Handle(format!("cannot start the monitor thread: {e}")))?;
    Ok(())
}

fn monitor_main(
    job: Weak<JobState>,
    storage: Storage,
    deadline_ts: f64,
    watch_cancel: bool,
    push: Option<PushFollow>,
) {
    let mut seen: HashSet<String> = HashSet::new();
    let mut interval = FAST;
    let mut last_overdue_check = 0.0;
    let mut next_listing = Instant::now();
    let mut pushed: Vec<Pushed> = Vec::new();
    loop {
        let Some(job) = job.upgrade() else { return };
        if job.is_complete() {
            return;
        }
        let mut progressed = false;
        for batch in pushed.drain(..) {
            if let Some(key) = batch.key {
                if !seen.insert(key) {
                    continue;
                }
            }
            progressed |= apply_batch(&job, &storage, &batch.body);
        }
        let list_now = match &push {
            None => true,
            Some(push) if Instant::now() >= next_listing => {
                next_listing = Instant::now() + push.fallback_interval;
                true
            }
            Some(_) => false,
        };
        let listed = if list_now {
            storage.list_blocking(&job.keys.status_prefix()).ok()
        } else {
            None
        };
        if let Some(objects) = listed {
            for object in objects {
                if seen.contains(&object.key) {
                    continue;
                }
                let Ok(body) = storage.get_blocking(&object.key) else {
                    continue;
                };
                seen.insert(object.key.clone());
                progressed |= apply_batch(&job, &storage, &body);
            }
        }
        if watch_cancel
            && list_now
            && !progressed
            && storage.head_blocking(&job.keys.cancelled()).is_ok()
        {
            job.cancel("the job was cancelled by its owner");
        }
        let now = now_ts();
        if now > deadline_ts {
            job.fail_unfinished(|call| {
                timeout_error(format!(
                    "call {call} has no final status by the job's deadline"
                ))
            });
        } else if now - last_overdue_check > 1.0 {
            last_overdue_check = now;
            fail_overdue(&job, now);
        }
        drop(job);
        match &push {
            // Wakes for the first batch pushed, or to check deadlines.
            Some(push) => {
                let wait = next_listing
                    .saturating_duration_since(Instant::now())
                    .min(PUSH_WAIT);
                pushed = push.subscription.next_batches(wait);
            }
            None => {
                interval = if progressed {
                    FAST
                } else {
                    (interval * 2).min(SLOW)
                };
                std::thread::sleep(interval);
            }
        }
    }
}

fn timeout_error(message: String) -> CallError {
    CallError {
        reason: FailureReason::Timeout,
        error_type: "TimeoutError".into(),
        message,
        traceback: String::new(),
        payload: None,
    }
}

fn fail_overdue(job: &JobState, now: f64) {
    let limit = job.spec.timeout_s + GRACE_S;
    for (call, stats) in job.running_longer_than(now, limit) {
        job.complete(
            call,
            stats,
            RunOutcome::Failed(Box::new(timeout_error(format!(
                "call {call} ran past its timeout of {} s with no final status",
                job.spec.timeout_s
            )))),
        );
    }
}

/// Applies one stored or pushed `StatusBatch`; true when it held statuses.
fn apply_batch(job: &JobState, storage: &Storage, body: &[u8]) -> bool {
    let Ok(Message::StatusBatch(batch)) = Message::decode(body) else {
        return false;
    };
    let any = !batch.statuses.is_empty();
    for status in batch.statuses {
        apply(job, storage, status);
    }
    any
}

fn apply(job: &JobState, storage: &Storage, mut status: quelea_core::model::CallStatus) {
    let first = status.call_id.index();
    let count = status.count.max(1);
    if first + count as usize > job.total() as usize {
        return;
    }
    match status.state {
        CallState::Running => {
            if let Some(start) = status.stats.start_ts {
                job.mark_running_from(status.call_id, count, status.stats.worker_id, start);
            }
        }
        CallState::Success => {
            let bytes = match status.result.take() {
                Some(ResultRef::Inline(bytes)) => Ok(bytes),
                Some(ResultRef::Object { key, .. }) => {
                    storage.get_blocking(&key).map(|b| b.to_vec()).map_err(|e| {
                        Box::new(CallError {
                            reason: FailureReason::WorkerCrashed,
                            error_type: "ResultLost".into(),
                            message: format!(
                                "the result of call {} could not be read: {e}",
                                status.call_id
                            ),
                            traceback: String::new(),
                            payload: None,
                        })
                    })
                }
                // Written when the submitting client handed the job out;
                // if it did not, the result stayed with that client.
                Some(ResultRef::Held { size }) => storage
                    .get_blocking(&job.keys.output(status.call_id))
                    .map(|b| b.to_vec())
                    .map_err(|_| {
                        Box::new(CallError {
                            reason: FailureReason::WorkerCrashed,
                            error_type: "ResultHeld".into(),
                            message: format!(
                                "the result of call {} ({size} bytes) stayed in the memory of \
                                 the process that submitted the job on the local backend: a \
                                 job's large results are stored once it is handed out \
                                 (`job_handle`) or detached",
                                status.call_id
                            ),
                            traceback: String::new(),
                            payload: None,
                        })
                    }),
                None => Ok(b"null".to_vec()),
            };
            let outcome = match bytes {
                Ok(bytes) if count == 1 => RunOutcome::Own(bytes),
                Ok(bytes) => RunOutcome::Shared(Arc::new(bytes)),
                Err(error) => RunOutcome::Failed(error),
            };
            job.complete_run(status.call_id, count, status.stats, outcome);
        }
        CallState::Error => {
            let error = status.error.unwrap_or_else(|| CallError {
                reason: FailureReason::WorkerCrashed,
                error_type: "UnknownError".into(),
                message: "the call failed without an error report".into(),
                traceback: String::new(),
                payload: None,
            });
            job.complete_run(
                status.call_id,
                count,
                status.stats,
                RunOutcome::Failed(Box::new(error)),
            );
        }
        CallState::New | CallState::Invoked => {}
    }
}
