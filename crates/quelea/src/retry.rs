//! Retries, decided by the client's job driver for every backend: a call
//! that fails (a timeout, out of memory, a crashed runner, a call lost with
//! no final status past its timeout, and a user error when the job asks) is
//! run again, up to the job's `retries`, as a new single-element Invocation
//! of that call with `attempt` = k. Only the client sees every failure kind
//! on every backend (a lost call has no worker left to say so), so it
//! decides; the worker applies the same [`RetryPolicy`] only to label the
//! statuses it writes (`retried` for an attempt that runs again, so storage
//! holds every attempt and exactly one final status per call).
//!
//! The hooks in `JobState` are narrow: `Records::finish_attempt` puts a
//! call whose failure is retried back to `invoked` on its next attempt
//! (and ignores an earlier attempt's late report), and a job with retries
//! carries a [`Retrier`] that resubmits retried calls from a thread of its
//! own (never from the thread that reported the failure: a pool's, or the
//! monitor's).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use quelea_core::ids::CallId;
use quelea_core::model::{now_ts, CallError, CallState, CallStats, FailureReason};
use quelea_core::protocol::{Invocation, InvokedCall};

use crate::error::Result;
use crate::job::{lock, JobState, RunOutcome};

/// Sends runner calls of a job again: builds and delivers the Invocations
/// (the executor's backend, or the detached-job host).
pub(crate) type Resubmit = Box<dyn Fn(&Arc<JobState>, Vec<Invocation>) -> Result<()> + Send + Sync>;

/// A job's retry driver: the runner calls as first sent (to take a retried
/// element's input from), and how to send them again.
pub(crate) struct Retrier {
    job: Weak<JobState>,
    /// In call order; a job fed in parts (`crate::feed`) adds each part's.
    calls: Mutex<Vec<InvokedCall>>,
    resubmit: Resubmit,
    /// Retries waiting for the driver thread, and whether it runs.
    pending: Mutex<(Vec<(CallId, u32)>, bool)>,
}

impl Retrier {
    pub fn new(job: &Arc<JobState>, calls: Vec<InvokedCall>, resubmit: Resubmit) -> Arc<Retrier> {
        Arc::new(Retrier {
            job: Arc::downgrade(job),
            calls: Mutex::new(calls),
            resubmit,
            pending: Mutex::new((Vec::new(), false)),
        })
    }

    /// The runner calls of the job's next part, as sent.
    pub fn add_calls(&self, calls: &[InvokedCall]) {
        lock(&self.calls).extend_from_slice(calls);
    }

    /// Queues `call` to run as `attempt`; starts the driver thread if it
    /// is not running.
    pub fn schedule(self: &Arc<Self>, call: CallId, attempt: u32) {
        let start = {
            let mut pending = lock(&self.pending);
            pending.0.push((call, attempt));
            !std::mem::replace(&mut pending.1, true)
        };
        if start {
            let retrier = self.clone();
            let spawned = std::thread::Builder::new()
                .name("quelea-retry".into())
                .spawn(move || retrier.drive());
            if let Err(e) = spawned {
                lock(&self.pending).1 = false;
                self.fail_pending(&format!("cannot start the retry thread: {e}"));
            }
        }
    }

    fn drive(&self) {
        loop {
            let batch = {
                let mut pending = lock(&self.pending);
                if pending.0.is_empty() {
                    pending.1 = false;
                    return;
                }
                std::mem::take(&mut pending.0)
            };
            let Some(job) = self.job.upgrade() else {
                return;
            };
            let invocations = self.invocations(&job, &batch);
            if invocations.is_empty() {
                continue;
            }
            let ids: Vec<(CallId, u32)> = invocations
                .iter()
                .flat_map(|i| i.calls.iter().map(move |c| (c.elements().0, i.attempt)))
                .collect();
            if let Err(e) = (self.resubmit)(&job, invocations) {
                fail(&job, &ids, &format!("its retry could not be sent: {e}"));
            }
        }
    }

