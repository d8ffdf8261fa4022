//! Futures: one per call, and lists of them.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use quelea_core::ids::{CallId, ExecutorId, JobId};
use quelea_core::model::{CallError, CallState, CallStats, Output};

use crate::error::{Error, Result};
use crate::interrupt;
use crate::job::{JobState, Notifier};

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
        self.job.calls()[self.call.index()].stats.clone()
    }
    /// The failure, once the call has failed.
    pub fn call_error(&self) -> Option<CallError> {
        match &self.job.calls()[self.call.index()].outcome {
            Some(Err(e)) => Some((**e).clone()),
            _ => None,
        }
    }

    /// The errors of the call's earlier attempts, oldest first (each failed
    /// attempt that was run again; see `MapOptions::retries`).
    pub fn failed_attempts(&self) -> Vec<CallError> {
        self.job.calls()[self.call.index()].failed_attempts.clone()
    }

    /// No further retries of this call: the attempt running now (if any)
    /// is its last, whatever the job's `retries`.
    pub fn stop_retries(&self) {
        self.job.calls()[self.call.index()].retries_stopped = true;
    }

    /// The raw serialized result, once the call has succeeded: its own
    /// bytes, or its place in the result its batch shares.
    pub fn output(&self) -> Option<Output> {
        match &self.job.calls()[self.call.index()].outcome {
            Some(Ok(output)) => Some(output.clone()),
            _ => None,
        }
    }
}

impl<O: DeserializeOwned> ResponseFuture<O> {
    /// Waits for the call and returns its result, or its remote error.
    pub fn result(&self, timeout: Option<Duration>) -> Result<O> {
        wait_calls(
            &[(self.job.clone(), self.call)],
            ReturnWhen::AllCompleted,
            timeout,
        )?;
        decode(&self.job, self.call)
    }
}

pub(crate) fn decode<O: DeserializeOwned>(job: &JobState, call: CallId) -> Result<O> {
    let calls = job.calls();
    match &calls[call.index()].outcome {
        Some(Ok(output)) => serde_json::from_slice(own(output)?).map_err(|e| Error::Deserialize {
            job_key: job.job_key(),
            call_id: call,
            type_name: std::any::type_name::<O>(),
            message: e.to_string(),
        }),
        Some(Err(error)) => Err(Error::CallFailed {
            job_key: job.job_key(),
            call_id: call,
            error: error.clone(),
        }),
        None => unreachable!("decode is called on finished calls only"),
    }
}

/// A Rust call's own result bytes (Rust runners answer every element of a
/// batch on its own; a shared result is a front end's encoding).
fn own(output: &Output) -> Result<&[u8]> {
    match output {
        Output::Own(bytes) => Ok(bytes),
        Output::Shared { .. } => Err(Error::InvalidArgument {
            name: "result",
            message: "a batch's shared result is a front end's encoding, not JSON".into(),
        }),
    }
}

/// The futures of a job (or of several), in call order.
pub struct FuturesList<O> {
    pub(crate) futures: Vec<ResponseFuture<O>>,
}

impl<O> Clone for FuturesList<O> {
    fn clone(&self) -> Self {
        FuturesList {
            futures: self.futures.clone(),
        }
    }
}

impl<O> std::fmt::Debug for FuturesList<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let done = self.futures.iter().filter(|x| x.done()).count();
        write!(f, "FuturesList({} calls, {done} done)", self.futures.len())
    }
}

impl<O> FuturesList<O> {
    pub(crate) fn for_job(job: &Arc<JobState>) -> Self {
        FuturesList {
            futures: (0..job.total())
                .map(|i| ResponseFuture::new(job.clone(), CallId(i)))
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.futures.len()
    }
    pub fn is_empty(&self) -> bool {
        self.futures.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &ResponseFuture<O>> {
        self.futures.iter()
    }
    pub fn get(&self, index: usize) -> Option<&ResponseFuture<O>> {
        self.futures.get(index)
    }

    /// How many of these calls have finished (cheap for whole jobs).
    pub fn done_count(&self) -> usize {
        Groups::new(&self.calls()).done()
    }

    pub(crate) fn calls(&self) -> Vec<(Arc<JobState>, CallId)> {
        self.futures
            .iter()
            .map(|f| (f.job.clone(), f.call))
            .collect()
    }
}

impl<O> From<Vec<ResponseFuture<O>>> for FuturesList<O> {
    fn from(futures: Vec<ResponseFuture<O>>) -> Self {
        FuturesList { futures }
    }
}

impl<O> IntoIterator for FuturesList<O> {
    type Item = ResponseFuture<O>;
    type IntoIter = std::vec::IntoIter<ResponseFuture<O>>;
    fn into_iter(self) -> Self::IntoIter {
        self.futures.into_iter()
    }
}

/// Calls grouped by job, so whole jobs are checked with one counter.
struct Groups {
    groups: Vec<(Arc<JobState>, Vec<CallId>)>,
    total: usize,
}

impl Groups {
    fn new(calls: &[(Arc<JobState>, CallId)]) -> Self {
        let mut groups: Vec<(Arc<JobState>, Vec<CallId>)> = Vec::new();
        for (job, call) in calls {
            match groups.iter_mut().find(|(j, _)| Arc::ptr_eq(j, job)) {
                Some((_, ids)) => ids.push(*call),
                None => groups.push((job.clone(), vec![*call])),
            }
        }
        Groups {
            groups,
            total: calls.len(),
        }
    }

    fn whole_jobs(&self) -> bool {
        self.groups
            .iter()
            .all(|(job, ids)| ids.len() == job.total() as usize)
    }

    fn done(&self) -> usize {
        self.groups
            .iter()
            .map(|(job, ids)| {
                if ids.len() == job.total() as usize {
                    job.done_count() as usize
                } else {
                    let records = job.calls();
                    ids.iter()
                        .filter(|c| records[c.index()].state.is_terminal())
                        .count()
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
    calls: &[(Arc<JobState>, CallId)],
    when: ReturnWhen,
    timeout: Option<Duration>,
) -> Result<()> {
    let groups = Groups::new(calls);
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
