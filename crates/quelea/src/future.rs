//! Futures: one per call, and lists of them.

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use quelea_core::ids::{CallId, ExecutorId, JobId};
use quelea_core::model::{CallError, CallState, CallStats, Output};

use crate::error::{Error, Result};
use crate::interrupt;
use crate::job::{CallsSummary, JobState, Notifier, OutcomeRef, Piece};

/// When a wait returns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ReturnWhen {
    /// Every call has finished.
    AllCompleted,
    /// At least one call has finished.
    AnyCompleted,
    /// At once, with whatever has finished.
    Always,
    /// At least this percentage (0-100) of the calls has finished.
    Percentage(f64),
}

/// One call's future result.
pub struct ResponseFuture<O> {
    pub(crate) job: Arc<JobState>,
    pub(crate) call: CallId,
    _output: PhantomData<fn() -> O>,
}

impl<O> Clone for ResponseFuture<O> {
    fn clone(&self) -> Self {
        ResponseFuture::new(self.job.clone(), self.call)
    }
}

impl<O> std::fmt::Debug for ResponseFuture<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ResponseFuture({}/{} {:?})",
            self.job.job_key(),
            self.call,
            self.state()
        )
    }
}

impl<O> ResponseFuture<O> {
    pub(crate) fn new(job: Arc<JobState>, call: CallId) -> Self {
        ResponseFuture {
            job,
            call,
            _output: PhantomData,
        }
    }

    pub fn call_id(&self) -> CallId {
        self.call
    }
    pub fn job_id(&self) -> JobId {
        self.job.spec.job_id
    }
    pub fn executor_id(&self) -> &ExecutorId {
        &self.job.spec.executor_id
    }
    pub fn state(&self) -> CallState {
        self.job.state(self.call)
    }
    pub fn done(&self) -> bool {
        self.state().is_terminal()
    }
    pub fn success(&self) -> bool {
        self.state() == CallState::Success
    }
    pub fn error(&self) -> bool {
        self.state() == CallState::Error
    }
    /// Elements per runner call of the call's job.
    pub fn chunksize(&self) -> u32 {
        self.job.spec.chunksize
    }
    pub fn stats(&self) -> CallStats {
        self.job.stats(self.call)
    }
    /// The failure, once the call has failed.
    pub fn call_error(&self) -> Option<CallError> {
        match self.job.records().outcome(self.call) {
            Some(OutcomeRef::Failed(e)) => Some(e.clone()),
            _ => None,
        }
    }

    /// The errors of the call's earlier attempts, oldest first (each failed
    /// attempt that was run again; see `MapOptions::retries`).
    pub fn failed_attempts(&self) -> Vec<CallError> {
        self.job.failed_attempts(self.call)
    }

    /// No further retries of this call: the attempt running now (if any)
    /// is its last, whatever the job's `retries`.
    pub fn stop_retries(&self) {
        self.job.stop_retries(self.call);
    }

    /// The raw serialized result, once the call has succeeded: its own
    /// bytes, or its place in the result its batch shares.
    pub fn output(&self) -> Option<Output> {
        match self.job.records().outcome(self.call)? {
            OutcomeRef::Failed(_) => None,
            ok => ok.to_result().ok(),
        }
    }
}

impl<O: DeserializeOwned> ResponseFuture<O> {
    /// Waits for the call and returns its result, or its remote error.
    pub fn result(&self, timeout: Option<Duration>) -> Result<O> {
        let part = Part {
            job: self.job.clone(),
            calls: self.call.0..self.call.0 + 1,
        };
        wait_calls(&[part], ReturnWhen::AllCompleted, timeout)?;
        decode(&self.job, self.call)
    }
}

pub(crate) fn decode<O: DeserializeOwned>(job: &JobState, call: CallId) -> Result<O> {
    let records = job.records();
    match records.outcome(call) {
        // A Rust call's own result bytes (Rust runners answer every element
        // of a batch on its own; a shared result is a front end's encoding).
        Some(OutcomeRef::Own(bytes)) => {
            serde_json::from_slice(bytes).map_err(|e| Error::Deserialize {
                job_key: job.job_key(),
                call_id: call,
                type_name: std::any::type_name::<O>(),
                message: e.to_string(),
            })
        }
        Some(OutcomeRef::Shared { .. }) => Err(Error::InvalidArgument {
            name: "result",
            message: "a batch's shared result is a front end's encoding, not JSON".into(),
        }),
        Some(OutcomeRef::Failed(error)) => Err(Error::CallFailed {
            job_key: job.job_key(),
            call_id: call,
            error: Box::new(error.clone()),
        }),
        None => unreachable!("decode is called on finished calls only"),
    }
}

