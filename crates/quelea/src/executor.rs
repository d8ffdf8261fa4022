//! The client executor: creates jobs, hands them to the backend, and waits
//! for and reads their results.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use quelea_core::config::{auto_chunksize, BackendKind, Config, MAX_RETRIES};
use quelea_core::ids::{CallId, ExecutorId, JobId, JobKind};
use quelea_core::keys::{self, JobKeys};
use quelea_core::model::{
    now_ts, CallError, CallState, FailureReason, FunctionSpec, JobSpec, RunnerKind,
};
use quelea_core::protocol::{CallInput, Invocation, InvokedCall};
use quelea_core::retry::RetryPolicy;
use quelea_storage::Storage;
use quelea_worker::pool::{ForkedRunner, RunnerCommand};
use quelea_worker::runner_protocol::encode_batch_input;
use quelea_worker::rust_runner::FunctionRef;

use crate::backend::{Backend, Submission};
use crate::detached::{Host, HostStep};
use crate::error::{Error, Result};
use crate::future::{wait_calls, FuturesList, ResponseFuture, ReturnWhen};
use crate::handle::JobHandle;
use crate::job::{lock, JobState, Notifier, Piece};
use crate::monitor::PushFollow;
use crate::objects::{partition, ChunkObject, ObjOptions};
use crate::push::Subscription;
use crate::retry::Retrier;

mod feed;
pub use feed::{InputFeed, Parts, FIRST_PART_BYTES, MAX_PART_BYTES, MAX_PART_CALLS};

/// Per-job options; unset fields take the executor's config.
#[derive(Clone, Debug, Default)]
pub struct MapOptions {
    /// Map elements per runner call (a batch: one runner runs them one after
    /// another, each with its own outcome). Unset: `execution.chunksize`,
    /// else automatic (see [`Executor::chunksize_for`]).
    pub chunksize: Option<u32>,
    /// Per-call time limit.
    pub timeout: Option<Duration>,
    /// Runner memory limit while a call of this job runs, in MiB.
    pub memory_limit_mb: Option<u64>,
    /// Run the job so that it outlives this executor and its process (see
    /// `crate::detached`): on the local backend in a host process of its
    /// own; remote backends' jobs are left running when the executor goes.
    pub detach: bool,
    /// How many times a failed call runs again (see `crate::retry`).
    /// Unset: `execution.retries`.
    pub retries: Option<u32>,
    /// Also retry calls whose function failed (user errors). Unset:
    /// `execution.retry_user_errors`.
    pub retry_user_errors: Option<bool>,
}

impl MapOptions {
    pub fn chunksize(mut self, chunksize: u32) -> Self {
        self.chunksize = Some(chunksize);
        self
    }
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
    pub fn memory_limit_mb(mut self, mb: u64) -> Self {
        self.memory_limit_mb = Some(mb);
        self
    }
    pub fn detach(mut self, detach: bool) -> Self {
        self.detach = detach;
        self
    }
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = Some(retries);
        self
    }
    pub fn retry_user_errors(mut self, retry: bool) -> Self {
        self.retry_user_errors = Some(retry);
        self
    }
}

/// `(done, not_done)` futures, as `wait` returns them.
pub type DoneAndPending<O> = (Vec<ResponseFuture<O>>, Vec<ResponseFuture<O>>);

/// Builds an [`Executor`].
#[derive(Default)]
pub struct ExecutorBuilder {
    config: Option<Config>,
    runners: HashMap<RunnerKind, RunnerCommand>,
    host: Option<RunnerCommand>,
}

impl ExecutorBuilder {
    /// Use this resolved config instead of loading one.
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// How to start runners for one kind of function (Rust defaults to
    /// this executable; Python has no default here).
    pub fn runner(mut self, kind: RunnerKind, command: RunnerCommand) -> Self {
        self.runners.insert(kind, command);
        self
    }

    /// How to start the host of detached jobs (default: this executable,
    /// which must call [`crate::serve_if_runner`] first thing).
    pub fn host(mut self, command: RunnerCommand) -> Self {
        self.host = Some(command);
        self
    }

    pub fn build(self) -> Result<Executor> {
        let config = match self.config {
            Some(config) => config,
            None => Config::load()?,
        };
        let storage = Storage::from_config(&config)?;
        let mut host_runners = self.runners.clone();
        if let std::collections::hash_map::Entry::Vacant(entry) =
            host_runners.entry(RunnerKind::Rust)
        {
            if let Ok(exe) = RunnerCommand::current_exe() {
                entry.insert(exe);
            }
        }
        let host_command = self.host.or_else(|| {
            RunnerCommand::current_exe().ok().map(|mut c| {
                c.env.clear();
                c
            })
        });
        let backend = Backend::new(&config, &storage, self.runners)?;
        Ok(Executor {
            inner: Arc::new_cyclic(|me| Inner {
                me: me.clone(),
                id: ExecutorId::next(),
                config,
                storage,
                backend,
                notifier: Arc::new(Notifier::default()),
                job_counter: AtomicU32::new(0),
                stored_functions: Mutex::new(HashSet::new()),
                jobs: Mutex::new(Vec::new()),
                reducers: Mutex::new(Vec::new()),
                host: Mutex::new(None),
                host_command,
                host_runners,
            }),
        })
    }
}

struct Inner {
    /// Itself, for the retry drivers of its jobs (which must not keep it).
    me: Weak<Inner>,
    id: ExecutorId,
    config: Config,
    storage: Storage,
    backend: Backend,
    notifier: Arc<Notifier>,
    job_counter: AtomicU32,
    stored_functions: Mutex<HashSet<String>>,
    /// This executor's jobs until cleaned. Weak: the futures keep a job's
    /// records, not the executor, so a long session's memory stays flat.
    jobs: Mutex<Vec<JobEntry>>,
    reducers: Mutex<Vec<JoinHandle<()>>>,
    /// The host of this executor's detached local jobs, once there is one.
    host: Mutex<Option<Host>>,
    host_command: Option<RunnerCommand>,
    host_runners: HashMap<RunnerKind, RunnerCommand>,
}

/// A job as the executor remembers it: enough to cancel it while anyone
/// holds it, and to delete its objects once nobody can read them.
struct JobEntry {
    job: Weak<JobState>,
    prefix: String,
    /// Detached, or its handle was given out: another process may read it.
    kept: Arc<AtomicBool>,
}

impl JobEntry {
    /// Nobody holds the job any more, it is finished (its records went with
    /// its last holder: a running job is held by its backend), and no other
    /// process can want it: its objects can go.
    fn is_forgotten(&self) -> bool {
        self.job.strong_count() == 0 && !self.kept.load(Ordering::Acquire)
    }
}

