//! `quelea._engine`: the Rust engine as a Python extension module. The
//! Python package (`python/quelea`) builds the Lithops-compatible API on it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use quelea::{
    BackendKind, Batches, ConfigBuilder, ForkedRunner, FuturesList, JobHandle, JobKind, MapOptions,
    Output, Raw, RawFunction, ResponseFuture, ReturnWhen, RunnerCommand, RunnerKind, StartMethod,
};

mod error;
mod storage;

use error::{to_py_err, type_error, value_error};

/// The tag of a Python call's result that is a `bytes` value as it is, not
/// pickled (`quelea.worker` answers a bytes result so; the others are 0:
/// pickled, 1: pickled with the call's output).
const RAW_BYTES_RESULT: u8 = 3;

fn config_builder(
    overrides: Option<&str>,
    config_file: Option<PathBuf>,
) -> PyResult<ConfigBuilder> {
    let mut builder = ConfigBuilder::new();
    if let Some(path) = config_file {
        builder = builder.file(path);
    }
    if let Some(text) = overrides {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| value_error(format!("config is not valid JSON: {e}")))?;
        builder = builder.overrides(value);
    }
    Ok(builder)
}

/// The Rust runner of the CLI's built-in functions, in this interpreter.
fn rust_runner(python: &std::path::Path) -> RunnerCommand {
    RunnerCommand {
        program: python.to_path_buf(),
        args: vec![
            "-c".into(),
            "from quelea import _engine; _engine.serve_rust_runner()".into(),
        ],
        env: vec![("QUELEA_RUNNER".into(), "rust".into())],
    }
}

/// An executor of the engine; the Python `FunctionExecutor` wraps it.
#[pyclass(module = "quelea._engine", frozen)]
struct Executor {
    /// Shared with the threads that run its blocking operations ([`interruptible`]).
    inner: Arc<Mutex<Option<quelea::Executor>>>,
    id: String,
}

impl Executor {
    /// The job's runner calls: given by the front end (`total` elements,
    /// `chunksize` to a call), or per-element inputs grouped here.
    fn batches(
        &self,
        inputs: &Bound<'_, PyList>,
        total: Option<u32>,
        options: &MapOptions,
    ) -> PyResult<Batches> {
        let inputs = bytes_list(inputs)?;
        match total {
            Some(total) => Ok(Batches {
                chunksize: options.chunksize.unwrap_or(1),
                total,
                inputs,
            }),
            None => self.with(|e| e.batches(inputs, options).map_err(to_py_err)),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&quelea::Executor) -> PyResult<T>) -> PyResult<T> {
        with_executor(&self.inner, &self.id, f)
    }

    /// Runs a blocking `operation` on the executor off the GIL, stopping on
    /// Ctrl-C (see [`interruptible`]). The executor is locked on the thread
    /// that runs it, which never takes the GIL: another Python thread that
    /// waits for the lock (holding the GIL) cannot deadlock with this one.
    fn blocking<T: Send + 'static>(
        &self,
        py: Python<'_>,
        operation: impl FnOnce(&quelea::Executor) -> quelea::Result<T> + Send + 'static,
    ) -> PyResult<T> {
        let (inner, id) = (self.inner.clone(), self.id.clone());
        interruptible(py, move || {
            with_executor(&inner, &id, |e| operation(e).map_err(to_py_err))
        })?
    }
}

fn with_executor<T>(
    inner: &Mutex<Option<quelea::Executor>>,
    id: &str,
    f: impl FnOnce(&quelea::Executor) -> PyResult<T>,
) -> PyResult<T> {
    let guard = inner.lock().unwrap_or_else(|e| e.into_inner());
    match guard.as_ref() {
        Some(exec) => f(exec),
        None => Err(value_error(format!("executor {id} is closed"))),
    }
}

fn options(
    chunksize: Option<u32>,
    timeout: Option<f64>,
    memory_limit_mb: Option<u64>,
    detach: bool,
) -> PyResult<MapOptions> {
    retry_options(chunksize, timeout, memory_limit_mb, detach, None, None)
}

/// [`options`] with a job's retries (see `quelea::MapOptions::retries`).
fn retry_options(
    chunksize: Option<u32>,
    timeout: Option<f64>,
    memory_limit_mb: Option<u64>,
    detach: bool,
    retries: Option<i64>,
    retry_user_errors: Option<bool>,
) -> PyResult<MapOptions> {
    let max = quelea::core::config::MAX_RETRIES;
    let retries =
        match retries {
            None => None,
            Some(n) => Some(u32::try_from(n).ok().filter(|n| *n <= max).ok_or_else(|| {
                value_error(format!("retries must be between 0 and {max}, got {n}"))
            })?),
        };
    let timeout = match timeout {
        None => None,
        Some(t) => Some(
            Duration::try_from_secs_f64(t)
                .ok()
                .filter(|d| t > 0.0 && *d <= quelea::worker::runtime::MAX_TIMEOUT)
                .ok_or_else(|| {
                    value_error(format!(
                        "timeout must be a positive number of seconds up to {} (a week), got {t}",
                        quelea::worker::runtime::MAX_TIMEOUT.as_secs()
                    ))
                })?,
        ),
    };
    if let Some(mb) = memory_limit_mb {
        if mb == 0 || mb > u64::MAX >> 20 {
            return Err(value_error(format!(
                "runtime_memory must be between 1 and {} MiB, got {mb}",
                u64::MAX >> 20
            )));
        }
    }
    Ok(MapOptions {
        chunksize,
        timeout,
        memory_limit_mb,
        detach,
        retries,
        retry_user_errors,
    })
}

