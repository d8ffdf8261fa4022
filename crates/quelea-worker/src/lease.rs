//! Leases: the heartbeat a runtime keeps in a job's storage while it runs
//! calls of that job, so that a follower anywhere can tell that the process
//! running them is gone (killed, its machine or pod lost) and the calls will
//! never finish.
//!
//! A detached job's host keeps one lease per job (`host.lease`); a worker
//! server keeps one per job it has calls of (`leases/<machine>-<pid>.lease`,
//! several servers may share a job). Each is rewritten every
//! [`LEASE_INTERVAL`] while the runtime has unfinished calls of the job, and
//! deleted once it has had none for two intervals (its statuses are in
//! storage by then), or at once when its last calls ended while it was being
//! rewritten (their follower may have deleted the job's objects already). A lease that stopped being rewritten
//! ([`HostLease::is_gone`]) means its writer is gone.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use quelea_core::model::now_ts;
use quelea_storage::Storage;

/// How often a runtime rewrites the lease of each job it runs calls of.
pub const LEASE_INTERVAL: Duration = Duration::from_secs(2);
/// A lease older than this many of its intervals means its writer is gone.
pub const LEASE_STALE_INTERVALS: f64 = 5.0;

/// A job's heartbeat, written by the runtime running its calls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostLease {
    /// The writer's process id, on `machine`.
    pub pid: u32,
    /// The writer's machine (its hostname).
    pub machine: String,
    /// Unix time of the last rewrite (the writer's clock).
    pub ts: f64,
    /// Seconds between rewrites.
    pub interval_s: f64,
    /// Whether the writer has taken the job: false for a detached job's first
    /// lease, which the client writes in the host's name before handing it
    /// the job.
    #[serde(default = "yes")]
    pub taken: bool,
    /// Who keeps it: `host` (a detached job's host) or `server` (a worker
    /// server with calls of the job).
    #[serde(default = "host")]
    pub role: String,
}

fn yes() -> bool {
    true
}

fn host() -> String {
    "host".into()
}

impl HostLease {
    /// A lease of this process, written now.
    pub fn now(role: &str, taken: bool) -> HostLease {
        HostLease::of(std::process::id(), role, taken)
    }

    /// A lease of process `pid` of this machine, written now.
    pub fn of(pid: u32, role: &str, taken: bool) -> HostLease {
        HostLease {
            pid,
            machine: machine_name(),
            ts: now_ts(),
            interval_s: LEASE_INTERVAL.as_secs_f64(),
            taken,
            role: role.into(),
        }
    }

    /// Seconds since the last rewrite, by this machine's clock.
    pub fn age_s(&self) -> f64 {
        (now_ts() - self.ts).max(0.0)
    }

    /// Whether the writer is gone: the lease was not rewritten for
    /// [`LEASE_STALE_INTERVALS`] intervals, or the writer ran on this
    /// machine and its process has exited.
    pub fn is_gone(&self) -> bool {
        self.age_s() > LEASE_STALE_INTERVALS * self.interval_s
            || (self.machine == machine_name() && !process_running(self.pid))
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("leases serialize")
    }
}

/// This machine's hostname.
pub fn machine_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The name of this process's server leases: `<machine>-<pid>`.
pub fn server_lease_name() -> String {
    format!("{}-{}", machine_name(), std::process::id())
}

/// Whether `pid` is a process of this machine that has not exited (a zombie
/// has).
pub fn process_running(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(true),
        Err(_) => true,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Entry {
    key: String,
    remaining: tokio::sync::watch::Receiver<usize>,
    /// Beats seen with nothing remaining.
    idle_beats: u8,
}

/// The leases a runtime keeps: one per job it has unfinished calls of.
pub struct Leases {
    storage: Storage,
    role: &'static str,
    running: Mutex<Vec<Entry>>,
    written: Mutex<BTreeSet<String>>,
}

impl Leases {
    /// Leases written as `role` to `storage`, renewed by a thread of their
    /// own until they are dropped.
    pub fn new(storage: Storage, role: &'static str) -> Arc<Leases> {
        let leases = Arc::new(Leases {
            storage,
            role,
            running: Mutex::new(Vec::new()),
            written: Mutex::new(BTreeSet::new()),
        });
        let beat = Arc::downgrade(&leases);
        std::thread::spawn(move || loop {
            std::thread::sleep(LEASE_INTERVAL);
            match beat.upgrade() {
                Some(leases) => leases.beat(),
                None => return,
            }
        });
        leases
    }

    /// Keeps the lease `key` while `remaining` is above zero; writes it now
    /// (blocking: not on an async runtime's thread).
    pub fn add(&self, key: String, remaining: tokio::sync::watch::Receiver<usize>) {
        lock(&self.running).push(Entry {
            key: key.clone(),
            remaining,
            idle_beats: 0,
        });
        self.write(&key);
    }

    fn write(&self, key: &str) {
        let body = HostLease::now(self.role, true).to_json();
        match self.storage.put_blocking(key, body) {
            Ok(()) => {
                lock(&self.written).insert(key.to_string());
            }
            Err(e) => eprintln!("quelea {}: cannot write the lease {key}: {e}", self.role),
        }
    }

    /// The keys of jobs with unfinished calls.
    fn live(&self) -> BTreeSet<String> {
        lock(&self.running)
            .iter()
            .filter(|e| *e.remaining.borrow() > 0)
            .map(|e| e.key.clone())
            .collect()
    }

    /// Rewrites the live leases; deletes those idle for two beats.
    fn beat(&self) {
        let live = self.live();
        let mut done = BTreeSet::new();
        lock(&self.running).retain_mut(|e| {
            if *e.remaining.borrow() > 0 {
                e.idle_beats = 0;
                return true;
            }
            e.idle_beats += 1;
            if e.idle_beats < 2 {
                return true;
            }
            if !live.contains(&e.key) {
                done.insert(e.key.clone());
            }
            false
        });
        for key in &live {
            self.write(key);
            // Its last calls ended while it was written: their follower may have read
            // them and deleted the job's objects already, so the lease must not stay.
            if !self.live().contains(key) {
                self.forget(key);
            }
        }
        for key in done {
            self.forget(&key);
        }
    }

    fn forget(&self, key: &str) {
        let running = lock(&self.running);
        let back = running
            .iter()
            .any(|e| e.key == key && *e.remaining.borrow() > 0);
        if !back && lock(&self.written).remove(key) {
            match self.storage.delete_blocking(key) {
                Ok(()) | Err(quelea_storage::Error::NotFound { .. }) => {}
                Err(e) => eprintln!("quelea {}: cannot delete the lease {key}: {e}", self.role),
            }
        }
    }

    /// Deletes the leases of finished jobs (a job left unfinished keeps its
    /// lease, which goes stale: its followers learn the writer is gone).
    pub fn finish(&self) {
        let live = self.live();
        let written = std::mem::take(&mut *lock(&self.written));
        for key in written.difference(&live) {
            if let Err(e) = self.storage.delete_blocking(key) {
                eprintln!("quelea {}: cannot delete the lease {key}: {e}", self.role);
            }
        }
    }
}

/// Writes the first lease of a job that the host `pid` of this machine is
/// about to be handed; the host rewrites it once it takes the job.
pub fn write_first_lease(storage: &Storage, key: &str, pid: u32) -> quelea_storage::Result<()> {
    storage.put_blocking(key, HostLease::of(pid, "host", false).to_json())
}
