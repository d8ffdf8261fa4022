//! The local backend's pool of warm runner processes, and their supervision.
//!
//! Each pool slot owns one runner process at a time, started with
//! `std::process::Command` (posix_spawn on Linux: no fork of a large parent)
//! and replaced when it dies. Per slot, a writer thread feeds calls down the
//! runner's stdin (several at once when calls are short, so the pipe never
//! runs dry) and a reader thread takes answers off its protocol stream. One
//! watchdog thread enforces each call's timeout and the runner's memory limit
//! by killing the runner, recording why first.
//!
//! When a runner dies, only the call it was running fails (timeout, out of
//! memory, cancelled, or worker crashed with the signal or exit code); the
//! calls queued behind it go back to the front of the queue.
//!
//! One concern per module:
//! - [`startup`]: spawning a runner, its ready handshake, start failures;
//! - [`schedule`]: the pipelining depth per function and the feeder threads;
//! - [`watchdog`]: timeouts and memory limits;
//! - [`failure`]: what a dead runner's call reports (exit statuses, reasons);
//! - [`slot`]: one slot's runners one after another, answers and deaths.
//!
//! Signals and pids: a runner's pid is published in its slot while the slot
//! thread owns the unreaped child. Every signal to it is sent with the slot's
//! `kill_reason` lock held and the pid read under that lock, and the slot
//! thread clears the pid under the same lock before it reaps the child, so a
//! signal only ever reaches our own (possibly zombie) child, never a
//! recycled pid.

mod failure;
mod process;
mod schedule;
mod slot;
mod startup;
mod watchdog;

pub use self::process::{ForkedRunner, RUNNER_FDS_ENV, RUNNER_IN_FD, RUNNER_OUT_FD};

use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quelea_core::config::EnvVars;
use quelea_core::ids::CallId;
use quelea_core::model::{now_ts, CallError};

use crate::runner_protocol::ALL;

use self::failure::{cancelled_error, start_failure, KillReason};

/// How to start a runner process.
#[derive(Clone, Debug)]
pub struct RunnerCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
}

impl RunnerCommand {
    /// `python -m quelea.worker`: a Python runner of that interpreter.
    pub fn python(program: impl Into<PathBuf>) -> Self {
        RunnerCommand {
            program: program.into(),
            args: vec!["-m".into(), "quelea.worker".into()],
            env: Vec::new(),
        }
    }

    /// This very executable, in Rust-runner mode (the same-binary model).
    pub fn current_exe() -> std::io::Result<Self> {
        Ok(RunnerCommand {
            program: std::env::current_exe()?,
            args: Vec::new(),
            env: vec![(EnvVars::RUNNER.into(), "rust".into())],
        })
    }
}

/// What a runner answered for a call that ran.
#[derive(Debug)]
pub enum Outputs {
    /// A single element's result.
    One(Vec<u8>),
    /// Every element of the batch succeeded: the runner's encoding of all
    /// their values at once.
    Shared(Vec<u8>),
    /// Each element's own outcome, in order.
    Each(Vec<Result<Vec<u8>, CallError>>),
}

/// What the pool reports about a finished call: `count` elements from
/// `call_id` (an error of a batch is every one of its elements').
#[derive(Debug)]
pub struct Completion {
    pub call_id: CallId,
    pub count: u32,
    pub outcome: Result<Outputs, CallError>,
    pub start_ts: Option<f64>,
    pub end_ts: f64,
    pub worker_id: Option<u32>,
    pub cold_start: bool,
    pub peak_memory_bytes: u64,
}

/// Where a job's call events go.
pub trait JobSink: Send + Sync {
    /// The call (its `count` elements from `call_id`) became the one its
    /// runner is running.
    fn started(&self, call_id: CallId, count: u32, worker_id: u32, ts: f64);
    fn completed(&self, completion: Completion);
}

/// What every call of one job shares.
pub struct JobContext {
    /// Unique per pool; names the job for cancellation.
    pub job_serial: u64,
    pub function: Arc<PoolFunction>,
    pub timeout: Duration,
    /// Resident memory limit of the runner while it runs a call of this job.
    pub memory_limit_bytes: Option<u64>,
    pub sink: Arc<dyn JobSink>,
    cancelled: AtomicBool,
}

