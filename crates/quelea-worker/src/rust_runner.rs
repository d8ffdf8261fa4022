//! Rust functions registered by name, and the runner loop that serves them.
//!
//! The user's binary is both driver and runner: it registers its functions,
//! then calls [`serve_if_runner`] first thing in `main`. Started by the local
//! pool (with `QUELEA_RUNNER=rust` in its environment) it serves calls and
//! exits; started by the user it returns and the program goes on as a driver.

use std::any::Any;
use std::collections::HashMap;
use std::fmt::Display;
use std::io::{BufReader, BufWriter, Write};
use std::marker::PhantomData;
use std::os::fd::{FromRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::pool::RUNNER_FDS_ENV;
use crate::runner_protocol::{self, Answer, ToRunner};
use quelea_core::config::EnvVars;

/// A registered function's failure, as the runner reports it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct RunnerError {
    pub error_type: String,
    pub message: String,
    #[serde(default)]
    pub traceback: String,
    /// Base64 of the runner's own encoding of the exception, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
}

type Erased = dyn Fn(&[u8]) -> Result<Vec<u8>, RunnerError> + Send + Sync;

/// The functions a binary offers, by name.
#[derive(Clone, Default)]
pub struct Functions {
    by_name: HashMap<String, Arc<Erased>>,
}

/// A typed handle to a registered function: what a driver maps.
pub struct FunctionRef<I, O> {
    name: Arc<str>,
    _types: PhantomData<fn(I) -> O>,
}

impl<I, O> Clone for FunctionRef<I, O> {
    fn clone(&self) -> Self {
        FunctionRef {
            name: self.name.clone(),
            _types: PhantomData,
        }
    }
}

impl<I, O> std::fmt::Debug for FunctionRef<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FunctionRef({})", self.name)
    }
}