/// Inputs up to this size are copied into one shared buffer; larger ones
/// are kept in their Python object.
const SHARED_INPUT_MAX: usize = 256;

/// The inputs as the engine keeps them. A large input holds its Python
/// `bytes` object (immutable) until the runner has it, without a copy; small
/// ones are copied into one buffer they are slices of, since a holder per
/// input (an allocation, and the Python object kept alive until it ran)
/// costs more than its bytes: a map of 200,000 small calls would hold ~100
/// bytes a call until its last call ran.
fn bytes_list(inputs: &Bound<'_, PyList>) -> PyResult<Vec<bytes::Bytes>> {
    let mut items = Vec::with_capacity(inputs.len());
    let mut small = 0;
    for (i, item) in inputs.iter().enumerate() {
        let item = item
            .cast_into::<PyBytes>()
            .map_err(|_| type_error(format!("input {i} is not bytes")))?;
        let len = item.as_bytes().len();
        if len <= SHARED_INPUT_MAX {
            small += len;
        }
        items.push(item);
    }
    let mut buffer = Vec::with_capacity(small);
    for item in &items {
        let bytes = item.as_bytes();
        if bytes.len() <= SHARED_INPUT_MAX {
            buffer.extend_from_slice(bytes);
        }
    }
    let buffer = bytes::Bytes::from(buffer);
    let mut at = 0;
    Ok(items
        .into_iter()
        .map(|item| {
            let len = item.as_bytes().len();
            if len <= SHARED_INPUT_MAX {
                at += len;
                buffer.slice(at - len..at)
            } else {
                bytes::Bytes::from_owner(pyo3::pybacked::PyBackedBytes::from(item))
            }
        })
        .collect())
}

#[pymethods]
impl Executor {
    #[new]
    #[pyo3(signature = (python, overrides=None, config_file=None))]
    fn new(
        python: PathBuf,
        overrides: Option<&str>,
        config_file: Option<PathBuf>,
    ) -> PyResult<Self> {
        let config = config_builder(overrides, config_file)?
            .build()
            .map_err(to_py_err_core)?;
        let exec = quelea::Executor::builder()
            .config(config)
            .runner(RunnerKind::Python, RunnerCommand::python(&python))
            .runner(RunnerKind::Rust, rust_runner(&python))
            .host(RunnerCommand {
                program: python.clone(),
                args: vec![
                    "-c".into(),
                    "import sys; from quelea import _engine; sys.exit(_engine.serve_host())".into(),
                ],
                env: Vec::new(),
            })
            .build()
            .map_err(to_py_err)?;
        Ok(Executor {
            id: exec.id().to_string(),
            inner: Arc::new(Mutex::new(Some(exec))),
        })
    }

    #[getter]
    fn id(&self) -> String {
        self.id.clone()
    }

    /// Starts the local Python runners in the background, the first ones
    /// being `forked`: `(pid, calls fd, answers fd)` of runners this
    /// process forked (quelea._fork), whose descriptors pass to the engine.
    #[pyo3(signature = (forked=Vec::new()))]
    fn prestart(&self, forked: Vec<(i32, i32, i32)>) -> PyResult<()> {
        // SAFETY: quelea._fork hands over children it forked, that lead
        // their groups and that it neither reaps nor signals, with the
        // parent's ends of their pipes, which it no longer uses.
        let forked = forked
            .into_iter()
            .map(|(pid, calls, answers)| unsafe { ForkedRunner::from_raw(pid, calls, answers) })
            .collect();
        self.with(|e| {
            e.prestart_adopting(RunnerKind::Python, forked);
            Ok(())
        })
    }

    /// The resolved config as JSON, secrets redacted.
    fn config_json(&self) -> PyResult<String> {
        self.with(|e| Ok(e.config().redacted().to_string()))
    }

    /// `(storage location JSON, bucket)` of the job storage.
    fn storage_location(&self) -> PyResult<String> {
        self.with(|e| {
            Ok(serde_json::to_string(e.storage().location()).expect("locations serialize"))
        })
    }

    /// Map elements per runner call for a map of `total` elements with these
    /// options (see `quelea::Executor::chunksize_for`).
    #[pyo3(signature = (total, chunksize=None, timeout=None, memory_limit_mb=None))]
    fn chunksize_for(
        &self,
        total: usize,
        chunksize: Option<u32>,
        timeout: Option<f64>,
        memory_limit_mb: Option<u64>,
    ) -> PyResult<u32> {
        let options = options(chunksize, timeout, memory_limit_mb, false)?;
        self.with(|e| Ok(e.chunksize_for(total, &options)))
    }

