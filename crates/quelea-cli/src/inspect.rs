//! Looking into storage from the command line: `quelea jobs`, `quelea logs`
//! and `quelea storage ls|put|get|rm`. Everything here reads what any
//! process can see (job specs and status batches), so it works for jobs
//! started by any client, on any backend.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use quelea::core::ids::{CallId, ExecutorId, JobId};
use quelea::core::keys::{self, JobKeys};
use quelea::core::model::{now_ts, CallStatus, JobSpec};
use quelea::core::protocol::Message;
use quelea::storage::Storage;
use quelea::CallState;

use crate::{errln, outln};

/// One job as storage shows it. The dashboard keeps these and calls
/// [`JobView::refresh`], which reads only the status batches it has not
/// seen (batch keys are never reused, so a batch read once stays true).
pub(crate) struct JobView {
    pub(crate) keys: JobKeys,
    pub(crate) spec: JobSpec,
    /// The latest status of each call that has one (a final one wins).
    pub(crate) calls: BTreeMap<u32, CallStatus>,
    pub(crate) cancelled: bool,
    /// The status batches applied so far.
    seen: HashSet<String>,
    /// Per call, its attempts that failed and ran again (`retried`).
    pub(crate) earlier: BTreeMap<u32, Vec<CallStatus>>,
}

impl JobView {
    pub(crate) fn read(storage: &Storage, keys: &JobKeys) -> Result<JobView> {
        let spec_bytes = storage.get_blocking(&keys.spec())?;
        let spec: JobSpec = serde_json::from_slice(&spec_bytes)
            .with_context(|| format!("unreadable job spec `{}`", keys.spec()))?;
        let mut view = JobView {
            keys: keys.clone(),
            spec,
            calls: BTreeMap::new(),
            cancelled: false,
            seen: HashSet::new(),
            earlier: BTreeMap::new(),
        };
        view.refresh(storage)?;
        Ok(view)
    }

    /// Applies the status batches written since the last read; returns
    /// whether anything changed.
    pub(crate) fn refresh(&mut self, storage: &Storage) -> Result<bool> {
        let mut changed = false;
        for object in storage.list_blocking(&self.keys.status_prefix())? {
            if self.seen.contains(&object.key) {
                continue;
            }
            let body = storage.get_blocking(&object.key)?;
            let Ok(Message::StatusBatch(batch)) = Message::decode(&body) else {
                bail!("unreadable status batch `{}`", object.key);
            };
            // A batch's shared record stands for each of its calls.
            let per_call = batch.statuses.into_iter().flat_map(|status| {
                (0..status.count.max(1)).map(move |k| CallStatus {
                    call_id: quelea::CallId(status.call_id.0 + k),
                    count: 1,
                    ..status.clone()
                })
            });
            for status in per_call {
                if status.retried {
                    // An attempt that failed and ran again: history.
                    self.earlier
                        .entry(status.call_id.0)
                        .or_default()
                        .push(status.clone());
                }
                let slot = self.calls.entry(status.call_id.0);
                match slot {
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(status);
                    }
                    std::collections::btree_map::Entry::Occupied(mut o) => {
                        // The latest attempt's latest state; a final status
                        // is never replaced (batches arrive in any order).
                        let old = o.get();
                        if !old.is_final()
                            && (status.stats.attempt, status.state)
                                >= (old.stats.attempt, old.state)
                        {
                            o.insert(status);
                        }
                    }
                }
            }
            self.seen.insert(object.key);
            changed = true;
        }
        if !self.cancelled {
            self.cancelled = storage.head_blocking(&self.keys.cancelled()).is_ok();
            changed |= self.cancelled;
        }
        Ok(changed)
    }

    /// How many status batches have been applied: grows with every change.
    pub(crate) fn batches(&self) -> usize {
        self.seen.len()
    }

    /// Calls in `state` (an attempt that failed and runs again is in none).
    pub(crate) fn count(&self, state: CallState) -> usize {
        self.calls
            .values()
            .filter(|s| s.state == state && !s.retried)
            .count()
    }

    /// Every call has a final status.
    pub(crate) fn is_finished(&self) -> bool {
        self.calls.len() as u64 >= u64::from(self.spec.total_calls)
            && self.calls.values().all(CallStatus::is_final)
    }
}

/// The jobs whose specs are under `prefix`, as keys.
pub(crate) fn job_keys_under(storage: &Storage, prefix: &str) -> Result<Vec<JobKeys>> {
    Ok(storage
        .list_blocking(prefix)?
        .iter()
        .filter_map(|object| job_of_spec_key(&object.key))
        .collect())
}

