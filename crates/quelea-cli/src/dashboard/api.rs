//! The dashboard's JSON: what the pages draw, built from [`JobView`]s.
//!
//! `GET /api/jobs`: every job with its progress. `GET /api/jobs/<job>`: one
//! job with its calls in columns (outcome, start, end, worker), its
//! stragglers and its failures; `?v=N` answers `{"unchanged": true}` while
//! no new status batch has arrived since version `N`. `GET
//! /api/jobs/<job>/calls/<n>`: one call's stats, failure and printed output.
//! `POST /api/jobs/<job>/cancel`: writes the job's cancel marker.

use std::collections::HashSet;

use hyper::StatusCode;
use quelea::core::keys::JobKeys;
use quelea::core::model::{now_ts, CallState, CallStatus, FailureReason, ResultRef, RunnerKind};
use quelea::LambdaCost;
use serde_json::{json, Value};

use super::{error, json, Answer, State};
use crate::inspect::{self, JobView};

/// Failures listed with their tracebacks on the job page; the others are
/// counted (each call's page has its own).
const LISTED_FAILURES: usize = 200;

/// A call is a straggler when it took more than this many times the median
/// of the finished calls...
const STRAGGLER_FACTOR: f64 = 3.0;
/// ...and at least this many seconds more than the median.
const STRAGGLER_MIN_EXCESS_S: f64 = 1.0;

/// Printed output larger than this is cut (the call's page says so).
const MAX_OUTPUT_BYTES: usize = 1 << 20;
/// A result object larger than this is not read to find its output.
const MAX_RESULT_OBJECT_BYTES: u64 = 16 << 20;

pub(super) fn jobs(state: &State) -> Answer {
    let storage = &state.storage;
    let listed = match inspect::job_keys_under(storage, &quelea::core::keys::jobs_root()) {
        Ok(listed) => listed,
        Err(e) => return error(StatusCode::BAD_GATEWAY, format!("cannot list jobs: {e:#}")),
    };
    let mut views = lock(state);
    let present: HashSet<String> = listed.iter().map(|k| k.prefix().to_owned()).collect();
    views.retain(|prefix, _| present.contains(prefix));
    let now = now_ts();
    let mut jobs = Vec::new();
    let mut problems = Vec::new();
    for keys in &listed {
        match fresh_view(&mut views, storage, keys) {
            Ok(view) => jobs.push(summary(view, now)),
            // A job cleaned away between the listing and the read is gone.
            Err(e) if is_not_found(&e) => {}
            Err(e) => problems.push(format!("{}: {e:#}", keys.prefix())),
        }
    }
    jobs.sort_by(|a, b| {
        let ts = |v: &Value| v["submit_ts"].as_f64().unwrap_or_default();
        ts(b).total_cmp(&ts(a))
    });
    json(
        StatusCode::OK,
        &json!({
            "storage": storage.location().describe(),
            "now": now,
            "jobs": jobs,
            "problems": problems,
        }),
    )
}

pub(super) fn job(state: &State, key: &str, since: Option<usize>) -> Answer {
    with_view(state, key, |view| {
        if since == Some(view.batches()) {
            return json(
                StatusCode::OK,
                &json!({ "version": view.batches(), "unchanged": true }),
            );
        }
        // Straight to bytes: a Value tree of 100,000 calls' columns costs
        // several times the serialization itself.
        match serde_json::to_vec(&detail(view, now_ts())) {
            Ok(body) => super::answer(StatusCode::OK, "application/json", body),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    })
}

pub(super) fn call(state: &State, key: &str, call: &str) -> Answer {
    let id: quelea::CallId = match call.parse() {
        Ok(id) => id,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("`{call}` is not a call number"),
            )
        }
    };
    with_view(state, key, |view| {
        if id.0 >= view.spec.total_calls {
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "job {key} has calls 00000 to {:05}, not {id}",
                    view.spec.total_calls.saturating_sub(1)
                ),
            );
        }
        let Some(status) = view.calls.get(&id.0) else {
            return json(
                StatusCode::OK,
                &json!({ "call": id.0, "state": "invoked", "stats": null, "error": null, "output": null }),
            );
        };
        let output = match view.spec.function.runner {
            RunnerKind::Python => python_output(state, &view.keys, status),
            RunnerKind::Rust => Output::default(),
        };
        json(
            StatusCode::OK,
            &json!({
                "call": id.0,
                "state": state_name(status.state),
                "stats": status.stats,
                "error": status.error.as_ref().map(|e| json!({
                    "reason": e.reason,
                    "type": e.error_type,
                    "message": e.message,
                    "traceback": e.traceback,
                })),
                "output": output.text,
                "output_note": output.note,
            }),
        )
    })
}

