//! Runner processes: how one is started, watched, signalled and reaped.
//!
//! A runner is started with `posix_spawn` (no fork of a large parent) as the
//! leader of its own process group, with
//! - fd 0 on `/dev/null`, fds 1 and 2 on the pool's stderr (the user's: a
//!   call may read, print or close them without touching the protocol);
//! - the protocol on fds [`RUNNER_IN_FD`] (calls in) and [`RUNNER_OUT_FD`]
//!   (answers out), named to the runner in `QUELEA_RUNNER_FDS`.
//!
//! Its death is learned from the process itself, through a pidfd, not from
//! end-of-file on its pipe (which a child it forked may hold open): a read
//! of its answers ends once the runner exited and the pipe holds nothing
//! more, and a write of calls fails once it exited, whoever else holds the
//! pipes. The pool's ends of the pipes are non-blocking and every wait on
//! them also waits on the pidfd.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;

use nix::spawn::{posix_spawnp, PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::Pid;

use super::RunnerCommand;

/// The runner reads calls from this descriptor.
pub const RUNNER_IN_FD: RawFd = 3;
/// The runner writes answers to this descriptor.
pub const RUNNER_OUT_FD: RawFd = 4;
/// Names the two protocol descriptors to the runner: `"<in>,<out>"`.
pub const RUNNER_FDS_ENV: &str = "QUELEA_RUNNER_FDS";

/// A started runner process, ours until [`Runner::wait`] reaps it.
pub(super) struct Runner {
    pid: i32,
    #[cfg_attr(not(test), allow(dead_code))]
    pidfd: Arc<OwnedFd>,
    reaped: bool,
}

/// The pool's end of the pipe the runner reads calls from.
pub(super) struct CallsPipe {
    fd: OwnedFd,
    pidfd: Arc<OwnedFd>,
}

/// The pool's end of the pipe the runner writes answers to. Reads end (0
/// bytes) once the runner exited and the pipe is drained.
pub(super) struct AnswersPipe {
    fd: OwnedFd,
    pidfd: Arc<OwnedFd>,
    exited: bool,
}

fn last_error(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn nix_error(what: &str, e: nix::Error) -> io::Error {
    io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"))
}

/// A pipe, both ends close-on-exec: `(read, write)`.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills the two-element array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(last_error("pipe2"));
    }
    // SAFETY: pipe2 succeeded, so both are fresh descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A close-on-exec copy of `fd` numbered 10 or more, so that the spawn's
/// `dup2` onto 0–4 can neither clobber a source nor be a same-number no-op.
fn dup_high(fd: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new one.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if new < 0 {
        return Err(last_error("fcntl(F_DUPFD_CLOEXEC)"));
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: plain fcntl flag calls on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(last_error("fcntl(O_NONBLOCK)"));
        }
    }
    Ok(())
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(last_error(
            "pidfd_open (runners need Linux 5.3 or later to be watched)",
        ));
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn cstring(bytes: Vec<u8>, what: &str) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the runner's {what} contains a NUL byte"),
        )
    })
}

/// What a runner of slot `slot_index` gets in its environment on top of
/// the pool's own.
fn runner_env(command: &RunnerCommand, slot_index: u32) -> Vec<(OsString, OsString)> {
    let mut env = command.env.clone();
    env.push((
        "QUELEA_RUNNER_PARENT".into(),
        std::process::id().to_string().into(),
    ));
    env.push(("QUELEA_RUNNER_SLOT".into(), slot_index.to_string().into()));
    env.push((
        RUNNER_FDS_ENV.into(),
        format!("{RUNNER_IN_FD},{RUNNER_OUT_FD}").into(),
    ));
    env
}

/// A runner this process forked itself (the Python client, while it had a
/// single thread: a copy of it with its modules loaded starts in a
/// millisecond, where a fresh interpreter takes a hundred), handed to the
/// pool to adopt instead of spawning one. The child leads its own process
/// group, has the protocol on fds [`RUNNER_IN_FD`] and [`RUNNER_OUT_FD`],
/// and waits for the environment frame before it says ready.
pub struct ForkedRunner {
    /// `(pid, calls, answers)` until adopted; a runner never adopted is
    /// ended and reaped when dropped.
    parts: Option<(i32, OwnedFd, OwnedFd)>,
}

