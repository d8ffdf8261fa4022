//! The local backend: a front door on the one worker runtime
//! (`quelea_worker::runtime::Runtime`), in this process. A job's calls reach
//! the runtime as one Invocation over an in-process call (function payload
//! and inputs in hand, nothing read back from storage), and the runtime tees
//! every call event to the client's `JobState` as the fast path, while it
//! writes statuses to storage exactly as a remote worker does. Cancelling is
//! the job's cancel marker, which the runtime also acts on at once here.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use quelea_core::config::Config;
use quelea_core::ids::CallId;
use quelea_core::model::RunnerKind;
use quelea_core::protocol::{CallInput, Invocation};
use quelea_storage::Storage;
use quelea_worker::pool::{ForkedRunner, RunnerCommand};
use quelea_worker::runtime::{with_runner_config, CallObserver, Ended, Runtime, RuntimeConfig};

use super::Submission;
use crate::error::{Error, Result};
use crate::job::{JobState, RunOutcome};

/// How long `warm_up` waits for a pool's runners.
const WARM_UP: Duration = Duration::from_secs(60);

/// The local backend: the executor's own runtime, with one warm runner pool
/// per runner kind (started on first use, reused by every job).
pub(crate) struct LocalBackend {
    runtime: Arc<Runtime>,
}

/// The client's job, fed straight from the pool.
struct JobObserver {
    job: Arc<JobState>,
}

impl CallObserver for JobObserver {
    fn started(&self, call_id: CallId, count: u32, worker_id: u32, ts: f64) {
        self.job
            .mark_running_from(call_id, count, Some(worker_id), ts);
    }

    fn finished(&self, first: CallId, ended: Ended) {
        match ended {
            Ended::Each(outcomes) => {
                self.job.complete_from(
                    first,
                    outcomes.into_iter().map(|(stats, outcome)| {
                        let outcome = match outcome {
                            Ok(bytes) => RunOutcome::Own(bytes),
                            Err(error) => RunOutcome::Failed(Box::new(error)),
                        };
                        (stats, outcome)
                    }),
                );
            }
            Ended::Together {
                count,
                stats,
                outcome,
            } => {
                let outcome = match outcome {
                    Ok(blob) => RunOutcome::Shared(blob),
                    Err(error) => RunOutcome::Failed(Box::new(error)),
                };
                self.job.complete_run(first, count, stats, outcome);
            }
        }
    }
}

impl LocalBackend {
    pub fn new(
        config: &Config,
        storage: &Storage,
        mut commands: HashMap<RunnerKind, RunnerCommand>,
    ) -> Self {
        // Rust runners default to this very executable (the same-binary model).
        if let std::collections::hash_map::Entry::Vacant(entry) = commands.entry(RunnerKind::Rust) {
            if let Ok(exe) = RunnerCommand::current_exe() {
                entry.insert(exe);
            }
        }
        let runtime = Runtime::new(
            RuntimeConfig {
                workers: config.local_workers(),
                inline_result_bytes: config.execution.inline_result_bytes,
                max_queued_calls: u64::MAX,
                commands: with_runner_config(commands, config),
                instance_memory_mb: None,
                brokers: Default::default(),
            },
            storage.clone(),
        );
        LocalBackend {
            runtime: Arc::new(runtime),
        }
    }

    /// Starts the pool for `kind` now rather than on the first job, and
    /// waits until its runners are ready.
    pub fn warm_up(&self, kind: RunnerKind) -> Result<()> {
        self.runtime
            .warm_up(kind, WARM_UP)
            .map_err(|refusal| Error::InvalidArgument {
                name: "runner",
                message: refusal.message,
            })
    }

    pub fn prestart(&self, kind: RunnerKind, forked: Vec<ForkedRunner>) {
        self.runtime.prestart(kind, forked);
    }

    pub fn runner_pids(&self) -> Vec<u32> {
        self.runtime.runner_pids()
    }

    /// Writes every buffered status now; the storage errors met since the
    /// last flush.
    pub fn flush(&self) -> Vec<String> {
        self.runtime.flush()
    }

    pub fn submit(&self, submission: Submission<'_>) -> Result<()> {
        let job = submission.job;
        let spec = &job.spec;
        // In-process: no claim (nothing to replay) and no push (the
        // completions reach this process directly).
        let invocation = Invocation {
            push: None,
            ..Invocation::of_job(spec, submission.calls, 0)
        };
        self.resubmit(
            job,
            invocation,
            submission.function_payload,
            submission.data,
        )?;
        // The executor writes the cancel marker (which any runtime honours);
        // this one need not wait for its next look at storage.
        let runtime: Weak<Runtime> = Arc::downgrade(&self.runtime);
        let prefix = job.keys.prefix().to_owned();
        job.set_cancel_hook(Box::new(move || {
            if let Some(runtime) = runtime.upgrade() {
                runtime.cancel_job(&prefix);
            }
        }));
        Ok(())
    }

    /// Hands an Invocation of `job` to the runtime, its inputs inline
    /// (ranges are cut from the job's `data`); the first one, or a retry.
    pub fn resubmit(
        &self,
        job: &Arc<JobState>,
        mut invocation: Invocation,
        function_payload: &[u8],
        data: Option<&[u8]>,
    ) -> Result<()> {
        for call in &mut invocation.calls {
            if let CallInput::Range { start, end } = call.input {
                let bytes = data
                    .and_then(|data| data.get(start as usize..end as usize))
                    .ok_or_else(|| Error::InvalidArgument {
                        name: "data",
                        message: format!(
                            "call {} names bytes {start}..{end} outside the job's data",
                            call.call_id
                        ),
                    })?;
                call.input = CallInput::Inline(bytes::Bytes::copy_from_slice(bytes));
            }
        }
        let observer = Arc::new(JobObserver { job: job.clone() });
        self.runtime
            .accept_in_process(invocation, function_payload, observer, job.kept())
            .map_err(|refusal| Error::InvalidArgument {
                name: "runner",
                message: refusal.message,
            })?;
        Ok(())
    }
}