impl JobContext {
    pub fn new(
        job_serial: u64,
        function: Arc<PoolFunction>,
        timeout: Duration,
        memory_limit_bytes: Option<u64>,
        sink: Arc<dyn JobSink>,
    ) -> Self {
        JobContext {
            job_serial,
            function,
            timeout,
            memory_limit_bytes,
            sink,
            cancelled: AtomicBool::new(false),
        }
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Marks the job cancelled: from now on none of its calls starts. Mark
    /// every context of a job before [`Pool::cancel`] stops any of them, so
    /// that a call requeued from a killed runner is never picked up again.
    pub fn mark_cancelled(&self) {
        self.cancelled.store(true, Ordering::Release);
    }
}

/// A function as runners load it: a pool-wide id and the runner's payload.
#[derive(Debug)]
pub struct PoolFunction {
    pub id: u32,
    pub payload: Vec<u8>,
    /// Exponentially weighted mean call time in nanoseconds, over every
    /// runner (0 until a call has finished). How deep this function's calls
    /// are pipelined is decided from it: per function, because another
    /// job's quick calls say nothing about how long these take.
    mean_call_ns: AtomicU64,
}

impl PoolFunction {
    /// How many of this function's calls a runner may hold at once.
    fn depth(&self) -> u32 {
        schedule::depth_for(self.mean_call_ns.load(Ordering::Relaxed))
    }

    fn record(&self, took_ns: u64) {
        let mean = self.mean_call_ns.load(Ordering::Relaxed);
        self.mean_call_ns
            .store(schedule::next_mean(mean, took_ns), Ordering::Relaxed);
    }
}

/// One runner call to run: `count` consecutive elements of a job from
/// `call_id`, with one input encoding them all (see `runner_protocol`).
pub struct Task {
    pub ctx: Arc<JobContext>,
    pub call_id: CallId,
    pub count: u32,
    pub input: bytes::Bytes,
    /// `runner_protocol::ALL`, or the one element of the batch to run.
    select: u32,
}

impl Task {
    pub fn new(ctx: Arc<JobContext>, call_id: CallId, count: u32, input: bytes::Bytes) -> Task {
        Task {
            ctx,
            call_id,
            count: count.max(1),
            input,
            select: ALL,
        }
    }

    /// Element `select` alone of the batch of `count` from `call_id` (a
    /// retry of one element, with its batch's input).
    pub fn selected(
        ctx: Arc<JobContext>,
        call_id: CallId,
        count: u32,
        input: bytes::Bytes,
        select: u32,
    ) -> Task {
        let count = count.max(1);
        Task {
            ctx,
            call_id,
            count,
            input,
            select: if count == 1 { ALL } else { select },
        }
    }

    /// The first element the runner answers for.
    fn answer_id(&self) -> CallId {
        match self.select {
            ALL => self.call_id,
            k => CallId(self.call_id.0 + k),
        }
    }

    /// How many elements the runner answers for.
    fn elements(&self) -> u32 {
        if self.select == ALL {
            self.count
        } else {
            1
        }
    }

    /// Several elements that share one process: a crash, the memory limit
    /// or the timeout would hit them all.
    fn is_batch(&self) -> bool {
        self.elements() > 1
    }

    /// The call's time limit: the job's per-element timeout for each element.
    fn timeout(&self) -> Duration {
        self.ctx
            .timeout
            .checked_mul(self.elements())
            .unwrap_or(Duration::MAX)
    }

