//! A job's inputs given in parts, in call order, while the front end is
//! still encoding the rest: every job's inputs reach its backend through an
//! [`InputFeed`]. Where the runtime is this process's own, each part goes
//! to it at once, so the first calls run while the client serializes the
//! others (a map of big arguments does not wait for all of them to be
//! pickled). Remote backends and the detached-job host take a job whole
//! (its Invocations, its data object), so there the parts are held until
//! [`InputFeed::finish`].

use std::sync::{Arc, Weak};

use super::{Inner, RawFunction};
use crate::error::{Error, Result};
use crate::job::JobState;
use crate::retry::Retrier;

/// A front end sends its first part once it holds this much encoded input,
/// each next one at twice the last, up to [`MAX_PART_BYTES`]: a big map's
/// first calls start at once, a small map is one part.
pub const FIRST_PART_BYTES: usize = 1 << 20;
/// The largest part (see [`FIRST_PART_BYTES`]).
pub const MAX_PART_BYTES: usize = 64 << 20;
/// A part also closes at this many inputs: a front end that holds an
/// object per encoded input (Python's bytes) lets them go part by part.
pub const MAX_PART_CALLS: usize = 8192;

/// Groups encoded inputs into parts as [`FIRST_PART_BYTES`] and
/// [`MAX_PART_CALLS`] say.
#[derive(Debug)]
pub struct Parts {
    part: Vec<bytes::Bytes>,
    bytes: usize,
    target: usize,
}

impl Default for Parts {
    fn default() -> Self {
        Parts {
            part: Vec::new(),
            bytes: 0,
            target: FIRST_PART_BYTES,
        }
    }
}

impl Parts {
    /// Adds the next input; returns the part it closes, if it closes one.
    pub fn push(&mut self, input: bytes::Bytes) -> Option<Vec<bytes::Bytes>> {
        self.bytes += input.len();
        self.part.push(input);
        if self.bytes < self.target && self.part.len() < MAX_PART_CALLS {
            return None;
        }
        self.bytes = 0;
        self.target = (2 * self.target).min(MAX_PART_BYTES);
        Some(std::mem::take(&mut self.part))
    }

    /// The last part (maybe empty).
    pub fn rest(self) -> Vec<bytes::Bytes> {
        self.part
    }
}

/// The inputs of one job's runner calls, given in order (see the module
/// docs). A feed dropped or abandoned before every input was given cancels
/// its job: the calls already sent stop, the others end cancelled, and no
/// future waits for an input that never comes.
pub struct InputFeed {
    inner: Weak<Inner>,
    job: Arc<JobState>,
    function: RawFunction,
    detached: bool,
    /// Runner calls given so far.
    given: u32,
    /// The job's runner calls in all.
    calls: u32,
    /// Inputs held for a backend that takes the job whole (`None`: sent to
    /// this process's runtime as they come).
    held: Option<Vec<bytes::Bytes>>,
    retrier: Option<Arc<Retrier>>,
    /// Finished, or stopped: nothing more to do.
    ended: bool,
}

impl InputFeed {
    pub(super) fn new(
        inner: Weak<Inner>,
        job: Arc<JobState>,
        function: RawFunction,
        detached: bool,
    ) -> InputFeed {
        let spec = &job.spec;
        let calls = spec.total_calls.div_ceil(spec.chunksize.max(1));
        let in_process = inner
            .upgrade()
            .is_some_and(|inner| inner.in_process(detached));
        InputFeed {
            inner,
            job,
            function,
            detached,
            given: 0,
            calls,
            held: (!in_process).then(Vec::new),
            retrier: None,
            ended: false,
        }
    }

    /// The job being fed.
    pub(crate) fn job(&self) -> &Arc<JobState> {
        &self.job
    }

    /// Gives the inputs of the job's next runner calls. An error (too many
    /// inputs, an executor gone, a runtime that refused them) stops the job.
    pub fn send(&mut self, inputs: Vec<bytes::Bytes>) -> Result<()> {
        if self.ended {
            return Err(Error::InvalidArgument {
                name: "inputs",
                message: format!(
                    "the inputs of job {} are complete or were abandoned",
                    self.job.job_key()
                ),
            });
        }
        let room = (self.calls - self.given) as usize;
        if inputs.len() > room {
            let error = Error::InvalidArgument {
                name: "inputs",
                message: format!(
                    "job {} has {} runner calls, but {} inputs were given",
                    self.job.job_key(),
                    self.calls,
                    self.given as usize + inputs.len()
                ),
            };
            self.stop(&error.to_string());
            return Err(error);
        }
        if inputs.is_empty() {
            return Ok(());
        }
        let count = inputs.len() as u32;
        let sent = match &mut self.held {
            Some(held) => {
                held.extend(inputs);
                Ok(())
            }
            None => match self.inner.upgrade() {
                Some(inner) => inner.send_in_process(
                    &self.job,
                    &self.function,
                    self.given,
                    inputs,
                    &mut self.retrier,
                ),
                None => Err(closed()),
            },
        };
        match sent {
            Ok(()) => {
                self.given += count;
                Ok(())
            }
            Err(error) => {
                self.stop(&format!("its inputs could not be sent: {error}"));
                Err(error)
            }
        }
    }

    /// Says every input was given (and sends a held job whole). Fewer
    /// inputs than the job has runner calls is an error, and stops the job.
    pub fn finish(mut self) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        if self.given != self.calls {
            let error = Error::InvalidArgument {
                name: "inputs",
                message: format!(
                    "job {} has {} runner calls, but only {} inputs were given",
                    self.job.job_key(),
                    self.calls,
                    self.given
                ),
            };
            self.stop(&error.to_string());
            return Err(error);
        }
        let Some(held) = self.held.take() else {
            self.ended = true;
            return Ok(());
        };
        let sent = match self.inner.upgrade() {
            Some(inner) => inner.send_whole(&self.job, &self.function, held, self.detached),
            None => Err(closed()),
        };
        match sent {
            Ok(()) => {
                self.ended = true;
                Ok(())
            }
            Err(error) => {
                self.stop(&format!("it could not be sent: {error}"));
                Err(error)
            }
        }
    }

    /// Stops the job because its inputs will not all come (`why`: what
    /// stopped them, said in every call's cancel).
    pub fn abandon(mut self, why: &str) {
        self.stop(why);
    }

    fn stop(&mut self, why: &str) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        self.job.cancel(why);
        self.job.run_cancel_hook();
    }
}

impl Drop for InputFeed {
    fn drop(&mut self) {
        self.stop("its inputs stopped before all were given");
    }
}

fn closed() -> Error {
    Error::InvalidArgument {
        name: "executor",
        message: "the executor was closed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_close_at_doubling_sizes_and_at_max_calls() {
        let mut parts = Parts::default();
        let mib = bytes::Bytes::from(vec![0u8; FIRST_PART_BYTES]);
        assert_eq!(parts.push(mib.clone()).map(|p| p.len()), Some(1));
        // The next one closes at twice as much.
        assert!(parts.push(mib.clone()).is_none());
        assert_eq!(parts.push(mib.clone()).map(|p| p.len()), Some(2));
        // Small inputs: a part closes at MAX_PART_CALLS of them.
        let small = bytes::Bytes::from_static(b"x");
        let closed: Vec<usize> = (0..2 * MAX_PART_CALLS + 3)
            .filter_map(|_| parts.push(small.clone()).map(|p| p.len()))
            .collect();
        assert_eq!(closed, vec![MAX_PART_CALLS, MAX_PART_CALLS]);
        assert_eq!(parts.rest().len(), 3);
    }
}