impl<I, O> FunctionRef<I, O> {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Functions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a function that cannot fail (a panic is still reported as a
    /// user error, with its message and backtrace).
    ///
    /// # Panics
    /// If `name` is already registered: two functions under one name would
    /// make calls ambiguous.
    pub fn register<I, O, F>(&mut self, name: &str, function: F) -> FunctionRef<I, O>
    where
        I: DeserializeOwned + 'static,
        O: Serialize + 'static,
        F: Fn(I) -> O + Send + Sync + 'static,
    {
        self.register_fallible(name, move |input: I| {
            Ok::<O, std::convert::Infallible>(function(input))
        })
    }

    /// Registers a function returning `Result`; an `Err` is reported as a
    /// user error carrying the error's type name and `Display` text.
    ///
    /// # Panics
    /// If `name` is already registered.
    pub fn register_fallible<I, O, E, F>(&mut self, name: &str, function: F) -> FunctionRef<I, O>
    where
        I: DeserializeOwned + 'static,
        O: Serialize + 'static,
        E: Display + 'static,
        F: Fn(I) -> Result<O, E> + Send + Sync + 'static,
    {
        assert!(
            !self.by_name.contains_key(name),
            "a function named `{name}` is already registered"
        );
        let erased = move |input: &[u8]| -> Result<Vec<u8>, RunnerError> {
            let input: I = serde_json::from_slice(input).map_err(|e| RunnerError {
                error_type: "InputError".into(),
                message: format!(
                    "cannot deserialize the input as `{}`: {e}",
                    std::any::type_name::<I>()
                ),
                traceback: String::new(),
                payload: None,
            })?;
            let output = function(input).map_err(|e| RunnerError {
                error_type: short_type_name::<E>(),
                message: e.to_string(),
                traceback: String::new(),
                payload: None,
            })?;
            serde_json::to_vec(&output).map_err(|e| RunnerError {
                error_type: "ResultError".into(),
                message: format!(
                    "cannot serialize the result of type `{}`: {e}",
                    std::any::type_name::<O>()
                ),
                traceback: String::new(),
                payload: None,
            })
        };
        self.by_name.insert(name.to_owned(), Arc::new(erased));
        FunctionRef {
            name: name.into(),
            _types: PhantomData,
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Runs a registered function on serialized input, catching panics.
    pub fn call(&self, name: &str, input: &[u8]) -> Result<Vec<u8>, RunnerError> {
        let Some(function) = self.by_name.get(name) else {
            return Err(RunnerError {
                error_type: "FunctionNotFound".into(),
                message: format!("no function named `{name}` is registered in this runner"),
                traceback: String::new(),
                payload: None,
            });
        };
        PANIC_BACKTRACE.with(|b| b.borrow_mut().take());
        match catch_unwind(AssertUnwindSafe(|| function(input))) {
            Ok(result) => result,
            Err(panic) => Err(RunnerError {
                error_type: "panic".into(),
                message: panic_message(&*panic),
                traceback: PANIC_BACKTRACE
                    .with(|b| b.borrow_mut().take())
                    .unwrap_or_default(),
                payload: None,
            }),
        }
    }
}

fn short_type_name<T>() -> String {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base).to_owned()
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

thread_local! {
    static PANIC_BACKTRACE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// True when this process was started by the pool as a Rust runner.
pub fn is_runner() -> bool {
    std::env::var(EnvVars::RUNNER).as_deref() == Ok("rust")
}

/// Serve calls and exit if this process is a runner; return otherwise.
pub fn serve_if_runner(functions: &Functions) {
    if is_runner() {
        let code = match serve(functions) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("quelea runner: {e}");
                2
            }
        };
        std::process::exit(code);
    }
}

/// The signal a runner asks for when its client dies (`PR_SET_PDEATHSIG`):
/// its handler SIGKILLs the runner's whole process group, so processes its
/// calls started die with it. A real-time signal, so that user code that
/// handles the usual ones does not take it over by accident.
fn client_death_signal() -> libc::c_int {
    libc::SIGRTMAX()
}

extern "C" fn end_own_group_on_signal(_signal: libc::c_int) {
    // SAFETY: kill is async-signal-safe; 0 names our own process group,
    // which this runner leads (the handler is only installed then).
    unsafe {
        libc::kill(0, libc::SIGKILL);
    }
}

/// True if this process leads its own process group, as the pool starts
/// runners: only then may it end "its" group (started by hand from a shell,
/// the group would be the shell's job).
fn leads_own_group() -> bool {
    // SAFETY: getpgrp and getpid have no preconditions.
    unsafe { libc::getpgrp() == libc::getpid() }
}

/// Ends this runner's process group (itself included) if it leads one.
pub fn end_own_group() {
    if leads_own_group() {
        // SAFETY: 0 names our own process group, which we lead.
        unsafe {
            libc::kill(0, libc::SIGKILL);
        }
    }
}

/// Makes this runner process die with its client, with every process left
/// in its process group: arms `PR_SET_PDEATHSIG` (with a handler that
/// SIGKILLs the group when the runner leads one, plain SIGKILL otherwise),
/// then checks that the parent is still the one that started it
/// (`QUELEA_RUNNER_PARENT`), exiting with code 3 if not. The Python runner
/// calls this too, through the extension module.
pub fn arm_client_death() {
    let signal = if leads_own_group() {
        // SAFETY: installs a handler that only calls kill (async-signal-safe);
        // the sigaction struct is fully initialised before use.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = end_own_group_on_signal as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(client_death_signal(), &action, std::ptr::null_mut()) == 0 {
                client_death_signal()
            } else {
                libc::SIGKILL
            }
        }
    } else {
        libc::SIGKILL
    };
    // SAFETY: plain prctl and getppid calls on this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong);
        if let Some(parent) = std::env::var("QUELEA_RUNNER_PARENT")
            .ok()
            .and_then(|p| p.parse::<i32>().ok())
        {
            if libc::getppid() != parent {
                // The parent died before the death signal was armed.
                end_own_group();
                std::process::exit(3);
            }
        }
    }
}

/// Makes this runner's allocator keep up to 8 MiB of freed memory instead of
/// handing each big call's buffers back to the kernel: with glibc's
/// defaults every 1 MiB argument or result is a fresh `mmap`, 256 page
/// faults and a zeroing, which cost a runner of 1 MiB calls half its CPU
/// time (bench/RESULTS.md). Allocations from 4 MiB still get their own
/// mapping, so a big call's memory returns when it is freed. The Python
/// runner calls this too, through the extension module.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's thresholds; called before
    // the runner serves any call.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}