pub(super) fn cancel(state: &State, key: &str) -> Answer {
    let keys = match inspect::parse_job_key(key) {
        Ok(keys) => keys,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e:#}")),
    };
    let storage = &state.storage;
    if let Err(e) = storage.head_blocking(&keys.spec()) {
        return not_found_or(storage, key, &e.into());
    }
    // The same marker `Executor::cancel` writes: worker runtimes and
    // followers watch for it.
    match storage.put_blocking(&keys.cancelled(), Vec::new()) {
        Ok(()) => json(StatusCode::OK, &json!({ "cancelled": key })),
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            format!("cannot write the cancel marker: {e}"),
        ),
    }
}

fn lock(state: &State) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, JobView>> {
    state
        .views
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The job's view, read on first use and refreshed while it is unfinished.
fn fresh_view<'v>(
    views: &'v mut std::collections::HashMap<String, JobView>,
    storage: &quelea::storage::Storage,
    keys: &JobKeys,
) -> anyhow::Result<&'v JobView> {
    use std::collections::hash_map::Entry;
    match views.entry(keys.prefix().to_owned()) {
        Entry::Occupied(entry) => {
            let view = entry.into_mut();
            if !view.is_finished() {
                view.refresh(storage)?;
            }
            Ok(view)
        }
        Entry::Vacant(entry) => Ok(entry.insert(JobView::read(storage, keys)?)),
    }
}

fn with_view(state: &State, key: &str, f: impl FnOnce(&JobView) -> Answer) -> Answer {
    let keys = match inspect::parse_job_key(key) {
        Ok(keys) => keys,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e:#}")),
    };
    let mut views = lock(state);
    match fresh_view(&mut views, &state.storage, &keys) {
        Ok(view) => f(view),
        Err(e) => not_found_or(&state.storage, key, &e),
    }
}

fn is_not_found(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<quelea::storage::Error>(),
        Some(quelea::storage::Error::NotFound { .. })
    )
}

fn not_found_or(storage: &quelea::storage::Storage, key: &str, e: &anyhow::Error) -> Answer {
    if is_not_found(e) {
        error(
            StatusCode::NOT_FOUND,
            format!(
                "job {key} is not in {} (cleaned, or another storage)",
                storage.location().describe()
            ),
        )
    } else {
        error(
            StatusCode::BAD_GATEWAY,
            format!("cannot read job {key}: {e:#}"),
        )
    }
}

fn state_name(state: CallState) -> &'static str {
    match state {
        CallState::New => "new",
        CallState::Invoked => "invoked",
        CallState::Running => "running",
        CallState::Success => "success",
        CallState::Error => "error",
    }
}

