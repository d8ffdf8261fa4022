//! The local backend: calls go straight to an in-process worker runtime
//! driving pools of warm runner processes, and completions come back through
//! the pool's pipes (statuses still go to storage for other readers).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use quelea_core::ids::CallId;
use quelea_core::model::{CallStats, RunnerKind};
use quelea_core::protocol::CallInput;
use quelea_worker::pool::{
    Completion, JobContext, JobSink, Pool, PoolConfig, PoolFunction, RunnerCommand, Task,
};
use quelea_worker::status_writer::{finished_status, JobTarget, StatusWriter};

use super::Submission;
use crate::error::{Error, Result};
use crate::job::{lock, JobState};

/// The local backend: warm runner pools (one per runner kind, started on
/// first use and reused by every job of the executor).
pub(crate) struct LocalBackend {
    workers: u32,
    /// The executor's config for its runners (see `objects::RUNNER_CONFIG_ENV`).
    runner_config: String,
    commands: HashMap<RunnerKind, RunnerCommand>,
    pools: Mutex<HashMap<RunnerKind, Arc<Pool>>>,
    functions: Mutex<HashMap<(RunnerKind, String), Arc<PoolFunction>>>,
    writer: Arc<StatusWriter>,
}

struct LocalSink {
    job: Arc<JobState>,
    target: Arc<JobTarget>,
    writer: Arc<StatusWriter>,
}

impl JobSink for LocalSink {
    fn started(&self, call_id: CallId, worker_id: u32, ts: f64) {
        self.job.mark_running(call_id, Some(worker_id), ts);
        self.writer.started(
            &self.target,
            call_id,
            CallStats {
                submit_ts: self.job.spec.submit_ts,
                start_ts: Some(ts),
                worker_id: Some(worker_id),
                ..CallStats::default()
            },
        );
    }

    fn completed(&self, completion: Completion) {
        let status = finished_status(self.job.spec.submit_ts, &completion);
        let stats = status.stats.clone();
        self.writer.finished(
            &self.target,
            status,
            completion.outcome.as_ref().ok().cloned(),
        );
        self.job.complete(
            completion.call_id,
            stats,
            completion.outcome.map_err(Box::new),
        );
    }
}

impl LocalBackend {
    pub fn new(
        workers: u32,
        runner_config: String,
        commands: HashMap<RunnerKind, RunnerCommand>,
        writer: Arc<StatusWriter>,
    ) -> Self {
        LocalBackend {
            workers,
            runner_config,
            commands,
            pools: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            writer,
        }
    }

    fn pool(&self, kind: RunnerKind) -> Result<Arc<Pool>> {
        let mut pools = lock(&self.pools);
        if let Some(pool) = pools.get(&kind) {
            return Ok(pool.clone());
        }
        let command = match self.commands.get(&kind) {
            Some(command) => command.clone(),
            None if kind == RunnerKind::Rust => {
                RunnerCommand::current_exe().map_err(|e| Error::InvalidArgument {
                    name: "runner",
                    message: format!("cannot find this executable to start Rust runners: {e}"),
                })?
            }
            None => {
                return Err(Error::InvalidArgument {
                    name: "runner",
                    message: format!("no runner command is configured for {kind:?} functions"),
                })
            }
        };
        let mut command = command;
        command.env.push((
            crate::objects::RUNNER_CONFIG_ENV.into(),
            self.runner_config.clone().into(),
        ));
        let pool = Arc::new(Pool::new(PoolConfig {
            workers: self.workers,
            command,
        }));
        pools.insert(kind, pool.clone());
        Ok(pool)
    }

    /// Starts the pool for `kind` now rather than on the first job, and
    /// waits until its runners are ready.
    pub fn warm_up(&self, kind: RunnerKind) -> Result<()> {
        let pool = self.pool(kind)?;
        if pool.wait_ready(Duration::from_secs(60)) {
            Ok(())
        } else {
            Err(Error::InvalidArgument {
                name: "runner",
                message:
                    "the runner pool did not become ready within 60 s (see the runners' stderr)"
                        .into(),
            })
        }
    }

    pub fn runner_pids(&self) -> Vec<u32> {
        lock(&self.pools)
            .values()
            .flat_map(|p| p.runner_pids())
            .collect()
    }

    pub fn writer(&self) -> &Arc<StatusWriter> {
        &self.writer
    }

    pub fn submit(&self, submission: Submission<'_>) -> Result<()> {
        let job = submission.job;
        let spec = &job.spec;
        let pool = self.pool(spec.function.runner)?;
        let function = lock(&self.functions)
            .entry((spec.function.runner, spec.function.hash.clone()))
            .or_insert_with(|| pool.function(submission.function_payload.to_vec()))
            .clone();
        let sink = Arc::new(LocalSink {
            job: job.clone(),
            target: submission.target,
            writer: self.writer.clone(),
        });
        let ctx = Arc::new(JobContext::new(
            pool.next_job_serial(),
            function,
            Duration::from_secs_f64(spec.timeout_s),
            spec.memory_limit_mb.map(|mb| mb << 20),
            sink,
        ));
        let weak_pool: Weak<Pool> = Arc::downgrade(&pool);
        // Weak both ways: the job must not keep its own context (and so
        // itself) alive through the hook.
        let weak_ctx: Weak<JobContext> = Arc::downgrade(&ctx);
        job.set_cancel_hook(Box::new(move || {
            if let (Some(pool), Some(ctx)) = (weak_pool.upgrade(), weak_ctx.upgrade()) {
                pool.cancel(&ctx);
            }
        }));

        let mut tasks = Vec::with_capacity(spec.total_calls as usize);
        for call in submission.calls {
            let input = match call.input {
                CallInput::Inline(bytes) => bytes,
                CallInput::Range { start, end } => submission
                    .data
                    .and_then(|data| data.get(start as usize..end as usize))
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| Error::InvalidArgument {
                        name: "data",
                        message: format!(
                            "call {} names bytes {start}..{end} outside the job's data",
                            call.call_id
                        ),
                    })?,
            };
            tasks.push(Task {
                ctx: ctx.clone(),
                call_id: call.call_id,
                input,
            });
        }
        pool.submit(tasks);
        Ok(())
    }
}