impl ForkedRunner {
    /// # Safety
    ///
    /// `pid` must be an unreaped child of this process that leads its own
    /// process group and that nobody else reaps or signals, and `calls`
    /// (the write end of the pipe it reads calls from) and `answers` (the
    /// read end of the pipe it answers on) open descriptors that the
    /// caller gives up.
    pub unsafe fn from_raw(pid: i32, calls: RawFd, answers: RawFd) -> Self {
        // SAFETY: the caller's contract.
        let parts = unsafe {
            (
                pid,
                OwnedFd::from_raw_fd(calls),
                OwnedFd::from_raw_fd(answers),
            )
        };
        ForkedRunner { parts: Some(parts) }
    }

    pub fn pid(&self) -> i32 {
        self.parts.as_ref().map_or(0, |p| p.0)
    }
}

impl Drop for ForkedRunner {
    fn drop(&mut self) {
        if let Some((pid, ..)) = self.parts.take() {
            // SAFETY: the from_raw contract: our unreaped child, its group's leader.
            unsafe {
                kill_group(pid);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

impl std::fmt::Debug for ForkedRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkedRunner")
            .field("pid", &self.pid())
            .finish()
    }
}

/// Takes `forked` on as the runner of slot `slot_index`: from here on it
/// is watched, signalled and reaped as a spawned one is; its first frame
/// is the environment a spawned runner would have had.
pub(super) fn adopt(
    mut forked: ForkedRunner,
    command: &RunnerCommand,
    slot_index: u32,
) -> io::Result<(Runner, CallsPipe, AnswersPipe)> {
    let pidfd = Arc::new(pidfd_open(forked.pid())?);
    let Some((pid, calls, answers)) = forked.parts.take() else {
        return Err(io::Error::other("the forked runner was adopted already"));
    };
    // From here the child is the Runner's to reap, whatever fails.
    let runner = Runner {
        pid,
        pidfd: pidfd.clone(),
        reaped: false,
    };
    for fd in [&calls, &answers] {
        set_nonblocking(fd)?;
        // SAFETY: F_SETFD on a descriptor we own.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(last_error("fcntl(FD_CLOEXEC)"));
        }
    }
    let mut calls = CallsPipe {
        fd: calls,
        pidfd: pidfd.clone(),
    };
    let env = runner_env(command, slot_index);
    let mut frame = Vec::new();
    crate::runner_protocol::encode_environment(
        &mut frame,
        env.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
    );
    calls.write_all(&frame)?;
    Ok((
        runner,
        calls,
        AnswersPipe {
            fd: answers,
            pidfd,
            exited: false,
        },
    ))
}

/// Starts one runner for slot `slot_index`.
pub(super) fn spawn(
    command: &RunnerCommand,
    slot_index: u32,
) -> io::Result<(Runner, CallsPipe, AnswersPipe)> {
    let (calls_r, calls_w) = pipe()?;
    let (answers_r, answers_w) = pipe()?;
    let child_in = dup_high(&calls_r)?;
    let child_out = dup_high(&answers_w)?;
    drop((calls_r, answers_w));
    let devnull = dup_high(&OwnedFd::from(std::fs::File::open("/dev/null")?))?;

    let mut actions = PosixSpawnFileActions::init().map_err(|e| nix_error("spawn", e))?;
    let dup2 = |actions: &mut PosixSpawnFileActions, from: RawFd, to: RawFd| {
        actions
            .add_dup2(from, to)
            .map_err(|e| nix_error("spawn file action", e))
    };
    dup2(&mut actions, devnull.as_raw_fd(), 0)?;
    dup2(&mut actions, libc::STDERR_FILENO, 1)?;
    dup2(&mut actions, child_in.as_raw_fd(), RUNNER_IN_FD)?;
    dup2(&mut actions, child_out.as_raw_fd(), RUNNER_OUT_FD)?;

    let mut attr = PosixSpawnAttr::init().map_err(|e| nix_error("spawn", e))?;
    // Its own process group (pgid = its pid), no blocked signals, SIGPIPE
    // back to its default (Rust and Python parents ignore it).
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETPGROUP
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )
    .map_err(|e| nix_error("spawn", e))?;
    attr.set_pgroup(Pid::from_raw(0))
        .map_err(|e| nix_error("spawn", e))?;
    attr.set_sigmask(&SigSet::empty())
        .map_err(|e| nix_error("spawn", e))?;
    let mut defaults = SigSet::empty();
    defaults.add(Signal::SIGPIPE);
    attr.set_sigdefault(&defaults)
        .map_err(|e| nix_error("spawn", e))?;

