//! A job's finished runs, compactly: the client holds one of these per
//! finished run (a batch, or a call alone) for the life of the job, so at
//! `chunksize=1` its size is the client's memory per call.
//!
//! A run keeps only what differs from run to run (its calls, its times, where
//! its outcome is); the rest of its stats (submit time, runner, memory,
//! attempt, ...) is one [`Profile`] shared with the recent runs that have the
//! same, and a small result lives in one shared byte arena instead of an
//! allocation of its own. Every stat reads back exactly as it was recorded.

use std::sync::Arc;

use quelea_core::model::{CallError, CallStats};

/// Results up to this size go in the arena; larger ones keep their own
/// allocation (its overhead is small beside them, and the arena never
/// copies big blobs as it grows).
const ARENA_MAX: usize = 4096;

/// How many of the latest profiles a new run is matched against: the runs
/// of one job alternate between a few runners whose stats rarely change.
const PROFILE_LOOKBACK: usize = 8;

/// How a run ended, as recorded.
pub(crate) enum EndOutcome {
    Own(Vec<u8>),
    Shared(Arc<Vec<u8>>),
    Failed(Box<CallError>),
}

/// A finished call's outcome, borrowed from the job's records.
pub(crate) enum OutcomeRef<'a> {
    Own(&'a [u8]),
    /// Element `index` of the `count` values in a batch's shared result.
    Shared {
        blob: &'a Arc<Vec<u8>>,
        index: u32,
        count: u32,
    },
    Failed(&'a CallError),
}

/// One finished run: 40 bytes.
#[derive(Clone, Copy)]
struct Run {
    first: u32,
    count: u32,
    /// Meaningful where the profile says the stat was set.
    start_ts: f64,
    end_ts: f64,
    /// The end of this run's bytes in the arena; they start where the
    /// previous run's end (empty for a run whose outcome is elsewhere).
    arena_end: u64,
    profile: u32,
    /// Index in `Runs::others`, or [`IN_ARENA`].
    other: u32,
}

const IN_ARENA: u32 = u32::MAX;

/// The stats a run shares with others like it.
#[derive(Clone, Copy, PartialEq)]
struct Profile {
    /// `f64::to_bits`, so that equality is exact.
    submit_ts: u64,
    peak_memory_bytes: u64,
    /// None: the size of the run's result as held (the usual case).
    result_size: Option<u64>,
    worker_id: Option<u32>,
    memory_mb: Option<u32>,
    attempt: u32,
    /// The run's first call's; its other calls' is false.
    cold_start: bool,
    has_start: bool,
    has_end: bool,
}

/// The finished runs of one job, in the order they ended.
#[derive(Default)]
pub(super) struct Runs {
    runs: Vec<Run>,
    profiles: Vec<Profile>,
    arena: Vec<u8>,
    /// Outcomes that are not a small result of the run's own: large
    /// results, shared batch results, failures.
    others: Vec<EndOutcome>,
}

/// The times and runner of a run, as `summary` compares them.
pub(super) struct Timing {
    pub start_ts: Option<f64>,
    pub end_ts: Option<f64>,
    pub worker_id: Option<u32>,
}

impl Runs {
    /// Records a run of `count` calls from `first`; returns its slot.
    pub fn push(&mut self, first: u32, count: u32, stats: &CallStats, outcome: EndOutcome) -> u32 {
        let slot = self.runs.len() as u32;
        let held_size = match &outcome {
            EndOutcome::Own(bytes) => bytes.len() as u64,
            EndOutcome::Shared(blob) => blob.len() as u64,
            EndOutcome::Failed(_) => 0,
        };
        let profile = self.profile(Profile {
            submit_ts: stats.submit_ts.to_bits(),
            peak_memory_bytes: stats.peak_memory_bytes,
            result_size: (stats.result_size != held_size).then_some(stats.result_size),
            worker_id: stats.worker_id,
            memory_mb: stats.memory_mb,
            attempt: stats.attempt,
            cold_start: stats.cold_start,
            has_start: stats.start_ts.is_some(),
            has_end: stats.end_ts.is_some(),
        });
        let other = match outcome {
            EndOutcome::Own(bytes) if bytes.len() <= ARENA_MAX => {
                self.arena.extend_from_slice(&bytes);
                IN_ARENA
            }
            outcome => {
                self.others.push(outcome);
                (self.others.len() - 1) as u32
            }
        };
        self.runs.push(Run {
            first,
            count,
            start_ts: stats.start_ts.unwrap_or_default(),
            end_ts: stats.end_ts.unwrap_or_default(),
            arena_end: self.arena.len() as u64,
            profile,
            other,
        });
        slot
    }

    fn profile(&mut self, profile: Profile) -> u32 {
        let recent = self.profiles.len().saturating_sub(PROFILE_LOOKBACK);
        if let Some(k) = self.profiles[recent..].iter().rposition(|p| *p == profile) {
            return (recent + k) as u32;
        }
        self.profiles.push(profile);
        (self.profiles.len() - 1) as u32
    }

    /// Call `call`'s stats, where the run holds it: the run's, with
    /// `cold_start` for its first call only.
    pub fn stats(&self, slot: u32, call: u32) -> CallStats {
        let run = &self.runs[slot as usize];
        let profile = &self.profiles[run.profile as usize];
        CallStats {
            submit_ts: f64::from_bits(profile.submit_ts),
            start_ts: profile.has_start.then_some(run.start_ts),
            end_ts: profile.has_end.then_some(run.end_ts),
            worker_id: profile.worker_id,
            cold_start: profile.cold_start && call == run.first,
            peak_memory_bytes: profile.peak_memory_bytes,
            result_size: profile.result_size.unwrap_or_else(|| self.held_size(slot)),
            memory_mb: profile.memory_mb,
            attempt: profile.attempt,
        }
    }

    pub fn timing(&self, slot: u32) -> Timing {
        let run = &self.runs[slot as usize];
        let profile = &self.profiles[run.profile as usize];
        Timing {
            start_ts: profile.has_start.then_some(run.start_ts),
            end_ts: profile.has_end.then_some(run.end_ts),
            worker_id: profile.worker_id,
        }
    }

    fn held_size(&self, slot: u32) -> u64 {
        match self.stored(slot) {
            Stored::Own(bytes) => bytes.len() as u64,
            Stored::Shared(blob) => blob.len() as u64,
            Stored::Failed(_) => 0,
        }
    }

    fn stored(&self, slot: u32) -> Stored<'_> {
        let run = &self.runs[slot as usize];
        if run.other != IN_ARENA {
            return match &self.others[run.other as usize] {
                EndOutcome::Own(bytes) => Stored::Own(bytes),
                EndOutcome::Shared(blob) => Stored::Shared(blob),
                EndOutcome::Failed(error) => Stored::Failed(error),
            };
        }
        let start = match slot {
            0 => 0,
            _ => self.runs[slot as usize - 1].arena_end,
        };
        Stored::Own(&self.arena[start as usize..run.arena_end as usize])
    }

    /// Call `call`'s outcome, where the run holds it.
    pub fn outcome(&self, slot: u32, call: u32) -> OutcomeRef<'_> {
        let run = &self.runs[slot as usize];
        match self.stored(slot) {
            Stored::Own(bytes) => OutcomeRef::Own(bytes),
            Stored::Shared(blob) => OutcomeRef::Shared {
                blob,
                index: call - run.first,
                count: run.count,
            },
            Stored::Failed(error) => OutcomeRef::Failed(error),
        }
    }

    /// The successful runs' results (a batch's shared one whole), each with
    /// the run's first call.
    pub fn results(&self) -> impl Iterator<Item = (u32, &[u8])> {
        (0..self.runs.len() as u32).filter_map(|slot| {
            let first = self.runs[slot as usize].first;
            match self.stored(slot) {
                Stored::Own(bytes) => Some((first, bytes)),
                Stored::Shared(blob) => Some((first, &blob[..])),
                Stored::Failed(_) => None,
            }
        })
    }
}

/// A run's outcome where it is kept.
enum Stored<'a> {
    Own(&'a [u8]),
    Shared(&'a Arc<Vec<u8>>),
    Failed(&'a CallError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_forty_bytes() {
        assert_eq!(std::mem::size_of::<Run>(), 40);
    }
}
