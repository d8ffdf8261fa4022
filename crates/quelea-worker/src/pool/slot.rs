//! One slot's runners, one after another: start each, read its answers,
//! and when it dies settle its calls (the running one fails for the reason
//! recorded or as a crash, the ones queued behind it go back to the queue).

use std::io::BufReader;
use std::sync::atomic::Ordering;
use std::time::Instant;

use quelea_core::model::now_ts;

use super::failure::{
    cancelled_error, death_error, describe_exit, start_failure, user_error, KillReason,
};
use super::process::{self, ForkedRunner};
use super::startup::{handshake, ReadyWatch, StartFailures, READY_TIMEOUT};
use super::{fail_task, kill_runner, lock, Completion, Outputs, Shared, Slot, Task};
use crate::runner_protocol::{self, Answer, FromRunner};

/// Clears the slot's pid so that nobody signals it any more. Called before
/// the runner is reaped: a reaped pid may be recycled, so once `wait()` runs
/// no other thread may still hold it (see [`super::signal_runner`]).
fn clear_pid(slot: &Slot) {
    let _signals = lock(&slot.kill_reason);
    slot.pid.store(0, Ordering::SeqCst);
}

/// Owns the slot's runner processes one after another, and reads their answers.
/// Its first runner is `first` when the pool was given one to adopt.
pub(super) fn slot_main(shared: &Shared, slot: &Slot, mut first: Option<ForkedRunner>) {
    let mut start_failures = StartFailures::default();
    while !shared.shutdown.load(Ordering::Acquire) {
        let started = match first.take() {
            // One that cannot be adopted (it died already) is replaced by a spawned one.
            Some(forked) => process::adopt(forked, &shared.command, slot.index)
                .or_else(|_| process::spawn(&shared.command, slot.index)),
            None => process::spawn(&shared.command, slot.index),
        };
        let (runner, stdin, stdout) = match started {
            Ok(started) => started,
            Err(e) => {
                mark_broken(
                    shared,
                    format!(
                        "cannot start runner `{}`: {e}",
                        shared.command.program.display()
                    ),
                );
                return;
            }
        };
        let pid = runner.pid();
        let mut stdout = BufReader::with_capacity(1 << 16, stdout);
        // Publish the pid, then look at the shutdown flag (Drop does the
        // reverse): one of the two sides is sure to see the other and kill.
        slot.pid.store(pid, Ordering::SeqCst);
        if shared.shutdown.load(Ordering::SeqCst) {
            runner.kill_group();
            clear_pid(slot);
            let _ = runner.wait();
            return;
        }

        let ready_deadline = Instant::now() + READY_TIMEOUT;
        let ready = {
            // The watchdog does not cover start-up: bound it here.
            let watcher = ReadyWatch::start(pid, ready_deadline);
            let ready = handshake(&mut stdout);
            watcher.stop();
            ready
        };
        if let Err(reason) = ready {
            runner.kill_group();
            clear_pid(slot);
            let status = runner.wait().map(describe_exit).unwrap_or_default();
            if shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            if start_failures.failed() {
                mark_broken(
                    shared,
                    format!(
                        "runner `{}` failed to start {} times: {reason} ({status})",
                        shared.command.program.display(),
                        start_failures.count()
                    ),
                );
                return;
            }
            continue;
        }
        start_failures.started();
        lock(&slot.kill_reason).take();
        {
            let mut input = lock(&slot.input);
            input.stdin = Some(stdin);
            input.loaded.clear();
            slot.ready.store(true, Ordering::Release);
        }
        {
            let _queue = lock(&shared.queue);
            shared.cond.notify_all();
        }

        let mut cold = true;
        // Anything but an answer (the runner exited, a stray frame, garbage)
        // ends this runner. The stream ends when the process exits, even if
        // a child of it still holds the pipe (see `process`).
        while let Ok(Some(FromRunner::Done {
            call_id,
            answer,
            peak_rss,
        })) = runner_protocol::read_from_runner(&mut stdout)
        {
            if !on_done(shared, slot, call_id, answer, peak_rss, cold) {
                break;
            }
            cold = false;
        }

        // The runner exited or misbehaved: end it and whatever is left in its
        // process group (children its calls started), stop everyone else
        // from signalling it, then reap it.
        runner.kill_group();
        clear_pid(slot);
        let status = runner
            .wait()
            .map(describe_exit)
            .unwrap_or_else(|e| format!("unknown exit ({e})"));
        let reason = lock(&slot.kill_reason).take();
        on_death(shared, slot, reason, &status);
    }
}

/// Runners cannot start: every queued call, and every call submitted from
/// now on, fails with `reason`.
fn mark_broken(shared: &Shared, reason: String) {
    *lock(&shared.broken) = Some(reason.clone());
    let queued: Vec<Task> = lock(&shared.queue).drain(..).collect();
    for task in queued {
        fail_task(task, start_failure(&reason));
    }
}