    let program = cstring(command.program.as_os_str().as_bytes().to_vec(), "program")?;
    let mut argv = vec![program.clone()];
    for arg in &command.args {
        argv.push(cstring(arg.as_bytes().to_vec(), "arguments")?);
    }
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    env.extend(runner_env(command, slot_index));
    let envp = env
        .into_iter()
        .map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            cstring(kv, "environment")
        })
        .collect::<io::Result<Vec<_>>>()?;

    let pid = posix_spawnp(&program, &actions, &attr, &argv, &envp)
        .map_err(io::Error::from)?
        .as_raw();
    drop((child_in, child_out, devnull));
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => Arc::new(fd),
        Err(e) => {
            // SAFETY: `pid` is the child we just started and have not reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            return Err(e);
        }
    };
    let runner = Runner {
        pid,
        pidfd: pidfd.clone(),
        reaped: false,
    };
    set_nonblocking(&calls_w)?;
    set_nonblocking(&answers_r)?;
    Ok((
        runner,
        CallsPipe {
            fd: calls_w,
            pidfd: pidfd.clone(),
        },
        AnswersPipe {
            fd: answers_r,
            pidfd,
            exited: false,
        },
    ))
}

/// SIGKILLs process group `pid` and process `pid` itself (in case it left
/// its group).
///
/// # Safety
///
/// `pid` must be an unreaped child of ours (a zombie at worst) that leads
/// its process group: then neither the pid nor the group id can have been
/// recycled for another process.
pub(super) unsafe fn kill_group(pid: i32) {
    // SAFETY: the caller's contract above.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
}

impl Runner {
    pub(super) fn pid(&self) -> i32 {
        self.pid
    }

    /// Ends the runner and everything still in its process group.
    pub(super) fn kill_group(&self) {
        if !self.reaped {
            // SAFETY: not reaped yet, and spawned as its group's leader.
            unsafe { kill_group(self.pid) }
        }
    }

    /// True once the runner exited (it may still need reaping).
    #[cfg(test)]
    pub(super) fn exited(&self) -> bool {
        poll_pidfd(&self.pidfd, 0)
    }

    /// Reaps the runner: blocks until it exited.
    pub(super) fn wait(mut self) -> io::Result<ExitStatus> {
        let mut status = 0;
        loop {
            // SAFETY: waitpid on our own unreaped child, into a local.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r == self.pid {
                self.reaped = true;
                return Ok(ExitStatus::from_raw(status));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                self.reaped = true;
                return Err(e);
            }
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill_group();
            // SAFETY: reaping our own child, which was just SIGKILLed.
            unsafe {
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

#[cfg(test)]
fn poll_pidfd(pidfd: &OwnedFd, timeout_ms: i32) -> bool {
    let mut fds = [libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: poll on a one-element array we own.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, timeout_ms) };
    n > 0 && fds[0].revents != 0
}

/// Waits until `fd` is ready for `events` or the runner exited; true if
/// the runner exited.
fn wait_ready_or_exit(fd: &OwnedFd, events: libc::c_short, pidfd: &OwnedFd) -> io::Result<bool> {
    let mut fds = [
        libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        },
        libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: poll on a two-element array we own.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n >= 0 {
            return Ok(fds[1].revents != 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl Read for AnswersPipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: read into the caller's buffer, within its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock if self.exited => {
                    // Exited, and everything it wrote has been read: whoever
                    // else holds the pipe, the runner's stream ends here.
                    return Ok(0);
                }
                io::ErrorKind::WouldBlock => {
                    if wait_ready_or_exit(&self.fd, libc::POLLIN, &self.pidfd)? {
                        self.exited = true;
                    }
                }
                _ => return Err(e),
            }
        }
    }
}