/// Forgotten jobs swept at once: fewer, larger deletions keep submits cheap.
const SWEEP_AFTER: usize = 16;

/// Runs functions on the configured backend. Dropping it stops its runners
/// and, with `execution.data_cleaner`, deletes its finished jobs' objects.
pub struct Executor {
    inner: Arc<Inner>,
}

/// A function as the executor ships it: an opaque payload for runners of
/// one kind (a Rust function's name; a cloudpickled Python function).
#[derive(Clone, Debug)]
pub struct RawFunction {
    spec: FunctionSpec,
    payload: Vec<u8>,
}

impl RawFunction {
    pub fn new(runner: RunnerKind, name: &str, payload: Vec<u8>) -> Self {
        RawFunction {
            spec: FunctionSpec {
                runner,
                name: name.to_owned(),
                hash: content_hash(runner, &payload),
            },
            payload,
        }
    }

    fn rust(name: &str) -> Self {
        Self::new(RunnerKind::Rust, name, name.as_bytes().to_vec())
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }
}

/// A detached job's inputs go to its host inside the Invocation only up to
/// this much in all; beyond, through the job's data object.
const HOST_INLINE_BYTES: usize = 16 << 20;

/// Marks futures whose results stay serialized bytes (front ends that
/// decode results themselves, such as the Python package).
pub enum Raw {}

/// A job's inputs grouped into runner calls: `chunksize` consecutive
/// elements per call (the last may have fewer), each call's input encoding
/// all of its elements (a single element's input when it has one).
#[derive(Clone, Debug)]
pub struct Batches {
    pub chunksize: u32,
    /// Elements in all.
    pub total: u32,
    /// One input per runner call, in order.
    pub inputs: Vec<bytes::Bytes>,
}

impl Batches {
    /// Per-element inputs, grouped `chunksize` to a call in the engine's
    /// framing (`runner_protocol::encode_batch_input`), which every runner reads.
    pub fn framed(inputs: Vec<impl Into<bytes::Bytes>>, chunksize: u32) -> Result<Batches> {
        let total = element_count(inputs.len())?;
        let chunksize = chunksize.max(1);
        let inputs: Vec<bytes::Bytes> = inputs.into_iter().map(Into::into).collect();
        let inputs = if chunksize == 1 {
            inputs
        } else {
            inputs
                .chunks(chunksize as usize)
                .map(|batch| match batch {
                    [one] => one.clone(),
                    many => encode_batch_input(many.iter().map(|b| &b[..])).into(),
                })
                .collect()
        };
        Ok(Batches {
            chunksize,
            total,
            inputs,
        })
    }

    /// How many elements runner call `i` holds.
    pub fn count(&self, i: usize) -> u32 {
        let first = i as u64 * u64::from(self.chunksize);
        (u64::from(self.total) - first).min(u64::from(self.chunksize)) as u32
    }

    fn check(&self) -> Result<()> {
        let expected = self.total.div_ceil(self.chunksize.max(1)) as usize;
        if self.chunksize == 0 || self.inputs.len() != expected {
            return Err(Error::InvalidArgument {
                name: "inputs",
                message: format!(
                    "{} elements {} to a call make {expected} calls, but {} inputs were given",
                    self.total,
                    self.chunksize,
                    self.inputs.len()
                ),
            });
        }
        Ok(())
    }
}

fn element_count(n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::InvalidArgument {
        name: "inputs",
        message: format!("{n} calls is more than one job can hold ({})", u32::MAX),
    })
}

fn content_hash(kind: RunnerKind, payload: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!("{kind:?}:").as_bytes());
    hasher.update(payload);
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn serialize_input<T: Serialize>(value: &T, index: usize) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Serialize {
        what: format!("input {index} (`{}`)", std::any::type_name::<T>()),
        message: e.to_string(),
    })
}

impl Executor {
    /// An executor on the config from file and environment.
    pub fn new() -> Result<Executor> {
        Self::builder().build()
    }

    pub fn with_config(config: Config) -> Result<Executor> {
        Self::builder().config(config).build()
    }

    pub fn builder() -> ExecutorBuilder {
        ExecutorBuilder::default()
    }