    /// Submits a job. With `total`, `inputs` are runner calls of `chunksize`
    /// elements each in the front end's encoding; without, one input per
    /// element, grouped by the engine.
    #[pyo3(signature = (kind, name, payload, inputs, chunksize=None, timeout=None, memory_limit_mb=None, total=None, detach=false, retries=None, retry_user_errors=None))]
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &self,
        py: Python<'_>,
        kind: &str,
        name: &str,
        payload: &[u8],
        inputs: &Bound<'_, PyList>,
        chunksize: Option<u32>,
        timeout: Option<f64>,
        memory_limit_mb: Option<u64>,
        total: Option<u32>,
        detach: bool,
        retries: Option<i64>,
        retry_user_errors: Option<bool>,
    ) -> PyResult<Job> {
        let kind = match kind {
            "call_async" => JobKind::CallAsync,
            "map" => JobKind::Map,
            other => return Err(value_error(format!("unknown job kind `{other}`"))),
        };
        let options = retry_options(
            chunksize,
            timeout,
            memory_limit_mb,
            detach,
            retries,
            retry_user_errors,
        )?;
        let inputs = self.batches(inputs, total, &options)?;
        let function = RawFunction::new(RunnerKind::Python, name, payload.to_vec());
        let futures =
            self.blocking(py, move |e| e.submit_raw(kind, &function, inputs, &options))?;
        Ok(Job::new(futures))
    }

    /// Submits a map of `total` elements, `chunksize` to a runner call,
    /// whose inputs (in the front end's encoding) follow through the
    /// returned feed (see `quelea::InputFeed`).
    #[pyo3(signature = (name, payload, chunksize, timeout, memory_limit_mb, total, detach=false, retries=None, retry_user_errors=None))]
    #[allow(clippy::too_many_arguments)]
    fn submit_fed(
        &self,
        py: Python<'_>,
        name: &str,
        payload: &[u8],
        chunksize: u32,
        timeout: Option<f64>,
        memory_limit_mb: Option<u64>,
        total: u32,
        detach: bool,
        retries: Option<i64>,
        retry_user_errors: Option<bool>,
    ) -> PyResult<(Job, Feed)> {
        let options = retry_options(
            Some(chunksize),
            timeout,
            memory_limit_mb,
            detach,
            retries,
            retry_user_errors,
        )?;
        let function = RawFunction::new(RunnerKind::Python, name, payload.to_vec());
        let (futures, feed) = self.blocking(py, move |e| {
            e.submit_fed(JobKind::Map, &function, total, chunksize, &options)
        })?;
        Ok((
            Job::new(futures),
            Feed {
                feed: Mutex::new(Some(feed)),
            },
        ))
    }

    /// Expands inputs that name data into chunks: `(chunk JSON list, chunks
    /// per object)`.
    #[pyo3(signature = (inputs, chunk_size=None, chunk_number=None, newline=Some(b"\n".to_vec()), header=false))]
    fn partition(
        &self,
        py: Python<'_>,
        inputs: Vec<String>,
        chunk_size: Option<u64>,
        chunk_number: Option<u32>,
        newline: Option<Vec<u8>>,
        header: bool,
    ) -> PyResult<(Vec<String>, Vec<u32>)> {
        let chunking = match (chunk_number, chunk_size) {
            (Some(n), _) => quelea::objects::Chunking::Number(n),
            (None, Some(size)) => quelea::objects::Chunking::Size(size),
            (None, None) => quelea::objects::Chunking::Whole,
        };
        let options = quelea::objects::ObjOptions {
            chunking,
            newline,
            header,
        };
        let (chunks, parts) = self.blocking(py, move |e| {
            quelea::objects::partition(e.config(), &inputs, &options)
        })?;
        let chunks = chunks
            .iter()
            .map(|c| serde_json::to_string(c).expect("chunks serialize"))
            .collect();
        Ok((chunks, parts))
    }

    /// A map-reduce with one reducer per group of consecutive map calls.
    #[pyo3(signature = (map_name, map_payload, inputs, reduce_name, reduce_payload, groups, chunksize=None, timeout=None, memory_limit_mb=None, total=None, detach=false))]
    #[allow(clippy::too_many_arguments)]
    fn map_reduce_grouped(
        &self,
        py: Python<'_>,
        map_name: &str,
        map_payload: &[u8],
        inputs: &Bound<'_, PyList>,
        reduce_name: &str,
        reduce_payload: &[u8],
        groups: Vec<u32>,
        chunksize: Option<u32>,
        timeout: Option<f64>,
        memory_limit_mb: Option<u64>,
        total: Option<u32>,
        detach: bool,
    ) -> PyResult<(Job, Job)> {
        let options = options(chunksize, timeout, memory_limit_mb, detach)?;
        let inputs = self.batches(inputs, total, &options)?;
        let map = RawFunction::new(RunnerKind::Python, map_name, map_payload.to_vec());
        let reduce = RawFunction::new(RunnerKind::Python, reduce_name, reduce_payload.to_vec());
        let groups = quelea::groups_of(&groups);
        let (map_futures, reduce_futures) = self.blocking(py, move |e| {
            e.map_reduce_grouped_raw(&map, inputs, &reduce, options, groups)
        })?;
        Ok((Job::new(map_futures), Job::new(reduce_futures)))
    }

    /// Cancels a job: queued calls never run, running ones are stopped.
    fn cancel(&self, job: &Job) -> PyResult<()> {
        self.with(|e| e.cancel(&job.futures).map_err(to_py_err))
    }

    /// Deletes the objects of finished jobs; returns how many.
    fn clean(&self, py: Python<'_>) -> PyResult<usize> {
        self.blocking(py, |e| e.clean())
    }

    /// For a job of the `aws_lambda` backend, its estimated cost
    /// (`memory_mb`, `invocations`, `gb_seconds`, `estimated_usd`); else `None`.
    fn job_cost<'py>(&self, py: Python<'py>, job: &Job) -> PyResult<Option<Bound<'py, PyDict>>> {
        let cost = self.with(|e| Ok(e.lambda_cost(&job.futures)))?;
        let Some(cost) = cost else {
            return Ok(None);
        };
        let dict = PyDict::new(py);
        dict.set_item("memory_mb", cost.memory_mb)?;
        dict.set_item("invocations", cost.invocations)?;
        dict.set_item("gb_seconds", cost.gb_seconds)?;
        dict.set_item("estimated_usd", cost.estimated_usd)?;
        Ok(Some(dict))
    }

    fn job_handle(&self, job: &Job) -> PyResult<String> {
        self.with(|e| {
            let first = job
                .futures
                .get(0)
                .ok_or_else(|| value_error("empty job".to_string()))?;
            Ok(e.job_handle(&first).to_json())
        })
    }

    fn runner_pids(&self) -> PyResult<Vec<u32>> {
        self.with(|e| Ok(e.runner_pids()))
    }

    /// The pid of the host of this executor's detached jobs, if started.
    fn host_pid(&self) -> PyResult<Option<u32>> {
        self.with(|e| Ok(e.host_pid()))
    }

    fn flush_statuses(&self, py: Python<'_>) -> PyResult<()> {
        self.blocking(py, |e| e.flush_statuses())
    }

    /// Stops the runners; with `data_cleaner`, deletes finished jobs' objects.
    /// Ctrl-C gives up the storage waits (the runners are stopped still).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let exec = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
        interruptible(py, move || drop(exec))
    }
}

