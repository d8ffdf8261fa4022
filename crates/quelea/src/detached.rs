//! Detached jobs: local jobs that outlive the process that submitted them.
//!
//! A detached job runs in a *host*: a process the executor starts once, in a
//! process group of its own (so a Ctrl-C meant for the client does not reach
//! it), that runs the one worker runtime exactly as a remote worker does. The
//! client writes the job's objects to storage, hands the host the job's
//! Invocations over the host's stdin (u32 length + JSON frames), and follows
//! the job through storage like any remote job. The host loads functions and
//! inputs from storage, writes every status there, watches the cancel markers,
//! and runs a map-reduce's reduce itself once the map is done. When its
//! stdin closes (the executor was dropped, or its process died for any
//! reason) the host finishes what it was given, flushes, and exits; its
//! runners die with it. Any process can attach to a detached job by handle,
//! follow it, read its results and cancel it by its marker.
//!
//!
//! While it runs a job's calls the host rewrites the job's lease
//! (`host.lease` in the job's storage: its pid, machine and the time) every
//! [`LEASE_INTERVAL`], and deletes it once the job's calls are done. A
//! follower anywhere reads it with [`host_lease_with`]: a lease that stopped
//! being rewritten ([`HostLease::is_gone`]) means the host died (killed, its
//! machine or pod gone) and the job's unfinished calls will never finish.
//!
//! Why a host process and not a re-parented pool: the runtime already knows
//! how to run Invocations from storage for remote front doors, so a detached
//! job is the same path with a pipe for a network, and nothing about the
//! local runtime needs to survive its process.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::ops::Range;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use quelea_core::config::{Config, ConfigBuilder};
use quelea_core::ids::CallId;
use quelea_core::keys::JobKeys;
use quelea_core::model::{now_ts, CallState, JobSpec, RunnerKind};
use quelea_core::protocol::{CallInput, Invocation, InvokedCall};
use quelea_storage::{io_runtime, Storage};
use quelea_worker::pool::RunnerCommand;
use quelea_worker::runtime::{with_runner_config, Runtime, RuntimeConfig};

use crate::error::{Error, Result};
use crate::future::{wait_calls, FuturesList, ReturnWhen};
use crate::handle::JobHandle;
use crate::job::{JobState, Notifier};

/// `QUELEA_RUNNER` value that makes a process a detached-job host.
pub const HOST_MODE: &str = "host";
/// The host's runner commands, as JSON (`{"python": {...}, "rust": {...}}`).
const HOST_RUNNERS_ENV: &str = "QUELEA_RUNNER_HOST_COMMANDS";
/// The host's log (its stderr): kept for a host that failed, deleted by
/// one that ends well.
const HOST_LOG_ENV: &str = "QUELEA_RUNNER_HOST_LOG";

use quelea_worker::lease::Leases;
pub use quelea_worker::lease::{HostLease, LEASE_INTERVAL};

/// The lease of the job behind `handle`, with credentials from `base`;
/// `None` when the job has none (not a detached local job, finished, or
/// cleaned).
pub fn host_lease_with(base: ConfigBuilder, handle: &JobHandle) -> Result<Option<HostLease>> {
    let config = handle.storage.to_config(base)?;
    let storage = Storage::from_config(&config)?;
    let key = JobKeys::new(&handle.executor_id, handle.job_id).host_lease();
    read_lease(&storage, &key)
}

/// Every lease of the job behind `handle`: its host's (a detached local
/// job) and those of the worker servers running its calls (`http`).
pub fn job_leases_with(base: ConfigBuilder, handle: &JobHandle) -> Result<Vec<HostLease>> {
    let config = handle.storage.to_config(base)?;
    let storage = Storage::from_config(&config)?;
    let keys = JobKeys::new(&handle.executor_id, handle.job_id);
    let mut out: Vec<HostLease> = read_lease(&storage, &keys.host_lease())?
        .into_iter()
        .collect();
    for object in storage.list_blocking(&keys.server_leases())? {
        out.extend(read_lease(&storage, &object.key)?);
    }
    Ok(out)
}

fn read_lease(storage: &Storage, key: &str) -> Result<Option<HostLease>> {
    match storage.get_blocking(key) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Handle(format!("unreadable lease {key}: {e}"))),
        Err(quelea_storage::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes the first lease of a job that the host `pid` of this machine is
/// about to be handed (see `Executor::host_send`); the host rewrites it once
/// it takes the job.
pub(crate) fn write_first_lease(storage: &Storage, key: &str, pid: u32) -> Result<()> {
    quelea_worker::lease::write_first_lease(storage, key, pid)?;
    Ok(())
}

/// What a client hands its host.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
// One step at a time goes over the host's pipe: no need to box.
#[allow(clippy::large_enum_variant)]
pub(crate) enum HostStep {
    /// Run these calls (functions and inputs are in storage).
    Invocation {
        invocation: Invocation,
        deadline_ts: f64,
    },
    /// Once the map job is done, run the reduce job on its results: one
    /// reduce call per group of consecutive map calls.
    Reduce {
        map: Box<JobSpec>,
        reduce: Box<JobSpec>,
        groups: Vec<Range<u32>>,
        deadline_ts: f64,
    },
}

#[derive(Serialize, Deserialize)]
struct CommandJson {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl From<&RunnerCommand> for CommandJson {
    fn from(c: &RunnerCommand) -> Self {
        CommandJson {
            program: c.program.to_string_lossy().into_owned(),
            args: c
                .args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            env: c
                .env
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string_lossy().into_owned(),
                        v.to_string_lossy().into_owned(),
                    )
                })
                .collect(),
        }
    }
}

