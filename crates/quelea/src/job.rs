//! The client's view of a job: every call's state, stats and outcome, fed by
//! the backend's push channel or by the storage monitor.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use quelea_core::ids::CallId;
use quelea_core::keys::JobKeys;
use quelea_core::model::{now_ts, CallError, CallState, CallStats, FailureReason, JobSpec, Output};
use quelea_core::retry::RetryPolicy;

use crate::retry::Retrier;

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

/// Where a call stands: while running, its start; once finished, the
/// finished run (a batch, or the call alone) it belongs to.
#[derive(Clone, Copy)]
struct Start {
    ts: f64,
    worker_id: Option<u32>,
}

/// A run of consecutive calls that ended together: a batch whose elements
/// share one result or one failure, or a single call.
struct End {
    first: u32,
    count: u32,
    /// The run's stats; each element's are these with `cold_start` for the
    /// first element only.
    stats: CallStats,
    outcome: EndOutcome,
}

enum EndOutcome {
    Own(Vec<u8>),
    Shared(Arc<Vec<u8>>),
    Failed(Box<CallError>),
}

/// A finished call's outcome, borrowed from the job's records.
pub(crate) enum OutcomeRef<'a> {
    Own(&'a [u8]),
    /// Element `index` of the `count` values in a batch's shared result.
    Shared {
        blob: &'a Arc<Vec<u8>>,
        index: u32,
        count: u32,
    },
    Failed(&'a CallError),
}

impl OutcomeRef<'_> {
    pub fn to_result(&self) -> Result<Output, Box<CallError>> {
        match *self {
            OutcomeRef::Own(bytes) => Ok(Output::Own(bytes.to_vec())),
            OutcomeRef::Shared { blob, index, count } => Ok(Output::Shared {
                blob: blob.clone(),
                index,
                count,
            }),
            OutcomeRef::Failed(error) => Err(Box::new(error.clone())),
        }
    }
}

/// A job's calls in numbers (see [`Records::summary`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CallsSummary {
    pub calls: usize,
    /// Runner calls: a batch's elements share one.
    pub runner_calls: usize,
    pub success: usize,
    pub error: usize,
    /// From the first start to the last end.
    pub wall_time: Option<f64>,
    /// The runner calls' execution times, summed.
    pub total_exec_time: f64,
}

/// Successful results, a run at a time (see [`Records::for_each_success`]).
pub enum Piece<'a> {
    Own(&'a [u8]),
    /// Values `lo..hi` of a batch's shared result.
    Shared {
        blob: &'a Arc<Vec<u8>>,
        lo: u32,
        hi: u32,
    },
}

/// Every call's state, compactly: a byte and an index per call, and one
/// record per start and per finished run (a batch of K elements costs two
/// records, not 2K), so a map of millions of elements stays small and
/// cheap to set up.
pub(crate) struct Records {
    submit_ts: f64,
    state: Vec<CallState>,
    slot: Vec<u32>,
    starts: Vec<Start>,
    ends: Vec<End>,
    /// The job's retries, and the calls that failed an attempt and run
    /// again (few; see `crate::retry`).
    retry: RetryPolicy,
    retried: std::collections::HashMap<u32, Retried>,
}

/// A call that failed an attempt and runs again.
#[derive(Default)]
struct Retried {
    /// The attempt it is on now.
    attempt: u32,
    /// The errors of its earlier attempts, oldest first.
    failed: Vec<CallError>,
    /// The client gave up retrying it: its next end is final.
    stopped: bool,
}

impl Records {
    fn new(total: u32, submit_ts: f64, initial: CallState) -> Self {
        Records {
            submit_ts,
            state: vec![initial; total as usize],
            slot: vec![0; total as usize],
            starts: Vec::new(),
            ends: Vec::new(),
            retry: RetryPolicy::default(),
            retried: std::collections::HashMap::new(),
        }
    }

    /// The attempt call `i` is on (0 the first).
    pub fn attempt(&self, i: usize) -> u32 {
        self.retried.get(&(i as u32)).map_or(0, |r| r.attempt)
    }

    /// The errors of the call's earlier attempts, oldest first.
    pub fn failed_attempts(&self, call: CallId) -> &[CallError] {
        self.retried.get(&call.0).map_or(&[], |r| &r.failed)
    }

