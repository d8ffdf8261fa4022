//! The watchdog: one thread that enforces each running call's timeout and its
//! runner's memory limit, by killing the runner (recording why first).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::failure::KillReason;
use super::{kill_runner_if, lock, Shared};

/// How often the watchdog looks at every runner.
pub(super) const WATCHDOG_TICK: Duration = Duration::from_millis(5);

/// What the watchdog does about a runner whose front call has run for
/// `elapsed`: kill it for its timeout, or (only then measured, through `rss`)
/// for memory over `limit`; `None` leaves it running.
pub(super) fn verdict(
    elapsed: Duration,
    timeout: Duration,
    limit: Option<u64>,
    rss: impl FnOnce() -> Option<u64>,
) -> Option<KillReason> {
    if elapsed > timeout {
        return Some(KillReason::Timeout);
    }
    let limit = limit?;
    match rss() {
        Some(rss) if rss > limit => Some(KillReason::OutOfMemory { rss }),
        _ => None,
    }
}

/// Resident memory of process `pid`, from `/proc/<pid>/statm`.
pub(super) fn rss_bytes(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(4096) as u64)
}

/// Enforces timeouts and memory limits until the pool shuts down.
pub(super) fn watchdog_main(shared: &Shared) {
    while !shared.shutdown.load(Ordering::Acquire) {
        std::thread::sleep(WATCHDOG_TICK);
        let now = Instant::now();
        for slot in &shared.slots {
            let pid = slot.pid.load(Ordering::Acquire);
            if pid <= 0 {
                continue;
            }
            let (timeout, limit, start) = {
                let inflight = lock(&slot.inflight);
                let Some(front) = inflight.calls.front() else {
                    continue;
                };
                (
                    front.task.timeout(),
                    front.task.ctx.memory_limit_bytes,
                    inflight.front_start,
                )
            };
            let elapsed = now.saturating_duration_since(start);
            if let Some(reason) = verdict(elapsed, timeout, limit, || rss_bytes(pid)) {
                // Only the runner looked at: if it died meanwhile and another
                // took its slot, this verdict is not about the newcomer.
                kill_runner_if(slot, pid, reason);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_call_is_killed_only_past_its_timeout() {
        let never = || -> Option<u64> { panic!("memory is not measured without a limit") };
        assert_eq!(verdict(Duration::ZERO, S, None, never), None);
        assert_eq!(verdict(S, S, None, never), None);
        assert_eq!(
            verdict(S + Duration::from_nanos(1), S, None, never),
            Some(KillReason::Timeout)
        );
    }

    #[test]
    fn the_timeout_wins_over_memory_and_memory_is_read_only_under_a_limit() {
        let huge = || Some(u64::MAX);
        assert_eq!(verdict(2 * S, S, Some(1), huge), Some(KillReason::Timeout));
        assert_eq!(
            verdict(Duration::ZERO, S, Some(100), || Some(101)),
            Some(KillReason::OutOfMemory { rss: 101 })
        );
        assert_eq!(verdict(Duration::ZERO, S, Some(100), || Some(100)), None);
        // A process gone from /proc is not over its limit.
        assert_eq!(verdict(Duration::ZERO, S, Some(100), || None), None);
    }

    #[test]
    fn rss_of_a_live_process_is_read_and_of_a_missing_one_is_none() {
        let me = std::process::id() as i32;
        assert!(rss_bytes(me).unwrap() > 1 << 20);
        assert_eq!(rss_bytes(i32::MAX), None);
    }
}
