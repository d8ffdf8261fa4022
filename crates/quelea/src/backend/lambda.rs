//! The `aws_lambda` backend's invoker: each Invocation is the payload of an
//! asynchronous call of the Lambda Invoke API
//! (`POST /2015-03-31/functions/{name}/invocations`,
//! `X-Amz-Invocation-Type: Event`), SigV4-signed with the client's own
//! credentials (see `lambda_api`), which never enter the payload: the
//! function reads storage with its execution role. Throttling (429,
//! `TooManyRequestsException`, `ServiceException`, other 5xx) and transport
//! errors are retried with jittered backoff until
//! `aws_lambda.invoke_deadline`; any other answer fails the Invocation's
//! calls with AWS's error text. Completion is followed through storage, and
//! an event Lambda accepted but lost is caught by the monitor's deadline.
//!
//! The cargo-lambda emulator answers an `Event` invocation only once the
//! handler returned (real Lambda: `202` at once) and a handler error as
//! `500` with an `errorType` body; a request may therefore last as long as
//! its calls, up to the job's deadline, and a function error is a refusal.

use std::time::Duration;

use bytes::Bytes;

use quelea_core::config::AwsLambdaConfig;
use quelea_core::model::now_ts;

use super::remote::{deliver_all, invoke_and_follow, Failure};
use super::Submission;
use crate::error::{Error, Result};
use crate::lambda_api::LambdaApi;

/// Requests last at least this long, even when a job's deadline is near.
const MIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct LambdaBackend {
    api: LambdaApi,
    path: String,
    max_workers: usize,
    invoke_deadline: Duration,
}

impl LambdaBackend {
    pub fn new(config: &AwsLambdaConfig) -> Result<LambdaBackend> {
        let function = config
            .function_name
            .as_deref()
            .ok_or_else(|| Error::InvalidArgument {
                name: "aws_lambda.function_name",
                message: "the aws_lambda backend needs the function's name".into(),
            })?;
        Ok(LambdaBackend {
            api: LambdaApi::new(config, config.max_workers as usize)?,
            path: LambdaApi::function_path(function, "/invocations"),
            max_workers: config.max_workers.max(1) as usize,
            invoke_deadline: Duration::from_secs_f64(config.invoke_deadline),
        })
    }

    pub fn submit(&self, submission: Submission<'_>) -> Result<()> {
        let timeout = Duration::from_secs_f64((submission.deadline_ts - now_ts()).max(0.0))
            .max(MIN_REQUEST_TIMEOUT);
        invoke_and_follow(
            "aws_lambda",
            submission,
            self.max_workers,
            self.invoke_deadline,
            |body| self.invoke(body, timeout),
        )
    }

    /// Delivers one more Invocation (one runner call) of a job that is
    /// followed already; its request may last as long as the call.
    pub fn resubmit(
        &self,
        job: &crate::job::JobState,
        invocation: quelea_core::protocol::Invocation,
    ) -> Result<()> {
        let timeout = Duration::try_from_secs_f64(job.spec.timeout_s + 30.0)
            .unwrap_or(MIN_REQUEST_TIMEOUT)
            .max(MIN_REQUEST_TIMEOUT);
        deliver_all(
            "aws_lambda",
            job,
            vec![invocation],
            self.max_workers,
            self.invoke_deadline,
            |body| self.invoke(body, timeout),
        )
    }

    async fn invoke(&self, body: Bytes, timeout: Duration) -> std::result::Result<(), Failure> {
        let answer = self
            .api
            .send(
                reqwest::Method::POST,
                &self.path,
                &[("x-amz-invocation-type", "Event")],
                body,
                timeout,
            )
            .await;
        let url = self.api.url(&self.path);
        let error = match answer {
            Ok(_) => return Ok(()),
            Err(Err(unanswered)) => return Err(Failure::Retry(unanswered)),
            Err(Ok(error)) => error,
        };
        let described = format!("`{url}` answered {error}");
        // A handler error is the function's answer, not a throttle.
        let throttled = error.status == 429
            || matches!(
                error.kind.as_str(),
                "TooManyRequestsException" | "ServiceException" | "EC2ThrottledException"
            )
            || (error.status >= 500 && !error.function_error);
        if throttled {
            Err(Failure::Retry(described))
        } else {
            Err(Failure::Refused(described))
        }
    }
}