    pub fn id(&self) -> &ExecutorId {
        &self.inner.id
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn storage(&self) -> &Storage {
        &self.inner.storage
    }

    /// The pids of the running runner processes (none for remote backends).
    pub fn runner_pids(&self) -> Vec<u32> {
        self.inner
            .backend
            .local()
            .map(|local| local.runner_pids())
            .unwrap_or_default()
    }

    /// The pid of the host running this executor's detached local jobs, once
    /// there is one.
    pub fn host_pid(&self) -> Option<u32> {
        lock(&self.inner.host).as_ref().map(Host::pid)
    }

    /// Deletes every object of the job behind `handle` (a detached job's
    /// last reader cleans it), and its executor's functions once no other
    /// job of that executor is left; returns how many.
    pub fn clean_job(&self, handle: &JobHandle) -> Result<usize> {
        if handle.storage != *self.inner.storage.location() {
            return Err(Error::Handle(
                "the job's objects are in another storage than this executor's".into(),
            ));
        }
        // Not this executor's own functions: it may submit more (and
        // remembers which functions it stored).
        crate::monitor::delete_job(
            &self.inner.storage,
            handle,
            handle.executor_id == self.inner.id,
        )
    }

    /// Starts the Rust runner pool now instead of on the first job (remote
    /// backends' servers start their own).
    /// Starts the local runners of `kind` in the background (a no-op on
    /// remote backends): the first map need not wait for them to start.
    pub fn prestart(&self, kind: RunnerKind) {
        self.prestart_adopting(kind, Vec::new());
    }

    /// [`Executor::prestart`], the first runners being `forked` ones that
    /// this process forked itself (see [`ForkedRunner`]); on a remote
    /// backend, or when the runners had started already, those are ended.
    pub fn prestart_adopting(&self, kind: RunnerKind, forked: Vec<ForkedRunner>) {
        if let Some(local) = self.inner.backend.local() {
            local.prestart(kind, forked);
        }
    }

    pub fn warm_up(&self) -> Result<()> {
        match self.inner.backend.local() {
            Some(local) => local.warm_up(RunnerKind::Rust),
            None => Ok(()),
        }
    }

    /// Runs one call.
    pub fn call_async<I: Serialize, O>(
        &self,
        function: &FunctionRef<I, O>,
        input: I,
        options: MapOptions,
    ) -> Result<ResponseFuture<O>> {
        let inputs = vec![serialize_input(&input, 0)?];
        let job = self.submit_job(
            JobKind::CallAsync,
            RawFunction::rust(function.name()),
            self.batches(inputs, &options)?,
            &options,
        )?;
        Ok(ResponseFuture::new(job, CallId(0)))
    }

    /// Runs one call per input, in parallel. The inputs are serialized and
    /// sent a part at a time: the first calls run while the rest are
    /// serialized (see [`InputFeed`]).
    pub fn map<I: Serialize, O>(
        &self,
        function: &FunctionRef<I, O>,
        inputs: impl IntoIterator<Item = I>,
        options: MapOptions,
    ) -> Result<FuturesList<O>> {
        let inputs: Vec<I> = inputs.into_iter().collect();
        let job = self.submit_serialized(function.name(), &inputs, serialize_input, &options)?;
        Ok(FuturesList::for_job(&job))
    }

    /// Like [`Executor::map`], handing every call `(input, extra_args)`.
    pub fn map_with_extra<I: Serialize, E: Serialize, O>(
        &self,
        function: &FunctionRef<(I, E), O>,
        inputs: impl IntoIterator<Item = I>,
        extra_args: E,
        options: MapOptions,
    ) -> Result<FuturesList<O>> {
        let inputs: Vec<I> = inputs.into_iter().collect();
        let serialize = |input: &I, i| serialize_input(&(input, &extra_args), i);
        let job = self.submit_serialized(function.name(), &inputs, serialize, &options)?;
        Ok(FuturesList::for_job(&job))
    }

    /// A map of a Rust function whose elements are serialized into its
    /// feed a part at a time (a failure stops the job, see [`InputFeed`]).
    fn submit_serialized<T>(
        &self,
        name: &str,
        elements: &[T],
        serialize: impl Fn(&T, usize) -> Result<Vec<u8>>,
        options: &MapOptions,
    ) -> Result<Arc<JobState>> {
        let total = element_count(elements.len())?;
        let chunksize = self.chunksize_for(elements.len(), options);
        if chunksize == 0 {
            return Err(Error::InvalidArgument {
                name: "chunksize",
                message: "must be at least 1".into(),
            });
        }
        let mut feed = self.feed_job(
            JobKind::Map,
            RawFunction::rust(name),
            total,
            chunksize,
            options,
        )?;
        let mut parts = feed::Parts::default();
        for (c, batch) in elements.chunks(chunksize as usize).enumerate() {
            let first = c * chunksize as usize;
            let input = match batch {
                [one] => serialize(one, first)?,
                many => {
                    let each = many
                        .iter()
                        .enumerate()
                        .map(|(i, e)| serialize(e, first + i))
                        .collect::<Result<Vec<_>>>()?;
                    encode_batch_input(each.iter().map(Vec::as_slice))
                }
            };
            if let Some(part) = parts.push(input.into()) {
                feed.send(part)?;
            }
        }
        feed.send(parts.rest())?;
        let job = feed.job().clone();
        feed.finish()?;
        Ok(job)
    }

    /// Maps, then runs `reducer` once on all map results in call order. The
    /// reduce starts by itself when the map is done; this returns at once.
    pub fn map_reduce<I: Serialize, O, R>(
        &self,
        map_function: &FunctionRef<I, O>,
        inputs: impl IntoIterator<Item = I>,
        reducer: &FunctionRef<Vec<O>, R>,
        options: MapOptions,
    ) -> Result<ResponseFuture<R>> {
        let inputs = inputs
            .into_iter()
            .enumerate()
            .map(|(i, input)| serialize_input(&input, i))
            .collect::<Result<Vec<_>>>()?;
        let inputs = self.batches(inputs, &options)?;
        let (_, reduce) = self.map_reduce_raw(
            &RawFunction::rust(map_function.name()),
            inputs,
            &RawFunction::rust(reducer.name()),
            options,
        )?;
        Ok(ResponseFuture::new(reduce.job, reduce.call))
    }

    /// Map elements per runner call for a map of `total` elements: the
    /// option, else `execution.chunksize`, else automatic: on the local
    /// backend, with no per-job timeout or memory limit, a map of
    /// [`quelea_core::config::AUTO_CHUNK_MIN`] elements or more gets `multiprocessing.Pool.map`'s
    /// about four calls per runner; else one element per call.
    pub fn chunksize_for(&self, total: usize, options: &MapOptions) -> u32 {
        let config = &self.inner.config;
        if let Some(k) = options.chunksize.or(config.execution.chunksize) {
            return k;
        }
        let local = matches!(config.backend, BackendKind::Local);
        if !local || options.timeout.is_some() || options.memory_limit_mb.is_some() {
            return 1;
        }
        auto_chunksize(
            u32::try_from(total).unwrap_or(u32::MAX),
            config.local_workers(),
        )
    }

    /// Per-element inputs grouped as [`Self::chunksize_for`] says.
    pub fn batches(
        &self,
        inputs: Vec<impl Into<bytes::Bytes>>,
        options: &MapOptions,
    ) -> Result<Batches> {
        let chunksize = self.chunksize_for(inputs.len(), options);
        if chunksize == 0 {
            return Err(Error::InvalidArgument {
                name: "chunksize",
                message: "must be at least 1".into(),
            });
        }
        Batches::framed(inputs, chunksize)
    }

    /// Runs calls of an opaque function on serialized inputs, grouped into
    /// runner calls by the front end (see [`Batches`]).
    pub fn submit_raw(
        &self,
        kind: JobKind,
        function: &RawFunction,
        inputs: Batches,
        options: &MapOptions,
    ) -> Result<FuturesList<Raw>> {
        if kind == JobKind::Reduce {
            return Err(Error::InvalidArgument {
                name: "kind",
                message: "reduce jobs are created by map_reduce".into(),
            });
        }
        let job = self.submit_job(kind, function.clone(), inputs, options)?;
        Ok(FuturesList::for_job(&job))
    }

    /// The map and the reduce future of a map-reduce of opaque functions.
    /// The reducer's input combines the map results in call order: a JSON
    /// array for Rust runners, a framed list of pickles for Python runners.
    pub fn map_reduce_raw(
        &self,
        map_function: &RawFunction,
        inputs: Batches,
        reducer: &RawFunction,
        options: MapOptions,
    ) -> Result<(FuturesList<Raw>, ResponseFuture<Raw>)> {
        let all = 0..inputs.total;
        let (map, reduce) =
            self.map_reduce_grouped_raw(map_function, inputs, reducer, options, vec![all])?;
        let reduce = reduce.get(0).expect("one group, one reduce call");
        Ok((map, reduce))
    }

    /// A map-reduce with one reduce call per group of consecutive map calls
    /// (one reducer per input object, for instance).
    pub fn map_reduce_grouped_raw(
        &self,
        map_function: &RawFunction,
        inputs: Batches,
        reducer: &RawFunction,
        options: MapOptions,
        groups: Vec<Range<u32>>,
    ) -> Result<(FuturesList<Raw>, FuturesList<Raw>)> {
        let total = inputs.total;
        let mut expected = 0;
        for group in &groups {
            if group.start != expected || group.end < group.start || group.end > total {
                return Err(Error::InvalidArgument {
                    name: "groups",
                    message: format!(
                        "reduce groups must cover calls 0..{total} in order, got {groups:?}"
                    ),
                });
            }
            expected = group.end;
        }
        if expected != total || groups.is_empty() {
            return Err(Error::InvalidArgument {
                name: "groups",
                message: format!(
                    "reduce groups must cover calls 0..{total} in order, got {groups:?}"
                ),
            });
        }
        let map_job = self.submit_job(JobKind::Map, map_function.clone(), inputs, &options)?;
        let reduce_id = map_job.spec.job_id.reduce_of();
        let reduce_job =
            self.create_job(reduce_id, &reducer.spec, groups.len() as u32, 1, &options)?;
        if self.inner.detached_locally(&options) {
            // The host runs the reduce once the map is done, so it happens
            // even when this process is gone by then.
            reduce_job.mark_detached();
            self.inner
                .launch_detached_reduce(&map_job, &reduce_job, reducer, groups)?;
            return Ok((
                FuturesList::for_job(&map_job),
                FuturesList::for_job(&reduce_job),
            ));
        }
        let weak = Arc::downgrade(&self.inner);
        let (map, job, function) = (map_job.clone(), reduce_job.clone(), reducer.clone());
        let thread = std::thread::Builder::new()
            .name(format!("quelea-reduce-{reduce_id}"))
            .spawn(move || run_reducer(weak, map, job, function, groups))
            .map_err(|e| Error::InvalidArgument {
                name: "map_reduce",
                message: format!("cannot start the reducer thread: {e}"),
            })?;
        lock(&self.inner.reducers).push(thread);
        Ok((
            FuturesList::for_job(&map_job),
            FuturesList::for_job(&reduce_job),
        ))
    }

    /// Runs `function` once per chunk of the data the inputs name (see
    /// [`crate::objects`]).
    pub fn map_objects<O>(
        &self,
        function: &FunctionRef<ChunkObject, O>,
        inputs: impl IntoIterator<Item = impl Into<String>>,
        obj: &ObjOptions,
        options: MapOptions,
    ) -> Result<FuturesList<O>> {
        let inputs: Vec<String> = inputs.into_iter().map(Into::into).collect();
        let (chunks, _) = partition(&self.inner.config, &inputs, obj)?;
        self.map(function, chunks, options)
    }

    /// Maps over chunks, then reduces: once over all results, or with
    /// `reduce_by_key`, once per input object (its chunks' results in order).
    pub fn map_reduce_objects<O, R>(
        &self,
        function: &FunctionRef<ChunkObject, O>,
        inputs: impl IntoIterator<Item = impl Into<String>>,
        reducer: &FunctionRef<Vec<O>, R>,
        obj: &ObjOptions,
        reduce_by_key: bool,
        options: MapOptions,
    ) -> Result<FuturesList<R>> {
        let inputs: Vec<String> = inputs.into_iter().map(Into::into).collect();
        let (chunks, parts) = partition(&self.inner.config, &inputs, obj)?;
        let groups = if reduce_by_key {
            groups_of(&parts)
        } else {
            std::iter::once(0..chunks.len() as u32).collect()
        };
        let inputs = chunks
            .iter()
            .enumerate()
            .map(|(i, chunk)| serialize_input(chunk, i))
            .collect::<Result<Vec<_>>>()?;
        let inputs = self.batches(inputs, &options)?;
        let (_, reduce) = self.map_reduce_grouped_raw(
            &RawFunction::rust(function.name()),
            inputs,
            &RawFunction::rust(reducer.name()),
            options,
            groups,
        )?;
        Ok(reduce
            .into_iter()
            .map(|f| ResponseFuture::new(f.job, f.call))
            .collect())
    }

    /// Waits on futures; returns `(done, not_done)`.
    pub fn wait<O>(
        &self,
        futures: &FuturesList<O>,
        return_when: ReturnWhen,
        timeout: Option<Duration>,
    ) -> Result<DoneAndPending<O>> {
        wait(futures, return_when, timeout)
    }

    /// Waits for every call and returns the results in call order; the first
    /// failed call (by call order) is returned as [`Error::CallFailed`] with
    /// its remote message and traceback.
    pub fn get_result<O: DeserializeOwned>(
        &self,
        futures: &FuturesList<O>,
        timeout: Option<Duration>,
    ) -> Result<Vec<O>> {
        get_result(futures, timeout)
    }

    /// A handle another process can attach to (see [`crate::attach`]).
    pub fn job_handle<O>(&self, future: &ResponseFuture<O>) -> JobHandle {
        // Another process may follow the job: its objects stay until clean,
        // and large results this process held go to storage.
        if !future.job.is_kept() {
            future.job.keep();
            if self.inner.backend.local().is_some() {
                self.inner.store_held_results(&future.job);
            }
        }
        let spec = &future.job.spec;
        JobHandle {
            version: JobHandle::VERSION,
            storage: self.inner.storage.location().clone(),
            executor_id: spec.executor_id.clone(),
            job_id: spec.job_id,
            total_calls: spec.total_calls,
            deadline_ts: self.inner.deadline_ts(spec),
        }
    }

    /// Cancels the jobs of these futures: queued calls never run, running
    /// ones are stopped; all of them end as cancelled.
    pub fn cancel<O>(&self, futures: &FuturesList<O>) -> Result<()> {
        let mut seen: Vec<*const JobState> = Vec::new();
        for part in &futures.parts {
            let ptr = Arc::as_ptr(&part.job);
            if seen.contains(&ptr) {
                continue;
            }
            seen.push(ptr);
            part.job.cancel("cancelled by the client");
            part.job.run_cancel_hook();
            self.inner
                .storage
                .put_blocking(&part.job.keys.cancelled(), Vec::new())?;
        }
        Ok(())
    }

    /// Deletes the objects of this executor's finished jobs; returns how many.
    pub fn clean(&self) -> Result<usize> {
        self.inner.clean()
    }

    /// Waits until every status so far is in storage.
    pub fn flush_statuses(&self) -> Result<()> {
        let errors = self.inner.flush_statuses();
        match errors.first() {
            None => Ok(()),
            Some(first) => Err(Error::InvalidArgument {
                name: "storage",
                message: format!("{} status write(s) failed; first: {first}", errors.len()),
            }),
        }
    }

    /// One summary per job of `futures`: calls, outcomes, timing, and for
    /// `aws_lambda` jobs GB-seconds and an estimated price.
    pub fn job_summary<O>(&self, futures: &FuturesList<O>) -> Vec<crate::summary::JobSummary> {
        crate::summary::job_summary(self.config(), futures)
    }

    /// See [`crate::summary::lambda_cost`].
    pub fn lambda_cost<O>(&self, futures: &FuturesList<O>) -> Option<crate::summary::LambdaCost> {
        crate::summary::lambda_cost(self.config(), futures)
    }

    /// Where this executor's job objects live.
    pub fn storage_prefix(&self) -> String {
        keys::executor_prefix(&self.inner.id)
    }

    fn create_job(
        &self,
        job_id: JobId,
        function: &FunctionSpec,
        total_calls: u32,
        chunksize: u32,
        options: &MapOptions,
    ) -> Result<Arc<JobState>> {
        let config = &self.inner.config;
        if total_calls == 0 {
            return Err(Error::InvalidArgument {
                name: "inputs",
                message: "there is nothing to map: the input list is empty".into(),
            });
        }
        let timeout_s = options
            .timeout
            .map(|t| t.as_secs_f64())
            .unwrap_or(config.execution.timeout);
        if !(timeout_s.is_finite() && timeout_s > 0.0) {
            return Err(Error::InvalidArgument {
                name: "timeout",
                message: format!("must be a positive duration, got {timeout_s} s"),
            });
        }
        if chunksize == 0 {
            return Err(Error::InvalidArgument {
                name: "chunksize",
                message: "must be at least 1".into(),
            });
        }
        let memory_limit_mb = options.memory_limit_mb.or(config.execution.memory_limit_mb);
        if memory_limit_mb == Some(0) {
            return Err(Error::InvalidArgument {
                name: "memory_limit_mb",
                message: "must be at least 1".into(),
            });
        }
        let retries = options.retries.unwrap_or(config.execution.retries);
        if retries > MAX_RETRIES {
            return Err(Error::InvalidArgument {
                name: "retries",
                message: format!("must be between 0 and {MAX_RETRIES}, got {retries}"),
            });
        }
        let retry = RetryPolicy {
            retries,
            user_errors: options
                .retry_user_errors
                .unwrap_or(config.execution.retry_user_errors),
        };
        let spec = JobSpec {
            retry,
            executor_id: self.inner.id.clone(),
            job_id,
            function: function.clone(),
            total_calls,
            chunksize,
            timeout_s,
            memory_limit_mb,
            submit_ts: now_ts(),
            // The local backend hears its calls directly: push is for remote ones.
            push: match config.backend {
                BackendKind::Local => None,
                BackendKind::Http | BackendKind::AwsLambda => {
                    crate::push::channel_for(config, &self.inner.id, job_id)
                }
            },
        };
        let keys = JobKeys::new(&self.inner.id, job_id);
        let job = Arc::new(JobState::new(
            spec,
            keys,
            self.inner.notifier.clone(),
            CallState::New,
        ));
        self.inner.remember(&job);
        Ok(job)
    }

    fn submit_job(
        &self,
        kind: JobKind,
        function: RawFunction,
        inputs: Batches,
        options: &MapOptions,
    ) -> Result<Arc<JobState>> {
        inputs.check()?;
        let mut feed = self.feed_job(kind, function, inputs.total, inputs.chunksize, options)?;
        feed.send(inputs.inputs)?;
        let job = feed.job().clone();
        feed.finish()?;
        Ok(job)
    }

    /// Creates a job of `total` elements, `chunksize` to a runner call,
    /// whose calls' inputs the front end gives through the returned feed as
    /// it encodes them (see [`InputFeed`]); the futures are ready at once.
    pub fn submit_fed(
        &self,
        kind: JobKind,
        function: &RawFunction,
        total: u32,
        chunksize: u32,
        options: &MapOptions,
    ) -> Result<(FuturesList<Raw>, InputFeed)> {
        if kind == JobKind::Reduce {
            return Err(Error::InvalidArgument {
                name: "kind",
                message: "reduce jobs are created by map_reduce".into(),
            });
        }
        let feed = self.feed_job(kind, function.clone(), total, chunksize, options)?;
        Ok((FuturesList::for_job(feed.job()), feed))
    }

    fn feed_job(
        &self,
        kind: JobKind,
        function: RawFunction,
        total: u32,
        chunksize: u32,
        options: &MapOptions,
    ) -> Result<InputFeed> {
        let job_id = JobId::new(kind, self.inner.job_counter.fetch_add(1, Ordering::Relaxed));
        let job = self.create_job(job_id, &function.spec, total, chunksize, options)?;
        if options.detach {
            job.mark_detached();
        }
        Ok(InputFeed::new(
            Arc::downgrade(&self.inner),
            job,
            function,
            self.inner.detached_locally(options),
        ))
    }
}

impl Inner {
    /// When a job's unfinished calls are failed as lost: every call's
    /// timeout for each round of calls the backend runs at once (each
    /// attempt a round of its own), plus a minute.
    fn deadline_ts(&self, spec: &JobSpec) -> f64 {
        let rounds = spec
            .total_calls
            .div_ceil(self.backend.capacity(&self.config).max(1)) as f64;
        let attempts = f64::from(spec.retry.retries) + 1.0;
        spec.submit_ts + spec.timeout_s * (rounds + attempts - 1.0) + 60.0
    }