    /// A batch's elements as calls of their own (run apart after the batch's
    /// process died, so that only the guilty element fails).
    fn singles(self) -> impl DoubleEndedIterator<Item = Task> {
        (0..self.count).map(move |k| Task {
            ctx: self.ctx.clone(),
            call_id: self.call_id,
            count: self.count,
            input: self.input.clone(),
            select: k,
        })
    }
}

struct InflightCall {
    task: Task,
}

struct Inflight {
    calls: VecDeque<InflightCall>,
    /// When the front call started running.
    front_start: Instant,
    generation: u64,
}

struct RunnerInput {
    stdin: Option<process::CallsPipe>,
    generation: u64,
    loaded: HashSet<u32>,
}

struct Slot {
    index: u32,
    inflight: Mutex<Inflight>,
    input: Mutex<RunnerInput>,
    outstanding: AtomicU32,
    pid: AtomicI32,
    /// The current runner said ready and its stdin is in place.
    ready: AtomicBool,
    /// Why the pool killed the current runner, if it did. Its lock is also
    /// held around every signal to the runner and around clearing `pid`
    /// (see the module docs).
    kill_reason: Mutex<Option<KillReason>>,
}

struct Shared {
    queue: Mutex<VecDeque<Task>>,
    cond: Condvar,
    slots: Vec<Arc<Slot>>,
    shutdown: AtomicBool,
    command: RunnerCommand,
    /// Set when runners cannot start at all; every task then fails with it.
    broken: Mutex<Option<String>>,
    clock: (Instant, f64),
    next_function_id: AtomicU32,
    next_job_serial: AtomicU64,
}

/// Pool sizing and the runner to start.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub workers: u32,
    pub command: RunnerCommand,
}

/// A pool of warm runner processes. Dropping it stops them all.
pub struct Pool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking pool thread must not wedge every other thread.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    pub fn new(config: PoolConfig) -> Pool {
        Pool::with_runners(config, Vec::new())
    }

    /// A pool whose first slots adopt `forked` as their first runners
    /// (one each, in order; any beyond the pool's size are ended) instead
    /// of spawning them.
    pub fn with_runners(config: PoolConfig, forked: Vec<ForkedRunner>) -> Pool {
        let workers = config.workers.max(1);
        let mut forked = forked.into_iter();
        let slots = (0..workers)
            .map(|index| {
                Arc::new(Slot {
                    index,
                    inflight: Mutex::new(Inflight {
                        calls: VecDeque::new(),
                        front_start: Instant::now(),
                        generation: 0,
                    }),
                    input: Mutex::new(RunnerInput {
                        stdin: None,
                        generation: 0,
                        loaded: HashSet::new(),
                    }),
                    outstanding: AtomicU32::new(0),
                    pid: AtomicI32::new(0),
                    ready: AtomicBool::new(false),
                    kill_reason: Mutex::new(None),
                })
            })
            .collect();
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            cond: Condvar::new(),
            slots,
            shutdown: AtomicBool::new(false),
            command: config.command,
            broken: Mutex::new(None),
            clock: (Instant::now(), now_ts()),
            next_function_id: AtomicU32::new(1),
            next_job_serial: AtomicU64::new(1),
        });
        let mut threads = Vec::new();
        for slot in &shared.slots {
            let (s, sl) = (shared.clone(), slot.clone());
            let first = forked.next();
            threads.push(spawn_thread(
                format!("quelea-runner-{}", slot.index),
                move || slot::slot_main(&s, &sl, first),
            ));
            let (s, sl) = (shared.clone(), slot.clone());
            threads.push(spawn_thread(
                format!("quelea-feed-{}", slot.index),
                move || schedule::feeder_main(&s, &sl),
            ));
        }
        let s = shared.clone();
        threads.push(spawn_thread("quelea-watchdog".into(), move || {
            watchdog::watchdog_main(&s)
        }));
        Pool { shared, threads }
    }

    pub fn workers(&self) -> u32 {
        self.shared.slots.len() as u32
    }

    /// Registers a function payload; runners load it on first use.
    pub fn function(&self, payload: Vec<u8>) -> Arc<PoolFunction> {
        Arc::new(PoolFunction {
            id: self.shared.next_function_id.fetch_add(1, Ordering::Relaxed),
            payload,
            mean_call_ns: AtomicU64::new(0),
        })
    }

    pub fn next_job_serial(&self) -> u64 {
        self.shared.next_job_serial.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues calls at the back of the queue.
    pub fn submit(&self, tasks: impl IntoIterator<Item = Task>) {
        let broken = lock(&self.shared.broken).clone();
        if let Some(reason) = broken {
            for task in tasks {
                fail_task(task, start_failure(&reason));
            }
            return;
        }
        lock(&self.shared.queue).extend(tasks);
        self.shared.cond.notify_all();
    }

    /// Cancels a job: its queued calls end as cancelled without running, and
    /// a runner running one of its calls is killed (that call ends as
    /// cancelled too).
    /// Every call of a context marked cancelled is stopped too.
    pub fn cancel(&self, ctx: &JobContext) {
        ctx.mark_cancelled();
        let dropped = {
            let mut queue = lock(&self.shared.queue);
            let (dropped, kept): (VecDeque<Task>, VecDeque<Task>) = std::mem::take(&mut *queue)
                .into_iter()
                .partition(|t| t.ctx.is_cancelled());
            *queue = kept;
            dropped
        };
        for task in dropped {
            let message = format!("call {} was cancelled before it ran", task.answer_id());
            fail_task(task, cancelled_error(&message));
        }
        for slot in &self.shared.slots {
            let inflight = lock(&slot.inflight);
            if let Some(front) = inflight.calls.front() {
                if front.task.ctx.is_cancelled() {
                    kill_runner(slot, KillReason::Cancelled);
                }
            }
        }
        self.shared.cond.notify_all();
    }

    /// Waits until every runner has said ready; false if that did not happen
    /// within `timeout` or runners cannot start at all.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if lock(&self.shared.broken).is_some() {
                return false;
            }
            if self
                .shared
                .slots
                .iter()
                .all(|s| s.ready.load(Ordering::Acquire))
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The pids of the current runner processes.
    pub fn runner_pids(&self) -> Vec<u32> {
        self.shared
            .slots
            .iter()
            .map(|s| s.pid.load(Ordering::Acquire))
            .filter(|p| *p > 0)
            .map(|p| p as u32)
            .collect()
    }

    /// Calls currently running: `(job_serial, call_id, start_ts, worker)`.
    pub fn running_calls(&self) -> Vec<(u64, CallId, f64, u32)> {
        let mut running = Vec::new();
        for slot in &self.shared.slots {
            let inflight = lock(&slot.inflight);
            if let Some(front) = inflight.calls.front() {
                running.push((
                    front.task.ctx.job_serial,
                    front.task.call_id,
                    self.shared.ts(inflight.front_start),
                    slot.index,
                ));
            }
        }
        running
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        for slot in &self.shared.slots {
            kill_runner(slot, KillReason::Shutdown);
        }
        {
            let _queue = lock(&self.shared.queue);
            self.shared.cond.notify_all();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let queued: Vec<Task> = lock(&self.shared.queue).drain(..).collect();
        for task in queued {
            fail_task(task, cancelled_error("the executor shut down"));
        }
    }
}