/// The futures of a job (or of several), in call order. Held as runs of
/// consecutive calls of one job, so a whole job's list is one entry however
/// many calls it has.
pub struct FuturesList<O> {
    pub(crate) parts: Vec<Part>,
    /// Each part's end in the list (cumulative lengths), for indexing.
    ends: Vec<usize>,
    _output: PhantomData<fn() -> O>,
}

/// Calls `calls` of `job`.
#[derive(Clone)]
pub(crate) struct Part {
    pub job: Arc<JobState>,
    pub calls: Range<u32>,
}

impl<O> Clone for FuturesList<O> {
    fn clone(&self) -> Self {
        FuturesList {
            parts: self.parts.clone(),
            ends: self.ends.clone(),
            _output: PhantomData,
        }
    }
}

impl<O> Default for FuturesList<O> {
    fn default() -> Self {
        FuturesList {
            parts: Vec::new(),
            ends: Vec::new(),
            _output: PhantomData,
        }
    }
}

impl<O> std::fmt::Debug for FuturesList<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let done = self.done_count();
        write!(f, "FuturesList({} calls, {done} done)", self.len())
    }
}

impl<O> FuturesList<O> {
    pub(crate) fn for_job(job: &Arc<JobState>) -> Self {
        let mut list = FuturesList::default();
        list.push_run(job, 0..job.total());
        list
    }

    /// Appends calls `calls` of `job`, joining the last run where they follow it.
    pub(crate) fn push_run(&mut self, job: &Arc<JobState>, calls: Range<u32>) {
        if calls.is_empty() {
            return;
        }
        let len = calls.len();
        if let Some(last) = self.parts.last_mut() {
            if Arc::ptr_eq(&last.job, job) && last.calls.end == calls.start {
                last.calls.end = calls.end;
                *self.ends.last_mut().expect("a part has an end") += len;
                return;
            }
        }
        self.ends.push(self.len() + len);
        self.parts.push(Part {
            job: job.clone(),
            calls,
        });
    }

    pub fn push(&mut self, future: ResponseFuture<O>) {
        self.push_run(&future.job, future.call.0..future.call.0 + 1);
    }

    /// Appends another list's futures.
    pub fn extend_from(&mut self, other: &FuturesList<O>) {
        for part in &other.parts {
            self.push_run(&part.job, part.calls.clone());
        }
    }

    pub fn len(&self) -> usize {
        self.ends.last().copied().unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn iter(&self) -> impl Iterator<Item = ResponseFuture<O>> + '_ {
        self.parts.iter().flat_map(|part| {
            part.calls
                .clone()
                .map(|i| ResponseFuture::new(part.job.clone(), CallId(i)))
        })
    }
    pub fn get(&self, index: usize) -> Option<ResponseFuture<O>> {
        let at = self.ends.partition_point(|&end| end <= index);
        let part = self.parts.get(at)?;
        let start = if at == 0 { 0 } else { self.ends[at - 1] };
        Some(ResponseFuture::new(
            part.job.clone(),
            CallId(part.calls.start + (index - start) as u32),
        ))
    }

    /// The futures at `indices` of this list, in that order; the first
    /// index out of range is the error.
    pub fn select(&self, indices: &[usize]) -> std::result::Result<FuturesList<O>, usize> {
        let mut list = FuturesList::default();
        for &index in indices {
            let future = self.get(index).ok_or(index)?;
            list.push(future);
        }
        Ok(list)
    }

    /// How many of these calls have finished (cheap for whole jobs).
    pub fn done_count(&self) -> usize {
        Groups::new(&self.parts).done()
    }

    /// Each call's state, in list order.
    pub fn states(&self) -> Vec<CallState> {
        let mut states = Vec::with_capacity(self.len());
        for part in &self.parts {
            let records = part.job.records();
            states.extend(part.calls.clone().map(|i| records.state(CallId(i))));
        }
        states
    }

    /// The counts and times of a whole job's calls (the list of one job's
    /// futures, as a map returns it), read run by run.
    pub fn job_summary(&self) -> Option<CallsSummary> {
        match self.parts.as_slice() {
            [part] if part.calls.start == 0 && part.calls.end == part.job.total() => {
                Some(part.job.records().summary())
            }
            _ => None,
        }
    }

