//! The worker runtime behind every remote front door: takes one decoded
//! [`Invocation`], loads the function (cached per content hash) and the
//! inputs from storage, queues the calls on a supervised [`Pool`] per runner
//! kind, and writes every call's status through one [`StatusWriter`].
//!
//! The HTTP server (`http_server`) answers as soon as the calls are queued;
//! the Lambda bootstrap (`quelea-lambda`) waits for them with
//! [`Accepted::finished`] and [`Runtime::flush`], because Lambda freezes the
//! process once the handler returns.
//!
//! A client cancels a job by writing its `cancelled` marker to storage. The
//! runtime looks for the markers of the jobs it has calls of, once a
//! [`CANCEL_POLL`], and cancels those jobs on its pools: queued calls end as
//! cancelled without running, running ones are killed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use quelea_core::config::Config;
use quelea_core::ids::CallId;
use quelea_core::keys::{self, JobKeys};
use quelea_core::model::{
    now_ts, CallError, CallState, CallStats, CallStatus, FailureReason, RunnerKind,
};
use quelea_core::protocol::{valid_invocation_id, CallInput, Invocation, MAX_INVOCATION_ID_LEN};
use quelea_storage::{io_runtime, Storage};

use crate::pool::{
    Completion, ForkedRunner, JobContext, JobSink, Outputs, Pool, PoolConfig, PoolFunction,
    RunnerCommand, Task,
};
use crate::push::{BrokerUrls, Publisher};
use crate::status_writer::{finished_status, JobTarget, StatusWriter};

/// The environment variable carrying a runtime's resolved config (with
/// credentials) to its own runner processes; never part of a request.
pub const RUNNER_CONFIG_ENV: &str = "QUELEA_RUNNER_CONFIG";

/// The runners of a worker runtime serving jobs under `config`: Rust ones
/// from `rust`, Python ones of `python` when given. Both get the config
/// (credentials included) through their environment, never from a request.
pub fn runtime_runners(
    config: &Config,
    rust: RunnerCommand,
    python: Option<&std::path::Path>,
) -> HashMap<RunnerKind, RunnerCommand> {
    let mut commands = HashMap::from([(RunnerKind::Rust, rust)]);
    if let Some(python) = python {
        commands.insert(RunnerKind::Python, RunnerCommand::python(python));
    }
    with_runner_config(commands, config)
}

/// Gives every runner command `config` through [`RUNNER_CONFIG_ENV`].
pub fn with_runner_config(
    mut commands: HashMap<RunnerKind, RunnerCommand>,
    config: &Config,
) -> HashMap<RunnerKind, RunnerCommand> {
    let json = config.runner_json();
    for command in commands.values_mut() {
        command
            .env
            .push((RUNNER_CONFIG_ENV.into(), json.clone().into()));
    }
    commands
}

/// What a front door that is in the same process as the runtime (the local
/// backend) hears of each call, as soon as the pool knows it.
pub trait CallObserver: Send + Sync {
    /// `count` calls from `call_id` (a batch) started on runner `worker_id`.
    fn started(&self, call_id: CallId, count: u32, worker_id: u32, ts: f64);
    /// Calls from `first` ended.
    fn finished(&self, first: CallId, ended: Ended);
}

/// How calls from a first one ended, as a [`CallObserver`] hears it.
pub enum Ended {
    /// One outcome per call, in order, each with its stats.
    Each(Vec<(CallStats, Result<Vec<u8>, CallError>)>),
    /// `count` calls (a batch) that share one result or one failure, with
    /// the batch's stats (see [`element_stats`] for each element's).
    Together {
        count: u32,
        stats: CallStats,
        outcome: Result<Arc<Vec<u8>>, CallError>,
    },
}

/// How a runtime runs calls.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Runner processes per runner kind.
    pub workers: u32,
    pub inline_result_bytes: u64,
    /// Calls queued or running at once before Invocations are refused as busy.
    pub max_queued_calls: u64,
    /// How to start runners, per kind; a kind without one is refused.
    pub commands: HashMap<RunnerKind, RunnerCommand>,
    /// The instance's billed memory (Lambda's), recorded in call stats.
    pub instance_memory_mb: Option<u32>,
    /// Brokers for jobs that ask for push monitoring.
    pub brokers: BrokerUrls,
}