impl From<CommandJson> for RunnerCommand {
    fn from(c: CommandJson) -> Self {
        RunnerCommand {
            program: c.program.into(),
            args: c.args.into_iter().map(Into::into).collect(),
            env: c
                .env
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

/// The client's end of its host: started on the first detached job.
pub(crate) struct Host {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Host {
    /// Starts `command` as the host of jobs under `config`, whose runners
    /// are `runners`.
    pub fn start(
        command: &RunnerCommand,
        config: &Config,
        runners: &HashMap<RunnerKind, RunnerCommand>,
    ) -> Result<Host> {
        use std::os::unix::process::CommandExt;
        let runners: HashMap<RunnerKind, CommandJson> =
            runners.iter().map(|(k, c)| (*k, c.into())).collect();
        static HOSTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = HOSTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!("quelea-host-{}-{n}.log", std::process::id()));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null());
        let mut cmd = Command::new(&command.program);
        cmd.args(&command.args)
            .envs(command.env.iter().map(|(k, v)| (k, v)))
            .env(quelea_core::config::EnvVars::RUNNER, HOST_MODE)
            .env(
                quelea_worker::runtime::RUNNER_CONFIG_ENV,
                config.runner_json(),
            )
            .env(
                HOST_RUNNERS_ENV,
                serde_json::to_string(&runners).expect("commands serialize"),
            )
            .env(HOST_LOG_ENV, &log)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(stderr)
            // Its own process group: the client's Ctrl-C is not the job's.
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| Error::InvalidArgument {
            name: "detach",
            message: format!(
                "cannot start the detached-job host `{}`: {e}",
                command.program.display()
            ),
        })?;
        let stdin = child.stdin.take();
        Ok(Host { child, stdin })
    }

    pub fn send(&mut self, step: &HostStep) -> Result<()> {
        let body = serde_json::to_vec(step).expect("host steps serialize");
        let gone = |e: std::io::Error| Error::InvalidArgument {
            name: "detach",
            message: format!("the detached-job host has stopped: {e}"),
        };
        let stdin = self.stdin.as_mut().ok_or_else(|| {
            gone(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "closed",
            ))
        })?;
        stdin
            .write_all(&(body.len() as u32).to_le_bytes())
            .and_then(|()| stdin.write_all(&body))
            .and_then(|()| stdin.flush())
            .map_err(gone)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // End of input: the host finishes its jobs and exits on its own. It
        // is not waited for; reaping it is its new parent's business once
        // this process exits, and a zombie meanwhile costs nothing.
        self.stdin.take();
        let _ = self.child.try_wait();
    }
}

/// Runs this process as a detached-job host (`QUELEA_RUNNER=host`) and
/// returns its exit code: serves the steps read from stdin until it closes,
/// then until every accepted call has finished or the latest deadline.
pub fn serve_host() -> i32 {
    match host_main() {
        Ok(()) => {
            if let Some(log) = std::env::var_os(HOST_LOG_ENV) {
                let _ = std::fs::remove_file(log);
            }
            0
        }
        Err(e) => {
            eprintln!("quelea host: {e}");
            2
        }
    }
}

fn host_main() -> Result<()> {
    let config = crate::objects::runner_config()?;
    let runners: HashMap<RunnerKind, CommandJson> = std::env::var(HOST_RUNNERS_ENV)
        .ok()
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|e| Error::InvalidArgument {
            name: HOST_RUNNERS_ENV,
            message: e.to_string(),
        })?
        .unwrap_or_default();
    let commands = runners.into_iter().map(|(k, c)| (k, c.into())).collect();
    let storage = Storage::from_config(&config)?;
    let runtime = Arc::new(Runtime::new(
        RuntimeConfig {
            workers: config.local_workers(),
            inline_result_bytes: config.execution.inline_result_bytes,
            max_queued_calls: u64::MAX,
            commands: with_runner_config(commands, &config),
            instance_memory_mb: None,
            brokers: Default::default(),
        },
        storage.clone(),
    ));
    let leases = Leases::new(storage.clone(), "host");
    let mut stdin = std::io::stdin().lock();
    let mut deadline = now_ts();
    let mut waits: Vec<std::thread::JoinHandle<()>> = Vec::new();
    let pending = Arc::new(Mutex::new(Vec::new()));
    while let Some(step) = read_step(&mut stdin)? {
        match step {
            HostStep::Invocation {
                invocation,
                deadline_ts,
            } => {
                deadline = deadline.max(deadline_ts);
                accept(&runtime, invocation, &pending, &leases);
            }
            HostStep::Reduce {
                map,
                reduce,
                groups,
                deadline_ts,
            } => {
                deadline = deadline.max(deadline_ts);
                let (runtime, storage, pending, leases) = (
                    runtime.clone(),
                    storage.clone(),
                    pending.clone(),
                    leases.clone(),
                );
                waits.push(std::thread::spawn(move || {
                    run_reduce(
                        &runtime,
                        &storage,
                        *map,
                        *reduce,
                        groups,
                        deadline_ts,
                        &pending,
                        &leases,
                    )
                }));
            }
        }
    }
    // Input closed: the client is gone or done handing over. Finish.
    let limit = Duration::from_secs_f64((deadline - now_ts()).max(0.0));
    let finish = async {
        for wait in waits {
            let _ = tokio::task::spawn_blocking(move || wait.join()).await;
        }
        loop {
            let next = std::mem::take(&mut *crate::job::lock(&pending));
            if next.is_empty() {
                break;
            }
            for accepted in next {
                quelea_worker::runtime::Accepted::finished(accepted).await;
            }
        }
    };
    let _ = io_runtime().block_on(async { tokio::time::timeout(limit, finish).await });
    for error in runtime.flush() {
        eprintln!("quelea host: a status write failed: {error}");
    }
    leases.finish();
    Ok(())
}

