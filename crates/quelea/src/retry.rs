
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use quelea_core::ids::{CallId, JobId, JobKind};
    use quelea_core::keys::JobKeys;
    use quelea_core::model::{
        CallError, CallState, CallStats, FailureReason, FunctionSpec, JobSpec, RunnerKind,
    };
    use quelea_core::retry::RetryPolicy;

    use crate::job::{JobState, Notifier, RunOutcome};

    fn job(calls: u32, retries: u32, user_errors: bool) -> JobState {
        let executor = "abcdef-0".parse().unwrap();
        let job_id = JobId::new(JobKind::Map, 0);
        let spec = JobSpec {
            executor_id: executor,
            job_id,
            function: FunctionSpec {
                runner: RunnerKind::Rust,
                name: "f".into(),
                hash: "00".into(),
            },
            total_calls: calls,
            chunksize: 1,
            timeout_s: 1.0,
            memory_limit_mb: None,
            submit_ts: 0.0,
            push: None,
            retry: RetryPolicy {
                retries,
                user_errors,
            },
        };
        let keys = JobKeys::new(&spec.executor_id, job_id);
        JobState::new(spec, keys, Arc::new(Notifier::default()), CallState::Invoked)
    }

    fn failed(reason: FailureReason, message: &str) -> RunOutcome {
        RunOutcome::Failed(Box::new(CallError {
            reason,
            error_type: "E".into(),
            message: message.into(),
            traceback: String::new(),
            payload: None,
        }))
    }

    fn at(attempt: u32) -> CallStats {
        CallStats {
            attempt,
            ..CallStats::default()
        }
    }

    #[test]
    fn a_retried_failure_is_not_an_end_and_a_late_report_is_ignored() {
        let job = job(2, 1, false);
        let crash = || failed(FailureReason::WorkerCrashed, "crash");
        assert!(!job.complete(CallId(0), at(0), crash()));
        assert_eq!(job.state(CallId(0)), CallState::Invoked);
        assert_eq!(job.stats(CallId(0)).attempt, 1);
        assert_eq!(job.done_count(), 0);
        // Attempt 0's failure again (another copy of its status): ignored.
        assert!(!job.complete(CallId(0), at(0), crash()));
        assert_eq!(job.stats(CallId(0)).attempt, 1);
        // The last attempt's failure is final.
        assert!(job.complete(CallId(0), at(1), crash()));
        assert_eq!(job.state(CallId(0)), CallState::Error);
        assert_eq!(job.stats(CallId(0)).attempt, 1);
        assert_eq!(job.failed_attempts(CallId(0)).len(), 1);
        // User errors only when asked; a final end whatever the policy.
        assert!(job.complete(CallId(1), at(0), failed(FailureReason::UserError, "no")));
        assert_eq!(job.done_count(), 2);
        let job = self::job(1, 3, true);
        assert!(job.complete_final(CallId(0), at(0), failed(FailureReason::Timeout, "t")));
    }

    #[test]
    fn a_failed_batch_retries_each_element_and_stopped_retries_end_it() {
        let job = job(3, 2, true);
        let ended = job.complete_run(
            CallId(0),
            3,
            at(0),
            failed(FailureReason::OutOfMemory, "oom"),
        );
        assert_eq!(ended, 0);
        assert!((0..3).all(|i| job.stats(CallId(i)).attempt == 1));
        job.stop_retries(CallId(1));
        let ended = job.complete_run(
            CallId(0),
            3,
            at(1),
            failed(FailureReason::OutOfMemory, "oom"),
        );
        assert_eq!(ended, 1, "only the stopped call ends");
        assert_eq!(job.state(CallId(1)), CallState::Error);
        assert_eq!(job.stats(CallId(2)).attempt, 2);
        // Cancel is final, and never retried.
        assert_eq!(job.cancel("test"), 2);
        assert!(job.is_complete());
    }
}
