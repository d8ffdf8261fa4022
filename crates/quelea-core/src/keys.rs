//! The storage key layout. Every object key quelea reads or writes is built
//! here and nowhere else:
//!
//! ```text
//! quelea/jobs/<executor_id>/functions/<sha256>        serialized function, once per content
//! quelea/jobs/<executor_id>/<job_id>/job.json         the job spec
//! quelea/jobs/<executor_id>/<job_id>/data             concatenated inputs (when not inline)
//! quelea/jobs/<executor_id>/<job_id>/status/<batch>   call statuses, small results inline
//! quelea/jobs/<executor_id>/<job_id>/output/<call>    results too large to inline
//! quelea/jobs/<executor_id>/<job_id>/cancelled        present once the job is cancelled
//! quelea/jobs/<executor_id>/<job_id>/host.lease       a detached job's host heartbeat
//! quelea/jobs/<executor_id>/<job_id>/leases/<server>  a worker server's heartbeat, per job
//! ```

use crate::ids::{CallId, ExecutorId, JobId};

/// The prefix under which quelea keeps all job objects.
pub const ROOT: &str = "quelea/jobs";

pub fn jobs_root() -> String {
    format!("{ROOT}/")
}

pub fn executor_prefix(executor: &ExecutorId) -> String {
    format!("{ROOT}/{executor}/")
}

pub fn function(executor: &ExecutorId, hash: &str) -> String {
    format!("{ROOT}/{executor}/functions/{hash}")
}

/// The keys of one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobKeys {
    prefix: String,
}

impl JobKeys {
    pub fn new(executor: &ExecutorId, job: JobId) -> Self {
        JobKeys {
            prefix: format!("{ROOT}/{executor}/{job}/"),
        }
    }

    /// Everything of the job lives under this prefix (it ends in `/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn spec(&self) -> String {
        format!("{}job.json", self.prefix)
    }

    pub fn data(&self) -> String {
        format!("{}data", self.prefix)
    }

    pub fn status_prefix(&self) -> String {
        format!("{}status/", self.prefix)
    }

    /// One batch of statuses; `batch` orders batches of one writer.
    pub fn status_batch(&self, writer: &str, batch: u64) -> String {
        format!("{}status/{writer}-{batch:08}.json", self.prefix)
    }

    pub fn output(&self, call: CallId) -> String {
        format!("{}output/{call}", self.prefix)
    }

    /// The claim of Invocation `id` (see `Invocation::id`): created once, by
    /// the first worker runtime to receive it.
    pub fn claim(&self, id: &str) -> String {
        format!("{}claims/{id}", self.prefix)
    }

    pub fn cancelled(&self) -> String {
        format!("{}cancelled", self.prefix)
    }

    /// The heartbeat a detached job's host rewrites while it runs the job.
    pub fn host_lease(&self) -> String {
        format!("{}host.lease", self.prefix)
    }

    /// Where the worker servers running calls of the job keep their leases.
    pub fn server_leases(&self) -> String {
        format!("{}leases/", self.prefix)
    }

    /// The lease of the worker server `name` (`<machine>-<pid>`).
    pub fn server_lease(&self, name: &str) -> String {
        format!("{}leases/{name}.lease", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::JobKind;

    #[test]
    fn layout() {
        let exec: ExecutorId = "abc123-0".parse().unwrap();
        let keys = JobKeys::new(&exec, JobId::new(JobKind::Map, 1));
        assert_eq!(keys.prefix(), "quelea/jobs/abc123-0/M001/");
        assert_eq!(keys.spec(), "quelea/jobs/abc123-0/M001/job.json");
        assert_eq!(
            keys.output(CallId(7)),
            "quelea/jobs/abc123-0/M001/output/00007"
        );
        assert_eq!(
            keys.status_batch("w1", 3),
            "quelea/jobs/abc123-0/M001/status/w1-00000003.json"
        );
        assert_eq!(function(&exec, "ff"), "quelea/jobs/abc123-0/functions/ff");
    }
}
