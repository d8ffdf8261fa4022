//! Scheduling: how many calls each runner holds (the pipelining depth, per
//! function) and the feeder thread that moves queued calls to a runner.

use std::time::{Duration, Instant};

use super::failure::cancelled_error;
use super::{fail_task, lock, InflightCall, Shared, Slot, Task};
use crate::runner_protocol;

/// Pipelining: keep about this much work queued in each runner.
pub(super) const TARGET_QUEUED_WORK: Duration = Duration::from_millis(2);
/// The most calls one runner holds at once.
pub(super) const MAX_DEPTH: u32 = 128;

/// How many calls of a function with this mean call time (nanoseconds; 0:
/// none finished yet) a runner may hold at once: enough for about
/// [`TARGET_QUEUED_WORK`], one until the function's speed is known.
pub(super) fn depth_for(mean_call_ns: u64) -> u32 {
    match mean_call_ns {
        0 => 1,
        mean => (TARGET_QUEUED_WORK.as_nanos() as u64 / mean).clamp(1, MAX_DEPTH as u64) as u32,
    }
}

/// The function's new mean call time after a call that took `took_ns`: an
/// exponentially weighted mean (weight 1/8), never 0 once a call finished.
pub(super) fn next_mean(mean_ns: u64, took_ns: u64) -> u64 {
    let mean = if mean_ns == 0 {
        took_ns
    } else {
        (mean_ns.saturating_mul(7).saturating_add(took_ns)) / 8
    };
    mean.max(1)
}

/// How many calls from the front of the queue (given by their function ids)
/// a runner that holds `outstanding` calls takes now: up to the front
/// function's `depth`, and only consecutive calls of that one function
/// (another function's calls may be slower than this depth allows for).
pub(super) fn take_count(
    queued_function_ids: impl IntoIterator<Item = u32>,
    depth: u32,
    outstanding: u32,
) -> usize {
    let mut ids = queued_function_ids.into_iter();
    let Some(front) = ids.next() else {
        return 0;
    };
    if outstanding >= depth {
        return 0;
    }
    1 + ids
        .take((depth - outstanding - 1) as usize)
        .take_while(|id| *id == front)
        .count()
}

/// Below this capacity a queue keeps its room.
const QUEUE_ROOM: usize = 1024;

/// A queue a big map filled gives its room back as it drains: the pool
/// lives as long as its executor, and a `VecDeque` never shrinks by itself
/// (200,000 queued calls would hold 11 MB after they ran). Halving once the
/// queue is a quarter full copies no more tasks than have been taken.
fn give_back_room<T>(queue: &mut std::collections::VecDeque<T>) {
    if queue.capacity() > QUEUE_ROOM && queue.len() < queue.capacity() / 4 {
        queue.shrink_to((queue.len() * 2).max(QUEUE_ROOM));
    }
}