type Pending = Mutex<Vec<quelea_worker::runtime::Accepted>>;

fn accept(runtime: &Runtime, invocation: Invocation, pending: &Pending, leases: &Leases) {
    let job = format!("{}-{}", invocation.executor_id, invocation.job_id);
    let lease = JobKeys::new(&invocation.executor_id, invocation.job_id).host_lease();
    match io_runtime().block_on(runtime.accept(invocation.clone())) {
        Ok(accepted) => {
            leases.add(lease, accepted.watch_remaining());
            crate::job::lock(pending).push(accepted)
        }
        Err(refusal) => {
            eprintln!("quelea host: job {job} refused: {}", refusal.message);
            runtime.fail_calls(&invocation, "InvocationRefused", &refusal.message);
        }
    }
}

fn read_step(input: &mut impl Read) -> Result<Option<HostStep>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(host_error(e)),
    }
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    input.read_exact(&mut body).map_err(host_error)?;
    serde_json::from_slice(&body).map(Some).map_err(host_error)
}

fn host_error(e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument {
        name: "detach",
        message: format!("unreadable input from the client: {e}"),
    }
}

/// Follows the map job through storage and, once every map call succeeded,
/// runs the reduce calls on their results; otherwise fails the reduce calls
/// with the reason, as an attached reducer would.
#[allow(clippy::too_many_arguments)]
fn run_reduce(
    runtime: &Runtime,
    storage: &Storage,
    map: JobSpec,
    reduce: JobSpec,
    groups: Vec<Range<u32>>,
    deadline_ts: f64,
    pending: &Pending,
    leases: &Leases,
) {
    let keys = JobKeys::new(&map.executor_id, map.job_id);
    // The reduce's lease is kept while the map runs (its client wrote the
    // first one); `accept` then keeps it with the reduce calls.
    let (waiting, remaining) = tokio::sync::watch::channel(1usize);
    leases.add(
        JobKeys::new(&reduce.executor_id, reduce.job_id).host_lease(),
        remaining,
    );
    struct Waited(tokio::sync::watch::Sender<usize>);
    impl Drop for Waited {
        fn drop(&mut self) {
            let _ = self.0.send(0);
        }
    }
    let _waited = Waited(waiting);
    let runner = reduce.function.runner;
    let map_job = Arc::new(JobState::new(
        map,
        keys,
        Arc::new(Notifier::default()),
        CallState::Invoked,
    ));
    let invocation = |calls: Vec<InvokedCall>| Invocation {
        push: None,
        // The host's reduce is not retried (its client resubmits only what
        // it sent itself).
        retry_on: Vec::new(),
        ..Invocation::of_job(&reduce, calls, 0)
    };
    let fail = |message: String| {
        let calls = (0..groups.len() as u32)
            .map(|i| InvokedCall {
                call_id: CallId(i),
                count: 1,
                input: CallInput::Inline(bytes::Bytes::new()),
                select: None,
            })
            .collect();
        runtime.fail_calls(&invocation(calls), "ReduceNotRun", &message);
    };
    if let Err(e) = crate::monitor::follow(&map_job, storage.clone(), deadline_ts, true, None) {
        return fail(format!("cannot follow the map job: {e}"));
    }
    let whole = FuturesList::<()>::for_job(&map_job);
    if let Err(e) = wait_calls(&whole.parts, ReturnWhen::AllCompleted, None) {
        return fail(format!("the map job did not finish: {e}"));
    }
    let inputs = match crate::executor::reduce_inputs(&map_job, runner, &groups) {
        Ok(inputs) => inputs,
        Err((message, _)) => return fail(message),
    };
    let calls = inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| InvokedCall {
            call_id: CallId(i as u32),
            count: 1,
            input: CallInput::Inline(input.into()),
            select: None,
        })
        .collect();
    accept(runtime, invocation(calls), pending, leases);
}