/// The longest call timeout a runtime takes (a week): beyond it a number is
/// a mistake, not a deadline.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// A checked Invocation's limits, as the pool holds them.
struct Limits {
    timeout: Duration,
    memory_limit_bytes: Option<u64>,
}

/// How long [`Runtime::flush`] waits for pushes to reach their broker.
const PUSH_DRAIN: Duration = Duration::from_secs(2);

/// A job's status target is forgotten after this long without Invocations
/// (a later one simply gets a new target; batch keys never collide).
const TARGET_IDLE: Duration = Duration::from_secs(600);

/// How often the cancel markers of jobs with calls here are looked for:
/// one HEAD per such job each time.
pub const CANCEL_POLL: Duration = Duration::from_secs(1);

/// The jobs with calls on this runtime's pools, by job prefix: the cancel
/// marker to look for, and the contexts to cancel (gone once their calls are).
type LiveJobs = Mutex<Live>;

/// A live job's cancel marker, and its contexts on the pools.
type LiveJob = (String, Vec<(Arc<Pool>, Weak<JobContext>)>);

#[derive(Default)]
struct Live {
    jobs: HashMap<String, LiveJob>,
    /// Jobs cancelled here lately (newest last): a later Invocation of one
    /// runs nothing, without waiting for the next look at its marker.
    cancelled: std::collections::VecDeque<String>,
}

/// How many cancelled jobs a runtime remembers.
const CANCELLED_REMEMBERED: usize = 1024;

/// Why an Invocation was not run; each front door maps it to its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// Not an Invocation this runtime can run (no calls, bad timeout, no
    /// runner for its kind, an empty range).
    Invalid,
    /// The function or data object is not in storage.
    Missing,
    /// Too many calls queued; worth retrying later.
    Busy,
    /// Storage failed.
    Storage,
    /// This Invocation (its `id`) was claimed before, here or by another
    /// runtime sharing the storage: it runs nothing again. Not an error to
    /// the sender (it may be its own retry of a delivery whose answer was
    /// lost), but nothing is queued.
    Duplicate,
}

#[derive(Clone, Debug)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

fn refusal(kind: RefusalKind, message: impl std::fmt::Display) -> Refusal {
    Refusal {
        kind,
        message: message.to_string(),
    }
}

/// Calls queued, running and served so far.
#[derive(Default)]
pub struct Counters {
    /// Accepted calls that have not finished.
    pub queued: AtomicU64,
    pub running: AtomicU64,
    pub invocations: AtomicU64,
    pub calls: AtomicU64,
}

/// An accepted Invocation.
pub struct Accepted {
    pub calls: usize,
    remaining: tokio::sync::watch::Receiver<usize>,
}

impl Accepted {
    /// Resolves once every call of the Invocation has finished (its status
    /// handed to the writer; [`Runtime::flush`] makes it durable).
    pub async fn finished(mut self) {
        // The sender lives in the calls' sink; if it is gone, so are they.
        let _ = self.remaining.wait_for(|n| *n == 0).await;
    }

    /// How many calls of the Invocation have not finished yet, to read
    /// while it runs (for as long as the receiver is kept).
    pub fn watch_remaining(&self) -> tokio::sync::watch::Receiver<usize> {
        self.remaining.clone()
    }
}