/// Feeds queued calls to one slot's runner.
pub(super) fn feeder_main(shared: &Shared, slot: &Slot) {
    use std::sync::atomic::Ordering;
    let mut frames = Vec::with_capacity(1 << 16);
    loop {
        let batch: Vec<Task> = {
            let mut queue = lock(&shared.queue);
            loop {
                if shared.shutdown.load(Ordering::Acquire) {
                    return;
                }
                let outstanding = slot.outstanding.load(Ordering::Acquire);
                if let Some(front) = queue.front() {
                    let depth = front.ctx.function.depth();
                    if slot.ready.load(Ordering::Acquire) {
                        let take =
                            take_count(queue.iter().map(|t| t.ctx.function.id), depth, outstanding);
                        if take > 0 {
                            let batch = queue.drain(..take).collect();
                            give_back_room(&mut queue);
                            break batch;
                        }
                    }
                }
                queue = shared.cond.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
        };
        let mut tasks = Vec::with_capacity(batch.len());
        for task in batch {
            if task.ctx.is_cancelled() {
                fail_task(task, cancelled_error("the job was cancelled"));
            } else {
                tasks.push(task);
            }
        }
        if tasks.is_empty() {
            continue;
        }

        // Encode before publishing: the tasks move into the in-flight queue.
        // Inputs of at least LARGE_INPUT are not copied into `frames`: they
        // are written from their own buffers, after the frames before them.
        frames.clear();
        let mut large: Vec<(usize, bytes::Bytes)> = Vec::new();
        let generation;
        {
            let mut input = lock(&slot.input);
            if input.stdin.is_none() {
                // The runner died after these were taken and its successor is
                // not up yet: nothing could send them, so they go back.
                drop(input);
                let mut queue = lock(&shared.queue);
                for task in tasks.into_iter().rev() {
                    queue.push_front(task);
                }
                continue;
            }
            for task in &tasks {
                let function = &task.ctx.function;
                if input.loaded.insert(function.id) {
                    runner_protocol::encode_function(&mut frames, function.id, &function.payload);
                }
                if task.input.len() >= LARGE_INPUT {
                    runner_protocol::encode_call_head(
                        &mut frames,
                        function.id,
                        task.call_id.0,
                        task.count,
                        task.select,
                        task.input.len(),
                    );
                    large.push((frames.len(), task.input.clone()));
                } else {
                    runner_protocol::encode_call(
                        &mut frames,
                        function.id,
                        task.call_id.0,
                        task.count,
                        task.select,
                        &task.input,
                    );
                }
            }
            generation = input.generation;
        }
        {
            let mut inflight = lock(&slot.inflight);
            if inflight.generation != generation {
                // The runner died between the two locks; try again later.
                drop(inflight);
                lock(&shared.queue).extend(tasks);
                lock(&slot.input).loaded.clear();
                continue;
            }
            let n = tasks.len() as u32;
            if inflight.calls.is_empty() {
                inflight.front_start = Instant::now();
                let first = &tasks[0];
                first.ctx.sink.started(
                    first.answer_id(),
                    first.elements(),
                    slot.index,
                    shared.ts(inflight.front_start),
                );
            }
            inflight
                .calls
                .extend(tasks.into_iter().map(|task| InflightCall { task }));
            slot.outstanding.fetch_add(n, Ordering::AcqRel);
        }
        let mut input = lock(&slot.input);
        if input.generation != generation {
            // The slot thread already took these calls back for requeueing.
            continue;
        }
        if let Some(stdin) = input.stdin.as_mut() {
            if write_frames(stdin, &frames, &large).is_err() {
                // The runner is gone; its slot thread requeues what it held.
                input.stdin = None;
            }
        }
    }
}

/// Inputs from this size on are written from their own buffers.
const LARGE_INPUT: usize = 64 << 10;

/// Writes `frames` with each large input at its offset in them.
fn write_frames(
    out: &mut impl std::io::Write,
    frames: &[u8],
    large: &[(usize, bytes::Bytes)],
) -> std::io::Result<()> {
    let mut at = 0;
    for (offset, input) in large {
        runner_protocol::write_all(out, &frames[at..*offset])?;
        runner_protocol::write_all(out, input)?;
        at = *offset;
    }
    runner_protocol::write_all(out, &frames[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_draining_queue_gives_its_room_back_and_a_small_one_keeps_it() {
        let mut queue: std::collections::VecDeque<u32> = (0..200_000).collect();
        while !queue.is_empty() {
            let take = queue.len().min(1000);
            queue.drain(..take);
            give_back_room(&mut queue);
            // The room held follows the calls still queued.
            assert!(queue.capacity() <= (queue.len() * 4).max(QUEUE_ROOM));
        }
        assert_eq!(queue.capacity(), QUEUE_ROOM);
        let mut small: std::collections::VecDeque<u32> = (0..100).collect();
        small.drain(..);
        let room = small.capacity();
        give_back_room(&mut small);
        assert_eq!(small.capacity(), room);
    }

    #[test]
    fn large_inputs_are_written_in_place_of_their_copies() {
        let big = bytes::Bytes::from(vec![7u8; LARGE_INPUT]);
        let (mut expected, mut frames, mut large) = (Vec::new(), Vec::new(), Vec::new());
        for (call, input) in [(0, &b"small"[..]), (1, &big[..]), (2, b"s"), (3, &big[..])] {
            runner_protocol::encode_call(&mut expected, 1, call, 1, runner_protocol::ALL, input);
            if input.len() >= LARGE_INPUT {
                runner_protocol::encode_call_head(
                    &mut frames,
                    1,
                    call,
                    1,
                    runner_protocol::ALL,
                    input.len(),
                );
                large.push((frames.len(), big.clone()));
            } else {
                runner_protocol::encode_call(&mut frames, 1, call, 1, runner_protocol::ALL, input);
            }
        }
        let mut written = Vec::new();
        write_frames(&mut written, &frames, &large).unwrap();
        assert_eq!(written, expected);
        assert!(frames.len() < 2 * 64);
    }

    #[test]
    fn depth_is_one_until_a_call_finished_then_follows_call_time() {
        assert_eq!(depth_for(0), 1);
        // 2 ms of work: a 1 µs function fills the maximum, a 100 µs one 20.
        assert_eq!(depth_for(1_000), MAX_DEPTH);
        assert_eq!(depth_for(1), MAX_DEPTH);
        assert_eq!(depth_for(100_000), 20);
        // Calls longer than the target are given one at a time.
        assert_eq!(depth_for(2_000_000), 1);
        assert_eq!(depth_for(5_000_000_000), 1);
    }

    #[test]
    fn the_mean_starts_at_the_first_call_and_moves_by_an_eighth() {
        assert_eq!(next_mean(0, 800), 800);
        assert_eq!(next_mean(800, 1600), 900);
        assert_eq!(next_mean(800, 0), 700);
        // Never 0 once a call finished (0 means "unknown").
        assert_eq!(next_mean(0, 0), 1);
        assert_eq!(next_mean(u64::MAX, u64::MAX), u64::MAX / 8);
    }

    #[test]
    fn a_runner_takes_up_to_its_free_depth_of_one_function() {
        // Nothing queued, or no room: nothing taken.
        assert_eq!(take_count([], 8, 0), 0);
        assert_eq!(take_count([1, 1], 4, 4), 0);
        assert_eq!(take_count([1, 1], 4, 9), 0);
        // Room for 3 more of function 1.
        assert_eq!(take_count([1, 1, 1, 1, 1], 4, 1), 3);
        // Stops at another function's call.
        assert_eq!(take_count([1, 1, 2, 1], 8, 0), 2);
        assert_eq!(take_count([2, 1, 1], 8, 0), 1);
        // Depth 1: one call at a time.
        assert_eq!(take_count([1, 1, 1], 1, 0), 1);
    }
}