/// Runs a blocking engine operation off the GIL on a thread of
/// [`BlockingThreads`], while this (the main) thread looks for Ctrl-C every
/// `quelea::interrupt::POLL`: on Ctrl-C the storage interrupt flag
/// (`quelea_storage::interrupt`) makes every storage wait give up (a frozen
/// server), the operation ends within a moment, the flag is cleared and the
/// `KeyboardInterrupt` is raised. Without this, a blocking call would answer
/// Ctrl-C only when storage did.
fn interruptible<T: Send + 'static>(
    py: Python<'_>,
    operation: impl FnOnce() -> T + Send + 'static,
) -> PyResult<T> {
    let (done_tx, mut done) = std::sync::mpsc::channel();
    let thread = BlockingThreads::run(Box::new(move || {
        let _ = done_tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
            operation,
        )));
    }))
    .map_err(|e| {
        pyo3::exceptions::PyRuntimeError::new_err(format!("cannot start a thread: {e}"))
    })?;
    let mut interrupted: Option<PyErr> = None;
    let outcome = loop {
        // The receiver goes into the GIL-free closure and back (it is
        // `Send`, not `Sync`).
        let receiver = done;
        let (receiver, received) = py.detach(move || {
            let received = receiver.recv_timeout(quelea::interrupt::POLL);
            (receiver, received)
        });
        done = receiver;
        match received {
            Ok(outcome) => break Some(outcome),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            // Not expected: the task answers even when it panics.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break None,
        }
        if interrupted.is_none() {
            if let Err(e) = py.check_signals() {
                quelea::storage::interrupt::set();
                interrupted = Some(e);
            }
        }
    };
    if interrupted.is_some() {
        quelea::storage::interrupt::clear();
    }
    let Some(outcome) = outcome else {
        return Err(pyo3::exceptions::PyRuntimeError::new_err(
            "an engine operation ended without an answer",
        ));
    };
    BlockingThreads::give_back(thread);
    let value = outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    match interrupted {
        Some(e) => Err(e),
        None => Ok(value),
    }
}

/// The threads that run [`interruptible`]'s operations, kept once started:
/// a thread per operation cost more than a small map's whole submission
/// (creating it, and on exit the kernel's TLB shootdown as glibc releases its
/// stack). One thread per operation at a time; as many as ran at once.
struct BlockingThreads;

type BlockingTask = Box<dyn FnOnce() + Send>;

impl BlockingThreads {
    fn idle() -> &'static Mutex<Vec<std::sync::mpsc::Sender<BlockingTask>>> {
        static IDLE: Mutex<Vec<std::sync::mpsc::Sender<BlockingTask>>> = Mutex::new(Vec::new());
        &IDLE
    }

    /// Runs `task` on an idle thread, or a new one; returns that thread's
    /// handle, for [`BlockingThreads::give_back`] once the task is done.
    fn run(task: BlockingTask) -> std::io::Result<std::sync::mpsc::Sender<BlockingTask>> {
        let idle = Self::idle().lock().unwrap_or_else(|e| e.into_inner()).pop();
        let task = match idle {
            Some(thread) => match thread.send(task) {
                Ok(()) => return Ok(thread),
                // Cannot happen (its thread never ends); start another.
                Err(std::sync::mpsc::SendError(task)) => task,
            },
            None => task,
        };
        let (thread, tasks) = std::sync::mpsc::channel::<BlockingTask>();
        std::thread::Builder::new()
            .name("quelea-blocking".into())
            .spawn(move || {
                while let Ok(task) = tasks.recv() {
                    task();
                }
            })?;
        thread.send(task).expect("the thread just started");
        Ok(thread)
    }

    fn give_back(thread: std::sync::mpsc::Sender<BlockingTask>) {
        Self::idle()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(thread);
    }
}

fn to_py_err_core(e: quelea::core::Error) -> PyErr {
    to_py_err(quelea::Error::Config(e))
}

/// The inputs of a job submitted by `Executor.submit_fed`, given in parts
/// (see `quelea::InputFeed`). Dropped unfinished, it cancels the job.
#[pyclass(module = "quelea._engine", frozen)]
struct Feed {
    feed: Mutex<Option<quelea::InputFeed>>,
}

impl Feed {
    fn take(&self) -> PyResult<quelea::InputFeed> {
        self.feed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| value_error("the feed is finished or abandoned".to_owned()))
    }
}

#[pymethods]
impl Feed {
    /// Gives the inputs of the job's next runner calls (a list of bytes).
    /// An error, or a Ctrl-C while they are handed over, cancels the job.
    fn send(&self, py: Python<'_>, inputs: &Bound<'_, PyList>) -> PyResult<()> {
        let inputs = bytes_list(inputs)?;
        let mut feed = self.take()?;
        let (feed, sent) = interruptible(py, move || {
            let sent = feed.send(inputs);
            (feed, sent)
        })?;
        sent.map_err(to_py_err)?;
        *self.feed.lock().unwrap_or_else(|e| e.into_inner()) = Some(feed);
        Ok(())
    }