    /// No further retries of the call.
    pub fn stop_retries(&mut self, call: CallId) {
        if call.index() < self.len() {
            self.retried.entry(call.0).or_default().stopped = true;
        }
    }

    /// Ends an attempt of the calls of `first..first + count` as `finish`
    /// does, except that a failure the job's retry policy runs again puts
    /// the call back to `invoked` on its next attempt (listed in
    /// `retried`), and a failure reported by an earlier attempt than the
    /// call's is ignored. `may_retry` false: the end is final whatever the
    /// policy. Returns how many calls ended here.
    fn finish_attempt(
        &mut self,
        first: u32,
        count: u32,
        stats: CallStats,
        outcome: EndOutcome,
        may_retry: bool,
        retried: &mut Vec<(CallId, u32)>,
    ) -> u32 {
        let error = match &outcome {
            EndOutcome::Failed(error) if !self.retry.is_none() => error.clone(),
            _ => return self.finish(first, count, stats, outcome),
        };
        let lo = (first as usize).min(self.len());
        let hi = (lo + count as usize).min(self.len());
        let mut new = 0;
        for i in lo..hi {
            if self.state[i].is_terminal() || stats.attempt < self.attempt(i) {
                continue;
            }
            let stopped = self.retried.get(&(i as u32)).is_some_and(|r| r.stopped);
            if may_retry && !stopped && self.retry.retries(error.reason, stats.attempt) {
                let entry = self.retried.entry(i as u32).or_default();
                entry.attempt = stats.attempt + 1;
                entry.failed.push((*error).clone());
                self.state[i] = CallState::Invoked;
                retried.push((CallId(i as u32), entry.attempt));
            } else {
                let mut element = stats.clone();
                element.cold_start &= i == lo;
                new += self.finish(i as u32, 1, element, EndOutcome::Failed(error.clone()));
            }
        }
        new
    }

    pub fn len(&self) -> usize {
        self.state.len()
    }

    pub fn state(&self, call: CallId) -> CallState {
        self.state[call.index()]
    }

    pub fn is_terminal(&self, i: usize) -> bool {
        self.state[i].is_terminal()
    }

    fn end(&self, i: usize) -> Option<&End> {
        self.state[i]
            .is_terminal()
            .then(|| &self.ends[self.slot[i] as usize])
    }

    pub fn stats(&self, call: CallId) -> CallStats {
        let i = call.index();
        if let Some(end) = self.end(i) {
            let mut stats = end.stats.clone();
            stats.cold_start &= i as u32 == end.first;
            return stats;
        }
        let mut stats = CallStats {
            submit_ts: self.submit_ts,
            attempt: self.attempt(i),
            ..CallStats::default()
        };
        if self.state[i] == CallState::Running {
            let start = self.starts[self.slot[i] as usize];
            stats.start_ts = Some(start.ts);
            stats.worker_id = start.worker_id;
        }
        stats
    }