    /// One Invocation per attempt number, of the calls still waiting for it
    /// (a call cancelled or ended meanwhile is left alone).
    fn invocations(&self, job: &JobState, batch: &[(CallId, u32)]) -> Vec<Invocation> {
        let spec = &job.spec;
        let k = spec.chunksize.max(1);
        let mut by_attempt: BTreeMap<u32, Vec<InvokedCall>> = BTreeMap::new();
        {
            let sent = lock(&self.calls);
            let records = job.records();
            for &(call, attempt) in batch {
                let waiting = call.index() < records.len()
                    && records.state(call) == CallState::Invoked
                    && records.attempt(call.index()) == attempt;
                let Some(first) = sent.get((call.0 / k) as usize) else {
                    continue;
                };
                if !waiting {
                    continue;
                }
                let count = first.count.max(1);
                by_attempt.entry(attempt).or_default().push(InvokedCall {
                    call_id: first.call_id,
                    count,
                    input: first.input.clone(),
                    select: (count > 1).then(|| call.0 - first.call_id.0),
                });
            }
        }
        by_attempt
            .into_iter()
            // Remote deliveries give each its own id (`remote::deliver_all`).
            .map(|(attempt, calls)| Invocation::of_job(spec, calls, attempt))
            .collect()
    }

    fn fail_pending(&self, why: &str) {
        let batch = std::mem::take(&mut lock(&self.pending).0);
        if let Some(job) = self.job.upgrade() {
            fail(&job, &batch, why);
        }
    }
}

/// Ends retried calls that cannot run again, finally.
fn fail(job: &JobState, calls: &[(CallId, u32)], why: &str) {
    let now = now_ts();
    for &(call, attempt) in calls {
        let stats = CallStats {
            submit_ts: job.spec.submit_ts,
            end_ts: Some(now),
            attempt,
            ..CallStats::default()
        };
        job.complete_final(
            call,
            stats,
            RunOutcome::Failed(Box::new(CallError {
                reason: FailureReason::WorkerCrashed,
                error_type: "RetryFailed".into(),
                message: format!("call {call} failed and {why}"),
                traceback: String::new(),
                payload: None,
            })),
        );
    }
}

#[cfg(test)]
mod tests {

    use quelea_core::ids::CallId;

    use quelea_core::model::{CallError, CallState, CallStats, FailureReason};
    use quelea_core::retry::RetryPolicy;

    use crate::job::{JobState, RunOutcome};

    fn job(calls: u32, retries: u32, user_errors: bool) -> JobState {
        JobState::for_test(
            calls,
            0.0,
            RetryPolicy {
                retries,
                user_errors,
            },
        )
    }

    fn failed(reason: FailureReason, message: &str) -> RunOutcome {
        RunOutcome::Failed(Box::new(CallError {
            reason,
            error_type: "E".into(),
            message: message.into(),
            traceback: String::new(),
            payload: None,
        }))
    }

    fn at(attempt: u32) -> CallStats {
        CallStats {
            attempt,
            ..CallStats::default()
        }
    }

    #[test]
    fn a_retried_failure_is_not_an_end_and_a_late_report_is_ignored() {
        let job = job(2, 1, false);
        let crash = || failed(FailureReason::WorkerCrashed, "crash");
        assert!(!job.complete(CallId(0), at(0), crash()));
        assert_eq!(job.state(CallId(0)), CallState::Invoked);
        assert_eq!(job.stats(CallId(0)).attempt, 1);
        assert_eq!(job.done_count(), 0);
        // Attempt 0's failure again (another copy of its status): ignored.
        assert!(!job.complete(CallId(0), at(0), crash()));
        assert_eq!(job.stats(CallId(0)).attempt, 1);
        // The last attempt's failure is final.
        assert!(job.complete(CallId(0), at(1), crash()));
        assert_eq!(job.state(CallId(0)), CallState::Error);
        assert_eq!(job.stats(CallId(0)).attempt, 1);
        assert_eq!(job.failed_attempts(CallId(0)).len(), 1);
        // User errors only when asked; a final end whatever the policy.
        assert!(job.complete(CallId(1), at(0), failed(FailureReason::UserError, "no")));
        assert_eq!(job.done_count(), 2);
        let job = self::job(1, 3, true);
        assert!(job.complete_final(CallId(0), at(0), failed(FailureReason::Timeout, "t")));
    }

    #[test]
    fn a_failed_batch_retries_each_element_and_stopped_retries_end_it() {
        let job = job(3, 2, true);
        let oom = || failed(FailureReason::OutOfMemory, "oom");
        assert_eq!(job.complete_run(CallId(0), 3, at(0), oom()), 0);
        assert!((0..3).all(|i| job.stats(CallId(i)).attempt == 1));
        job.stop_retries(CallId(1));
        assert_eq!(
            job.complete_run(CallId(0), 3, at(1), oom()),
            1,
            "only the stopped call ends"
        );
        assert_eq!(job.state(CallId(1)), CallState::Error);
        assert_eq!(job.stats(CallId(2)).attempt, 2);
        // Cancel is final, and never retried.
        assert_eq!(job.cancel("test"), 2);
        assert!(job.is_complete());
    }
}