/// One job's line on the jobs page (and the job page's header).
fn summary(view: &JobView, now: f64) -> Value {
    let spec = &view.spec;
    let failed = view.count(CallState::Error);
    let succeeded = view.count(CallState::Success);
    let start = view
        .calls
        .values()
        .filter_map(|s| s.stats.start_ts)
        .reduce(f64::min);
    let end = view
        .calls
        .values()
        .filter_map(|s| s.stats.end_ts)
        .reduce(f64::max);
    let finished = view.is_finished();
    let live = !finished && !view.cancelled;
    let duration = start.map(|s| {
        if live {
            now - s
        } else {
            end.unwrap_or(now) - s
        }
    });
    // Calls that ran on a platform billing by memory (Lambda) carry it.
    let billed: Vec<(f64, u32)> = view
        .calls
        .values()
        .filter_map(|s| Some((s.stats.end_ts? - s.stats.start_ts?, s.stats.memory_mb?)))
        .collect();
    let cost = (!billed.is_empty()).then(|| {
        let invocations = u64::from(spec.total_calls).div_ceil(u64::from(spec.chunksize.max(1)));
        let cost = LambdaCost::estimate(invocations, billed);
        json!({
            "gb_seconds": cost.gb_seconds,
            "estimated_usd": cost.estimated_usd,
            "memory_mb": cost.memory_mb,
        })
    });
    json!({
        "key": spec.job_key(),
        "executor": spec.executor_id.to_string(),
        "job": spec.job_id.to_string(),
        "kind": spec.job_id.kind(),
        "function": spec.function.name,
        "runner": spec.function.runner,
        "total": spec.total_calls,
        "done": succeeded + failed,
        "failed": failed,
        "running": view.count(CallState::Running),
        "cancelled": view.cancelled,
        "submit_ts": spec.submit_ts,
        "start_ts": start,
        "end_ts": end,
        "duration_s": duration,
        "timeout_s": spec.timeout_s,
        "live": live,
        "cost": cost,
        "version": view.batches(),
    })
}

/// The outcome of a call as the pages colour it.
fn outcome(status: Option<&CallStatus>) -> u8 {
    let Some(status) = status else { return 0 };
    match (status.state, status.error.as_ref().map(|e| e.reason)) {
        (CallState::New | CallState::Invoked, _) => 0,
        (CallState::Running, _) => 1,
        (CallState::Success, _) => 2,
        (CallState::Error, Some(FailureReason::Timeout)) => 4,
        (CallState::Error, Some(FailureReason::OutOfMemory)) => 5,
        (CallState::Error, Some(FailureReason::WorkerCrashed)) => 6,
        (CallState::Error, Some(FailureReason::Cancelled)) => 7,
        (CallState::Error, _) => 3,
    }
}

/// Microseconds from `t0`, or -1 for none.
fn micros(ts: Option<f64>, t0: f64) -> i64 {
    ts.map_or(-1, |t| ((t - t0) * 1e6).round().max(0.0) as i64)
}

/// The calls that took much longer than the others: more than
/// [`STRAGGLER_FACTOR`] times the median duration of the finished calls and
/// at least [`STRAGGLER_MIN_EXCESS_S`] more than it; with the median. Calls
/// still running count by how long they have run so far.
fn stragglers(durations: &[(u32, f64, bool)]) -> (Option<f64>, Vec<u32>) {
    let mut finished: Vec<f64> = durations
        .iter()
        .filter(|(_, _, done)| *done)
        .map(|(_, d, _)| *d)
        .collect();
    if finished.len() < 10 {
        return (None, Vec::new());
    }
    finished.sort_by(f64::total_cmp);
    let median = finished[finished.len() / 2];
    let limit = (median * STRAGGLER_FACTOR).max(median + STRAGGLER_MIN_EXCESS_S);
    let slow = durations
        .iter()
        .filter(|(_, d, _)| *d > limit)
        .map(|(call, _, _)| *call)
        .collect();
    (Some(median), slow)
}

/// `GET /api/jobs/<job>`: the job, and its calls in columns.
#[derive(serde::Serialize)]
struct Detail {
    job: Value,
    t0: f64,
    now_us: i64,
    calls: Columns,
    median_s: Option<f64>,
    stragglers: Vec<u32>,
    failures: Vec<Value>,
    failures_total: usize,
    version: usize,
}

