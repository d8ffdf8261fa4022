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

use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quelea_core::config::EnvVars;
use quelea_core::ids::CallId;
use quelea_core::model::{now_ts, CallError, FailureReason};

use crate::runner_protocol::{self, FromRunner, RUNNER_PROTOCOL_VERSION};
use crate::rust_runner::RunnerError;

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

/// What the pool reports about a finished call.
#[derive(Debug)]
pub struct Completion {
    pub call_id: CallId,
    pub outcome: Result<Vec<u8>, CallError>,
    pub start_ts: Option<f64>,
    pub end_ts: f64,
    pub worker_id: Option<u32>,
    pub cold_start: bool,
    pub peak_memory_bytes: u64,
}

/// Where a job's call events go.
pub trait JobSink: Send + Sync {
    /// The call became the one its runner is running.
    fn started(&self, call_id: CallId, worker_id: u32, ts: f64);
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
        match self.mean_call_ns.load(Ordering::Relaxed) {
            0 => 1,
            mean => ((TARGET_QUEUED_WORK.as_nanos() as u64 / mean) as u32).clamp(1, MAX_DEPTH),
        }
    }

    fn record(&self, took_ns: u64) {
        let mean = self.mean_call_ns.load(Ordering::Relaxed);
        let mean = if mean == 0 {
            took_ns
        } else {
            (mean * 7 + took_ns) / 8
        };
        self.mean_call_ns.store(mean.max(1), Ordering::Relaxed);
    }
}