/// The protocol descriptors the pool passed this runner, from
/// `QUELEA_RUNNER_FDS` (`"<calls in>,<answers out>"`).
pub fn protocol_fds() -> std::io::Result<(RawFd, RawFd)> {
    let bad = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
    let value = std::env::var(RUNNER_FDS_ENV).map_err(|_| {
        bad(format!(
            "`{RUNNER_FDS_ENV}` is not set: runners are started by quelea's pool"
        ))
    })?;
    let parsed = value
        .split_once(',')
        .and_then(|(i, o)| Some((i.parse::<RawFd>().ok()?, o.parse::<RawFd>().ok()?)))
        .filter(|(i, o)| *i > 2 && *o > 2 && i != o);
    parsed.ok_or_else(|| {
        bad(format!(
            "`{RUNNER_FDS_ENV}={value}` is not two descriptors above 2, like `3,4`"
        ))
    })
}

static PROTOCOL_FDS: [AtomicI32; 2] = [AtomicI32::new(-1), AtomicI32::new(-1)];

extern "C" fn close_protocol_fds_in_child() {
    // SAFETY: open, dup3 and close are async-signal-safe. In a forked child
    // the protocol descriptors are copies it must not use: they are pointed
    // at /dev/null (not closed, so their numbers are never reused under the
    // runner loop's feet if the child returns into it; it then reads end of
    // input and exits, and as it leads no group it ends nothing).
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null < 0 {
            return;
        }
        for fd in &PROTOCOL_FDS {
            let fd = fd.load(Ordering::Relaxed);
            if fd >= 0 {
                libc::dup3(null, fd, libc::O_CLOEXEC);
            }
        }
        libc::close(null);
    }
}

/// Prepares a runner process: dies with its client (and takes its process
/// group along), keeps the protocol descriptors out of processes its calls
/// start (close-on-exec, and closed in forked children). Returns the
/// protocol streams: calls in, answers out.
fn runner_setup() -> std::io::Result<(std::fs::File, std::fs::File)> {
    arm_client_death();
    keep_freed_memory();
    let (calls, answers) = protocol_fds()?;
    for (slot, fd) in PROTOCOL_FDS.iter().zip([calls, answers]) {
        // SAFETY: fcntl on descriptors the pool passed us.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            return Err(std::io::Error::other(format!(
                "protocol descriptor {fd} from `{RUNNER_FDS_ENV}` is not open: {}",
                std::io::Error::last_os_error()
            )));
        }
        slot.store(fd, Ordering::Relaxed);
    }
    // SAFETY: registers a child-side fork handler that only calls close.
    unsafe {
        libc::pthread_atfork(None, None, Some(close_protocol_fds_in_child));
    }
    // SAFETY: the two descriptors are open (checked above) and from now on
    // owned by these files alone.
    Ok(unsafe {
        (
            std::fs::File::from_raw_fd(calls),
            std::fs::File::from_raw_fd(answers),
        )
    })
}

fn peak_rss_bytes() -> u64 {
    // SAFETY: getrusage fills the struct we pass.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) == 0 {
            (usage.ru_maxrss as u64) * 1024
        } else {
            0
        }
    }
}

fn single((ok, payload): (bool, Vec<u8>)) -> Answer {
    if ok {
        Answer::Ok(payload)
    } else {
        Answer::Err(payload)
    }
}

fn batch_error(call_id: u32, e: impl Display) -> RunnerError {
    RunnerError {
        error_type: "ProtocolError".into(),
        message: format!("the batch of call {call_id} is unreadable: {e}"),
        traceback: String::new(),
        payload: None,
    }
}