/// One entry per call, in call order.
#[derive(serde::Serialize)]
struct Columns {
    outcome: Vec<u8>,
    start_us: Vec<i64>,
    end_us: Vec<i64>,
    worker: Vec<i64>,
}

fn detail(view: &JobView, now: f64) -> Detail {
    let spec = &view.spec;
    let t0 = spec.submit_ts;
    let n = spec.total_calls as usize;
    let mut outcomes = Vec::with_capacity(n);
    let mut starts = Vec::with_capacity(n);
    let mut ends = Vec::with_capacity(n);
    let mut workers = Vec::with_capacity(n);
    let mut durations = Vec::new();
    let mut failures = Vec::new();
    let mut failures_total = 0usize;
    for call in 0..spec.total_calls {
        let status = view.calls.get(&call);
        outcomes.push(outcome(status));
        let stats = status.map(|s| &s.stats);
        let start = stats.and_then(|s| s.start_ts);
        let end = stats.and_then(|s| s.end_ts);
        starts.push(micros(start, t0));
        ends.push(micros(end, t0));
        workers.push(stats.and_then(|s| s.worker_id).map_or(-1, i64::from));
        match (start, end, status.map(|s| s.state)) {
            (Some(s), Some(e), Some(state)) if state.is_terminal() => {
                durations.push((call, e - s, true));
            }
            (Some(s), _, Some(CallState::Running)) => durations.push((call, now - s, false)),
            _ => {}
        }
        if let Some(error) = status.and_then(|s| s.error.as_ref()) {
            failures_total += 1;
            if failures.len() < LISTED_FAILURES {
                failures.push(json!({
                    "call": call,
                    "reason": error.reason,
                    "type": error.error_type,
                    "message": error.message,
                    "traceback": error.traceback,
                }));
            }
        }
    }
    let (median, slow) = stragglers(&durations);
    Detail {
        job: summary(view, now),
        t0,
        now_us: micros(Some(now), t0),
        calls: Columns {
            outcome: outcomes,
            start_us: starts,
            end_us: ends,
            worker: workers,
        },
        median_s: median,
        stragglers: slow,
        failures,
        failures_total,
        version: view.batches(),
    }
}

/// What a Python call printed, read from its result.
#[derive(Debug, Default)]
struct Output {
    text: Option<String>,
    note: Option<String>,
}

/// A Python result is `\x00` + pickle(value), `\x01` + pickle((value,
/// output)), or a batch's shared `\x02` + pickle([values]) (which printed
/// nothing; see `python/quelea/_serialize.py`). Every element of a batch is a
/// call of its own, with its own failure and output. The value is never
/// shown, only the output.
fn python_output(state: &State, keys: &JobKeys, status: &CallStatus) -> Output {
    let bytes = match &status.result {
        None => return Output::default(),
        Some(ResultRef::Inline(bytes)) => bytes.clone(),
        Some(ResultRef::Held { size }) => {
            return Output {
                note: Some(format!(
                    "the result is {size} bytes, kept by the process that submitted the job"
                )),
                ..Output::default()
            };
        }
        Some(ResultRef::Object { key, size }) => {
            if *size > MAX_RESULT_OBJECT_BYTES {
                return Output {
                    note: Some(format!(
                        "the result is {size} bytes; its output is not read here"
                    )),
                    ..Output::default()
                };
            }
            if !key.starts_with(keys.prefix()) {
                return Output {
                    note: Some(format!("the result is at `{key}`, outside the job")),
                    ..Output::default()
                };
            }
            match state.storage.get_blocking(key) {
                Ok(bytes) => bytes.to_vec(),
                Err(e) => {
                    return Output {
                        note: Some(format!("cannot read the result: {e}")),
                        ..Output::default()
                    }
                }
            }
        }
    };
    decode_python_result(&bytes)
}