    /// Says every input was given.
    fn finish(&self, py: Python<'_>) -> PyResult<()> {
        let feed = self.take()?;
        interruptible(py, move || feed.finish())?.map_err(to_py_err)
    }

    /// Cancels the job: its inputs will not all come (`why`).
    fn abandon(&self, why: &str) {
        if let Ok(feed) = self.take() {
            feed.abandon(why);
        }
    }
}

/// The futures of one job, addressed by call index.
#[pyclass(module = "quelea._engine", frozen)]
struct Job {
    futures: FuturesList<Raw>,
    executor_id: String,
    job_id: String,
    /// Shared batch results as Python bytes, one per batch (by address of
    /// the engine's blob), so that each is copied into Python once.
    shared: Mutex<std::collections::HashMap<usize, Py<PyBytes>>>,
}

impl Job {
    fn new(futures: FuturesList<Raw>) -> Self {
        let first = futures.get(0).expect("jobs have calls");
        Job {
            executor_id: first.executor_id().to_string(),
            job_id: first.job_id().to_string(),
            futures,
            shared: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// A call's own result as Python reads it: its bytes (tag byte
    /// first), or, for a raw one, `(value,)`: the bytes value itself, cut
    /// from its tag here so that it is copied once.
    fn own_result<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        match bytes.split_first() {
            Some((&RAW_BYTES_RESULT, value)) => {
                Ok(PyTuple::new(py, [PyBytes::new(py, value)])?.into_any())
            }
            _ => Ok(PyBytes::new(py, bytes).into_any()),
        }
    }

    fn shared_bytes<'py>(
        &self,
        py: Python<'py>,
        blob: &std::sync::Arc<Vec<u8>>,
    ) -> Bound<'py, PyBytes> {
        let key = std::sync::Arc::as_ptr(blob) as usize;
        let mut cache = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(key)
            .or_insert_with(|| PyBytes::new(py, blob).unbind())
            .bind(py)
            .clone()
    }

    /// `None` while running, `(True, bytes)` for a call's own result,
    /// `(True, shared bytes, index)` for an element of a batch's shared
    /// result, `(False, error dict)`.
    fn outcome_of<'py>(
        &self,
        py: Python<'py>,
        future: &ResponseFuture<Raw>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match future.output() {
            Some(Output::Own(bytes)) => Ok(PyTuple::new(
                py,
                [
                    true.into_pyobject(py)?.to_owned().into_any(),
                    Self::own_result(py, &bytes)?,
                ],
            )?
            .into_any()),
            Some(Output::Shared { blob, index, .. }) => Ok(PyTuple::new(
                py,
                [
                    true.into_pyobject(py)?.to_owned().into_any(),
                    self.shared_bytes(py, &blob).into_any(),
                    index.into_pyobject(py)?.into_any(),
                ],
            )?
            .into_any()),
            None => outcome(py, future),
        }
    }

    fn future(&self, index: usize) -> PyResult<ResponseFuture<Raw>> {
        self.futures.get(index).ok_or_else(|| {
            value_error(format!(
                "call {index} is out of range ({} calls)",
                self.futures.len()
            ))
        })
    }
}

fn state_name(state: quelea::CallState) -> &'static str {
    match state {
        quelea::CallState::New => "new",
        quelea::CallState::Invoked => "invoked",
        quelea::CallState::Running => "running",
        quelea::CallState::Success => "success",
        quelea::CallState::Error => "error",
    }
}

/// A failed call's `(False, error dict)`, else `None`.
fn outcome<'py>(py: Python<'py>, future: &ResponseFuture<Raw>) -> PyResult<Bound<'py, PyAny>> {
    if let Some(error) = future.call_error() {
        let dict = error_dict(py, &error)?;
        return Ok(PyTuple::new(
            py,
            [
                false.into_pyobject(py)?.to_owned().into_any(),
                dict.into_any(),
            ],
        )?
        .into_any());
    }
    Ok(py.None().into_bound(py))
}

/// A call error as the Python front end reads it.
fn error_dict<'py>(py: Python<'py>, error: &quelea::CallError) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item(
        "reason",
        serde_json::to_value(error.reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned)),
    )?;
    dict.set_item("error_type", &error.error_type)?;
    dict.set_item("message", &error.message)?;
    dict.set_item("traceback", &error.traceback)?;
    dict.set_item(
        "payload",
        error.payload.as_deref().map(|p| PyBytes::new(py, p)),
    )?;
    Ok(dict)
}

