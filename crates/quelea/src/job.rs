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

mod runs;

use self::runs::Runs;
pub(crate) use self::runs::{EndOutcome, OutcomeRef};

/// A running call's start; a batch's calls share one. Kept only while some
/// call of it runs: the slot is reused after, so starts never pile up.
#[derive(Clone, Copy)]
struct Start {
    ts: f64,
    worker_id: Option<u32>,
    /// How many calls are running from this start.
    live: u32,
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

/// Every call's state, compactly: a byte and an index per call, one record
/// per start while it runs and one per finished run (a batch of K elements
/// costs two records, not 2K; see [`Runs`]), so a map of millions of
/// elements stays small and cheap to set up.
pub(crate) struct Records {
    submit_ts: f64,
    state: Vec<CallState>,
    /// A running call's index in `starts`, a finished one's in `ends`.
    slot: Vec<u32>,
    starts: Vec<Start>,
    /// The slots of `starts` no running call uses.
    free_starts: Vec<u32>,
    ends: Runs,
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
            free_starts: Vec::new(),
            ends: Runs::default(),
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
                self.leave_running(i);
                self.state[i] = CallState::Invoked;
                let entry = self.retried.entry(i as u32).or_default();
                entry.attempt = stats.attempt + 1;
                entry.failed.push((*error).clone());
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

    /// The slot in `ends` of call `i`'s run once it has finished.
    fn end(&self, i: usize) -> Option<u32> {
        self.state[i].is_terminal().then(|| self.slot[i])
    }