    /// Visits the results of these calls in order, a batch's run of shared
    /// values at a time (see [`Piece`]); false at the first call that has
    /// not succeeded. Reads each job's records under one lock.
    pub fn for_each_success(&self, mut visit: impl FnMut(Piece<'_>)) -> bool {
        self.parts.iter().all(|part| {
            part.job
                .records()
                .for_each_success(part.calls.clone(), &mut visit)
        })
    }
}

impl<O> From<Vec<ResponseFuture<O>>> for FuturesList<O> {
    fn from(futures: Vec<ResponseFuture<O>>) -> Self {
        let mut list = FuturesList::default();
        for future in futures {
            list.push(future);
        }
        list
    }
}

impl<O> FromIterator<ResponseFuture<O>> for FuturesList<O> {
    fn from_iter<T: IntoIterator<Item = ResponseFuture<O>>>(iter: T) -> Self {
        let mut list = FuturesList::default();
        for future in iter {
            list.push(future);
        }
        list
    }
}

impl<O> IntoIterator for FuturesList<O> {
    type Item = ResponseFuture<O>;
    type IntoIter = std::vec::IntoIter<ResponseFuture<O>>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter().collect::<Vec<_>>().into_iter()
    }
}

/// Calls grouped by job, so whole jobs are checked with one counter.
struct Groups {
    groups: Vec<(Arc<JobState>, Vec<Range<u32>>)>,
    total: usize,
}

impl Groups {
    fn new(parts: &[Part]) -> Self {
        let mut groups: Vec<(Arc<JobState>, Vec<Range<u32>>)> = Vec::new();
        let mut total = 0;
        for part in parts {
            total += part.calls.len();
            match groups.iter_mut().find(|(j, _)| Arc::ptr_eq(j, &part.job)) {
                Some((_, ranges)) => ranges.push(part.calls.clone()),
                None => groups.push((part.job.clone(), vec![part.calls.clone()])),
            }
        }
        Groups { groups, total }
    }

    fn is_whole(job: &JobState, ranges: &[Range<u32>]) -> bool {
        matches!(ranges, [only] if only.start == 0 && only.end == job.total())
    }

    fn whole_jobs(&self) -> bool {
        self.groups
            .iter()
            .all(|(job, ranges)| Self::is_whole(job, ranges))
    }

    fn done(&self) -> usize {
        self.groups
            .iter()
            .map(|(job, ranges)| {
                if Self::is_whole(job, ranges) {
                    job.done_count() as usize
                } else {
                    let records = job.records();
                    ranges
                        .iter()
                        .map(|r| records.count_terminal(r.clone()))
                        .sum()
                }
            })
            .sum()
    }

    fn notifier(&self) -> Option<Arc<Notifier>> {
        self.groups.first().map(|(job, _)| job.notifier())
    }
}

/// Waits until `when` holds for `calls`, the timeout passes, or Ctrl-C.
pub(crate) fn wait_calls(
    parts: &[Part],
    when: ReturnWhen,
    timeout: Option<Duration>,
) -> Result<()> {
    let groups = Groups::new(parts);
    let needed = match when {
        ReturnWhen::Always => return Ok(()),
        ReturnWhen::AllCompleted => groups.total,
        ReturnWhen::AnyCompleted => groups.total.min(1),
        ReturnWhen::Percentage(p) => {
            if !(0.0..=100.0).contains(&p) {
                return Err(Error::InvalidArgument {
                    name: "return_when",
                    message: format!("a percentage must be between 0 and 100, got {p}"),
                });
            }
            ((p / 100.0) * groups.total as f64).ceil() as usize
        }
    };
    let Some(notifier) = groups.notifier() else {
        return Ok(());
    };
    let _eager =
        (when != ReturnWhen::AllCompleted || !groups.whole_jobs()).then(|| notifier.eager());
    let start = Instant::now();
    loop {
        let seen = notifier.generation();
        let done = groups.done();
        if done >= needed {
            return Ok(());
        }
        if interrupt::is_interrupted() {
            for (job, _) in &groups.groups {
                job.cancel("interrupted by Ctrl-C");
                job.run_cancel_hook();
            }
            return Err(Error::Interrupted);
        }
        let mut slice = interrupt::POLL;
        if let Some(limit) = timeout {
            let waited = start.elapsed();
            if waited >= limit {
                return Err(Error::Timeout {
                    waited,
                    pending: groups.total - done,
                });
            }
            slice = slice.min(limit - waited);
        }
        notifier.wait(seen, slice);
    }
}
