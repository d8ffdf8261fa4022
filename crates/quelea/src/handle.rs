//! The job handle: how another process finds and follows a job.

use serde::{Deserialize, Serialize};

use quelea_core::ids::{ExecutorId, JobId};
use quelea_storage::Location;

use crate::error::{Error, Result};

/// A job, addressable from outside the process that started it. It holds no
/// secrets: the attaching process brings its own credentials.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobHandle {
    pub version: u32,
    pub storage: Location,
    pub executor_id: ExecutorId,
    pub job_id: JobId,
    pub total_calls: u32,
    /// After this Unix time, calls with no final status are failed as timeouts.
    pub deadline_ts: f64,
}

impl JobHandle {
    pub const VERSION: u32 = 1;

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("handles serialize")
    }

    pub fn from_json(text: &str) -> Result<JobHandle> {
        let handle: JobHandle =
            serde_json::from_str(text).map_err(|e| Error::Handle(e.to_string()))?;
        if handle.version != Self::VERSION {
            return Err(Error::Handle(format!(
                "handle version {} is not supported (this build reads version {})",
                handle.version,
                Self::VERSION
            )));
        }
        Ok(handle)
    }
}
