//! The client's view of a job: every call's state, stats and outcome, fed by
//! the backend's push channel or by the storage monitor.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use quelea_core::ids::CallId;
use quelea_core::keys::JobKeys;
use quelea_core::model::{now_ts, CallError, CallState, CallStats, FailureReason, JobSpec, Output};

use crate::retry::{settle, Retrier, Settled};

/// Wakes waiters when calls complete. Shared by the jobs of one executor.
#[derive(Default)]
pub(crate) struct Notifier {
    generation: Mutex<u64>,
    cond: Condvar,
    /// Waiters that want to hear of every completion, not only of whole jobs.
    eager_waiters: AtomicU32,
}

impl Notifier {
    pub fn notify(&self) {
        *lock(&self.generation) += 1;
        self.cond.notify_all();
    }

    pub fn generation(&self) -> u64 {
        *lock(&self.generation)
    }

    /// Sleeps until a notification after `seen` or `timeout`.
    pub fn wait(&self, seen: u64, timeout: Duration) {
        let guard = lock(&self.generation);
        if *guard == seen {
            let _ = self.cond.wait_timeout(guard, timeout);
        }
    }

    pub fn eager(&self) -> EagerGuard<'_> {
        self.eager_waiters.fetch_add(1, Ordering::AcqRel);
        EagerGuard(self)
    }
}

pub(crate) struct EagerGuard<'a>(&'a Notifier);

impl Drop for EagerGuard<'_> {
    fn drop(&mut self) {
        self.0.eager_waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) struct CallRecord {
    pub state: CallState,
    pub stats: CallStats,
    pub outcome: Option<Result<Output, Box<CallError>>>,
    /// Earlier attempts' errors, oldest first (see `crate::retry`).
    pub failed_attempts: Vec<CallError>,
    /// The client gave up retrying the call (its next end is final).
    pub retries_stopped: bool,
}

/// One job as the client sees it.
pub(crate) struct JobState {
    pub spec: JobSpec,
    pub keys: JobKeys,
    calls: Mutex<Vec<CallRecord>>,
    done: AtomicU32,
    notifier: Arc<Notifier>,
    cancel_hook: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
    /// The job outlives its executor (not cancelled or cleaned when it goes).
    detached: std::sync::atomic::AtomicBool,
    /// Runs failed calls again (a job with retries, in the process that
    /// submitted it).
    retrier: std::sync::OnceLock<Arc<Retrier>>,
}

impl JobState {
    pub fn new(spec: JobSpec, keys: JobKeys, notifier: Arc<Notifier>, initial: CallState) -> Self {
        let submit_ts = spec.submit_ts;
        let calls = (0..spec.total_calls)
            .map(|_| CallRecord {
                state: initial,
                stats: CallStats {
                    submit_ts,
                    ..CallStats::default()
                },
                outcome: None,
                failed_attempts: Vec::new(),
                retries_stopped: false,
            })
            .collect();
        JobState {
            spec,
            keys,
            calls: Mutex::new(calls),
            done: AtomicU32::new(0),
            notifier,
            cancel_hook: Mutex::new(None),
            detached: std::sync::atomic::AtomicBool::new(false),
            retrier: std::sync::OnceLock::new(),
        }
    }

    pub fn set_retrier(&self, retrier: Arc<Retrier>) {
        let _ = self.retrier.set(retrier);
    }

    pub fn mark_detached(&self) {
        self.detached.store(true, Ordering::Release);
    }

    pub fn is_detached(&self) -> bool {
        self.detached.load(Ordering::Acquire)
    }

    pub fn job_key(&self) -> String {
        self.spec.job_key()
    }

    pub fn total(&self) -> u32 {
        self.spec.total_calls
    }

    pub fn done_count(&self) -> u32 {
        self.done.load(Ordering::Acquire)
    }

    pub fn is_complete(&self) -> bool {
        self.done_count() >= self.total()
    }