#[pymethods]
impl Job {
    #[getter]
    fn executor_id(&self) -> String {
        self.executor_id.clone()
    }
    #[getter]
    fn job_id(&self) -> String {
        self.job_id.clone()
    }
    #[getter]
    fn total(&self) -> usize {
        self.futures.len()
    }
    /// Elements per runner call.
    #[getter]
    fn chunksize(&self) -> u32 {
        self.futures.get(0).map_or(1, |f| f.chunksize())
    }
    fn done_count(&self) -> usize {
        self.futures.done_count()
    }
    /// Cancels the job: queued calls never run, running ones are stopped.
    fn cancel(&self) {
        quelea::cancel(&self.futures);
    }
    fn state(&self, index: usize) -> PyResult<&'static str> {
        Ok(state_name(self.future(index)?.state()))
    }
    fn states(&self) -> Vec<&'static str> {
        self.futures.states().into_iter().map(state_name).collect()
    }
    /// The call's stats as a dict (Lithops-style key names where they exist).
    fn stats<'py>(&self, py: Python<'py>, index: usize) -> PyResult<Bound<'py, PyDict>> {
        let stats = self.future(index)?.stats();
        let dict = PyDict::new(py);
        dict.set_item("host_submit_tstamp", stats.submit_ts)?;
        dict.set_item("worker_start_tstamp", stats.start_ts)?;
        dict.set_item("worker_end_tstamp", stats.end_ts)?;
        dict.set_item(
            "worker_exec_time",
            stats.start_ts.zip(stats.end_ts).map(|(s, e)| e - s),
        )?;
        dict.set_item("worker_id", stats.worker_id)?;
        dict.set_item("worker_cold_start", stats.cold_start)?;
        dict.set_item("worker_peak_memory", stats.peak_memory_bytes)?;
        dict.set_item("func_result_size", stats.result_size)?;
        dict.set_item("worker_memory_mb", stats.memory_mb)?;
        // Which run of the call this is: 0 the first, k its k-th retry.
        dict.set_item("attempt", stats.attempt)?;
        Ok(dict)
    }
    /// The earlier attempts' errors of call `index` (dicts, oldest first).
    fn failed_attempts<'py>(
        &self,
        py: Python<'py>,
        index: usize,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.future(index)?
            .failed_attempts()
            .iter()
            .map(|e| error_dict(py, e))
            .collect()
    }
    /// No further retries of call `index`: its running attempt is its last.
    fn stop_retries(&self, index: usize) -> PyResult<()> {
        self.future(index)?.stop_retries();
        Ok(())
    }
    /// `None` while running, `(True, bytes)` on success (`(True, shared
    /// bytes, index)` for an element of a batch's shared result), `(False,
    /// error dict)`.
    fn outcome<'py>(&self, py: Python<'py>, index: usize) -> PyResult<Bound<'py, PyAny>> {
        self.outcome_of(py, &self.future(index)?)
    }

    /// The results of these calls (`None`: all), or `None` if any of them
    /// has not succeeded: the fast path of `get_result`. Each item is a
    /// call's own result bytes, or `(shared bytes, lo, hi)` for a run of
    /// consecutive elements `lo..hi` of one batch's shared result.
    #[pyo3(signature = (indices=None))]
    fn result_runs<'py>(
        &self,
        py: Python<'py>,
        indices: Option<Vec<usize>>,
    ) -> PyResult<Option<Vec<Bound<'py, PyAny>>>> {
        let selected;
        let futures = match &indices {
            None => &self.futures,
            Some(indices) => {
                selected = self.futures.select(indices).map_err(|index| {
                    value_error(format!(
                        "call {index} is out of range ({} calls)",
                        self.futures.len()
                    ))
                })?;
                &selected
            }
        };
        let mut items = Vec::new();
        let mut failed: Option<PyErr> = None;
        let all = futures.for_each_success(|piece| {
            if failed.is_some() {
                return;
            }
            let item = match piece {
                quelea::Piece::Own(bytes) => Self::own_result(py, bytes),
                quelea::Piece::Shared { blob, lo, hi } => (|| {
                    Ok(PyTuple::new(
                        py,
                        [
                            self.shared_bytes(py, blob).into_any(),
                            lo.into_pyobject(py)?.into_any(),
                            hi.into_pyobject(py)?.into_any(),
                        ],
                    )?
                    .into_any())
                })(),
            };
            match item {
                Ok(item) => items.push(item),
                Err(e) => failed = Some(e),
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(all.then_some(items))
    }

    /// The job's calls in numbers: `calls`, `runner_calls` (a batch's
    /// elements share one), `success`, `error`, `submitted`, `wall_time`,
    /// `total_exec_time` — read run by run, not call by call.
    fn summary<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let summary = self
            .futures
            .job_summary()
            .ok_or_else(|| value_error("a summary is of a whole job".to_string()))?;
        let dict = PyDict::new(py);
        dict.set_item("calls", summary.calls)?;
        dict.set_item("runner_calls", summary.runner_calls)?;
        dict.set_item("success", summary.success)?;
        dict.set_item("error", summary.error)?;
        dict.set_item("submitted", self.future(0)?.stats().submit_ts)?;
        dict.set_item("wall_time", summary.wall_time)?;
        dict.set_item("total_exec_time", summary.total_exec_time)?;
        Ok(dict)
    }

    fn outcomes<'py>(
        &self,
        py: Python<'py>,
        indices: Vec<usize>,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        indices
            .into_iter()
            .map(|i| self.outcome_of(py, &self.future(i)?))
            .collect()
    }
}

/// Waits until `return_when` holds for the given calls: `items` pairs a job
/// with call indices (`None`: all). Releases the GIL, and stops on Ctrl-C
/// (cancelling the jobs) or after `timeout` seconds (`TimeoutError`).
#[pyfunction]
#[pyo3(signature = (items, return_when, timeout=None))]
fn wait(
    py: Python<'_>,
    items: Vec<(Py<Job>, Option<Vec<usize>>)>,
    return_when: f64,
    timeout: Option<f64>,
) -> PyResult<()> {
    let when = if return_when == 100.0 {
        ReturnWhen::AllCompleted
    } else if return_when == -1.0 {
        ReturnWhen::AnyCompleted
    } else if return_when == 0.0 {
        ReturnWhen::Always
    } else if (0.0..=100.0).contains(&return_when) {
        ReturnWhen::Percentage(return_when)
    } else {
        return Err(value_error(format!(
            "return_when must be ALWAYS (0), ANY_COMPLETED (-1), ALL_COMPLETED (100) or a percentage, got {return_when}"
        )));
    };
    let mut futures = FuturesList::default();
    for (job, indices) in &items {
        let job = job.get();
        match indices {
            None => futures.extend_from(&job.futures),
            Some(indices) => {
                for &i in indices {
                    futures.push(job.future(i)?);
                }
            }
        }
    }
    let started = Instant::now();
    let limit = match timeout {
        Some(t) if !(t.is_finite() && t >= 0.0) => {
            return Err(value_error(format!(
                "timeout must be a non-negative number of seconds, got {t}"
            )))
        }
        Some(t) => Duration::try_from_secs_f64(t).ok(),
        None => None,
    };
    loop {
        let mut slice = quelea::interrupt::POLL;
        if let Some(limit) = limit {
            slice = slice.min(limit.saturating_sub(started.elapsed()));
        }
        match py.detach(|| quelea::wait_until(&futures, when, Some(slice))) {
            Ok(_) => return Ok(()),
            Err(quelea::Error::Timeout { pending, .. }) => {
                if let Err(interrupt) = py.check_signals() {
                    quelea::cancel(&futures);
                    return Err(interrupt);
                }
                if let Some(limit) = limit {
                    if started.elapsed() >= limit {
                        return Err(to_py_err(quelea::Error::Timeout {
                            waited: started.elapsed(),
                            pending,
                        }));
                    }
                }
            }
            Err(other) => return Err(to_py_err(other)),
        }
    }
}