/// The runner loop: read function and call frames from the protocol input
/// (the descriptors in `QUELEA_RUNNER_FDS`, never stdin), answer each call
/// in order on the protocol output. When the input ends (the client is
/// gone), the runner ends its process group, itself included.
pub fn serve(functions: &Functions) -> std::io::Result<()> {
    let (proto_in, proto_out) = runner_setup()?;
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let trace = std::backtrace::Backtrace::force_capture();
        PANIC_BACKTRACE.with(|b| *b.borrow_mut() = Some(format!("{info}\n{trace}")));
        if std::env::var_os("QUELEA_RUNNER_VERBOSE_PANICS").is_some() {
            default_hook(info);
        }
    }));

    let mut input = BufReader::with_capacity(1 << 16, proto_in);
    let mut output = BufWriter::with_capacity(1 << 16, proto_out);
    let mut frame = Vec::with_capacity(256);
    runner_protocol::encode_ready(&mut frame, std::process::id());
    runner_protocol::write_all(&mut output, &frame)?;

    let mut names: HashMap<u32, String> = HashMap::new();
    while let Some(message) = runner_protocol::read_to_runner(&mut input)? {
        match message {
            ToRunner::Function {
                function_id,
                payload,
            } => {
                let name = String::from_utf8(payload).map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "function name is not UTF-8",
                    )
                })?;
                names.insert(function_id, name);
            }
            ToRunner::Call {
                function_id,
                call_id,
                count,
                select,
                input: data,
            } => {
                let run = |input: &[u8]| match names.get(&function_id) {
                    Some(name) => functions.call(name, input),
                    None => Err(RunnerError {
                        error_type: "ProtocolError".into(),
                        message: format!("call {call_id} names unknown function id {function_id}"),
                        traceback: String::new(),
                        payload: None,
                    }),
                };
                let entry = |result: Result<Vec<u8>, RunnerError>| match result {
                    Ok(bytes) => (true, bytes),
                    Err(error) => (
                        false,
                        serde_json::to_vec(&error).expect("runner errors serialize"),
                    ),
                };
                let (answer_id, answer) = if count <= 1 {
                    (call_id, single(entry(run(&data))))
                } else {
                    match runner_protocol::decode_batch_input(&data) {
                        Err(e) => (call_id, single(entry(Err(batch_error(call_id, e))))),
                        Ok(inputs) if select == runner_protocol::ALL => {
                            let entries = inputs.iter().map(|i| entry(run(i))).collect();
                            (call_id, Answer::Each(entries))
                        }
                        Ok(inputs) => {
                            let result = match inputs.get(select as usize) {
                                Some(input) => run(input),
                                None => Err(batch_error(
                                    call_id,
                                    format!("element {select} is not in a batch of {count}"),
                                )),
                            };
                            (call_id + select, single(entry(result)))
                        }
                    }
                };
                frame.clear();
                runner_protocol::encode_done(&mut frame, answer_id, &answer, peak_rss_bytes());
                // One flush per call: the runtime must know exactly which
                // call is running if this process dies next.
                output.write_all(&frame)?;
                output.flush()?;
            }
        }
    }
    // End of input: the pool is gone. Take the processes our calls left
    // behind along.
    end_own_group();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Oops;
    impl Display for Oops {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("oops")
        }
    }

    #[test]
    fn registered_functions_run_and_fail_clearly() {
        let mut fns = Functions::new();
        let add = fns.register("add", |(a, b): (i64, i64)| a + b);
        assert_eq!(add.name(), "add");
        fns.register_fallible("fail", |_: ()| Err::<(), _>(Oops));
        fns.register("boom", |_: ()| -> () { panic!("kaboom") });
        assert_eq!(fns.call("add", b"[2,3]").unwrap(), b"5");
        let err = fns.call("fail", b"null").unwrap_err();
        assert_eq!(
            (err.error_type.as_str(), err.message.as_str()),
            ("Oops", "oops")
        );
        let err = fns.call("add", b"\"x\"").unwrap_err();
        assert!(err.message.contains("(i64, i64)"), "{}", err.message);
        let err = fns.call("nope", b"1").unwrap_err();
        assert!(err.message.contains("nope"));
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let err = fns.call("boom", b"null").unwrap_err();
        std::panic::set_hook(hook);
        assert_eq!(
            (err.error_type.as_str(), err.message.as_str()),
            ("panic", "kaboom")
        );
    }

    #[test]
    #[should_panic(expected = "already registered")]
    fn duplicate_names_are_refused() {
        let mut fns = Functions::new();
        fns.register("f", |x: i32| x);
        fns.register("f", |x: i32| x);
    }
}