    pub fn calls(&self) -> MutexGuard<'_, Vec<CallRecord>> {
        lock(&self.calls)
    }

    pub fn state(&self, call: CallId) -> CallState {
        self.calls()[call.index()].state
    }

    /// Marks `count` calls from `first` (a batch) running, under one lock.
    pub fn mark_running_from(
        &self,
        first: CallId,
        count: u32,
        worker_id: Option<u32>,
        start_ts: f64,
    ) {
        let mut calls = self.calls();
        let start = first.index().min(calls.len());
        let end = (start + count as usize).min(calls.len());
        for record in &mut calls[start..end] {
            if record.state < CallState::Running {
                record.state = CallState::Running;
                record.stats.start_ts = Some(start_ts);
                record.stats.worker_id = worker_id;
            }
        }
    }

    /// Marks a call running as reported by `attempt` (from storage, where
    /// attempts' reports may arrive in any order): an earlier attempt's is
    /// ignored, a later one's moves the call on to it.
    pub fn mark_running_attempt(
        &self,
        call: CallId,
        worker_id: Option<u32>,
        start_ts: f64,
        attempt: u32,
    ) {
        let mut calls = self.calls();
        let Some(record) = calls.get_mut(call.index()) else {
            return;
        };
        let newer = attempt > record.stats.attempt;
        if record.state.is_terminal() || attempt < record.stats.attempt {
            return;
        }
        if record.state < CallState::Running || newer {
            record.state = CallState::Running;
            record.stats.start_ts = Some(start_ts);
            record.stats.worker_id = worker_id;
            record.stats.attempt = attempt;
        }
    }

    /// Records the ends of consecutive calls from `first` (a batch), under
    /// one lock and with one wake-up; returns how many were new final ends
    /// (a failed attempt that runs again is not one, see `crate::retry`).
    pub fn complete_from(
        &self,
        first: CallId,
        outcomes: impl IntoIterator<Item = (CallStats, Result<Output, Box<CallError>>)>,
    ) -> u32 {
        let mut new = 0;
        let mut retried = Vec::new();
        {
            let mut calls = self.calls();
            for (i, (stats, outcome)) in outcomes.into_iter().enumerate() {
                let Some(record) = calls.get_mut(first.index() + i) else {
                    break;
                };
                match settle(&self.spec.retry, record, stats, outcome, true) {
                    Settled::Final => new += 1,
                    Settled::Retried(attempt) => {
                        retried.push((CallId(first.0 + i as u32), attempt))
                    }
                    Settled::Stale => {}
                }
            }
        }
        self.after_settled(new, retried);
        new
    }

    /// Counts new final ends (waking waiters) and hands retried calls to
    /// the retry driver.
    fn after_settled(&self, new: u32, retried: Vec<(CallId, u32)>) {
        if let Some(retrier) = self.retrier.get() {
            for (call, attempt) in retried {
                retrier.schedule(call, attempt);
            }
        }
        if new > 0 {
            let done = self.done.fetch_add(new, Ordering::AcqRel) + new;
            if done >= self.total() || self.notifier.eager_waiters.load(Ordering::Acquire) > 0 {
                self.notifier.notify();
            }
        }
    }

    /// Records a call's end; a second end for the same call is ignored (a
    /// cancelled call may still report from its runner). True when it was
    /// the call's final end.
    pub fn complete(
        &self,
        call: CallId,
        stats: CallStats,
        outcome: Result<Output, Box<CallError>>,
    ) -> bool {
        self.complete_with(call, stats, outcome, true)
    }

    /// Like [`Self::complete`], never retried (the end is final whatever
    /// the job's retry policy).
    pub fn complete_final(
        &self,
        call: CallId,
        stats: CallStats,
        outcome: Result<Output, Box<CallError>>,
    ) -> bool {
        self.complete_with(call, stats, outcome, false)
    }

    fn complete_with(
        &self,
        call: CallId,
        stats: CallStats,
        outcome: Result<Output, Box<CallError>>,
        may_retry: bool,
    ) -> bool {
        let settled = {
            let mut calls = self.calls();
            let Some(record) = calls.get_mut(call.index()) else {
                return false;
            };
            settle(&self.spec.retry, record, stats, outcome, may_retry)
        };
        match settled {
            Settled::Final => self.after_settled(1, Vec::new()),
            Settled::Retried(attempt) => self.after_settled(0, vec![(call, attempt)]),
            Settled::Stale => {}
        }
        settled == Settled::Final
    }

    /// Marks every unfinished call with `error`; returns how many.
    pub fn fail_unfinished(&self, make_error: impl Fn(CallId) -> CallError) -> usize {
        let pending: Vec<CallId> = self
            .calls()
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.state.is_terminal())
            .map(|(i, _)| CallId(i as u32))
            .collect();
        let now = now_ts();
        let mut failed = 0;
        for call in pending {
            let stats = {
                let calls = self.calls();
                let mut stats = calls[call.index()].stats.clone();
                stats.end_ts = Some(now);
                stats
            };
            if self.complete_final(call, stats, Err(Box::new(make_error(call)))) {
                failed += 1;
            }
        }
        failed
    }

    pub fn cancel(&self, why: &str) -> usize {
        self.fail_unfinished(|call| CallError {
            reason: FailureReason::Cancelled,
            error_type: "Cancelled".into(),
            message: format!("call {call} was cancelled: {why}"),
            traceback: String::new(),
            payload: None,
        })
    }
}

impl JobState {
    pub fn notifier(&self) -> Arc<Notifier> {
        self.notifier.clone()
    }

    /// Sets what stops the job's remote work (the backend's cancel).
    pub fn set_cancel_hook(&self, hook: Box<dyn Fn() + Send + Sync>) {
        *lock(&self.cancel_hook) = Some(hook);
    }

    pub fn run_cancel_hook(&self) {
        if let Some(hook) = lock(&self.cancel_hook).as_ref() {
            hook();
        }
    }
}