    /// The call's outcome once it has finished.
    pub fn outcome(&self, call: CallId) -> Option<OutcomeRef<'_>> {
        let i = call.index();
        let end = self.end(i)?;
        Some(match &end.outcome {
            EndOutcome::Own(bytes) => OutcomeRef::Own(bytes),
            EndOutcome::Shared(blob) => OutcomeRef::Shared {
                blob,
                index: i as u32 - end.first,
                count: end.count,
            },
            EndOutcome::Failed(error) => OutcomeRef::Failed(error),
        })
    }

    /// Visits the results of the calls in `range` in order, a batch's run
    /// of shared values at a time; false (having stopped) at the first call
    /// that has not succeeded.
    pub fn for_each_success<'a>(
        &'a self,
        range: std::ops::Range<u32>,
        mut visit: impl FnMut(Piece<'a>),
    ) -> bool {
        let end = (range.end as usize).min(self.len());
        let mut i = range.start as usize;
        while i < end {
            if self.state[i] != CallState::Success {
                return false;
            }
            let slot = self.slot[i];
            let run = &self.ends[slot as usize];
            match &run.outcome {
                EndOutcome::Own(bytes) => {
                    visit(Piece::Own(bytes));
                    i += 1;
                }
                EndOutcome::Shared(blob) => {
                    let mut j = i + 1;
                    while j < end && self.slot[j] == slot && self.state[j] == CallState::Success {
                        j += 1;
                    }
                    visit(Piece::Shared {
                        blob,
                        lo: i as u32 - run.first,
                        hi: j as u32 - run.first,
                    });
                    i = j;
                }
                EndOutcome::Failed(_) => return false,
            }
        }
        true
    }

    /// The calls' counts and times, read from the runs (not call by call).
    pub fn summary(&self) -> CallsSummary {
        let mut summary = CallsSummary {
            calls: self.len(),
            ..CallsSummary::default()
        };
        // The elements of one run are consecutive calls: a run is counted
        // where its record (or, for a batch answered element by element,
        // its stats) differs from the previous call's.
        let mut last_slot = None;
        let mut last_run = None;
        let (mut first_start, mut last_end) = (f64::INFINITY, f64::NEG_INFINITY);
        for (i, state) in self.state.iter().enumerate() {
            match state {
                CallState::Success => summary.success += 1,
                CallState::Error => summary.error += 1,
                _ => {}
            }
            let stats = match self.end(i) {
                Some(_) if last_slot == Some(self.slot[i]) => continue,
                Some(end) => &end.stats,
                None => {
                    // A call that has not ended is a run of its own.
                    summary.runner_calls += 1;
                    last_slot = None;
                    continue;
                }
            };
            last_slot = Some(self.slot[i]);
            let (Some(start), Some(end)) = (stats.start_ts, stats.end_ts) else {
                summary.runner_calls += 1;
                last_run = None;
                continue;
            };
            let run = (stats.worker_id, start.to_bits(), end.to_bits());
            if last_run != Some(run) {
                summary.runner_calls += 1;
                summary.total_exec_time += end - start;
                last_run = Some(run);
            }
            first_start = first_start.min(start);
            last_end = last_end.max(end);
        }
        summary.wall_time = (first_start <= last_end).then_some(last_end - first_start);
        summary
    }

    /// Finished results over `min_bytes`, each with the call its status is
    /// recorded under (a batch's first call for its shared result).
    pub fn large_outputs(&self, min_bytes: u64) -> Vec<(CallId, &[u8])> {
        self.ends
            .iter()
            .filter_map(|end| match &end.outcome {
                EndOutcome::Own(bytes) => Some((end.first, &bytes[..])),
                EndOutcome::Shared(blob) => Some((end.first, &blob[..])),
                EndOutcome::Failed(_) => None,
            })
            .filter(|(_, bytes)| bytes.len() as u64 > min_bytes)
            .map(|(first, bytes)| (CallId(first), bytes))
            .collect()
    }

    /// The first failed call, by call order, and its error.
    pub fn first_failure(&self) -> Option<(CallId, &CallError)> {
        let i = self.state.iter().position(|s| *s == CallState::Error)?;
        match &self.end(i)?.outcome {
            EndOutcome::Failed(error) => Some((CallId(i as u32), error)),
            _ => None,
        }
    }

    pub fn count_terminal(&self, range: std::ops::Range<u32>) -> usize {
        self.state[range.start as usize..range.end as usize]
            .iter()
            .filter(|s| s.is_terminal())
            .count()
    }

    fn mark_running(&mut self, first: u32, count: u32, start: Start) {
        let lo = (first as usize).min(self.len());
        let hi = (lo + count as usize).min(self.len());
        let slot = self.starts.len() as u32;
        let mut used = false;
        for i in lo..hi {
            if self.state[i] < CallState::Running {
                self.state[i] = CallState::Running;
                self.slot[i] = slot;
                used = true;
            }
        }
        if used {
            self.starts.push(start);
        }
    }

    /// Ends the unfinished calls of `first..first + count` with one shared
    /// record; returns how many ended here.
    fn finish(&mut self, first: u32, count: u32, stats: CallStats, outcome: EndOutcome) -> u32 {
        let lo = (first as usize).min(self.len());
        let hi = (lo + count as usize).min(self.len());
        let slot = self.ends.len() as u32;
        let state = match outcome {
            EndOutcome::Failed(_) => CallState::Error,
            _ => CallState::Success,
        };
        let mut new = 0;
        for i in lo..hi {
            if !self.state[i].is_terminal() {
                self.state[i] = state;
                self.slot[i] = slot;
                new += 1;
            }
        }
        if new > 0 {
            self.ends.push(End {
                first,
                count,
                stats,
                outcome,
            });
        }
        new
    }
}