/// `quelea jobs`: every job in storage (or one executor's), oldest first.
pub(crate) fn jobs(storage: &Storage, executor: Option<&str>) -> Result<()> {
    let prefix = match executor {
        Some(id) => {
            let id: ExecutorId = id
                .parse()
                .with_context(|| format!("`{id}` is not an executor id"))?;
            keys::executor_prefix(&id)
        }
        None => keys::jobs_root(),
    };
    let mut views = Vec::new();
    for job_keys in job_keys_under(storage, &prefix)? {
        views.push(JobView::read(storage, &job_keys)?);
    }
    if views.is_empty() {
        outln!("no jobs in {}", storage.location().describe());
        return Ok(());
    }
    views.sort_by(|a, b| a.spec.submit_ts.total_cmp(&b.spec.submit_ts));
    outln!(
        "{:<16} {:<32} {:>7} {:>7} {:>7} {:>7}  {:>9}",
        "JOB",
        "FUNCTION",
        "CALLS",
        "DONE",
        "FAILED",
        "RUNNING",
        "AGE"
    );
    let now = now_ts();
    for view in &views {
        let failed = view.count(CallState::Error);
        let done = view.count(CallState::Success) + failed;
        let name = &view.spec.function.name;
        let length = name.chars().count();
        let function = if length > 32 {
            format!("…{}", name.chars().skip(length - 31).collect::<String>())
        } else {
            name.clone()
        };
        outln!(
            "{:<16} {:<32} {:>7} {:>7} {:>7} {:>7}  {:>9}{}",
            view.spec.job_key(),
            function,
            view.spec.total_calls,
            done,
            failed,
            view.count(CallState::Running),
            age(now - view.spec.submit_ts),
            if view.cancelled { "  cancelled" } else { "" }
        );
    }
    Ok(())
}

/// `quelea logs JOB [CALL]`: each call's state and timing, and the error
/// and remote traceback of every failed one.
pub(crate) fn logs(storage: &Storage, job_key: &str, call: Option<&str>) -> Result<()> {
    let job_keys = parse_job_key(job_key)?;
    let view = JobView::read(storage, &job_keys).map_err(|e| match e.downcast_ref() {
        Some(quelea::storage::Error::NotFound { .. }) => anyhow::anyhow!(
            "job {job_key} is not in {} (cleaned, or another storage)",
            storage.location().describe()
        ),
        _ => e,
    })?;
    let only = match call {
        Some(text) => {
            let id: CallId = text
                .parse()
                .with_context(|| format!("`{text}` is not a call number"))?;
            if id.0 >= view.spec.total_calls {
                bail!(
                    "job {job_key} has calls 00000 to {:05}, not {id}",
                    view.spec.total_calls.saturating_sub(1)
                );
            }
            Some(id.0)
        }
        None => None,
    };
    outln!(
        "job {} ({}), {} calls, timeout {} s{}",
        view.spec.job_key(),
        view.spec.function.name,
        view.spec.total_calls,
        view.spec.timeout_s,
        if view.cancelled { ", cancelled" } else { "" }
    );
    for index in 0..view.spec.total_calls {
        if only.is_some_and(|o| o != index) {
            continue;
        }
        let Some(status) = view.calls.get(&index) else {
            outln!("{:05} {:<8}", index, "invoked");
            continue;
        };
        let mut earlier: Vec<&CallStatus> = view
            .earlier
            .get(&index)
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        earlier.sort_by_key(|e| e.stats.attempt);
        earlier.dedup_by_key(|e| e.stats.attempt);
        for attempt in earlier {
            if attempt.stats.attempt < status.stats.attempt {
                print_status(index, attempt)?;
            }
        }
        print_status(index, status)?;
    }
    Ok(())
}

/// One line (and the traceback) of a call's status in `quelea logs`.
fn print_status(index: u32, status: &CallStatus) -> Result<()> {
    let stats = &status.stats;
    let took = stats
        .start_ts
        .zip(stats.end_ts)
        .map(|(s, e)| format!(" {:.3} s", e - s))
        .unwrap_or_default();
    let worker = stats
        .worker_id
        .map(|w| format!(" worker {w}"))
        .unwrap_or_default();
    let state = if status.retried {
        "retried".to_owned()
    } else {
        format!("{:?}", status.state).to_lowercase()
    };
    let attempt = if stats.attempt > 0 || status.retried {
        format!(" attempt {}", stats.attempt)
    } else {
        String::new()
    };
    match &status.error {
        None => outln!("{index:05} {state:<8}{took}{worker}{attempt}"),
        Some(error) => {
            let reason = serde_json::to_value(error.reason)?;
            outln!(
                "{index:05} {state:<8}{took}{worker}{attempt} [{}] {}: {}",
                reason.as_str().unwrap_or("error"),
                error.error_type,
                error.message
            );
            for line in error.traceback.lines() {
                outln!("      | {line}");
            }
        }
    }
    Ok(())
}