/// A chunk's bytes, streamed (what `obj.data_stream` reads through).
#[pyclass(module = "quelea._engine")]
struct ChunkStream {
    reader: quelea::partition::ChunkReader<Box<dyn quelea::partition::RangeSource>>,
    header: Option<Vec<u8>>,
    /// Nominal chunk size: what a whole read should reserve up front.
    size_hint: usize,
}

#[pymethods]
impl ChunkStream {
    #[new]
    fn new(py: Python<'_>, chunk: &str) -> PyResult<Self> {
        let chunk: quelea::objects::ChunkObject = serde_json::from_str(chunk)
            .map_err(|e| value_error(format!("not a chunk descriptor: {e}")))?;
        py.detach(|| {
            let header = chunk.header_line()?.map(|h| h.to_vec());
            Ok(ChunkStream {
                reader: chunk.data_stream()?,
                header,
                size_hint: (chunk.end - chunk.start) as usize + (64 << 10),
            })
        })
        .map_err(to_py_err)
    }

    /// The object's header line, when the chunk was made with `header`.
    fn header<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.header.as_deref().map(|h| PyBytes::new(py, h))
    }

    /// Up to `size` bytes (`-1`: the rest of the chunk); `b""` at the end.
    #[pyo3(signature = (size=-1))]
    fn read<'py>(&mut self, py: Python<'py>, size: i64) -> PyResult<Bound<'py, PyBytes>> {
        use std::io::Read;
        let mut buf = Vec::new();
        let result = py.detach(|| {
            if size < 0 {
                use std::io::BufRead;
                // Whole-chunk reads copy each fetched block once, into a
                // buffer reserved for the chunk.
                buf.reserve(self.size_hint);
                loop {
                    let block = self.reader.fill_buf()?;
                    if block.is_empty() {
                        return Ok(());
                    }
                    let n = block.len();
                    buf.extend_from_slice(block);
                    self.reader.consume(n);
                }
            } else {
                buf.resize(size as usize, 0);
                let mut filled = 0;
                // Fill the request unless the chunk ends first.
                while filled < buf.len() {
                    match self.reader.read(&mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                }
                buf.truncate(filled);
                Ok(())
            }
        });
        result.map_err(|e| {
            pyo3::exceptions::PyOSError::new_err(format!("reading the chunk failed: {e}"))
        })?;
        Ok(PyBytes::new(py, &buf))
    }
}

/// Follows a job started elsewhere, from its handle.
#[pyfunction]
#[pyo3(signature = (handle, overrides=None, config_file=None))]
fn attach(handle: &str, overrides: Option<&str>, config_file: Option<PathBuf>) -> PyResult<Job> {
    let handle = JobHandle::from_json(handle).map_err(to_py_err)?;
    let futures = quelea::attach_with::<Raw>(config_builder(overrides, config_file)?, &handle)
        .map_err(to_py_err)?;
    Ok(Job::new(futures))
}

/// Deletes every object of the job behind a handle; returns how many.
#[pyfunction]
#[pyo3(signature = (handle, overrides=None, config_file=None))]
fn clean_job(
    py: Python<'_>,
    handle: &str,
    overrides: Option<&str>,
    config_file: Option<PathBuf>,
) -> PyResult<usize> {
    let handle = JobHandle::from_json(handle).map_err(to_py_err)?;
    let base = config_builder(overrides, config_file)?;
    py.detach(|| quelea::clean_job_with(base, &handle))
        .map_err(to_py_err)
}

/// The host lease of the detached job behind a handle, as JSON (`pid`,
/// `machine`, `ts`, `interval_s`, `taken`, `role`, plus `age_s` and `gone`), or `None`.
#[pyfunction]
#[pyo3(signature = (handle, overrides=None, config_file=None))]
fn host_lease(
    py: Python<'_>,
    handle: &str,
    overrides: Option<&str>,
    config_file: Option<PathBuf>,
) -> PyResult<Option<String>> {
    let handle = JobHandle::from_json(handle).map_err(to_py_err)?;
    let base = config_builder(overrides, config_file)?;
    let lease = py
        .detach(|| quelea::host_lease_with(base, &handle))
        .map_err(to_py_err)?;
    Ok(lease.map(|lease| lease_json(&lease).to_string()))
}

fn lease_json(lease: &quelea::HostLease) -> serde_json::Value {
    serde_json::json!({
        "pid": lease.pid,
        "machine": lease.machine,
        "ts": lease.ts,
        "interval_s": lease.interval_s,
        "taken": lease.taken,
        "role": lease.role,
        "age_s": lease.age_s(),
        "gone": lease.is_gone(),
    })
}