/// How a run of calls ended, as reported.
pub(crate) enum RunOutcome {
    /// One call's own result bytes.
    Own(Vec<u8>),
    /// A batch's one result shared by its elements.
    Shared(Arc<Vec<u8>>),
    Failed(Box<CallError>),
}

impl From<RunOutcome> for EndOutcome {
    fn from(outcome: RunOutcome) -> Self {
        match outcome {
            RunOutcome::Own(bytes) => EndOutcome::Own(bytes),
            RunOutcome::Shared(blob) => EndOutcome::Shared(blob),
            RunOutcome::Failed(error) => EndOutcome::Failed(error),
        }
    }
}

impl From<Result<Output, Box<CallError>>> for RunOutcome {
    fn from(outcome: Result<Output, Box<CallError>>) -> Self {
        match outcome {
            Ok(Output::Own(bytes)) => RunOutcome::Own(bytes),
            Ok(Output::Shared { blob, .. }) => RunOutcome::Shared(blob),
            Err(error) => RunOutcome::Failed(error),
        }
    }
}

/// One job as the client sees it.
pub(crate) struct JobState {
    pub spec: JobSpec,
    pub keys: JobKeys,
    records: Mutex<Records>,
    done: AtomicU32,
    notifier: Arc<Notifier>,
    cancel_hook: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
    /// The job outlives its executor (not cancelled or cleaned when it goes).
    detached: std::sync::atomic::AtomicBool,
    /// Another process may read the job (detached, or its handle given out):
    /// its objects stay until the executor's clean.
    kept: Arc<std::sync::atomic::AtomicBool>,
    /// Runs failed calls again (a job with retries, in the process that
    /// submitted it).
    retrier: std::sync::OnceLock<Arc<Retrier>>,
}

impl JobState {
    pub fn new(spec: JobSpec, keys: JobKeys, notifier: Arc<Notifier>, initial: CallState) -> Self {
        let mut records = Records::new(spec.total_calls, spec.submit_ts, initial);
        records.retry = spec.retry;
        JobState {
            spec,
            keys,
            records: Mutex::new(records),
            done: AtomicU32::new(0),
            notifier,
            cancel_hook: Mutex::new(None),
            detached: std::sync::atomic::AtomicBool::new(false),
            kept: Arc::default(),
            retrier: std::sync::OnceLock::new(),
        }
    }

    pub fn set_retrier(&self, retrier: Arc<Retrier>) {
        let _ = self.retrier.set(retrier);
    }

    pub fn mark_detached(&self) {
        self.detached.store(true, Ordering::Release);
        self.keep();
    }

    /// Keeps the job's objects until the executor's clean.
    pub fn keep(&self) {
        self.kept.store(true, Ordering::Release);
    }

    pub fn is_kept(&self) -> bool {
        self.kept.load(Ordering::Acquire)
    }

    pub fn kept(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.kept.clone()
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

    /// The records, locked: read several calls under one lock.
    pub fn records(&self) -> MutexGuard<'_, Records> {
        lock(&self.records)
    }

    pub fn state(&self, call: CallId) -> CallState {
        self.records().state(call)
    }

    pub fn stats(&self, call: CallId) -> CallStats {
        self.records().stats(call)
    }

    /// Marks every call that has not started invoked.
    pub fn mark_invoked(&self) {
        for state in self.records().state.iter_mut() {
            if *state < CallState::Invoked {
                *state = CallState::Invoked;
            }
        }
    }

    /// Marks `count` calls from `first` (a batch) running, under one lock.
    pub fn mark_running_from(
        &self,
        first: CallId,
        count: u32,
        worker_id: Option<u32>,
        start_ts: f64,
    ) {
        let start = Start {
            ts: start_ts,
            worker_id,
        };
        self.records().mark_running(first.0, count, start);
    }