/// The runtime: pools, function cache, status targets, counters.
pub struct Runtime {
    config: RuntimeConfig,
    storage: Storage,
    writer: Arc<StatusWriter>,
    publisher: Arc<Publisher>,
    pools: Mutex<HashMap<RunnerKind, Arc<Pool>>>,
    functions: Mutex<HashMap<String, Arc<PoolFunction>>>,
    targets: Mutex<HashMap<String, (Arc<JobTarget>, Instant)>>,
    counters: Arc<Counters>,
    live: Arc<LiveJobs>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Runtime {
    pub fn new(config: RuntimeConfig, storage: Storage) -> Runtime {
        let live = Arc::new(LiveJobs::default());
        watch_cancel_markers(Arc::downgrade(&live), storage.clone());
        Runtime {
            publisher: Arc::new(Publisher::new(config.brokers.clone())),
            config,
            storage,
            writer: Arc::new(StatusWriter::new()),
            pools: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            targets: Mutex::new(HashMap::new()),
            counters: Arc::new(Counters::default()),
            live,
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The runner kinds that have a pool running.
    pub fn running_kinds(&self) -> Vec<RunnerKind> {
        lock(&self.pools).keys().copied().collect()
    }

    /// Writes every buffered status now (blocking), and gives their pushes
    /// a moment to reach the broker; returns the storage errors met since
    /// the last flush.
    pub fn flush(&self) -> Vec<String> {
        let errors = self.writer.flush();
        self.publisher.drain(PUSH_DRAIN);
        errors
    }

    /// Checks the Invocation, loads what it needs from storage, claims it
    /// (when it has an id) and queues its calls (the remote front doors).
    ///
    /// The claim is a create-if-absent of the job's `claims/<id>` object,
    /// made last, right before queueing: a refusal before it (busy, missing,
    /// a storage failure) leaves the Invocation free to be retried, and once
    /// it is made no runtime sharing the storage runs the Invocation again:
    /// [`RefusalKind::Duplicate`].
    pub async fn accept(&self, mut invocation: Invocation) -> Result<Accepted, Refusal> {
        let limits = self.check(&invocation)?;
        let pool = self.pool(invocation.function.runner)?;
        let function = self.function(&pool, &invocation).await?;
        let inputs = self.inputs(&invocation).await?;
        if let Some(id) = &invocation.id {
            self.claim(&invocation, id).await?;
        }
        for (call, input) in invocation.calls.iter_mut().zip(inputs) {
            call.input = CallInput::Inline(input);
        }
        Ok(self.queue(invocation, limits, &pool, function, None))
    }

    async fn claim(&self, invocation: &Invocation, id: &str) -> Result<(), Refusal> {
        let key = JobKeys::new(&invocation.executor_id, invocation.job_id).claim(id);
        let record = serde_json::json!({
            "claimed_ts": now_ts(),
            "pid": std::process::id(),
            "calls": invocation.calls.iter().map(|c| c.call_id.0).collect::<Vec<_>>(),
        });
        match self.storage.put_if_absent(&key, record.to_string()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(refusal(
                RefusalKind::Duplicate,
                format!("invocation `{id}` was received before (claimed at `{key}`): it runs nothing again"),
            )),
            Err(e) => Err(refusal(
                RefusalKind::Storage,
                format!("cannot claim invocation `{id}` in storage: {e}"),
            )),
        }
    }

    /// Queues an Invocation handed over in this process with its function
    /// payload and inline inputs (the local front door): nothing is read
    /// from storage, and `observer` hears of every call as the pool does.
    ///
    /// `store_large`: whether results too large to inline go to storage now;
    /// unset, they stay with the observer (see [`quelea_core::model::ResultRef::Held`]).
    pub fn accept_in_process(
        &self,
        invocation: Invocation,
        function_payload: &[u8],
        observer: Arc<dyn CallObserver>,
        store_large: Arc<AtomicBool>,
    ) -> Result<Accepted, Refusal> {
        let limits = self.check(&invocation)?;
        let pool = self.pool(invocation.function.runner)?;
        let hash = invocation.function.hash.clone();
        let function = lock(&self.functions)
            .entry(hash)
            .or_insert_with(|| pool.function(function_payload.to_vec()))
            .clone();
        if let Some(call) = invocation
            .calls
            .iter()
            .find(|call| matches!(call.input, CallInput::Range { .. }))
        {
            return Err(refusal(
                RefusalKind::Invalid,
                format!(
                    "call {} of an in-process Invocation is not inline",
                    call.call_id
                ),
            ));
        }
        let observer = Some((observer, store_large));
        Ok(self.queue(invocation, limits, &pool, function, observer))
    }

    /// The checks every Invocation passes before anything is loaded: calls,
    /// a timeout and memory limit the pool can hold, room in the queue.
    fn check(&self, invocation: &Invocation) -> Result<Limits, Refusal> {
        if invocation.calls.is_empty() {
            return Err(refusal(RefusalKind::Invalid, "the invocation has no calls"));
        }
        if let Some(id) = invocation
            .id
            .as_deref()
            .filter(|id| !valid_invocation_id(id))
        {
            return Err(refusal(
                RefusalKind::Invalid,
                format!(
                    "the invocation id `{}` is not 1 to {MAX_INVOCATION_ID_LEN} ASCII letters, digits and dashes",
                    id.chars().take(80).collect::<String>()
                ),
            ));
        }
        let hash = &invocation.function.hash;
        if hash.is_empty() || hash.len() > 128 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(refusal(
                RefusalKind::Invalid,
                format!("the function hash `{hash}` is not a hex digest"),
            ));
        }
        if let Some(call) = invocation.calls.iter().find(|c| c.count == 0) {
            return Err(refusal(
                RefusalKind::Invalid,
                format!("call {} has no elements (`count` 0)", call.call_id),
            ));
        }
        if let Some(call) = invocation
            .calls
            .iter()
            .find(|c| c.select.is_some_and(|k| k >= c.count))
        {
            return Err(refusal(
                RefusalKind::Invalid,
                format!(
                    "call {} selects element {} of a batch of {}",
                    call.call_id,
                    call.select.unwrap_or_default(),
                    call.count
                ),
            ));
        }
        let n = elements(invocation);
        let timeout = (invocation.timeout_s > 0.0)
            .then(|| Duration::try_from_secs_f64(invocation.timeout_s).ok())
            .flatten()
            .filter(|t| *t <= MAX_TIMEOUT)
            .ok_or_else(|| {
                refusal(
                    RefusalKind::Invalid,
                    format!(
                        "`timeout_s` must be a positive number of seconds up to {}, got {}",
                        MAX_TIMEOUT.as_secs(),
                        invocation.timeout_s
                    ),
                )
            })?;
        let memory_limit_bytes = match invocation.memory_limit_mb {
            None => None,
            Some(mb) => Some(mb.checked_mul(1 << 20).filter(|_| mb > 0).ok_or_else(|| {
                refusal(
                    RefusalKind::Invalid,
                    format!(
                        "`memory_limit_mb` must be between 1 and {}, got {mb}",
                        u64::MAX >> 20
                    ),
                )
            })?),
        };
        let queued = self.counters.queued.load(Ordering::Relaxed);
        if queued.saturating_add(n) > self.config.max_queued_calls {
            return Err(refusal(
                RefusalKind::Busy,
                format!(
                    "{queued} calls are queued, the limit is {}",
                    self.config.max_queued_calls
                ),
            ));
        }
        Ok(Limits {
            timeout,
            memory_limit_bytes,
        })
    }

    /// Queues the Invocation's calls, whose inputs the front door has made
    /// inline; they move into the queue one by one (no second list of them).
    fn queue(
        &self,
        mut invocation: Invocation,
        limits: Limits,
        pool: &Arc<Pool>,
        function: Arc<PoolFunction>,
        observer: Option<(Arc<dyn CallObserver>, Arc<AtomicBool>)>,
    ) -> Accepted {
        let n = elements(&invocation) as usize;
        let counters = &self.counters;
        let keys = JobKeys::new(&invocation.executor_id, invocation.job_id);
        let (observer, store_large) = observer.unzip();
        let target = self.target(&invocation, store_large);
        let (remaining_tx, remaining) = tokio::sync::watch::channel(n);
        let sink = Arc::new(RuntimeSink {
            target,
            writer: self.writer.clone(),
            submit_ts: invocation.submit_ts,
            memory_mb: self.config.instance_memory_mb,
            counters: counters.clone(),
            remaining: remaining_tx,
            observer,
            attempt: invocation.attempt,
            retry_on: invocation.retry_on.clone(),
        });
        let ctx = Arc::new(JobContext::new(
            pool.next_job_serial(),
            function,
            limits.timeout,
            limits.memory_limit_bytes,
            sink,
        ));
        counters.queued.fetch_add(n as u64, Ordering::Relaxed);
        counters.invocations.fetch_add(1, Ordering::Relaxed);
        counters.calls.fetch_add(n as u64, Ordering::Relaxed);
        {
            let mut live = lock(&self.live);
            if live.cancelled.iter().any(|p| p == keys.prefix()) {
                // Its calls end as cancelled without running.
                ctx.mark_cancelled();
            } else {
                live.jobs
                    .entry(keys.prefix().to_owned())
                    .or_insert_with(|| (keys.cancelled(), Vec::new()))
                    .1
                    .push((pool.clone(), Arc::downgrade(&ctx)));
            }
        }
        let tasks = std::mem::take(&mut invocation.calls)
            .into_iter()
            .map(|call| {
                let input = match call.input {
                    CallInput::Inline(bytes) => bytes,
                    CallInput::Range { .. } => {
                        debug_assert!(false, "call {} was not made inline", call.call_id);
                        bytes::Bytes::new()
                    }
                };
                match call.select {
                    Some(k) => Task::selected(ctx.clone(), call.call_id, call.count, input, k),
                    None => Task::new(ctx.clone(), call.call_id, call.count, input),
                }
            });
        pool.submit(tasks);
        Accepted {
            calls: n,
            remaining,
        }
    }

    /// Cancels a job's calls here now, as finding its cancel marker would:
    /// queued calls end cancelled without running, running ones are killed.
    pub fn cancel_job(&self, job_prefix: &str) {
        cancel_live(&self.live, job_prefix);
    }

    /// Starts the pool for `kind` now rather than on the first call, and
    /// waits until its runners are ready.
    /// Starts the pool for `kind` now, without waiting for its runners: they
    /// start while the client prepares its first job.
    /// The first runners are `forked` ones, adopted (see [`ForkedRunner`]),
    /// when the pool did not exist yet; otherwise those are ended.
    pub fn prestart(&self, kind: RunnerKind, forked: Vec<ForkedRunner>) {
        let _ = self.pool_with(kind, forked);
    }

    pub fn warm_up(&self, kind: RunnerKind, timeout: Duration) -> Result<(), Refusal> {
        let pool = self.pool(kind)?;
        if pool.wait_ready(timeout) {
            Ok(())
        } else {
            Err(refusal(
                RefusalKind::Invalid,
                format!(
                    "the {kind:?} runner pool did not become ready within {} s (see the runners' stderr)",
                    timeout.as_secs()
                ),
            ))
        }
    }

    /// The pids of every runner process of every pool.
    pub fn runner_pids(&self) -> Vec<u32> {
        lock(&self.pools)
            .values()
            .flat_map(|p| p.runner_pids())
            .collect()
    }

    /// Records a failed status for every call of an Invocation that will not
    /// run, so that the client learns why at once instead of at its deadline
    /// (a front door with no synchronous answer, like an async Lambda event).
    pub fn fail_calls(&self, invocation: &Invocation, error_type: &str, message: &str) {
        let target = self.target(invocation, None);
        let now = now_ts();
        for call in &invocation.calls {
            let (call_id, count) = call.elements();
            let status = CallStatus {
                call_id,
                count,
                state: CallState::Error,
                stats: CallStats {
                    submit_ts: invocation.submit_ts,
                    end_ts: Some(now),
                    attempt: invocation.attempt,
                    ..CallStats::default()
                },
                result: None,
                // A refusal is a crash to the client, which retries it.
                retried: invocation.retry_on.contains(&FailureReason::WorkerCrashed),
                error: Some(CallError {
                    reason: FailureReason::WorkerCrashed,
                    error_type: error_type.to_owned(),
                    message: format!("call {call_id} was refused by the worker: {message}"),
                    traceback: String::new(),
                    payload: None,
                }),
            };
            self.writer.finished(&target, status, None);
        }
    }

    fn pool(&self, kind: RunnerKind) -> Result<Arc<Pool>, Refusal> {
        self.pool_with(kind, Vec::new())
    }

    fn pool_with(&self, kind: RunnerKind, forked: Vec<ForkedRunner>) -> Result<Arc<Pool>, Refusal> {
        let mut pools = lock(&self.pools);
        if let Some(pool) = pools.get(&kind) {
            return Ok(pool.clone());
        }
        let Some(command) = self.config.commands.get(&kind) else {
            return Err(refusal(
                RefusalKind::Invalid,
                format!("this worker has no runner for {kind:?} functions"),
            ));
        };
        let pool = Arc::new(Pool::with_runners(
            PoolConfig {
                workers: self.config.workers,
                command: command.clone(),
            },
            forked,
        ));
        pools.insert(kind, pool.clone());
        Ok(pool)
    }

    async fn function(
        &self,
        pool: &Pool,
        invocation: &Invocation,
    ) -> Result<Arc<PoolFunction>, Refusal> {
        let hash = &invocation.function.hash;
        if let Some(function) = lock(&self.functions).get(hash) {
            return Ok(function.clone());
        }
        let key = keys::function(&invocation.executor_id, hash);
        let payload = self
            .storage
            .get(&key)
            .await
            .map_err(|e| storage_refusal("function object", &key, e))?;
        // Two Invocations may race to load it: the first one in wins.
        Ok(lock(&self.functions)
            .entry(hash.clone())
            .or_insert_with(|| pool.function(payload.to_vec()))
            .clone())
    }

    /// The calls' inputs; ranges are read with one GET spanning them all.
    async fn inputs(&self, invocation: &Invocation) -> Result<Vec<bytes::Bytes>, Refusal> {
        let ranges: Vec<(u64, u64)> = invocation
            .calls
            .iter()
            .filter_map(|c| match c.input {
                CallInput::Range { start, end } => Some((start, end)),
                CallInput::Inline(_) => None,
            })
            .collect();
        let span = match (
            ranges.iter().map(|r| r.0).min(),
            ranges.iter().map(|r| r.1).max(),
        ) {
            (Some(lo), Some(hi)) if ranges.iter().all(|(s, e)| s <= e) => Some(lo..hi),
            (None, None) => None,
            _ => return Err(refusal(RefusalKind::Invalid, "a call has an empty range")),
        };
        let data = match &span {
            Some(span) => {
                let key = JobKeys::new(&invocation.executor_id, invocation.job_id).data();
                Some(
                    self.storage
                        .get_range(&key, span.clone())
                        .await
                        .map_err(|e| storage_refusal("data object", &key, e))?,
                )
            }
            None => None,
        };
        invocation
            .calls
            .iter()
            .map(|call| match &call.input {
                CallInput::Inline(bytes) => Ok(bytes.clone()),
                CallInput::Range { start, end } => {
                    let base = span.as_ref().map_or(0, |s| s.start);
                    data.as_ref()
                        .filter(|d| (end - base) as usize <= d.len() && start <= end)
                        .map(|d| d.slice((start - base) as usize..(end - base) as usize))
                        .ok_or_else(|| {
                            refusal(
                                RefusalKind::Missing,
                                format!(
                                    "call {} names bytes {start}..{end} outside the job's data",
                                    call.call_id
                                ),
                            )
                        })
                }
            })
            .collect()
    }

    fn target(
        &self,
        invocation: &Invocation,
        store_large: Option<Arc<AtomicBool>>,
    ) -> Arc<JobTarget> {
        let keys = JobKeys::new(&invocation.executor_id, invocation.job_id);
        let mut targets = lock(&self.targets);
        let now = Instant::now();
        targets.retain(|_, (_, used)| now.duration_since(*used) < TARGET_IDLE);
        let entry = targets.entry(keys.prefix().to_owned()).or_insert_with(|| {
            let mut target =
                JobTarget::new(keys, self.storage.clone(), self.config.inline_result_bytes);
            target.store_large = store_large;
            let target = match &invocation.push {
                Some(channel) => target.with_push(self.publisher.clone(), channel.clone()),
                None => target,
            };
            (Arc::new(target), now)
        });
        entry.1 = now;
        entry.0.clone()
    }
}

/// Element `index`'s stats from its batch's: only the first element paid
/// for a cold runner.
pub fn element_stats(status: &CallStatus, index: u32) -> CallStats {
    let mut stats = status.stats.clone();
    stats.cold_start &= index == 0;
    stats
}

/// How many elements an Invocation's calls hold in all.
fn elements(invocation: &Invocation) -> u64 {
    invocation
        .calls
        .iter()
        .map(|c| u64::from(c.elements().1))
        .sum()
}

/// Looks for the cancel markers of live jobs every [`CANCEL_POLL`] and
/// cancels the jobs that have one; ends with the runtime.
fn watch_cancel_markers(live: Weak<LiveJobs>, storage: Storage) {
    io_runtime().spawn(async move {
        loop {
            tokio::time::sleep(CANCEL_POLL).await;
            let Some(live) = live.upgrade() else {
                return;
            };
            let markers: Vec<(String, String)> = {
                let mut live = lock(&live);
                live.jobs.retain(|_, (_, contexts)| {
                    contexts.retain(|(_, ctx)| ctx.strong_count() > 0);
                    !contexts.is_empty()
                });
                live.jobs
                    .iter()
                    .map(|(prefix, (marker, _))| (prefix.clone(), marker.clone()))
                    .collect()
            };
            for (prefix, marker) in markers {
                // Any error (storage down) leaves the job running: the
                // client's own deadline still bounds its wait.
                if storage.head(&marker).await.is_ok() {
                    cancel_live(&live, &prefix);
                }
            }
        }
    });
}

/// Cancels the job's contexts on their pools and forgets them.
fn cancel_live(live: &LiveJobs, prefix: &str) {
    let contexts: Vec<(Arc<Pool>, Arc<JobContext>)> = {
        let mut live = lock(live);
        if !live.cancelled.iter().any(|p| p == prefix) {
            if live.cancelled.len() >= CANCELLED_REMEMBERED {
                live.cancelled.pop_front();
            }
            live.cancelled.push_back(prefix.to_owned());
        }
        live.jobs
            .remove(prefix)
            .into_iter()
            .flat_map(|(_, contexts)| contexts)
            .filter_map(|(pool, ctx)| Some((pool, ctx.upgrade()?)))
            .collect()
    };
    // All marked first: a call requeued by one kill must not start on
    // another runner before its own context is marked.
    for (_, ctx) in &contexts {
        ctx.mark_cancelled();
    }
    for (pool, ctx) in &contexts {
        pool.cancel(ctx);
    }
}

fn storage_refusal(what: &str, key: &str, e: quelea_storage::Error) -> Refusal {
    match e {
        quelea_storage::Error::NotFound { .. } => refusal(
            RefusalKind::Missing,
            format!("the {what} `{key}` is not in this worker's storage"),
        ),
        other => refusal(
            RefusalKind::Storage,
            format!("cannot read the {what} `{key}`: {other}"),
        ),
    }
}

/// Call events of one Invocation: to storage, to the counters, and to
/// whoever waits for the Invocation to finish.
struct RuntimeSink {
    target: Arc<JobTarget>,
    writer: Arc<StatusWriter>,
    submit_ts: f64,
    memory_mb: Option<u32>,
    counters: Arc<Counters>,
    remaining: tokio::sync::watch::Sender<usize>,
    /// The in-process front door's tee (the client's fast path).
    observer: Option<Arc<dyn CallObserver>>,
    /// The Invocation's attempt, written into every call's stats.
    attempt: u32,
    /// Failures the client runs again: written `retried`, not final.
    retry_on: Vec<FailureReason>,
}

impl JobSink for RuntimeSink {
    fn started(&self, call_id: CallId, count: u32, worker_id: u32, ts: f64) {
        self.counters
            .running
            .fetch_add(u64::from(count), Ordering::Relaxed);
        // One running record for the whole batch.
        self.writer.started(
            &self.target,
            call_id,
            count,
            CallStats {
                submit_ts: self.submit_ts,
                start_ts: Some(ts),
                worker_id: Some(worker_id),
                memory_mb: self.memory_mb,
                attempt: self.attempt,
                ..CallStats::default()
            },
        );
        if let Some(observer) = &self.observer {
            observer.started(call_id, count, worker_id, ts);
        }
    }

    fn completed(&self, completion: Completion) {
        let count = completion.count.max(1);
        let sub = |counter: &AtomicU64| {
            let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(u64::from(count)))
            });
        };
        sub(&self.counters.queued);
        if completion.start_ts.is_some() {
            sub(&self.counters.running);
        }
        let first = completion.call_id;
        let mut template = finished_status(self.submit_ts, &completion, first, 1, None, 0);
        template.stats.memory_mb = self.memory_mb;
        template.stats.attempt = self.attempt;
        let retry_on = &self.retry_on;
        let status = |call_id: CallId, count: u32, error: Option<CallError>, size: usize| {
            let mut status = template.clone();
            status.retried = error.as_ref().is_some_and(|e| retry_on.contains(&e.reason));
            status.call_id = call_id;
            status.count = count;
            status.state = if error.is_none() {
                CallState::Success
            } else {
                CallState::Error
            };
            status.error = error;
            status.stats.result_size = size as u64;
            status
        };
        // Statuses are handed to the writer before the client hears of the
        // call, so that a flush after a wait finds them all.
        let observer = self.observer.as_deref();
        match completion.outcome {
            Ok(Outputs::One(bytes)) => {
                let status = status(first, 1, None, bytes.len());
                let stats = status.stats.clone();
                match observer {
                    Some(observer) => {
                        self.writer
                            .finished(&self.target, status, Some(bytes.clone()));
                        observer.finished(first, Ended::Each(vec![(stats, Ok(bytes))]));
                    }
                    None => self.writer.finished(&self.target, status, Some(bytes)),
                }
            }
            Ok(Outputs::Shared(bytes)) => {
                // One record and one stored result for the whole batch.
                let status = status(first, count, None, bytes.len());
                match observer {
                    Some(observer) => {
                        let stats = status.stats.clone();
                        self.writer
                            .finished(&self.target, status, Some(bytes.clone()));
                        let ended = Ended::Together {
                            count,
                            stats,
                            outcome: Ok(Arc::new(bytes)),
                        };
                        observer.finished(first, ended);
                    }
                    None => self.writer.finished(&self.target, status, Some(bytes)),
                }
            }
            Ok(Outputs::Each(entries)) => {
                let mut outcomes = Vec::with_capacity(entries.len());
                for (k, entry) in entries.into_iter().enumerate() {
                    let call = CallId(first.0 + k as u32);
                    let (error, size) = match &entry {
                        Ok(bytes) => (None, bytes.len()),
                        Err(e) => (Some(e.clone()), 0),
                    };
                    let mut status = status(call, 1, error, size);
                    status.stats = element_stats(&status, k as u32);
                    if observer.is_some() {
                        outcomes.push((status.stats.clone(), entry.clone()));
                    }
                    self.writer.finished(&self.target, status, entry.ok());
                }
                if let Some(observer) = observer {
                    observer.finished(first, Ended::Each(outcomes));
                }
            }
            Err(error) => {
                let status = status(first, count, Some(error.clone()), 0);
                let stats = status.stats.clone();
                self.writer.finished(&self.target, status, None);
                if let Some(observer) = observer {
                    let ended = Ended::Together {
                        count,
                        stats,
                        outcome: Err(error),
                    };
                    observer.finished(first, ended);
                }
            }
        }
        self.remaining
            .send_modify(|n| *n = n.saturating_sub(count as usize));
    }
}
