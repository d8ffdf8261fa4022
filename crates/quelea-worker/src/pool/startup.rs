//! Start-up: spawning a runner, its ready handshake, the bound on how long
//! that may take, and when repeated start failures mark the pool broken.

use std::io::Read;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{lock, process, spawn_thread};
use crate::runner_protocol::{self, FromRunner, RUNNER_PROTOCOL_VERSION};

/// How long a runner may take to say ready.
pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Runners that die before saying ready this many times in a row mark the
/// pool broken instead of being restarted forever.
pub(super) const MAX_START_FAILURES: u32 = 3;

/// Reads the runner's first frame: it must be `Ready` in our protocol version.
pub(super) fn handshake(stdout: &mut impl Read) -> Result<(), String> {
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

/// Consecutive start failures of one slot.
#[derive(Debug, Default)]
pub(super) struct StartFailures(u32);

impl StartFailures {
    /// A runner said ready: the count starts again.
    pub(super) fn started(&mut self) {
        self.0 = 0;
    }

    /// A runner failed to start; true if the slot should give up (the pool
    /// is then broken), false to try again.
    pub(super) fn failed(&mut self) -> bool {
        self.0 += 1;
        self.0 >= MAX_START_FAILURES
    }

    pub(super) fn count(&self) -> u32 {
        self.0
    }
}

/// Bounds how long a runner may take to say ready: SIGKILLs it at the
/// deadline unless stopped first.
pub(super) struct ReadyWatch {
    done: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl ReadyWatch {
    /// `pid` must be an unreaped child that the caller reaps only after
    /// [`ReadyWatch::stop`] returned.
    pub(super) fn start(pid: i32, deadline: Instant) -> Self {
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let d = done.clone();
        let thread = spawn_thread("quelea-ready-watch".into(), move || {
            let (flag, cond) = &*d;
            let mut finished = lock(flag);
            while !*finished {
                let now = Instant::now();
                if now >= deadline {
                    // SAFETY: the caller reaps `pid` only after stop(), which
                    // joins this thread first: `pid` still names our child,
                    // the leader of its process group.
                    unsafe {
                        process::kill_group(pid);
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

    /// Stops the watch; once this returns it never signals `pid`.
    pub(super) fn stop(mut self) {
        *lock(&self.done.0) = true;
        self.done.1.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::Command;

    use super::*;

    #[test]
    fn the_handshake_wants_ready_in_our_version() {
        let mut ok = Vec::new();
        runner_protocol::encode_ready(&mut ok, 42);
        assert_eq!(handshake(&mut &ok[..]), Ok(()));

        let mut wrong = Vec::new();
        wrong.extend_from_slice(&9u32.to_le_bytes());
        wrong.push(runner_protocol::TAG_READY);
        wrong.extend_from_slice(&(RUNNER_PROTOCOL_VERSION + 1).to_le_bytes());
        wrong.extend_from_slice(&42u32.to_le_bytes());
        let e = handshake(&mut &wrong[..]).unwrap_err();
        assert!(e.contains("protocol version"), "{e}");

        let mut done = Vec::new();
        runner_protocol::encode_done(&mut done, 1, &runner_protocol::Answer::Ok(b"x".to_vec()), 0);
        let e = handshake(&mut &done[..]).unwrap_err();
        assert!(e.contains("before saying ready"), "{e}");

        let e = handshake(&mut &b""[..]).unwrap_err();
        assert_eq!(e, "runner exited before saying ready");

        let e = handshake(&mut &b"\x00\x00\x00\x00"[..]).unwrap_err();
        assert!(e.starts_with("runner protocol error"), "{e}");
    }

    #[test]
    fn three_start_failures_in_a_row_give_up() {
        let mut failures = StartFailures::default();
        assert!(!failures.failed());
        assert!(!failures.failed());
        failures.started();
        assert_eq!(failures.count(), 0);
        assert!(!failures.failed());
        assert!(!failures.failed());
        assert!(failures.failed());
        assert_eq!(failures.count(), MAX_START_FAILURES);
    }

    #[test]
    fn the_ready_watch_kills_a_runner_that_never_says_ready() {
        let mut child = Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let watch = ReadyWatch::start(
            child.id() as i32,
            Instant::now() + Duration::from_millis(50),
        );
        // The watch kills it; wait() returns once it did (the 30 s sleep
        // otherwise bounds this test).
        let status = child.wait().unwrap();
        watch.stop();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn a_stopped_ready_watch_never_signals() {
        let mut child = Command::new("sleep")
            .arg("0.3")
            .process_group(0)
            .spawn()
            .unwrap();
        let watch = ReadyWatch::start(
            child.id() as i32,
            Instant::now() + Duration::from_millis(100),
        );
        watch.stop();
        let status = child.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }
}