    /// Records the end of `count` consecutive calls from `first` that share
    /// `stats` and `outcome` (a batch), under one lock and with one wake-up;
    /// calls that had already ended keep their first end. Returns how many
    /// ended here.
    pub fn complete_run(
        &self,
        first: CallId,
        count: u32,
        stats: CallStats,
        outcome: RunOutcome,
    ) -> u32 {
        self.complete_attempt(first, count, stats, outcome, true)
    }

    /// [`Self::complete_run`]; `may_retry` false: the end is final whatever
    /// the job's retry policy.
    fn complete_attempt(
        &self,
        first: CallId,
        count: u32,
        stats: CallStats,
        outcome: RunOutcome,
        may_retry: bool,
    ) -> u32 {
        let mut retried = Vec::new();
        let new = self.records().finish_attempt(
            first.0,
            count,
            stats,
            outcome.into(),
            may_retry,
            &mut retried,
        );
        self.retry(retried);
        self.ended(new);
        new
    }

    /// Hands calls that failed an attempt to the retry driver.
    fn retry(&self, retried: Vec<(CallId, u32)>) {
        if let Some(retrier) = self.retrier.get() {
            for (call, attempt) in retried {
                retrier.schedule(call, attempt);
            }
        }
    }

    /// Records a call's end, never retried (the end is final whatever the
    /// job's retry policy).
    pub fn complete_final(&self, call: CallId, stats: CallStats, outcome: RunOutcome) -> bool {
        self.complete_attempt(call, 1, stats, outcome, false) == 1
    }

    /// The errors of the call's earlier attempts, oldest first.
    pub fn failed_attempts(&self, call: CallId) -> Vec<CallError> {
        self.records().failed_attempts(call).to_vec()
    }

    /// No further retries of the call: the attempt running now is its last.
    pub fn stop_retries(&self, call: CallId) {
        self.records().stop_retries(call);
    }

    /// Records the ends of consecutive calls from `first`, each with its
    /// own outcome, under one lock and with one wake-up; returns how many
    /// were new.
    pub fn complete_from(
        &self,
        first: CallId,
        outcomes: impl IntoIterator<Item = (CallStats, RunOutcome)>,
    ) -> u32 {
        let mut new = 0;
        let mut retried = Vec::new();
        {
            let mut records = self.records();
            for (i, (stats, outcome)) in outcomes.into_iter().enumerate() {
                new += records.finish_attempt(
                    first.0 + i as u32,
                    1,
                    stats,
                    outcome.into(),
                    true,
                    &mut retried,
                );
            }
        }
        self.retry(retried);
        self.ended(new);
        new
    }

    /// Records a call's end; a second end for the same call is ignored (a
    /// cancelled call may still report from its runner).
    pub fn complete(&self, call: CallId, stats: CallStats, outcome: RunOutcome) -> bool {
        self.complete_run(call, 1, stats, outcome) == 1
    }

    fn ended(&self, new: u32) {
        if new > 0 {
            let done = self.done.fetch_add(new, Ordering::AcqRel) + new;
            if done >= self.total() || self.notifier.eager_waiters.load(Ordering::Acquire) > 0 {
                self.notifier.notify();
            }
        }
    }

    /// Marks every unfinished call with `error`; returns how many.
    pub fn fail_unfinished(&self, make_error: impl Fn(CallId) -> CallError) -> usize {
        let now = now_ts();
        let mut new = 0;
        {
            let mut records = self.records();
            for i in 0..records.len() {
                if records.is_terminal(i) {
                    continue;
                }
                let call = CallId(i as u32);
                let mut stats = records.stats(call);
                stats.end_ts = Some(now);
                let error = EndOutcome::Failed(Box::new(make_error(call)));
                new += records.finish(call.0, 1, stats, error);
            }
        }
        self.ended(new);
        new as usize
    }

    /// Calls running for longer than `limit` seconds at `now`, with their stats.
    pub fn running_longer_than(&self, now: f64, limit: f64) -> Vec<(CallId, CallStats)> {
        let records = self.records();
        (0..records.len())
            .filter(|&i| records.state[i] == CallState::Running)
            .map(|i| CallId(i as u32))
            .map(|call| (call, records.stats(call)))
            .filter(|(_, stats)| stats.start_ts.is_some_and(|s| now - s > limit))
            .collect()
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