    /// Statuses this process writes itself (the local backend's) are in
    /// storage once this returns; the errors met since the last flush.
    fn flush_statuses(&self) -> Vec<String> {
        self.backend
            .local()
            .map(|local| local.flush())
            .unwrap_or_default()
    }

    /// Whether a job with these options runs in the detached-job host.
    fn detached_locally(&self, options: &MapOptions) -> bool {
        options.detach && self.backend.local().is_some()
    }

    /// Stores a function payload once per content.
    fn store_function(&self, function: &RawFunction) -> Result<()> {
        if lock(&self.stored_functions).insert(function.spec.hash.clone()) {
            let key = keys::function(&self.id, &function.spec.hash);
            if let Err(e) = self.storage.put_blocking(&key, function.payload.clone()) {
                lock(&self.stored_functions).remove(&function.spec.hash);
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Hands a step to the detached-job host, starting it first if needed.
    /// The jobs of `leases` (their lease keys) get a first lease in the
    /// host's name before the host has the step: a host that dies before it
    /// takes the job (and writes the lease itself) leaves a lease that goes
    /// stale, so followers learn it is gone instead of waiting for nothing.
    fn host_send(&self, step: &HostStep, leases: &[String]) -> Result<()> {
        let mut host = lock(&self.host);
        if host.is_none() {
            let command = self
                .host_command
                .as_ref()
                .ok_or_else(|| Error::InvalidArgument {
                    name: "detach",
                    message:
                        "no command to start a detached-job host with (this executable is unknown)"
                            .into(),
                })?;
            *host = Some(Host::start(command, &self.config, &self.host_runners)?);
        }
        let host = host.as_mut().expect("started above");
        for key in leases {
            crate::detached::write_first_lease(&self.storage, key, host.pid())?;
        }
        host.send(step)
    }

    /// A detached map-reduce's reduce: its function and spec go to storage
    /// (so that any process can attach to it), and the host is told to run
    /// it once the map is done; this process follows it through storage.
    fn launch_detached_reduce(
        &self,
        map_job: &Arc<JobState>,
        reduce_job: &Arc<JobState>,
        reducer: &RawFunction,
        groups: Vec<Range<u32>>,
    ) -> Result<()> {
        self.store_function(reducer)?;
        self.storage.put_blocking(
            &reduce_job.keys.spec(),
            serde_json::to_vec(&reduce_job.spec).expect("job specs serialize"),
        )?;
        let deadline_ts = self
            .deadline_ts(&map_job.spec)
            .max(self.deadline_ts(&reduce_job.spec));
        self.host_send(
            &HostStep::Reduce {
                map: Box::new(map_job.spec.clone()),
                reduce: Box::new(reduce_job.spec.clone()),
                groups,
                deadline_ts,
            },
            &[reduce_job.keys.host_lease()],
        )?;
        crate::monitor::follow(reduce_job, self.storage.clone(), deadline_ts, true, None)
    }

    /// Hands a job all of its runner calls' inputs at once (see [`InputFeed`]).
    fn launch(
        &self,
        job: &Arc<JobState>,
        function: &RawFunction,
        inputs: Vec<bytes::Bytes>,
        detached: bool,
    ) -> Result<()> {
        let mut feed = InputFeed::new(self.me.clone(), job.clone(), function.clone(), detached);
        feed.send(inputs)?;
        feed.finish()
    }

    /// Whether a job's calls run in this process's own runtime, which takes
    /// their inputs as they are given: nothing else reads a job's inputs, so
    /// they never touch storage (one copy fewer, no write before the first
    /// call), and a job's first calls run while the rest are being encoded.
    fn in_process(&self, detached: bool) -> bool {
        !detached && self.backend.local().is_some()
    }

    /// What every reader of a job needs before its first call: its function
    /// and its spec, in storage.
    fn store_job(&self, job: &JobState, function: &RawFunction) -> Result<()> {
        self.store_function(function)?;
        self.storage.put_blocking(
            &job.keys.spec(),
            serde_json::to_vec(&job.spec).expect("job specs serialize"),
        )?;
        Ok(())
    }

    /// Hands runner calls `first_call..` of a job to this process's runtime
    /// (see [`Self::in_process`]), the first part with the job's objects.
    fn send_in_process(
        &self,
        job: &Arc<JobState>,
        function: &RawFunction,
        first_call: u32,
        inputs: Vec<bytes::Bytes>,
        retrier: &mut Option<Arc<Retrier>>,
    ) -> Result<()> {
        let spec = &job.spec;
        let calls = invoked_calls(spec, first_call, inputs.into_iter().map(CallInput::Inline));
        let elements = calls.first().map_or(0, |c| c.call_id.0)
            ..calls.last().map_or(0, |c| c.call_id.0 + c.count);
        if first_call == 0 {
            self.store_job(job, function)?;
            if !spec.retry.is_none() {
                *retrier = Some(self.arm_retries(job, function, &calls, None, false));
            }
            job.mark_invoked(elements);
            return self.backend.submit(Submission {
                job,
                function_payload: &function.payload,
                calls,
                data: None,
                storage: &self.storage,
                deadline_ts: self.deadline_ts(spec),
                push: None,
            });
        }
        if let Some(retrier) = retrier {
            retrier.add_calls(&calls);
        }
        job.mark_invoked(elements);
        let local = self
            .backend
            .local()
            .expect("in-process jobs have a local backend");
        local.resubmit(
            job,
            Invocation {
                push: None,
                ..Invocation::of_job(spec, calls, 0)
            },
            &function.payload,
            None,
        )
    }

    /// Writes the job's objects and hands all its Invocations to a remote
    /// backend or (`detached`) to the detached-job host.
    fn send_whole(
        &self,
        job: &Arc<JobState>,
        function: &RawFunction,
        inputs: Vec<bytes::Bytes>,
        detached: bool,
    ) -> Result<()> {
        let config = &self.config;
        let spec = &job.spec;
        // Subscribed before anything is sent, so no pushed status is missed;
        // an unreachable broker fails the job before it leaves objects behind.
        let push = match &spec.push {
            Some(channel) => Some(PushFollow {
                subscription: Subscription::open(config, channel)?,
                fallback_interval: Duration::from_secs_f64(config.push_fallback_interval),
            }),
            None => None,
        };
        self.store_job(job, function)?;

        // Small inputs travel inside the Invocation; if any is large, all go
        // into one data object and each call gets its byte range.
        let inline = inputs
            .iter()
            .all(|i| i.len() as u64 <= config.execution.inline_input_bytes)
            && !(detached
                && inputs.iter().map(bytes::Bytes::len).sum::<usize>() > HOST_INLINE_BYTES);
        let mut data = None;
        let call_inputs: Vec<CallInput> = if inline {
            inputs.into_iter().map(CallInput::Inline).collect()
        } else {
            let mut blob = Vec::with_capacity(inputs.iter().map(bytes::Bytes::len).sum());
            let mut ranges = Vec::with_capacity(inputs.len());
            for input in &inputs {
                let start = blob.len() as u64;
                blob.extend_from_slice(input);
                ranges.push(CallInput::Range {
                    start,
                    end: blob.len() as u64,
                });
            }
            let blob = bytes::Bytes::from(blob);
            self.storage.put_blocking(&job.keys.data(), blob.clone())?;
            data = Some(blob);
            ranges
        };

        // Remote backends send one Invocation per runner call
        // (`protocol::group_invocations`).
        let calls = invoked_calls(spec, 0, call_inputs.into_iter());
        if !spec.retry.is_none() {
            self.arm_retries(job, function, &calls, data.clone(), detached);
        }
        job.mark_invoked(0..spec.total_calls);
        if detached {
            let deadline_ts = self.deadline_ts(spec);
            self.host_send(
                &HostStep::Invocation {
                    // The detached host is this client's own process: no claim.
                    invocation: Invocation {
                        push: None,
                        ..Invocation::of_job(spec, calls, 0)
                    },
                    deadline_ts,
                },
                &[job.keys.host_lease()],
            )?;
            return crate::monitor::follow(job, self.storage.clone(), deadline_ts, true, None);
        }
        self.backend.submit(Submission {
            job,
            function_payload: &function.payload,
            calls,
            data: data.as_deref(),
            storage: &self.storage,
            deadline_ts: self.deadline_ts(spec),
            push,
        })
    }

    /// Gives a job with retries its driver: failed calls go again to the
    /// same place (this backend, or the detached-job host).
    fn arm_retries(
        &self,
        job: &Arc<JobState>,
        function: &RawFunction,
        calls: &[InvokedCall],
        data: Option<bytes::Bytes>,
        detached: bool,
    ) -> Arc<Retrier> {
        let inner = self.me.clone();
        let payload = Arc::new(function.payload.clone());
        let resubmit: crate::retry::Resubmit = Box::new(move |job, invocations| {
            let Some(inner) = inner.upgrade() else {
                return Err(Error::InvalidArgument {
                    name: "retries",
                    message: "the executor was dropped".into(),
                });
            };
            for invocation in invocations {
                if detached {
                    let deadline_ts = inner.deadline_ts(&job.spec);
                    // The host has the job (and its lease) already.
                    inner.host_send(
                        &HostStep::Invocation {
                            invocation,
                            deadline_ts,
                        },
                        &[],
                    )?;
                } else {
                    inner
                        .backend
                        .resubmit(job, invocation, &payload, data.as_deref())?;
                }
            }
            Ok(())
        });
        let retrier = Retrier::new(job, calls.to_vec(), resubmit);
        job.set_retrier(retrier.clone());
        retrier
    }

    /// Writes the large results the in-process runtime left with this
    /// client (`ResultRef::Held`) where readers look for them. Twice: a
    /// result that ended while the first pass ran is stored by the writer
    /// or by the second pass.
    fn store_held_results(&self, job: &JobState) {
        let limit = self.config.execution.inline_result_bytes;
        let mut written = HashSet::new();
        for _ in 0..2 {
            let _ = self.flush_statuses();
            let outputs: Vec<(CallId, Vec<u8>)> = job
                .records()
                .large_outputs(limit)
                .into_iter()
                .filter(|(call, _)| !written.contains(call))
                .map(|(call, bytes)| (call, bytes.to_vec()))
                .collect();
            for (call, bytes) in outputs {
                if let Err(e) = self.storage.put_blocking(&job.keys.output(call), bytes) {
                    eprintln!(
                        "quelea: the result of call {call} of {} could not be stored \
                         for other readers: {e}",
                        job.job_key()
                    );
                }
                written.insert(call);
            }
        }
    }

    fn remember(&self, job: &Arc<JobState>) {
        let forgotten: Vec<String> = {
            let mut jobs = lock(&self.jobs);
            jobs.push(JobEntry {
                job: Arc::downgrade(job),
                prefix: job.keys.prefix().to_string(),
                kept: job.kept(),
            });
            if !self.config.execution.data_cleaner
                || jobs.iter().filter(|e| e.is_forgotten()).count() < SWEEP_AFTER
            {
                return;
            }
            let (gone, live): (Vec<_>, Vec<_>) = jobs.drain(..).partition(JobEntry::is_forgotten);
            *jobs = live;
            gone.into_iter().map(|e| e.prefix).collect()
        };
        // Their last statuses are written before their objects go; the
        // deletions run in the background (a slow store never slows a submit).
        let _ = self.flush_statuses();
        let storage = self.storage.clone();
        quelea_storage::io_runtime().spawn(async move {
            for prefix in forgotten {
                let _ = storage.delete_prefix(&prefix).await;
            }
        });
    }

    fn clean(&self) -> Result<usize> {
        let _ = self.flush_statuses();
        let finished: Vec<String> = {
            let mut jobs = lock(&self.jobs);
            // Detached jobs are cleaned by whoever reads them last.
            let (done, running): (Vec<_>, Vec<_>) = jobs.drain(..).partition(|e| {
                let job = e.job.upgrade();
                let detached = job.as_ref().is_some_and(|j| j.is_detached());
                let complete = job.as_ref().is_none_or(|j| j.is_complete());
                complete && !detached
            });
            *jobs = running;
            done.into_iter().map(|e| e.prefix).collect()
        };
        let mut deleted = 0;
        for prefix in finished {
            deleted += self.storage.delete_prefix_blocking(&prefix)?;
        }
        if lock(&self.jobs).is_empty() && lock(&self.host).is_none() {
            deleted += self.storage.delete_prefix_blocking(&format!(
                "{}functions/",
                keys::executor_prefix(&self.id)
            ))?;
            lock(&self.stored_functions).clear();
        }
        Ok(deleted)
    }
}

/// A job's runner calls from runner call `first_call` on, one per input:
/// each holds `chunksize` consecutive elements (the job's last may hold fewer).
fn invoked_calls(
    spec: &JobSpec,
    first_call: u32,
    inputs: impl Iterator<Item = CallInput>,
) -> Vec<InvokedCall> {
    let k = spec.chunksize.max(1);
    inputs
        .zip(first_call..)
        .map(|(input, i)| {
            let first = i * k;
            InvokedCall {
                call_id: CallId(first),
                count: spec.total_calls.saturating_sub(first).min(k),
                input,
                select: None,
            }
        })
        .collect()
}

/// Consecutive call ranges, one per object, from each object's chunk count.
pub fn groups_of(parts_per_object: &[u32]) -> Vec<Range<u32>> {
    let mut start = 0;
    parts_per_object
        .iter()
        .map(|&n| {
            let range = start..start + n;
            start += n;
            range
        })
        .collect()
}

fn run_reducer(
    weak: Weak<Inner>,
    map_job: Arc<JobState>,
    reduce_job: Arc<JobState>,
    function: RawFunction,
    groups: Vec<Range<u32>>,
) {
    let map_calls = FuturesList::<()>::for_job(&map_job);
    let fail = |message: String, reason: FailureReason| {
        reduce_job.fail_unfinished(|_| CallError {
            reason,
            error_type: "ReduceNotRun".into(),
            message: message.clone(),
            traceback: String::new(),
            payload: None,
        });
    };
    if let Err(e) = wait_calls(&map_calls.parts, ReturnWhen::AllCompleted, None) {
        fail(
            format!("the map job {} did not finish: {e}", map_job.job_key()),
            FailureReason::Cancelled,
        );
        return;
    }
    let inputs = match reduce_inputs(&map_job, function.spec.runner, &groups) {
        Ok(inputs) => inputs,
        Err((message, reason)) => {
            fail(message, reason);
            return;
        }
    };
    let Some(inner) = weak.upgrade() else {
        fail(
            "the executor was dropped before the reduce could start".into(),
            FailureReason::Cancelled,
        );
        return;
    };
    let inputs = inputs.into_iter().map(bytes::Bytes::from).collect();
    if let Err(e) = inner.launch(&reduce_job, &function, inputs, false) {
        fail(
            format!("cannot start the reduce: {e}"),
            FailureReason::WorkerCrashed,
        );
    }
}

/// The reduce calls' inputs from a finished map job, one per group; or why
/// the reduce cannot run (the first failed map call).
pub(crate) fn reduce_inputs(
    map_job: &JobState,
    runner: RunnerKind,
    groups: &[Range<u32>],
) -> std::result::Result<Vec<Vec<u8>>, (String, FailureReason)> {
    let records = map_job.records();
    if let Some((call, error)) = records.first_failure() {
        return Err((
            format!("map call {call} of {} failed: {error}", map_job.job_key()),
            error.reason,
        ));
    }
    Ok(groups
        .iter()
        .map(|group| {
            let mut pieces = Vec::new();
            let all = records.for_each_success(group.clone(), |piece| pieces.push(piece));
            debug_assert!(all, "every map call succeeded");
            combine_results(runner, &pieces)
        })
        .collect())
}

/// The reducer's input: every map result, in call order, in the form the
/// reducer's runner reads. Rust: a JSON array of the JSON results. Python:
/// `QRED`, a u32 entry count, then each entry as u32 length + bytes: a
/// result's own bytes, or, for a run of elements sharing their batch's
/// result, `0x05`, u32 first index, u32 end index, then the shared bytes.
fn combine_results(runner: RunnerKind, results: &[Piece<'_>]) -> Vec<u8> {
    match runner {
        RunnerKind::Rust => {
            let mut input = Vec::from(&b"["[..]);
            let mut first = true;
            for piece in results {
                let (bytes, n): (&[u8], u32) = match piece {
                    Piece::Own(bytes) => (bytes, 1),
                    Piece::Shared { blob, lo, hi } => (blob, hi - lo),
                };
                for _ in 0..n {
                    if !first {
                        input.push(b',');
                    }
                    first = false;
                    input.extend_from_slice(bytes);
                }
            }
            input.push(b']');
            input
        }
        RunnerKind::Python => {
            let mut entries: Vec<Vec<u8>> = Vec::new();
            for piece in results {
                match piece {
                    Piece::Own(bytes) => entries.push(bytes.to_vec()),
                    Piece::Shared { blob, lo, hi } => {
                        let mut entry = vec![5u8];
                        entry.extend_from_slice(&lo.to_le_bytes());
                        entry.extend_from_slice(&hi.to_le_bytes());
                        entry.extend_from_slice(blob);
                        entries.push(entry);
                    }
                }
            }
            let mut input = Vec::from(&b"QRED"[..]);
            input.extend_from_slice(&(entries.len() as u32).to_le_bytes());
            for entry in entries {
                input.extend_from_slice(&(entry.len() as u32).to_le_bytes());
                input.extend_from_slice(&entry);
            }
            input
        }
    }
}

/// Waits on futures from any executor (or attached jobs); `(done, not_done)`.
pub fn wait<O>(
    futures: &FuturesList<O>,
    return_when: ReturnWhen,
    timeout: Option<Duration>,
) -> Result<DoneAndPending<O>> {
    wait_calls(&futures.parts, return_when, timeout)?;
    Ok(futures.iter().partition(|f| f.done()))
}

/// Waits until `return_when` holds for these futures (see [`wait`], which
/// also sorts them into done and pending).
pub fn wait_until<O>(
    futures: &FuturesList<O>,
    return_when: ReturnWhen,
    timeout: Option<Duration>,
) -> Result<()> {
    wait_calls(&futures.parts, return_when, timeout)
}

/// Cancels the jobs of these futures without an executor at hand (the
/// cancelled marker in storage is written by [`Executor::cancel`]).
pub fn cancel<O>(futures: &FuturesList<O>) {
    for part in &futures.parts {
        if !part.job.is_complete() {
            part.job.cancel("cancelled by the client");
            part.job.run_cancel_hook();
        }
    }
}

/// Waits for every call and returns the results in call order.
pub fn get_result<O: DeserializeOwned>(
    futures: &FuturesList<O>,
    timeout: Option<Duration>,
) -> Result<Vec<O>> {
    wait_calls(&futures.parts, ReturnWhen::AllCompleted, timeout)?;
    futures
        .iter()
        .map(|f| crate::future::decode(&f.job, f.call))
        .collect()
}

impl Drop for Executor {
    fn drop(&mut self) {
        // Reducers finish (or fail) once their map jobs end; pools stop below.
        let inner = &self.inner;
        let jobs: Vec<Arc<JobState>> = lock(&inner.jobs)
            .iter()
            .filter_map(|e| e.job.upgrade())
            .collect();
        for job in jobs {
            // A detached job goes on without this executor.
            if !job.is_complete() && !job.is_detached() {
                job.cancel("the executor was dropped");
                job.run_cancel_hook();
            }
        }
        for thread in lock(&inner.reducers).drain(..) {
            let _ = thread.join();
        }
        // Storage that does not answer (a frozen server) must not hold up
        // the close: the status flush and the cleaning get CLOSE_DEADLINE in
        // all, then they go on in the background and the close returns.
        let (done_tx, done) = std::sync::mpsc::channel();
        let cleaner = self.inner.clone();
        let started = std::thread::Builder::new()
            .name("quelea-close".into())
            .spawn(move || {
                if cleaner.config.execution.data_cleaner {
                    if let Err(e) = cleaner.clean() {
                        eprintln!("quelea: cleaning executor {} failed: {e}", cleaner.id);
                    }
                } else {
                    let _ = cleaner.flush_statuses();
                }
                // Before saying done: the last reference then goes with the
                // executor, so its runners are ended and reaped by the time
                // the close returns (not a moment later, on this thread).
                drop(cleaner);
                let _ = done_tx.send(());
            });
        if started.is_ok() && done.recv_timeout(CLOSE_DEADLINE).is_err() {
            eprintln!(
                "quelea: executor {} closed without cleaning: storage did not answer within {} s \
                 (its objects stay; `quelea clean` deletes them later)",
                inner.id,
                CLOSE_DEADLINE.as_secs()
            );
        }
    }
}

/// How long closing an executor waits for storage (flushing statuses,
/// cleaning finished jobs).
const CLOSE_DEADLINE: Duration = Duration::from_secs(10);
