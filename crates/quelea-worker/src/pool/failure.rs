//! Failure classification: why a runner died, and what its calls report.
//!
//! Pure functions from what the pool knows (the reason it recorded before
//! killing a runner, the runner's exit status, the runner's own error report)
//! to the [`CallError`] a call ends with.

use std::time::Duration;

use quelea_core::ids::CallId;
use quelea_core::model::{CallError, FailureReason};

use crate::rust_runner::RunnerError;

/// Why the pool killed a runner, recorded before the kill so that the death
/// that follows is reported for what it is rather than as a crash.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum KillReason {
    Timeout,
    OutOfMemory { rss: u64 },
    Cancelled,
    Shutdown,
}

/// A runner's exit status in words: the signal (by name when it is a usual
/// one) or the exit code.
pub(super) fn describe_exit(status: std::process::ExitStatus) -> String {
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

/// What the call a runner was running when it died ends with.
///
/// `reason` is what the pool recorded before killing it (`None`: nobody
/// killed it, it crashed), `status` its exit status in words.
pub(super) fn death_error(
    reason: Option<KillReason>,
    call_id: CallId,
    timeout: Duration,
    memory_limit_bytes: Option<u64>,
    status: &str,
) -> CallError {
    match reason {
        Some(KillReason::Timeout) => CallError {
            reason: FailureReason::Timeout,
            error_type: "TimeoutError".into(),
            message: format!(
                "call {call_id} ran past its timeout of {:.3} s and its runner was killed",
                timeout.as_secs_f64()
            ),
            traceback: String::new(),
            payload: None,
        },
        Some(KillReason::OutOfMemory { rss }) => CallError {
            reason: FailureReason::OutOfMemory,
            error_type: "MemoryError".into(),
            message: format!(
                "call {call_id} used {} MiB, over its memory limit of {} MiB; its runner was killed",
                rss >> 20,
                memory_limit_bytes.unwrap_or(0) >> 20
            ),
            traceback: String::new(),
            payload: None,
        },
        Some(KillReason::Cancelled) | Some(KillReason::Shutdown) => {
            cancelled_error(&format!("call {call_id} was cancelled while running"))
        }
        None => CallError {
            reason: FailureReason::WorkerCrashed,
            error_type: "WorkerCrashed".into(),
            message: format!("the runner running call {call_id} died: {status}"),
            traceback: String::new(),
            payload: None,
        },
    }
}

/// A call ended as cancelled.
pub(super) fn cancelled_error(message: &str) -> CallError {
    CallError {
        reason: FailureReason::Cancelled,
        error_type: "Cancelled".into(),
        message: message.into(),
        traceback: String::new(),
        payload: None,
    }
}

/// A call that could not run because runners cannot start.
pub(super) fn start_failure(reason: &str) -> CallError {
    CallError {
        reason: FailureReason::WorkerCrashed,
        error_type: "WorkerStartError".into(),
        message: reason.to_owned(),
        traceback: String::new(),
        payload: None,
    }
}

/// The error a runner reported for a call that raised (its `Done` frame with
/// `ok` false): the user's exception, or a clear error if the report cannot
/// be read.
pub(super) fn user_error(payload: &[u8]) -> CallError {
    match serde_json::from_slice::<RunnerError>(payload) {
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
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use super::*;

    #[test]
    fn exit_statuses_are_described_by_signal_name_or_code() {
        // Raw wait statuses: a signal in the low 7 bits, an exit code in the next byte.
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGKILL)),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGSEGV)),
            "killed by signal 11 (SIGSEGV)"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGUSR1)),
            format!("killed by signal {} (signal)", libc::SIGUSR1)
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(3 << 8)),
            "exited with code 3"
        );
        assert_eq!(describe_exit(ExitStatus::from_raw(0)), "exited with code 0");
    }

    #[test]
    fn a_death_is_classified_by_the_recorded_reason_first() {
        let id = CallId(7);
        let t = Duration::from_millis(1500);
        let e = death_error(
            Some(KillReason::Timeout),
            id,
            t,
            None,
            "killed by signal 9 (SIGKILL)",
        );
        assert_eq!(e.reason, FailureReason::Timeout);
        assert_eq!(e.error_type, "TimeoutError");
        assert!(e.message.contains("timeout of 1.500 s"), "{}", e.message);

        let e = death_error(
            Some(KillReason::OutOfMemory { rss: 300 << 20 }),
            id,
            t,
            Some(256 << 20),
            "killed by signal 9 (SIGKILL)",
        );
        assert_eq!(e.reason, FailureReason::OutOfMemory);
        assert_eq!(e.error_type, "MemoryError");
        assert!(e.message.contains("used 300 MiB"), "{}", e.message);
        assert!(e.message.contains("limit of 256 MiB"), "{}", e.message);

        for reason in [KillReason::Cancelled, KillReason::Shutdown] {
            let e = death_error(Some(reason), id, t, None, "killed by signal 9 (SIGKILL)");
            assert_eq!(e.reason, FailureReason::Cancelled);
        }
    }

    #[test]
    fn an_unrecorded_death_is_a_crash_with_its_exit_status() {
        let e = death_error(
            None,
            CallId(3),
            Duration::from_secs(1),
            None,
            "killed by signal 11 (SIGSEGV)",
        );
        assert_eq!(e.reason, FailureReason::WorkerCrashed);
        assert_eq!(e.error_type, "WorkerCrashed");
        assert!(e.message.contains("SIGSEGV"), "{}", e.message);
    }

    #[test]
    fn runner_error_reports_are_read_or_reported_unreadable() {
        let report = serde_json::to_vec(&RunnerError {
            error_type: "ValueError".into(),
            message: "bad".into(),
            traceback: "tb".into(),
            payload: Some("AAEC".into()),
        })
        .unwrap();
        let e = user_error(&report);
        assert_eq!(e.reason, FailureReason::UserError);
        assert_eq!(e.error_type, "ValueError");
        assert_eq!(e.message, "bad");
        assert_eq!(e.payload.as_deref(), Some(&[0u8, 1, 2][..]));

        let e = user_error(b"not json");
        assert_eq!(e.error_type, "RunnerError");
        assert!(
            e.message.starts_with("unreadable error report"),
            "{}",
            e.message
        );
    }
}