/// Every lease of the job behind a handle (its host's, its worker servers'),
/// as a JSON list of what `host_lease` gives.
#[pyfunction]
#[pyo3(signature = (handle, overrides=None, config_file=None))]
fn job_leases(
    py: Python<'_>,
    handle: &str,
    overrides: Option<&str>,
    config_file: Option<PathBuf>,
) -> PyResult<String> {
    let handle = JobHandle::from_json(handle).map_err(to_py_err)?;
    let base = config_builder(overrides, config_file)?;
    let leases = py
        .detach(|| quelea::job_leases_with(base, &handle))
        .map_err(to_py_err)?;
    Ok(serde_json::Value::Array(leases.iter().map(lease_json).collect()).to_string())
}

/// Serves the CLI's built-in Rust functions on this process's pipes and exits
/// (how `quelea hello` gets Rust runners when it runs inside Python).
#[pyfunction]
fn serve_rust_runner() {
    quelea::serve_if_runner(&quelea_cli::builtins().functions);
}

/// Serves this process as the host of detached jobs (started by an
/// executor with `QUELEA_RUNNER=host`); returns its exit code.
#[pyfunction]
fn serve_host(py: Python<'_>) -> i32 {
    py.detach(quelea::serve_host)
}

/// Runs the `quelea` command line; returns its exit code. `python` is
/// `sys.executable` (a venv's python, which `current_exe` would resolve away).
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<String>, python: PathBuf) -> u8 {
    py.detach(|| {
        quelea_cli::run_cli(
            argv.into_iter().map(OsString::from),
            Some(rust_runner(&python)),
        )
    })
}

/// For the Python runner (`quelea.worker`): die with the client, taking
/// every process left in the runner's process group along (a native
/// `PR_SET_PDEATHSIG` handler, which runs whatever Python code is doing).
#[pyfunction]
fn arm_runner_client_death() {
    quelea_worker::rust_runner::arm_client_death();
}

/// For the Python runner: keep freed memory for the next call's buffers
/// (see `quelea_worker::rust_runner::keep_freed_memory`).
#[pyfunction]
fn runner_keeps_freed_memory() {
    quelea_worker::rust_runner::keep_freed_memory();
}

/// How many runners the client should fork for an executor of this config
/// (see quelea._fork): the local pool's size on the local backend with the
/// `fork` start method, else 0. A config that does not resolve gets 0: the
/// executor then reports what is wrong with it.
#[pyfunction]
#[pyo3(signature = (overrides=None, config_file=None))]
fn runners_to_fork(overrides: Option<&str>, config_file: Option<PathBuf>) -> u32 {
    let Ok(Ok(config)) = config_builder(overrides, config_file).map(|b| b.build()) else {
        return 0;
    };
    if config.backend == BackendKind::Local && config.local.start_method == StartMethod::Fork {
        config.local_workers()
    } else {
        0
    }
}

/// The distinct types of a list's or tuple's elements, as
/// `set(map(type, seq))` gives them, at a pointer comparison per element
/// (the front end decides from them how a map's elements become calls).
#[pyfunction]
fn element_types<'py>(seq: &Bound<'py, PyAny>) -> PyResult<Bound<'py, pyo3::types::PySet>> {
    let types = pyo3::types::PySet::empty(seq.py())?;
    // Only where the type changes from the element before: a map's elements
    // are mostly of one type, so the set is rarely asked.
    let mut last = std::ptr::null_mut();
    let mut note = |item: Bound<'py, PyAny>| -> PyResult<()> {
        let ty = item.get_type_ptr();
        if ty != last {
            last = ty;
            types.add(item.get_type())?;
        }
        Ok(())
    };
    if let Ok(list) = seq.cast::<PyList>() {
        list.iter().try_for_each(&mut note)?;
    } else if let Ok(tuple) = seq.cast::<PyTuple>() {
        tuple.iter().try_for_each(&mut note)?;
    } else {
        return Err(type_error(format!(
            "element_types takes a list or tuple, not {}",
            seq.get_type().name()?
        )));
    }
    Ok(types)
}

#[pymodule]
fn _engine(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(runners_to_fork, m)?)?;
    m.add_class::<Executor>()?;
    m.add_class::<Job>()?;
    m.add_class::<Feed>()?;
    m.add_class::<storage::Storage>()?;
    m.add_class::<ChunkStream>()?;
    m.add_function(wrap_pyfunction!(wait, m)?)?;
    m.add_function(wrap_pyfunction!(element_types, m)?)?;
    m.add_function(wrap_pyfunction!(attach, m)?)?;
    m.add_function(wrap_pyfunction!(clean_job, m)?)?;
    m.add_function(wrap_pyfunction!(host_lease, m)?)?;
    m.add_function(wrap_pyfunction!(job_leases, m)?)?;
    m.add_function(wrap_pyfunction!(serve_rust_runner, m)?)?;
    m.add_function(wrap_pyfunction!(serve_host, m)?)?;
    m.add_function(wrap_pyfunction!(arm_runner_client_death, m)?)?;
    m.add_function(wrap_pyfunction!(runner_keeps_freed_memory, m)?)?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add_function(wrap_pyfunction!(storage::storage_kinds, m)?)?;
    m.add_function(wrap_pyfunction!(storage::lithops_storage_keys, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("FIRST_PART_BYTES", quelea::FIRST_PART_BYTES)?;
    m.add("MAX_PART_BYTES", quelea::MAX_PART_BYTES)?;
    m.add("MAX_PART_CALLS", quelea::MAX_PART_CALLS)?;
    Ok(())
}
