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

/// While a runner has children, its family's memory (more costly to read)
/// is measured on one tick in this many (every 50 ms).
const FAMILY_EVERY: u64 = 10;

/// At most this many processes of one runner's family are measured.
const MAX_FAMILY: usize = 4096;

/// The children of process `pid` (of all its threads), from
/// `/proc/<pid>/task/<tid>/children`.
fn children_of(pid: i32, into: &mut Vec<i32>) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for task in tasks.flatten() {
        let path = task.path().join("children");
        if let Ok(list) = std::fs::read_to_string(path) {
            into.extend(
                list.split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            );
        }
    }
}

/// Every live descendant of `pid` (children, their children, ...).
pub(super) fn descendants(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    children_of(pid, &mut found);
    let mut next = 0;
    while next < found.len() && found.len() < MAX_FAMILY {
        let child = found[next];
        children_of(child, &mut found);
        next += 1;
    }
    found.truncate(MAX_FAMILY);
    found
}

/// Proportional set size of `pid` (its private pages plus its share of
/// pages it shares), from `/proc/<pid>/smaps_rollup`.
fn pss_bytes(pid: i32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = rollup.lines().find(|l| l.starts_with("Pss:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

/// The memory a runner's limit is checked against: its resident memory
/// while it has no child processes (one cheap read per tick); while it has
/// some, the proportional set size summed over it and every descendant, so
/// that pages shared after a fork count once, not once per process. That is
/// read only when `family_tick` is true (`None` otherwise: not measured).
pub(super) fn family_memory_bytes(pid: i32, family_tick: bool) -> Option<u64> {
    let family = descendants(pid);
    if family.is_empty() {
        return rss_bytes(pid);
    }
    if !family_tick {
        return None;
    }
    let own = pss_bytes(pid).or_else(|| rss_bytes(pid))?;
    Some(own + family.into_iter().filter_map(pss_bytes).sum::<u64>())
}

/// Enforces timeouts and memory limits until the pool shuts down.
pub(super) fn watchdog_main(shared: &Shared) {
    let mut tick = 0u64;
    while !shared.shutdown.load(Ordering::Acquire) {
        std::thread::sleep(WATCHDOG_TICK);
        tick += 1;
        let family_tick = tick % FAMILY_EVERY == 0;
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
            if let Some(reason) = verdict(elapsed, timeout, limit, || {
                family_memory_bytes(pid, family_tick)
            }) {
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
    fn the_family_of_a_process_counts_its_children_memory_once() {
        use std::os::unix::process::CommandExt;
        // A shell whose two `dd`s each hold a filled 64 MiB buffer (blocked
        // writing it to a `sleep` that never reads).
        let mut parent = std::process::Command::new("sh")
            .args([
                "-c",
                "dd if=/dev/zero bs=64M count=1 2>/dev/null | sleep 30 & \
                 dd if=/dev/zero bs=64M count=1 2>/dev/null | sleep 30 & wait",
            ])
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = parent.id() as i32;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut seen = 0;
        while std::time::Instant::now() < deadline {
            seen = family_memory_bytes(pid, true).unwrap_or(0);
            if seen > 100 << 20 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let family = descendants(pid);
        let own = rss_bytes(pid).unwrap_or(0);
        // Off the family tick, a process with children is not measured.
        let skipped = family_memory_bytes(pid, false);
        // SAFETY: our unreaped child leads its own group.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        parent.wait().unwrap();
        assert!(family.len() >= 4, "{family:?}");
        // Two 64 MiB dd buffers, counted once each; the shell alone is tiny.
        assert!(seen > 100 << 20, "family memory {seen}");
        assert!(seen < 400 << 20, "family memory {seen}");
        assert!(own < 64 << 20, "the shell alone holds {own}");
        assert_eq!(skipped, None);
    }

    #[test]
    fn rss_of_a_live_process_is_read_and_of_a_missing_one_is_none() {
        let me = std::process::id() as i32;
        assert!(rss_bytes(me).unwrap() > 1 << 20);
        assert_eq!(rss_bytes(i32::MAX), None);
    }
}
