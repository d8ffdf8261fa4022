//! The `http` backend's invoker: signs each Invocation and POSTs it to a
//! worker server, round-robin over the configured URLs, with bounded
//! concurrency on one keep-alive client. Throttling (429, 503) and transport
//! errors are retried with jittered exponential backoff until
//! `http.invoke_deadline`; then, or on a refusal, the Invocation's calls fail
//! with the reason. Completion is followed through storage by the monitor.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;

use quelea_core::auth;
use quelea_core::config::{HttpConfig, Secret};
use quelea_core::ids::CallId;
use quelea_core::model::{now_ts, CallError, FailureReason};
use quelea_core::protocol::{group_invocations, Message};
use quelea_storage::io_runtime;

use super::Submission;
use crate::error::{Error, Result};

const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// One request, connection included; a server answers after validation, so
/// this is long only for a slow storage read of a function payload.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct HttpBackend {
    invoke_urls: Vec<String>,
    secret: Secret,
    client: reqwest::Client,
    max_workers: usize,
    invoke_deadline: Duration,
    next_url: AtomicUsize,
}

enum Failure {
    /// Worth another try (throttled, overloaded, unreachable).
    Retry(String),
    /// The server refused the Invocation; retrying cannot help.
    Refused(String),
}

impl HttpBackend {
    pub fn new(config: &HttpConfig) -> Result<HttpBackend> {
        let secret = config
            .secret
            .clone()
            .ok_or_else(|| Error::InvalidArgument {
                name: "http.secret",
                message: "the http backend needs the shared secret".into(),
            })?;
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(config.max_workers as usize)
            .tcp_nodelay(true)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| Error::Invoke {
                backend: "http",
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(HttpBackend {
            invoke_urls: config
                .urls
                .iter()
                .map(|u| format!("{}/invoke", u.trim_end_matches('/')))
                .collect(),
            secret,
            client,
            max_workers: config.max_workers.max(1) as usize,
            invoke_deadline: Duration::from_secs_f64(config.invoke_deadline),
            next_url: AtomicUsize::new(0),
        })
    }

    pub fn submit(&self, submission: Submission<'_>) -> Result<()> {
        let job = submission.job;
        let invocations = group_invocations(&job.spec, submission.calls);
        let total = invocations.len();
        let batches: Vec<(Vec<CallId>, Bytes)> = invocations
            .into_iter()
            .map(|invocation| {
                let ids = invocation.calls.iter().map(|c| c.call_id).collect();
                (ids, Bytes::from(Message::Invocation(invocation).encode()))
            })
            .collect();
        let failures: Vec<(Vec<CallId>, String)> = io_runtime().block_on(
            futures::stream::iter(batches)
                .map(|(ids, body)| async move {
                    match self.deliver(body).await {
                        Ok(()) => None,
                        Err(message) => Some((ids, message)),
                    }
                })
                .buffer_unordered(self.max_workers)
                .filter_map(|failed| async move { failed })
                .collect(),
        );
        for (ids, message) in &failures {
            let now = now_ts();
            for &call in ids {
                let mut stats = job.calls()[call.index()].stats.clone();
                stats.end_ts = Some(now);
                job.complete(
                    call,
                    stats,
                    Err(Box::new(CallError {
                        reason: FailureReason::WorkerCrashed,
                        error_type: "InvocationFailed".into(),
                        message: format!("call {call} was never delivered: {message}"),
                        traceback: String::new(),
                        payload: None,
                    })),
                );
            }
        }
        if failures.len() == total {
            let (_, first) = &failures[0];
            return Err(Error::Invoke {
                backend: "http",
                message: format!("no Invocation of {} was delivered: {first}", job.job_key()),
            });
        }
        crate::monitor::follow(
            job,
            submission.storage.clone(),
            submission.deadline_ts,
            false,
        )
    }

    /// Sends one Invocation until a server accepts it, it is refused, or
    /// the invoke deadline passes.
    async fn deliver(&self, body: Bytes) -> std::result::Result<(), String> {
        let deadline = Instant::now() + self.invoke_deadline;
        let mut backoff = BACKOFF_START;
        loop {
            let n = self.next_url.fetch_add(1, Ordering::Relaxed);
            let url = &self.invoke_urls[n % self.invoke_urls.len()];
            let reason = match self.post(url, body.clone()).await {
                Ok(()) => return Ok(()),
                Err(Failure::Refused(message)) => return Err(message),
                Err(Failure::Retry(message)) => message,
            };
            let pause = jittered(backoff);
            if Instant::now() + pause > deadline {
                return Err(format!(
                    "gave up after {:.0} s of retries; last: {reason}",
                    self.invoke_deadline.as_secs_f64()
                ));
            }
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn post(&self, url: &str, body: Bytes) -> std::result::Result<(), Failure> {
        let signed = auth::sign(self.secret.expose().as_bytes(), now_ts() as u64, &body);
        let response = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(auth::TIMESTAMP_HEADER, signed.timestamp)
            .header(auth::NONCE_HEADER, signed.nonce)
            .header(auth::SIGNATURE_HEADER, signed.signature)
            .body(body)
            .send()
            .await
            .map_err(|e| Failure::Retry(format!("`{url}`: {e}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let message = format!("`{url}` answered {status}: {}", text.trim());
        match status.as_u16() {
            429 | 502 | 503 | 504 => Err(Failure::Retry(message)),
            _ => Err(Failure::Refused(message)),
        }
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
    use super::*;

    #[test]
    fn jitter_stays_within_half_to_full_backoff() {
        for _ in 0..1000 {
            let pause = jittered(Duration::from_millis(100));
            assert!(pause >= Duration::from_millis(50) && pause <= Duration::from_millis(100));
        }
    }
}