fn unpickle(bytes: &[u8]) -> Result<serde_pickle::Value, String> {
    serde_pickle::value_from_slice(
        bytes,
        serde_pickle::DeOptions::new()
            .replace_unresolved_globals()
            .replace_recursive_structures(),
    )
    .map_err(|e| e.to_string())
}

fn clip(mut text: String) -> (String, Option<String>) {
    if text.len() <= MAX_OUTPUT_BYTES {
        return (text, None);
    }
    let mut cut = MAX_OUTPUT_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let total = text.len();
    text.truncate(cut);
    (text, Some(format!("output cut at {cut} of {total} bytes")))
}

fn decode_python_result(bytes: &[u8]) -> Output {
    use serde_pickle::Value as P;
    let Some((&tag, body)) = bytes.split_first() else {
        return Output::default();
    };
    let unreadable = |e: String| Output {
        note: Some(format!("the output could not be read: {e}")),
        ..Output::default()
    };
    match tag {
        0x01 => match unpickle(body) {
            Ok(P::Tuple(items)) if items.len() == 2 => match &items[1] {
                P::String(text) => {
                    let (text, note) = clip(text.clone());
                    Output {
                        text: Some(text),
                        note,
                    }
                }
                _ => unreadable("no text beside the value".into()),
            },
            Ok(_) => unreadable("not a (value, output) pair".into()),
            Err(e) => unreadable(e),
        },
        _ => Output::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stragglers_are_far_slower_than_the_median() {
        let mut calls: Vec<(u32, f64, bool)> = (0..20).map(|i| (i, 0.1, true)).collect();
        calls.push((20, 0.35, true)); // 3.5x the median but only 0.25 s more: not one
        calls.push((21, 2.5, true));
        calls.push((22, 4.0, false)); // still running, already far behind
        let (median, slow) = stragglers(&calls);
        assert_eq!(median, Some(0.1));
        assert_eq!(slow, vec![21, 22]);
        // Too few finished calls to say.
        assert_eq!(stragglers(&calls[..5]), (None, vec![]));
    }

    #[test]
    fn micros_from_the_submit_time() {
        assert_eq!(micros(None, 10.0), -1);
        assert_eq!(micros(Some(10.5), 10.0), 500_000);
        assert_eq!(micros(Some(9.0), 10.0), 0);
    }
    #[test]
    fn python_output_is_read_from_pickled_results() {
        // Made by Python's pickle (protocol 5), as the worker makes them.
        let simple = decode_python_result(b"\x01\x80\x05\x95\x1a\x00\x00\x00\x00\x00\x00\x00\x4b\x31\x8c\x12\x68\x65\x6c\x6c\x6f\x20\x66\x72\x6f\x6d\x20\x63\x61\x6c\x6c\x20\x37\x0a\x94\x86\x94\x2e");
        assert_eq!(simple.text.as_deref(), Some("hello from call 7\n"));
        // A value of a class this side cannot know: only the output matters.
        let object = decode_python_result(b"\x01\x80\x05\x95\x2e\x00\x00\x00\x00\x00\x00\x00\x8c\x0b\x75\x73\x65\x72\x5f\x6d\x6f\x64\x75\x6c\x65\x94\x8c\x05\x50\x6f\x69\x6e\x74\x94\x93\x94\x29\x81\x94\x8c\x0d\x6d\x61\x64\x65\x20\x61\x20\x70\x6f\x69\x6e\x74\x0a\x94\x86\x94\x2e");
        assert_eq!(
            object.text.as_deref(),
            Some("made a point\n"),
            "{:?}",
            object.note
        );
        // A batch's shared values printed nothing.
        assert!(decode_python_result(b"\x02\x80\x05]\x94(K\x01K\x02e.")
            .text
            .is_none());
        // A quiet result has no output, and garbage says so.
        assert!(decode_python_result(b"\x00\x80\x05K\x01.").text.is_none());
        assert!(decode_python_result(b"\x01nonsense")
            .note
            .unwrap()
            .contains("could not be read"));
    }
}