/// `JOB` on the command line: `<executor_id>-<job_id>`, as `jobs` prints it.
pub(crate) fn parse_job_key(text: &str) -> Result<JobKeys> {
    let parsed = text.rsplit_once('-').and_then(|(executor, job)| {
        Some((
            executor.parse::<ExecutorId>().ok()?,
            job.parse::<JobId>().ok()?,
        ))
    });
    let Some((executor, job)) = parsed else {
        bail!("`{text}` is not a job key: expected <executor_id>-<job_id>, like 1a2b3c-0-M000");
    };
    Ok(JobKeys::new(&executor, job))
}

/// The job whose spec lives at `key`, if it is one.
fn job_of_spec_key(key: &str) -> Option<JobKeys> {
    let rest = key.strip_prefix(&keys::jobs_root())?;
    let (executor, rest) = rest.split_once('/')?;
    let job = rest.strip_suffix("/job.json")?;
    Some(JobKeys::new(&executor.parse().ok()?, job.parse().ok()?))
}

pub(crate) fn age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `quelea storage ls [PREFIX]`.
pub(crate) fn ls(storage: &Storage, prefix: &str) -> Result<()> {
    let objects = storage.list_blocking(prefix)?;
    for object in &objects {
        outln!("{:>12}  {}", object.size, object.key);
    }
    let total: u64 = objects.iter().map(|o| o.size).sum();
    errln!(
        "{} object(s), {total} bytes, in {}",
        objects.len(),
        storage.location().describe()
    );
    Ok(())
}

/// `quelea storage put KEY FILE` (`-`: standard input).
pub(crate) fn put(storage: &Storage, key: &str, file: &Path) -> Result<()> {
    let data = if file == Path::new("-") {
        let mut data = Vec::new();
        std::io::stdin()
            .read_to_end(&mut data)
            .context("reading standard input")?;
        data
    } else {
        std::fs::read(file).with_context(|| format!("reading `{}`", file.display()))?
    };
    let size = data.len();
    storage.put_blocking(key, data)?;
    errln!(
        "put {key} ({size} bytes) in {}",
        storage.location().describe()
    );
    Ok(())
}

/// `quelea storage get KEY [FILE]` (default, or `-`: standard output).
pub(crate) fn get(storage: &Storage, key: &str, file: Option<&Path>) -> Result<()> {
    let data = storage.get_blocking(key)?;
    match file {
        None => std::io::stdout().write_all(&data)?,
        Some(path) if path == Path::new("-") => std::io::stdout().write_all(&data)?,
        Some(path) => {
            std::fs::write(path, &data).with_context(|| format!("writing `{}`", path.display()))?
        }
    }
    Ok(())
}

/// `quelea storage rm KEY` or `rm --prefix PREFIX`.
pub(crate) fn rm(storage: &Storage, key: &str, prefix: bool) -> Result<()> {
    if prefix {
        if key.is_empty() {
            bail!("refusing to delete a whole bucket: give a non-empty prefix");
        }
        let deleted = storage.delete_prefix_blocking(key)?;
        errln!("deleted {deleted} object(s) under {key}");
    } else {
        // A missing key is an error here: a typo must not pass silently.
        storage.head_blocking(key)?;
        storage.delete_blocking(key)?;
        errln!("deleted {key}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_keys_parse_from_what_jobs_prints() {
        let keys = parse_job_key("a1b2c3-0-M002").unwrap();
        assert_eq!(keys.prefix(), "quelea/jobs/a1b2c3-0/M002/");
        assert!(parse_job_key("M002").is_err());
        assert!(parse_job_key("a1b2c3-0-X9").is_err());
        assert_eq!(
            job_of_spec_key("quelea/jobs/a1b2c3-0/R001/job.json").map(|k| k.spec()),
            Some("quelea/jobs/a1b2c3-0/R001/job.json".to_owned())
        );
        assert!(job_of_spec_key("quelea/jobs/a1b2c3-0/functions/abc").is_none());
        assert!(job_of_spec_key("quelea/jobs/a1b2c3-0/M000/status/w-1.json").is_none());
    }

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(age(5.2), "5s");
        assert_eq!(age(125.0), "2m05s");
        assert_eq!(age(7_300.0), "2h01m");
        assert_eq!(age(180_000.0), "2d02h");
    }
}