impl Shared {
    fn ts(&self, at: Instant) -> f64 {
        let (base, base_ts) = self.clock;
        if at >= base {
            base_ts + (at - base).as_secs_f64()
        } else {
            base_ts - (base - at).as_secs_f64()
        }
    }
}

fn spawn_thread(name: String, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .expect("the OS starts a pool thread")
}

/// Kills the slot's current runner (if it has one), recording `reason`
/// unless another was recorded first.
fn kill_runner(slot: &Slot, reason: KillReason) {
    signal_runner(slot, None, reason);
}

/// Kills the slot's runner only if it is still process `pid`.
fn kill_runner_if(slot: &Slot, pid: i32, reason: KillReason) {
    signal_runner(slot, Some(pid), reason);
}

fn signal_runner(slot: &Slot, expected: Option<i32>, reason: KillReason) {
    let mut recorded = lock(&slot.kill_reason);
    let pid = slot.pid.load(Ordering::SeqCst);
    if pid <= 0 || expected.is_some_and(|e| e != pid) {
        return;
    }
    if recorded.is_none() {
        *recorded = Some(reason);
    }
    // SAFETY: `pid` was read with `kill_reason` locked, and the slot thread
    // clears it under that lock before it reaps the child: while we hold the
    // lock, `pid` is our unreaped child (at worst a zombie), the leader of
    // its process group, so neither it nor its group id was recycled.
    unsafe {
        process::kill_group(pid);
    }
}

/// Ends a call that never ran on a runner.
fn fail_task(task: Task, error: CallError) {
    task.ctx.sink.completed(Completion {
        call_id: task.answer_id(),
        count: task.elements(),
        outcome: Err(error),
        start_ts: None,
        end_ts: now_ts(),
        worker_id: None,
        cold_start: false,
        peak_memory_bytes: 0,
    });
}