/// One call to run.
pub struct Task {
    pub ctx: Arc<JobContext>,
    pub call_id: CallId,
    pub input: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum KillReason {
    Timeout,
    OutOfMemory { rss: u64 },
    Cancelled,
    Shutdown,
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
    stdin: Option<ChildStdin>,
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

/// Pipelining: keep about this much work queued in each runner.
const TARGET_QUEUED_WORK: Duration = Duration::from_millis(2);
const MAX_DEPTH: u32 = 128;
const WATCHDOG_TICK: Duration = Duration::from_millis(5);
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Runners that die before saying ready this many times in a row mark the
/// pool broken instead of being restarted forever.
const MAX_START_FAILURES: u32 = 3;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking pool thread must not wedge every other thread.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    pub fn new(config: PoolConfig) -> Pool {
        let workers = config.workers.max(1);
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
            threads.push(spawn_thread(
                format!("quelea-runner-{}", slot.index),
                move || slot_main(&s, &sl),
            ));
            let (s, sl) = (shared.clone(), slot.clone());
            threads.push(spawn_thread(
                format!("quelea-feed-{}", slot.index),
                move || feeder_main(&s, &sl),
            ));
        }
        let s = shared.clone();
        threads.push(spawn_thread("quelea-watchdog".into(), move || {
            watchdog_main(&s)
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
                fail_task(&self.shared, task, start_failure(&reason));
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
            let message = format!("call {} was cancelled before it ran", task.call_id);
            fail_task(&self.shared, task, cancelled_error(&message));
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
            fail_task(
                &self.shared,
                task,
                cancelled_error("the executor shut down"),
            );
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

fn kill_runner(slot: &Slot, reason: KillReason) {
    let pid = slot.pid.load(Ordering::SeqCst);
    if pid > 0 {
        let mut recorded = lock(&slot.kill_reason);
        if recorded.is_none() {
            *recorded = Some(reason);
        }
        // SAFETY: `pid` is our child, not yet reaped (the slot thread reaps it
        // after clearing `pid`), so it cannot name another process.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

fn cancelled_error(message: &str) -> CallError {
    CallError {
        reason: FailureReason::Cancelled,
        error_type: "Cancelled".into(),
        message: message.into(),
        traceback: String::new(),
        payload: None,
    }
}

fn start_failure(reason: &str) -> CallError {
    CallError {
        reason: FailureReason::WorkerCrashed,
        error_type: "WorkerStartError".into(),
        message: reason.to_owned(),
        traceback: String::new(),
        payload: None,
    }
}

fn fail_task(shared: &Shared, task: Task, error: CallError) {
    let _ = shared;
    task.ctx.sink.completed(Completion {
        call_id: task.call_id,
        outcome: Err(error),
        start_ts: None,
        end_ts: now_ts(),
        worker_id: None,
        cold_start: false,
        peak_memory_bytes: 0,
    });
}

/// Feeds queued calls to one slot's runner.
fn feeder_main(shared: &Shared, slot: &Slot) {
    let mut frames = Vec::with_capacity(1 << 16);
    loop {
        let batch: Vec<Task> = {
            let mut queue = lock(&shared.queue);
            loop {
                if shared.shutdown.load(Ordering::Acquire) {
                    return;
                }
                let outstanding = slot.outstanding.load(Ordering::Acquire);
                if let Some(front) = queue.front() {
                    let function = &front.ctx.function;
                    let depth = function.depth();
                    if outstanding < depth && slot.ready.load(Ordering::Acquire) {
                        // Only calls of the same function: another one's
                        // may be slower than this depth allows for.
                        let take = queue
                            .iter()
                            .take((depth - outstanding) as usize)
                            .take_while(|t| t.ctx.function.id == function.id)
                            .count();
                        break queue.drain(..take).collect();
                    }
                }
                queue = shared.cond.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
        };
        let mut tasks = Vec::with_capacity(batch.len());
        for task in batch {
            if task.ctx.is_cancelled() {
                fail_task(shared, task, cancelled_error("the job was cancelled"));
            } else {
                tasks.push(task);
            }
        }
        if tasks.is_empty() {
            continue;
        }

        // Encode before publishing: the tasks move into the in-flight queue.
        frames.clear();
        let generation;
        {
            let mut input = lock(&slot.input);
            if input.stdin.is_none() {
                // The runner died after these were taken and its successor is
                // not up yet: nothing could send them, so they go back.
                drop(input);
                let mut queue = lock(&shared.queue);
                for task in tasks.into_iter().rev() {
                    queue.push_front(task);
                }
                continue;
            }
            for task in &tasks {
                let function = &task.ctx.function;
                if input.loaded.insert(function.id) {
                    runner_protocol::encode_function(&mut frames, function.id, &function.payload);
                }
                runner_protocol::encode_call(&mut frames, function.id, task.call_id.0, &task.input);
            }
            generation = input.generation;
        }
        {
            let mut inflight = lock(&slot.inflight);
            if inflight.generation != generation {
                // The runner died between the two locks; try again later.
                drop(inflight);
                lock(&shared.queue).extend(tasks);
                lock(&slot.input).loaded.clear();
                continue;
            }
            let n = tasks.len() as u32;
            if inflight.calls.is_empty() {
                inflight.front_start = Instant::now();
                let first = &tasks[0];
                first
                    .ctx
                    .sink
                    .started(first.call_id, slot.index, shared.ts(inflight.front_start));
            }
            inflight
                .calls
                .extend(tasks.into_iter().map(|task| InflightCall { task }));
            slot.outstanding.fetch_add(n, Ordering::AcqRel);
        }
        let mut input = lock(&slot.input);
        if input.generation != generation {
            // The slot thread already took these calls back for requeueing.
            continue;
        }
        if let Some(stdin) = input.stdin.as_mut() {
            if runner_protocol::write_all(stdin, &frames).is_err() {
                // The runner is gone; its slot thread requeues what it held.
                input.stdin = None;
            }
        }
    }
}

fn spawn_runner(shared: &Shared, slot: &Slot) -> std::io::Result<Child> {
    let command = &shared.command;
    let mut cmd = Command::new(&command.program);
    cmd.args(&command.args)
        .envs(command.env.iter().map(|(k, v)| (k, v)))
        .env("QUELEA_RUNNER_PARENT", std::process::id().to_string())
        .env("QUELEA_RUNNER_SLOT", slot.index.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd.spawn()
}

fn wait_ready(stdout: &mut impl Read) -> Result<(), String> {
    match runner_protocol::read_from_runner(stdout) {
        Ok(Some(FromRunner::Ready { version, .. })) if version == RUNNER_PROTOCOL_VERSION => Ok(()),
        Ok(Some(FromRunner::Ready { version, .. })) => Err(format!(
            "runner speaks protocol version {version}, this runtime speaks {RUNNER_PROTOCOL_VERSION}"
        )),
        Ok(Some(other)) => Err(format!("runner sent {other:?} before saying ready")),
        Ok(None) => Err("runner exited before saying ready".into()),
        Err(e) => Err(format!("runner protocol error before ready: {e}")),
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(signal) = status.signal() {
        let name = match signal {
            libc::SIGKILL => "SIGKILL",
            libc::SIGSEGV => "SIGSEGV",
            libc::SIGABRT => "SIGABRT",
            libc::SIGBUS => "SIGBUS",
            libc::SIGTERM => "SIGTERM",
            libc::SIGINT => "SIGINT",
            libc::SIGFPE => "SIGFPE",
            libc::SIGILL => "SIGILL",
            _ => "signal",
        };
        format!("killed by signal {signal} ({name})")
    } else {
        format!("exited with code {}", status.code().unwrap_or(-1))
    }
}

/// Owns the slot's runner processes one after another, and reads their answers.
fn slot_main(shared: &Shared, slot: &Slot) {
    let mut start_failures = 0u32;
    while !shared.shutdown.load(Ordering::Acquire) {
        let mut child = match spawn_runner(shared, slot) {
            Ok(child) => child,
            Err(e) => {
                mark_broken(
                    shared,
                    format!(
                        "cannot start runner `{}`: {e}",
                        shared.command.program.display()
                    ),
                );
                return;
            }
        };
        let pid = child.id() as i32;
        let mut stdout =
            BufReader::with_capacity(1 << 16, child.stdout.take().expect("piped stdout"));
        let stdin = child.stdin.take().expect("piped stdin");
        // Publish the pid, then look at the shutdown flag (Drop does the
        // reverse): one of the two sides is sure to see the other and kill.
        slot.pid.store(pid, Ordering::SeqCst);
        if shared.shutdown.load(Ordering::SeqCst) {
            let _ = child.kill();
            let _ = child.wait();
            slot.pid.store(0, Ordering::SeqCst);
            return;
        }

        let ready_deadline = Instant::now() + READY_TIMEOUT;
        let ready = {
            // The watchdog does not cover start-up: bound it here.
            let watcher = ReadyWatch::start(pid, ready_deadline);
            let ready = wait_ready(&mut stdout);
            watcher.stop();
            ready
        };
        if let Err(reason) = ready {
            slot.pid.store(0, Ordering::Release);
            let _ = child.kill();
            let status = child.wait().map(describe_exit).unwrap_or_default();
            if shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            start_failures += 1;
            if start_failures >= MAX_START_FAILURES {
                mark_broken(
                    shared,
                    format!(
                        "runner `{}` failed to start {start_failures} times: {reason} ({status})",
                        shared.command.program.display()
                    ),
                );
                return;
            }
            continue;
        }
        start_failures = 0;
        lock(&slot.kill_reason).take();
        {
            let mut input = lock(&slot.input);
            input.stdin = Some(stdin);
            input.loaded.clear();
            slot.ready.store(true, Ordering::Release);
        }
        {
            let _queue = lock(&shared.queue);
            shared.cond.notify_all();
        }

        let mut cold = true;
        // Anything but an answer (end of stream, a stray frame, garbage)
        // ends this runner.
        while let Ok(Some(FromRunner::Done {
            call_id,
            ok,
            peak_rss,
            payload,
        })) = runner_protocol::read_from_runner(&mut stdout)
        {
            if !on_done(shared, slot, call_id, ok, peak_rss, payload, cold) {
                break;
            }
            cold = false;
        }

        // The runner is gone or misbehaved: make sure it is dead, then reap it.
        // SAFETY: `pid` is our unreaped child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        let status = child
            .wait()
            .map(describe_exit)
            .unwrap_or_else(|e| format!("unknown exit ({e})"));
        slot.pid.store(0, Ordering::Release);
        let reason = lock(&slot.kill_reason).take();
        on_death(shared, slot, reason, &status);
    }
}

fn mark_broken(shared: &Shared, reason: String) {
    *lock(&shared.broken) = Some(reason.clone());
    let queued: Vec<Task> = lock(&shared.queue).drain(..).collect();
    for task in queued {
        fail_task(shared, task, start_failure(&reason));
    }
}

/// Bounds how long a runner may take to say ready.
struct ReadyWatch {
    done: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl ReadyWatch {
    fn start(pid: i32, deadline: Instant) -> Self {
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let d = done.clone();
        let thread = spawn_thread("quelea-ready-watch".into(), move || {
            let (flag, cond) = &*d;
            let mut finished = lock(flag);
            while !*finished {
                let now = Instant::now();
                if now >= deadline {
                    // SAFETY: the slot thread reaps `pid` only after stop().
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                    return;
                }
                finished = cond
                    .wait_timeout(finished, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        });
        ReadyWatch {
            done,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        *lock(&self.done.0) = true;
        self.done.1.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Handles one answer; false if the runner broke the protocol.
fn on_done(
    shared: &Shared,
    slot: &Slot,
    call_id: u32,
    ok: bool,
    peak_rss: u64,
    payload: Vec<u8>,
    cold: bool,
) -> bool {
    let now = Instant::now();
    let (call, start) = {
        let mut inflight = lock(&slot.inflight);
        let Some(front) = inflight.calls.front() else {
            return false;
        };
        if front.task.call_id.0 != call_id {
            return false;
        }
        let call = inflight.calls.pop_front().expect("front exists");
        let start = inflight.front_start;
        inflight.front_start = now;
        if let Some(next) = inflight.calls.front() {
            if next.task.ctx.is_cancelled() {
                // Sent to the runner before its job was cancelled: stop it as
                // it starts (it ends as cancelled; the calls behind it requeue).
                kill_runner(slot, KillReason::Cancelled);
            } else {
                next.task
                    .ctx
                    .sink
                    .started(next.task.call_id, slot.index, shared.ts(now));
            }
        }
        (call, start)
    };
    let outstanding = slot.outstanding.fetch_sub(1, Ordering::AcqRel) - 1;

    // Adapt the function's pipelining depth to its call duration.
    let function = &call.task.ctx.function;
    function.record(now.saturating_duration_since(start).as_nanos().max(1) as u64);
    if outstanding <= function.depth() / 2 {
        let _queue = lock(&shared.queue);
        shared.cond.notify_all();
    }

    let outcome = if ok {
        Ok(payload)
    } else {
        Err(match serde_json::from_slice::<RunnerError>(&payload) {
            Ok(e) => CallError {
                reason: FailureReason::UserError,
                error_type: e.error_type,
                message: e.message,
                traceback: e.traceback,
                payload: e.payload.and_then(|p| {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD.decode(p).ok()
                }),
            },
            Err(parse) => CallError {
                reason: FailureReason::UserError,
                error_type: "RunnerError".into(),
                message: format!("unreadable error report from runner: {parse}"),
                traceback: String::new(),
                payload: None,
            },
        })
    };
    call.task.ctx.sink.completed(Completion {
        call_id: call.task.call_id,
        outcome,
        start_ts: Some(shared.ts(start)),
        end_ts: shared.ts(now),
        worker_id: Some(slot.index),
        cold_start: cold,
        peak_memory_bytes: peak_rss,
    });
    true
}

fn on_death(shared: &Shared, slot: &Slot, reason: Option<KillReason>, status: &str) {
    let (calls, start) = {
        let mut input = lock(&slot.input);
        let mut inflight = lock(&slot.inflight);
        input.stdin = None;
        slot.ready.store(false, Ordering::Release);
        input.generation += 1;
        input.loaded.clear();
        inflight.generation = input.generation;
        slot.outstanding.store(0, Ordering::Release);
        (std::mem::take(&mut inflight.calls), inflight.front_start)
    };
    let mut calls = calls.into_iter();
    if let Some(front) = calls.next() {
        let task = front.task;
        let timeout = task.ctx.timeout;
        let error = match reason {
            Some(KillReason::Timeout) => CallError {
                reason: FailureReason::Timeout,
                error_type: "TimeoutError".into(),
                message: format!(
                    "call {} ran past its timeout of {:.3} s and its runner was killed",
                    task.call_id,
                    timeout.as_secs_f64()
                ),
                traceback: String::new(),
                payload: None,
            },
            Some(KillReason::OutOfMemory { rss }) => CallError {
                reason: FailureReason::OutOfMemory,
                error_type: "MemoryError".into(),
                message: format!(
                    "call {} used {} MiB, over its memory limit of {} MiB; its runner was killed",
                    task.call_id,
                    rss >> 20,
                    task.ctx.memory_limit_bytes.unwrap_or(0) >> 20
                ),
                traceback: String::new(),
                payload: None,
            },
            Some(KillReason::Cancelled) | Some(KillReason::Shutdown) => cancelled_error(&format!(
                "call {} was cancelled while running",
                task.call_id
            )),
            None => CallError {
                reason: FailureReason::WorkerCrashed,
                error_type: "WorkerCrashed".into(),
                message: format!("the runner running call {} died: {status}", task.call_id),
                traceback: String::new(),
                payload: None,
            },
        };
        let ctx = task.ctx.clone();
        ctx.sink.completed(Completion {
            call_id: task.call_id,
            outcome: Err(error),
            start_ts: Some(shared.ts(start)),
            end_ts: now_ts(),
            worker_id: Some(slot.index),
            cold_start: false,
            peak_memory_bytes: 0,
        });
    }
    let rest: Vec<Task> = calls.map(|c| c.task).collect();
    if shared.shutdown.load(Ordering::Acquire) {
        for task in rest {
            fail_task(shared, task, cancelled_error("the executor shut down"));
        }
        return;
    }
    let mut queue = lock(&shared.queue);
    for task in rest.into_iter().rev() {
        queue.push_front(task);
    }
    shared.cond.notify_all();
}

fn rss_bytes(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(4096) as u64)
}

/// Enforces timeouts and memory limits.
fn watchdog_main(shared: &Shared) {
    while !shared.shutdown.load(Ordering::Acquire) {
        std::thread::sleep(WATCHDOG_TICK);
        let now = Instant::now();
        for slot in &shared.slots {
            let pid = slot.pid.load(Ordering::Acquire);
            if pid <= 0 {
                continue;
            }
            let (timeout, limit, start) = {
                let inflight = lock(&slot.inflight);
                let Some(front) = inflight.calls.front() else {
                    continue;
                };
                (
                    front.task.ctx.timeout,
                    front.task.ctx.memory_limit_bytes,
                    inflight.front_start,
                )
            };
            if now.saturating_duration_since(start) > timeout {
                kill_runner(slot, KillReason::Timeout);
                continue;
            }
            if let Some(limit) = limit {
                if let Some(rss) = rss_bytes(pid) {
                    if rss > limit {
                        kill_runner(slot, KillReason::OutOfMemory { rss });
                    }
                }
            }
        }
    }
}