/// Handles one answer; false if the runner broke the protocol.
fn on_done(
    shared: &Shared,
    slot: &Slot,
    call_id: u32,
    answer: Answer,
    peak_rss: u64,
    cold: bool,
) -> bool {
    let now = Instant::now();
    let (call, start) = {
        let mut inflight = lock(&slot.inflight);
        let Some(front) = inflight.calls.front() else {
            return false;
        };
        if front.task.answer_id().0 != call_id {
            return false;
        }
        let call = inflight.calls.pop_front().expect("front exists");
        let start = inflight.front_start;
        inflight.front_start = now;
        if let Some(next) = inflight.calls.front() {
            if next.task.ctx.is_cancelled() {
                // Sent to the runner before its job was cancelled: stop it as
                // it starts (it ends as cancelled; the calls behind it requeue).
                kill_runner(slot, KillReason::Cancelled);
            } else {
                next.task.ctx.sink.started(
                    next.task.answer_id(),
                    next.task.elements(),
                    slot.index,
                    shared.ts(now),
                );
            }
        }
        (call, start)
    };
    let outstanding = slot.outstanding.fetch_sub(1, Ordering::AcqRel) - 1;

    // Adapt the function's pipelining depth to its call duration.
    let function = &call.task.ctx.function;
    function.record(now.saturating_duration_since(start).as_nanos().max(1) as u64);
    if outstanding <= function.depth() / 2 {
        let _queue = lock(&shared.queue);
        shared.cond.notify_all();
    }

    let task = &call.task;
    let outcome = match answer {
        Answer::Ok(payload) if !task.is_batch() => Ok(Outputs::One(payload)),
        // One error for the whole batch (its input could not be read, say).
        Answer::Err(payload) => Err(user_error(&payload)),
        Answer::Shared(payload) if task.is_batch() => Ok(Outputs::Shared(payload)),
        Answer::Each(entries) if entries.len() == task.elements() as usize => Ok(Outputs::Each(
            entries
                .into_iter()
                .map(|(ok, payload)| {
                    if ok {
                        Ok(payload)
                    } else {
                        Err(user_error(&payload))
                    }
                })
                .collect(),
        )),
        // An answer of the wrong shape: the runner broke the protocol.
        _ => return false,
    };
    call.task.ctx.sink.completed(Completion {
        call_id: task.answer_id(),
        count: task.elements(),
        outcome,
        start_ts: Some(shared.ts(start)),
        end_ts: shared.ts(now),
        worker_id: Some(slot.index),
        cold_start: cold,
        peak_memory_bytes: peak_rss,
    });
    true
}

/// Settles the calls of a runner that died: the running one fails, the
/// others go back to the front of the queue (or end as cancelled when the
/// pool is shutting down).
fn on_death(shared: &Shared, slot: &Slot, reason: Option<KillReason>, status: &str) {
    let (calls, start) = {
        let mut input = lock(&slot.input);
        let mut inflight = lock(&slot.inflight);
        input.stdin = None;
        slot.ready.store(false, Ordering::Release);
        input.generation += 1;
        input.loaded.clear();
        inflight.generation = input.generation;
        slot.outstanding.store(0, Ordering::Release);
        (std::mem::take(&mut inflight.calls), inflight.front_start)
    };
    let mut calls = calls.into_iter();
    let mut rerun = Vec::new();
    if let Some(front) = calls.next() {
        let task = front.task;
        let shutting_down = shared.shutdown.load(Ordering::Acquire);
        let apart = matches!(
            reason,
            None | Some(KillReason::Timeout) | Some(KillReason::OutOfMemory { .. })
        );
        if task.is_batch() && apart && !shutting_down {
            // What killed the process was one element's doing: run them
            // apart, each with its own limits, so that only that one fails.
            rerun.extend(task.singles());
        } else {
            let error = death_error(
                reason,
                task.answer_id(),
                task.timeout(),
                task.ctx.memory_limit_bytes,
                status,
            );
            task.ctx.sink.completed(Completion {
                call_id: task.answer_id(),
                count: task.elements(),
                outcome: Err(error),
                start_ts: Some(shared.ts(start)),
                end_ts: now_ts(),
                worker_id: Some(slot.index),
                cold_start: false,
                peak_memory_bytes: 0,
            });
        }
    }
    let rest: Vec<Task> = rerun.into_iter().chain(calls.map(|c| c.task)).collect();
    if shared.shutdown.load(Ordering::Acquire) {
        for task in rest {
            fail_task(task, cancelled_error("the executor shut down"));
        }
        return;
    }
    let mut queue = lock(&shared.queue);
    for task in rest.into_iter().rev() {
        queue.push_front(task);
    }
    shared.cond.notify_all();
}
