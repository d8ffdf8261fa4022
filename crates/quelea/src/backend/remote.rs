//! What every remote backend's invoker shares: the fan-out of a job's
//! Invocations with bounded concurrency, jittered exponential backoff for
//! throttled deliveries, failing the calls of Invocations that could not be
//! delivered, and then following the job through storage and, with push
//! monitoring, its broker subscription (the monitor's deadline catches
//! Invocations that were delivered but lost).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;

use quelea_core::ids::CallId;
use quelea_core::model::{now_ts, CallError, FailureReason};
use quelea_core::protocol::{group_invocations, Invocation, Message};
use quelea_storage::io_runtime;

use super::Submission;
use crate::error::{Error, Result};
use crate::job::{JobState, RunOutcome};

const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Why one delivery attempt failed.
pub(crate) enum Failure {
    /// Worth another try (throttled, overloaded, unreachable).
    Retry(String),
    /// Refused; retrying cannot help.
    Refused(String),
}

/// Sends every Invocation of the submission with `attempt` (at most
/// `max_workers` at once, each retried while it answers
/// [`Failure::Retry`] until `invoke_deadline`), fails the calls of those
/// that were not delivered, and follows the job.
pub(crate) fn invoke_and_follow<A, F>(
    backend: &'static str,
    submission: Submission<'_>,
    max_workers: usize,
    invoke_deadline: Duration,
    attempt: A,
) -> Result<()>
where
    A: Fn(Bytes) -> F,
    F: Future<Output = std::result::Result<(), Failure>>,
{
    let job = submission.job;
    let invocations = group_invocations(&job.spec, submission.calls);
    deliver_all(
        backend,
        job,
        invocations,
        max_workers,
        invoke_deadline,
        attempt,
    )?;
    crate::monitor::follow(
        job,
        submission.storage.clone(),
        submission.deadline_ts,
        false,
        submission.push,
    )
}

/// Delivers Invocations of `job` as [`invoke_and_follow`] does, without
/// starting to follow it (a retry of a job that is followed already). Each
/// runner call goes in an Invocation of its own.
pub(crate) fn deliver_all<A, F>(
    backend: &'static str,
    job: &JobState,
    invocations: Vec<Invocation>,
    max_workers: usize,
    invoke_deadline: Duration,
    attempt: A,
) -> Result<()>
where
    A: Fn(Bytes) -> F,
    F: Future<Output = std::result::Result<(), Failure>>,
{
    let invocations: Vec<Invocation> = invocations
        .into_iter()
        .flat_map(|invocation| {
            let mut one = invocation.clone();
            one.calls.clear();
            invocation.calls.into_iter().map(move |call| Invocation {
                calls: vec![call],
                ..one.clone()
            })
        })
        .collect();
    let total = invocations.len();
    let batches: Vec<(Vec<CallId>, u32, Bytes)> = invocations
        .into_iter()
        .map(|invocation| {
            let ids = invocation
                .calls
                .iter()
                .flat_map(|c| {
                    let (first, count) = c.elements();
                    (0..count).map(move |k| CallId(first.0 + k))
                })
                .collect();
            let n = invocation.attempt;
            (
                ids,
                n,
                Bytes::from(Message::Invocation(invocation).encode()),
            )
        })
        .collect();
    let attempt = &attempt;
    let failures: Vec<(Vec<CallId>, u32, String)> = io_runtime().block_on(
        futures::stream::iter(batches)
            .map(|(ids, n, body)| async move {
                match deliver(invoke_deadline, || attempt(body.clone())).await {
                    Ok(()) => None,
                    Err(message) => Some((ids, n, message)),
                }
            })
            .buffer_unordered(max_workers.max(1))
            .filter_map(|failed| async move { failed })
            .collect(),
    );
    for (ids, n, message) in &failures {
        let now = now_ts();
        for &call in ids {
            let mut stats = job.stats(call);
            stats.end_ts = Some(now);
            stats.attempt = *n;
            // Final: the delivery was retried already, until its deadline.
            job.complete_final(
                call,
                stats,
                RunOutcome::Failed(Box::new(CallError {
                    reason: FailureReason::WorkerCrashed,
                    error_type: "InvocationFailed".into(),
                    message: format!("call {call} was never delivered: {message}"),
                    traceback: String::new(),
                    payload: None,
                })),
            );
        }
    }
    if total > 0 && failures.len() == total {
        let (_, _, first) = &failures[0];
        return Err(Error::Invoke {
            backend,
            message: format!("no Invocation of {} was delivered: {first}", job.job_key()),
        });
    }
    Ok(())
}

/// Tries until accepted, refused, or out of time.
async fn deliver<F, Fut>(deadline: Duration, attempt: F) -> std::result::Result<(), String>
where
    F: Fn() -> Fut,
    Fut: Future<Output = std::result::Result<(), Failure>>,
{
    let give_up = Instant::now() + deadline;
    let mut backoff = BACKOFF_START;
    loop {
        let reason = match attempt().await {
            Ok(()) => return Ok(()),
            Err(Failure::Refused(message)) => return Err(message),
            Err(Failure::Retry(message)) => message,
        };
        let pause = jittered(backoff);
        if Instant::now() + pause > give_up {
            return Err(format!(
                "gave up after {:.0} s of retries; last: {reason}",
                deadline.as_secs_f64()
            ));
        }
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// A pause in `[backoff / 2, backoff]`, so clients throttled together do
/// not retry together.
fn jittered(backoff: Duration) -> Duration {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed =
        STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ (now_ts().fract() * 1e9) as u64;
    // splitmix64: plenty for jitter.
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let half = backoff / 2;
    half + Duration::from_nanos(z % (half.as_nanos() as u64 + 1))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    #[test]
    fn jitter_stays_within_half_to_full_backoff() {
        for _ in 0..1000 {
            let pause = jittered(Duration::from_millis(100));
            assert!(pause >= Duration::from_millis(50) && pause <= Duration::from_millis(100));
        }
    }

    #[test]
    fn retries_until_accepted_and_stops_on_a_refusal() {
        let tries = AtomicU32::new(0);
        let outcome = io_runtime().block_on(deliver(Duration::from_secs(10), || {
            let n = tries.fetch_add(1, Ordering::Relaxed);
            async move {
                if n < 3 {
                    Err(Failure::Retry("429".into()))
                } else {
                    Ok(())
                }
            }
        }));
        assert!(outcome.is_ok());
        assert_eq!(tries.load(Ordering::Relaxed), 4);

        let tries = AtomicU32::new(0);
        let outcome = io_runtime().block_on(deliver(Duration::from_secs(10), || {
            tries.fetch_add(1, Ordering::Relaxed);
            async { Err(Failure::Refused("403 no".into())) }
        }));
        assert_eq!(outcome.unwrap_err(), "403 no");
        assert_eq!(tries.load(Ordering::Relaxed), 1);

        let started = Instant::now();
        let outcome = io_runtime().block_on(deliver(Duration::from_millis(300), || async {
            Err(Failure::Retry("throttled".into()))
        }));
        let err = outcome.unwrap_err();
        assert!(
            err.contains("retries") && err.contains("throttled"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