    pub fn stats(&self, call: CallId) -> CallStats {
        let i = call.index();
        if let Some(end) = self.end(i) {
            return self.ends.stats(end, i as u32);
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
        Some(self.ends.outcome(self.end(i)?, i as u32))
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
            match self.ends.outcome(slot, i as u32) {
                OutcomeRef::Own(bytes) => {
                    visit(Piece::Own(bytes));
                    i += 1;
                }
                OutcomeRef::Shared { blob, index, .. } => {
                    let mut j = i + 1;
                    while j < end && self.slot[j] == slot && self.state[j] == CallState::Success {
                        j += 1;
                    }
                    visit(Piece::Shared {
                        blob,
                        lo: index,
                        hi: index + (j - i) as u32,
                    });
                    i = j;
                }
                OutcomeRef::Failed(_) => return false,
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
                Some(end) => self.ends.timing(end),
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
            .results()
            .filter(|(_, bytes)| bytes.len() as u64 > min_bytes)
            .map(|(first, bytes)| (CallId(first), bytes))
            .collect()
    }

    /// The first failed call, by call order, and its error.
    pub fn first_failure(&self) -> Option<(CallId, &CallError)> {
        let i = self.state.iter().position(|s| *s == CallState::Error)?;
        match self.outcome(CallId(i as u32))? {
            OutcomeRef::Failed(error) => Some((CallId(i as u32), error)),
            _ => None,
        }
    }

    pub fn count_terminal(&self, range: std::ops::Range<u32>) -> usize {
        self.state[range.start as usize..range.end as usize]
            .iter()
            .filter(|s| s.is_terminal())
            .count()
    }

    fn mark_running(&mut self, first: u32, count: u32, ts: f64, worker_id: Option<u32>) {
        let lo = (first as usize).min(self.len());
        let hi = (lo + count as usize).min(self.len());
        let live = self.state[lo..hi]
            .iter()
            .filter(|s| **s < CallState::Running)
            .count() as u32;
        if live == 0 {
            return;
        }
        let start = Start {
            ts,
            worker_id,
            live,
        };
        let slot = match self.free_starts.pop() {
            Some(slot) => {
                self.starts[slot as usize] = start;
                slot
            }
            None => {
                self.starts.push(start);
                (self.starts.len() - 1) as u32
            }
        };
        for i in lo..hi {
            if self.state[i] < CallState::Running {
                self.state[i] = CallState::Running;
                self.slot[i] = slot;
            }
        }
    }

    /// Call `i` no longer runs from its start (before its state changes):
    /// the start's slot is free once none of its calls runs.
    fn leave_running(&mut self, i: usize) {
        if self.state[i] != CallState::Running {
            return;
        }
        let slot = self.slot[i];
        let start = &mut self.starts[slot as usize];
        start.live -= 1;
        if start.live == 0 {
            self.free_starts.push(slot);
        }
    }

    /// Ends the unfinished calls of `first..first + count` with one shared
    /// record; returns how many ended here.
    fn finish(&mut self, first: u32, count: u32, stats: CallStats, outcome: EndOutcome) -> u32 {
        let lo = (first as usize).min(self.len());
        let hi = (lo + count as usize).min(self.len());
        let new = self.state[lo..hi]
            .iter()
            .filter(|s| !s.is_terminal())
            .count() as u32;
        if new == 0 {
            return 0;
        }
        let state = match outcome {
            EndOutcome::Failed(_) => CallState::Error,
            _ => CallState::Success,
        };
        let slot = self.ends.push(first, count, &stats, outcome);
        for i in lo..hi {
            if !self.state[i].is_terminal() {
                self.leave_running(i);
                self.state[i] = state;
                self.slot[i] = slot;
            }
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

    /// Marks the calls of `elements` that have not started invoked.
    pub fn mark_invoked(&self, elements: std::ops::Range<u32>) {
        let mut records = self.records();
        let end = (elements.end as usize).min(records.state.len());
        let start = (elements.start as usize).min(end);
        for state in &mut records.state[start..end] {
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
        self.records()
            .mark_running(first.0, count, start_ts, worker_id);
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

#[cfg(test)]
impl JobState {
    /// A Rust map job of `calls` single calls, invoked, for unit tests.
    pub(crate) fn for_test(calls: u32, submit_ts: f64, retry: RetryPolicy) -> Self {
        use quelea_core::ids::{JobId, JobKind};
        use quelea_core::model::{FunctionSpec, RunnerKind};

        let spec = JobSpec {
            executor_id: "abcdef-0".parse().expect("a valid executor id"),
            job_id: JobId::new(JobKind::Map, 0),
            function: FunctionSpec {
                runner: RunnerKind::Rust,
                name: "f".into(),
                hash: "00".into(),
            },
            total_calls: calls,
            chunksize: 1,
            timeout_s: 1.0,
            memory_limit_mb: None,
            submit_ts,
            push: None,
            retry,
        };
        let keys = JobKeys::new(&spec.executor_id, spec.job_id);
        JobState::new(
            spec,
            keys,
            Arc::new(Notifier::default()),
            CallState::Invoked,
        )
    }
}

#[cfg(test)]
mod tests {
    //! The compact records read back every call's state, outcome and stats
    //! exactly as they were recorded, and the summary from them.

    use super::*;

    const SUBMIT: f64 = 1_000.0;

    fn job(calls: u32, retries: u32) -> JobState {
        JobState::for_test(
            calls,
            SUBMIT,
            RetryPolicy {
                retries,
                user_errors: false,
            },
        )
    }

    /// A call's stats as a runner reports them: times, runner and memory
    /// that vary (a few values, as a real job's do).
    fn ran(i: u32, result_size: u64) -> CallStats {
        let start = SUBMIT + f64::from(i) * 0.25;
        CallStats {
            submit_ts: SUBMIT,
            start_ts: Some(start),
            end_ts: Some(start + 0.125),
            worker_id: Some(i % 2),
            cold_start: i < 2,
            peak_memory_bytes: 10_000_000 + u64::from(i / 3) * 4096,
            result_size,
            memory_mb: (i % 5 == 0).then_some(512),
            attempt: 0,
        }
    }

    fn error(reason: FailureReason, message: &str) -> CallError {
        CallError {
            reason,
            error_type: "E".into(),
            message: message.into(),
            traceback: String::new(),
            payload: None,
        }
    }

    fn own(job: &JobState, call: u32) -> Vec<u8> {
        match job.records().outcome(CallId(call)) {
            Some(OutcomeRef::Own(bytes)) => bytes.to_vec(),
            _ => panic!("call {call} has no own result"),
        }
    }

    #[test]
    fn single_calls_read_back_their_own_stats_and_results() {
        let n = 40;
        let job = job(n, 0);
        let mut expected = Vec::new();
        for i in 0..n {
            let stats = ran(i, 0);
            job.mark_running_from(CallId(i), 1, stats.worker_id, stats.start_ts.unwrap());
            // Small results share the arena; every seventh is too large for it.
            let bytes = match i % 7 {
                6 => vec![i as u8; 5000],
                _ => vec![i as u8; i as usize % 4],
            };
            let stats = CallStats {
                result_size: bytes.len() as u64,
                ..stats
            };
            assert!(job.complete(CallId(i), stats.clone(), RunOutcome::Own(bytes.clone())));
            expected.push((stats, bytes));
        }
        assert!(job.is_complete());
        for (i, (stats, bytes)) in expected.iter().enumerate() {
            let call = CallId(i as u32);
            assert_eq!(job.state(call), CallState::Success);
            assert_eq!(&job.stats(call), stats, "call {i}");
            assert_eq!(&own(&job, i as u32), bytes);
        }
        let records = job.records();
        let mut seen = Vec::new();
        assert!(records.for_each_success(0..n, |piece| match piece {
            Piece::Own(bytes) => seen.push(bytes.to_vec()),
            Piece::Shared { .. } => panic!("no batch here"),
        }));
        assert_eq!(
            seen,
            expected.iter().map(|e| e.1.clone()).collect::<Vec<_>>()
        );
        let large: Vec<u32> = records.large_outputs(4096).iter().map(|c| c.0 .0).collect();
        assert_eq!(large, vec![6, 13, 20, 27, 34]);
        let summary = records.summary();
        assert_eq!(
            summary,
            CallsSummary {
                calls: n as usize,
                runner_calls: n as usize,
                success: n as usize,
                error: 0,
                wall_time: Some(f64::from(n - 1) * 0.25 + 0.125),
                total_exec_time: f64::from(n) * 0.125,
            }
        );
        // Running calls' starts are reused: one call ran at a time here.
        assert_eq!(records.starts.len(), 1);
    }

    #[test]
    fn a_result_size_unlike_the_held_bytes_reads_back_as_reported() {
        // A status from storage may name a size other than the bytes held.
        let job = job(2, 0);
        let stats = ran(0, 123_456);
        job.complete(CallId(0), stats.clone(), RunOutcome::Own(b"abc".to_vec()));
        assert_eq!(job.stats(CallId(0)), stats);
        let stats = CallStats {
            start_ts: None,
            end_ts: None,
            worker_id: None,
            ..ran(1, 0)
        };
        job.complete(CallId(1), stats.clone(), RunOutcome::Own(Vec::new()));
        assert_eq!(job.stats(CallId(1)), stats);
        assert_eq!(job.records().summary().runner_calls, 2);
    }

    #[test]
    fn a_batch_shares_one_record_and_cold_start_is_its_first_calls() {
        let job = job(7, 0);
        // Calls 0..5 ran as one batch; 5 and 6 each alone.
        job.mark_running_from(CallId(0), 5, Some(1), SUBMIT + 1.0);
        let running = job.stats(CallId(3));
        assert_eq!(running.start_ts, Some(SUBMIT + 1.0));
        assert_eq!(running.worker_id, Some(1));
        assert_eq!(job.state(CallId(3)), CallState::Running);
        let blob = Arc::new(vec![7u8; 50]);
        let stats = CallStats {
            cold_start: true,
            result_size: 50,
            ..ran(0, 0)
        };
        let outcome = RunOutcome::Shared(blob.clone());
        assert_eq!(job.complete_run(CallId(0), 5, stats.clone(), outcome), 5);
        // A second report of the same batch changes nothing.
        let again = RunOutcome::Shared(Arc::new(Vec::new()));
        assert_eq!(job.complete_run(CallId(0), 5, ran(9, 0), again), 0);
        for i in 0..5 {
            let mut element = stats.clone();
            element.cold_start = i == 0;
            assert_eq!(job.stats(CallId(i)), element);
            match job.records().outcome(CallId(i)) {
                Some(OutcomeRef::Shared {
                    blob: b,
                    index,
                    count,
                }) => {
                    assert!(Arc::ptr_eq(b, &blob));
                    assert_eq!((index, count), (i, 5));
                }
                _ => panic!("call {i} is not in the batch"),
            }
        }
        job.complete(CallId(5), ran(5, 1), RunOutcome::Own(vec![5]));
        job.complete(CallId(6), ran(6, 1), RunOutcome::Own(vec![6]));
        let records = job.records();
        let mut pieces = Vec::new();
        assert!(
            records.for_each_success(2..7, |piece| pieces.push(match piece {
                Piece::Own(bytes) => format!("own {bytes:?}"),
                Piece::Shared { lo, hi, .. } => format!("shared {lo}..{hi}"),
            }))
        );
        assert_eq!(pieces, ["shared 2..5", "own [5]", "own [6]"]);
        let summary = records.summary();
        assert_eq!(summary.runner_calls, 3);
        assert_eq!(summary.success, 7);
        assert_eq!(summary.total_exec_time, 3.0 * 0.125);
        assert_eq!(records.large_outputs(10), vec![(CallId(0), &blob[..])]);
    }

    #[test]
    fn a_batch_answered_element_by_element_counts_as_one_runner_call() {
        let job = job(4, 0);
        let stats = ran(0, 0);
        let outcomes = (0..4u32).map(|k| {
            let mut element = stats.clone();
            element.cold_start &= k == 0;
            let outcome = match k {
                2 => RunOutcome::Failed(Box::new(error(FailureReason::UserError, "two"))),
                _ => RunOutcome::Own(vec![k as u8]),
            };
            element.result_size = u64::from(k != 2);
            (element, outcome)
        });
        assert_eq!(job.complete_from(CallId(0), outcomes), 4);
        let summary = job.records().summary();
        assert_eq!(
            (summary.runner_calls, summary.success, summary.error),
            (1, 3, 1)
        );
        assert_eq!(summary.total_exec_time, 0.125);
        assert!(job.stats(CallId(0)).cold_start);
        assert!(!job.stats(CallId(1)).cold_start);
        assert_eq!(job.stats(CallId(2)).result_size, 0);
        let records = job.records();
        let (call, error) = records.first_failure().unwrap();
        assert_eq!((call, error.message.as_str()), (CallId(2), "two"));
        assert!(!records.for_each_success(0..4, |_| {}));
        assert!(records.for_each_success(0..2, |_| {}));
    }

    #[test]
    fn failures_keep_their_errors_and_stats() {
        let job = job(3, 0);
        job.complete(CallId(0), ran(0, 2), RunOutcome::Own(vec![1, 2]));
        let stats = ran(1, 0);
        let failure = error(FailureReason::OutOfMemory, "oom");
        let outcome = RunOutcome::Failed(Box::new(failure.clone()));
        assert!(job.complete(CallId(1), stats.clone(), outcome));
        assert_eq!(job.state(CallId(1)), CallState::Error);
        assert_eq!(job.stats(CallId(1)), stats);
        match job.records().outcome(CallId(1)) {
            Some(OutcomeRef::Failed(e)) => assert_eq!(e, &failure),
            _ => panic!("call 1 did not fail"),
        }
        assert!(job.records().outcome(CallId(2)).is_none());
        assert_eq!(job.records().first_failure().unwrap().0, CallId(1));
        let summary = job.records().summary();
        assert_eq!(
            (summary.success, summary.error, summary.runner_calls),
            (1, 1, 3)
        );
    }

    #[test]
    fn a_retried_call_runs_again_from_a_reused_start_and_keeps_its_history() {
        let job = job(2, 1);
        job.mark_running_from(CallId(0), 2, Some(0), SUBMIT + 1.0);
        let crash = || RunOutcome::Failed(Box::new(error(FailureReason::WorkerCrashed, "x")));
        // Both calls of the batch fail their first attempt and go again.
        assert_eq!(job.complete_run(CallId(0), 2, ran(0, 0), crash()), 0);
        assert_eq!(job.state(CallId(1)), CallState::Invoked);
        let waiting = job.stats(CallId(1));
        assert_eq!((waiting.attempt, waiting.start_ts), (1, None));
        {
            let records = job.records();
            assert_eq!(records.free_starts, vec![0], "the batch's start is free");
        }
        job.mark_running_from(CallId(0), 1, Some(1), SUBMIT + 2.0);
        job.mark_running_from(CallId(1), 1, Some(0), SUBMIT + 3.0);
        assert_eq!(job.stats(CallId(0)).start_ts, Some(SUBMIT + 2.0));
        assert_eq!(job.stats(CallId(1)).worker_id, Some(0));
        assert_eq!(job.records().starts.len(), 2);
        let retried = CallStats {
            attempt: 1,
            result_size: 1,
            ..ran(4, 0)
        };
        assert!(job.complete(CallId(0), retried.clone(), RunOutcome::Own(vec![0])));
        assert_eq!(job.stats(CallId(0)), retried);
        assert_eq!(job.failed_attempts(CallId(0)).len(), 1);
        // Call 1 ran on the start call 0 freed; its last attempt fails.
        let last = CallStats {
            attempt: 1,
            ..ran(5, 0)
        };
        assert!(job.complete(CallId(1), last.clone(), crash()));
        assert_eq!(job.stats(CallId(1)), last);
        assert_eq!(job.records().summary().error, 1);
        assert!(job.is_complete());
    }

    #[test]
    fn a_cancelled_job_ends_every_unfinished_call_with_its_stats() {
        let job = job(4, 0);
        job.complete(CallId(0), ran(0, 1), RunOutcome::Own(vec![0]));
        job.mark_running_from(CallId(1), 1, Some(1), SUBMIT + 5.0);
        assert_eq!(job.cancel("test"), 3);
        assert!(job.is_complete());
        assert_eq!(job.stats(CallId(0)), ran(0, 1));
        let running = job.stats(CallId(1));
        assert_eq!(
            (running.start_ts, running.worker_id),
            (Some(SUBMIT + 5.0), Some(1))
        );
        let queued = job.stats(CallId(2));
        assert_eq!((queued.submit_ts, queued.start_ts), (SUBMIT, None));
        assert!(queued.end_ts.is_some());
        for i in 1..4 {
            match job.records().outcome(CallId(i)) {
                Some(OutcomeRef::Failed(e)) => assert_eq!(e.reason, FailureReason::Cancelled),
                _ => panic!("call {i} was not cancelled"),
            }
        }
        // A late report of a cancelled call changes nothing.
        assert!(!job.complete(CallId(1), ran(1, 1), RunOutcome::Own(vec![1])));
        let summary = job.records().summary();
        assert_eq!(
            (summary.success, summary.error, summary.runner_calls),
            (1, 3, 4)
        );
        let records = job.records();
        assert_eq!(records.free_starts.len(), records.starts.len());
    }
}