impl Write for CallsPipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: write from the caller's buffer, within its length.
            let n = unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => {
                    if wait_ready_or_exit(&self.fd, libc::POLLOUT, &self.pidfd)? {
                        return Err(io::Error::new(
                            io::ErrorKind::BrokenPipe,
                            "the runner exited",
                        ));
                    }
                }
                _ => return Err(e),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn sh(script: &str) -> RunnerCommand {
        RunnerCommand {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: Vec::new(),
        }
    }

    /// Ends a test's stray process (started in its own session, so that
    /// nothing else would).
    fn end(pid: i32) {
        // SAFETY: a plain signal; the test's own sleep is its only target.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }

    fn read_all(out: &mut AnswersPipe) -> Vec<u8> {
        let mut bytes = Vec::new();
        out.read_to_end(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn the_protocol_is_on_fds_3_and_4_stdin_is_dev_null_and_the_runner_leads_its_group() {
        // The runner echoes fd 3 to fd 4, then reports what fd 0 reads, its
        // pgid and QUELEA_RUNNER_FDS on fd 4.
        let (runner, mut input, mut output) = spawn(
            &sh(r#"head -c 5 <&3 >&4; printf "[%s]" "$(cat)" >&4; printf %s "$(cut -d' ' -f5 /proc/$$/stat)" >&4; printf " $QUELEA_RUNNER_FDS" >&4"#),
            0,
        )
        .unwrap();
        input.write_all(b"hello").unwrap();
        let got = String::from_utf8(read_all(&mut output)).unwrap();
        assert_eq!(got, format!("hello[]{} 3,4", runner.pid()));
        assert!(runner.wait().unwrap().success());
    }

    #[test]
    fn the_stream_ends_when_the_runner_exits_though_a_child_keeps_the_pipe_open() {
        // The runner leaves a child holding fd 4 (in another group, so that
        // killing the runner's group does not end it) and exits.
        let (runner, _input, mut output) =
            spawn(&sh("setsid sleep 30 & printf \"bye $!\" >&4; exit 7"), 0).unwrap();
        let started = Instant::now();
        let got = String::from_utf8(read_all(&mut output)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        let child = got.strip_prefix("bye ").unwrap().parse::<i32>().unwrap();
        assert!(runner.exited());
        assert_eq!(runner.wait().unwrap().code(), Some(7));
        end(child);
    }

    #[test]
    fn writing_to_an_exited_runner_fails_though_a_child_holds_its_input() {
        let (runner, mut input, mut output) =
            spawn(&sh("setsid sleep 30 & printf $! >&4; exit 0"), 0).unwrap();
        let child = String::from_utf8(read_all(&mut output)).unwrap();
        assert!(runner.exited());
        // Far more than a pipe holds: without the pidfd this would block.
        let err = input.write_all(&vec![0u8; 1 << 20]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        runner.wait().unwrap();
        end(child.parse().unwrap());
    }

    #[test]
    fn killing_the_group_ends_the_children_left_in_it() {
        let (runner, _input, output) = spawn(
            &sh("sleep 300 4>&- & printf '%s\\n' $! >&4; exec sleep 300 4>&-"),
            0,
        )
        .unwrap();
        let mut pid = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(output), &mut pid).unwrap();
        let child: i32 = pid.trim().parse().unwrap();
        runner.kill_group();
        let status = runner.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        let deadline = Instant::now() + Duration::from_secs(10);
        // Gone, or a zombie waiting for its new parent to reap it.
        while std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        }) {
            assert!(Instant::now() < deadline, "child {child} survived");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_program_that_cannot_start_is_an_error() {
        let command = RunnerCommand {
            program: "/nonexistent/quelea-runner".into(),
            args: Vec::new(),
            env: Vec::new(),
        };
        assert!(spawn(&command, 0).is_err());
    }
}
