//! The `http` backend's invoker: signs each Invocation and POSTs it to a
//! worker server, round-robin over the configured URLs, with bounded
//! concurrency on one keep-alive client. Throttling (429, 503) and transport
//! errors are retried with jittered exponential backoff until
//! `http.invoke_deadline`; then, or on a refusal, the Invocation's calls fail
//! with the reason (see `remote`). Completion is followed through storage.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;

use quelea_core::auth;
use quelea_core::config::{HttpConfig, Secret};
use quelea_core::model::now_ts;

use super::remote::{deliver_all, invoke_and_follow, Failure};
use super::Submission;
use crate::error::{Error, Result};
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

impl HttpBackend {
    pub fn new(config: &HttpConfig) -> Result<HttpBackend> {
        let secret = config
            .secret
            .clone()
            .ok_or_else(|| Error::InvalidArgument {
                name: "http.secret",
                message: "the http backend needs the shared secret".into(),
            })?;
        quelea_storage::install_tls_provider();
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
        invoke_and_follow(
            "http",
            submission,
            self.max_workers,
            self.invoke_deadline,
            |body| {
                let n = self.next_url.fetch_add(1, Ordering::Relaxed);
                self.post(&self.invoke_urls[n % self.invoke_urls.len()], body)
            },
        )
    }

    /// Delivers one more Invocation of a job that is followed already.
    pub fn resubmit(
        &self,
        job: &crate::job::JobState,
        invocation: quelea_core::protocol::Invocation,
    ) -> Result<()> {
        deliver_all(
            "http",
            job,
            vec![invocation],
            self.max_workers,
            self.invoke_deadline,
            |body| {
                let n = self.next_url.fetch_add(1, Ordering::Relaxed);
                self.post(&self.invoke_urls[n % self.invoke_urls.len()], body)
            },
        )
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
