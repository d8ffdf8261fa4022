//! Retries: which failed calls run again, decided the same way by the
//! client that resubmits them and by the worker that writes their statuses
//! (a failure that will be retried is stored `retried`, not final).

use serde::{Deserialize, Serialize};

use crate::model::FailureReason;

/// A job's retry policy: how many times a failed call runs again, and
/// whether the function's own failures count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Runs after the first (0: none).
    pub retries: u32,
    /// Also retry user errors (the function raised, panicked or returned an
    /// error); timeouts, out of memory, crashed runners and lost calls are
    /// always retried.
    #[serde(default)]
    pub user_errors: bool,
}

impl RetryPolicy {
    pub fn is_none(&self) -> bool {
        self.retries == 0
    }

    /// Whether a call that failed for `reason` on `attempt` (0 the first)
    /// runs again. A cancelled call never does.
    pub fn retries(&self, reason: FailureReason, attempt: u32) -> bool {
        attempt < self.retries
            && match reason {
                FailureReason::Cancelled => false,
                FailureReason::UserError => self.user_errors,
                FailureReason::Timeout
                | FailureReason::OutOfMemory
                | FailureReason::WorkerCrashed => true,
            }
    }

    /// The reasons a failure of `attempt` is retried for (what an
    /// Invocation of that attempt carries to the worker).
    pub fn retry_on(&self, attempt: u32) -> Vec<FailureReason> {
        [
            FailureReason::UserError,
            FailureReason::Timeout,
            FailureReason::OutOfMemory,
            FailureReason::WorkerCrashed,
        ]
        .into_iter()
        .filter(|&reason| self.retries(reason, attempt))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_up_to_the_count_and_user_errors_only_when_asked() {
        let policy = RetryPolicy {
            retries: 2,
            user_errors: false,
        };
        assert!(policy.retries(FailureReason::WorkerCrashed, 0));
        assert!(policy.retries(FailureReason::Timeout, 1));
        assert!(!policy.retries(FailureReason::Timeout, 2));
        assert!(!policy.retries(FailureReason::UserError, 0));
        assert!(!policy.retries(FailureReason::Cancelled, 0));
        assert_eq!(policy.retry_on(2), vec![]);
        let policy = RetryPolicy {
            retries: 1,
            user_errors: true,
        };
        assert_eq!(policy.retry_on(0).len(), 4);
        assert!(RetryPolicy::default().retry_on(0).is_empty());
    }
}
