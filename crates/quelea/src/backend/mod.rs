//! Backends: how an Invocation reaches the worker runtime. `local` (the
//! default) hands calls to an in-process runtime driving a pool of warm
//! runner processes; `http` signs Invocations and POSTs them to worker
//! servers (`quelea worker serve`); `aws_lambda` sends them as asynchronous
//! Lambda invocations. The remote ones share their invoker (`remote`) and
//! follow the calls through storage.

mod http;
mod lambda;
mod local;
mod remote;

use std::collections::HashMap;
use std::sync::Arc;

use quelea_core::config::{BackendKind, Config};
use quelea_core::model::RunnerKind;
use quelea_core::protocol::InvokedCall;
use quelea_storage::Storage;
use quelea_worker::pool::RunnerCommand;

pub(crate) use self::http::HttpBackend;
pub(crate) use self::lambda::LambdaBackend;
pub(crate) use self::local::LocalBackend;
use crate::error::Result;
use crate::job::JobState;

/// What a backend needs to run one job.
pub(crate) struct Submission<'a> {
    pub job: &'a Arc<JobState>,
    pub function_payload: &'a [u8],
    pub calls: Vec<InvokedCall>,
    /// The job's concatenated data object, when inputs are not inline.
    pub data: Option<&'a [u8]>,
    /// Where the job's objects are (remote calls are followed there).
    pub storage: &'a Storage,
    /// After this Unix time, calls with no final status are failed as timeouts.
    pub deadline_ts: f64,
    /// The job's push subscription, made before any Invocation is sent
    /// (remote backends with push monitoring only).
    pub push: Option<crate::monitor::PushFollow>,
}

/// The configured backend.
pub(crate) enum Backend {
    Local(LocalBackend),
    Http(HttpBackend),
    Lambda(LambdaBackend),
}

impl Backend {
    /// The one place a backend is chosen.
    pub fn new(
        config: &Config,
        storage: &Storage,
        runners: HashMap<RunnerKind, RunnerCommand>,
    ) -> Result<Backend> {
        Ok(match config.backend {
            BackendKind::Local => Backend::Local(LocalBackend::new(config, storage, runners)),
            BackendKind::Http => Backend::Http(HttpBackend::new(&config.http)?),
            BackendKind::AwsLambda => Backend::Lambda(LambdaBackend::new(&config.aws_lambda)?),
        })
    }

    pub fn submit(&self, submission: Submission<'_>) -> Result<()> {
        match self {
            Backend::Local(local) => local.submit(submission),
            Backend::Http(http) => http.submit(submission),
            Backend::Lambda(lambda) => lambda.submit(submission),
        }
    }

    /// Sends one more Invocation of a job already submitted (a retry, see
    /// `crate::retry`); the job is already followed.
    pub fn resubmit(
        &self,
        job: &Arc<JobState>,
        invocation: quelea_core::protocol::Invocation,
        function_payload: &[u8],
        data: Option<&[u8]>,
    ) -> Result<()> {
        match self {
            Backend::Local(local) => local.resubmit(job, invocation, function_payload, data),
            Backend::Http(http) => http.resubmit(job, invocation),
            Backend::Lambda(lambda) => lambda.resubmit(job, invocation),
        }
    }

    /// The local runtime, for what only it has (runner pids, warm-up,
    /// statuses this process writes).
    pub fn local(&self) -> Option<&LocalBackend> {
        match self {
            Backend::Local(local) => Some(local),
            Backend::Http(_) | Backend::Lambda(_) => None,
        }
    }

    /// How many calls run at once, for a job's deadline.
    pub fn capacity(&self, config: &Config) -> u32 {
        match self {
            Backend::Local(_) => config.local_workers(),
            Backend::Http(_) => config.http.max_workers,
            Backend::Lambda(_) => config.aws_lambda.max_workers,
        }
    }
}
