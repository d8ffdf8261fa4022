//! Writes call statuses to storage in batches.
//!
//! Storage is the truth any process can follow a job by; the local pool's
//! pipes only make completion faster for the process that started the job.
//! Statuses are buffered per job and written as one object per flush (every
//! [`FLUSH_INTERVAL`] or [`FLUSH_STATUSES`] statuses), so a 100,000-call job
//! costs a few dozen PUTs, not 100,000. Results too large to inline go to
//! their own output object first, so a status never points at a missing one.
//! A job followed with push monitoring also gets each stored batch pushed
//! (see [`crate::push`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quelea_core::ids::CallId;
use quelea_core::keys::JobKeys;
use quelea_core::model::{CallError, CallState, CallStats, CallStatus, PushChannel, ResultRef};
use quelea_core::protocol::{Message, StatusBatch};
use quelea_storage::Storage;

use crate::pool::Completion;
use crate::push::Publisher;

pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
pub const FLUSH_STATUSES: usize = 10_000;

/// Where one job's statuses go.
pub struct JobTarget {
    pub keys: JobKeys,
    pub storage: Storage,
    pub inline_result_bytes: u64,
    /// Large results are stored only while this is set (None: always); see
    /// [`ResultRef::Held`].
    pub store_large: Option<Arc<AtomicBool>>,
    /// Unique in this process: several targets may write for one job (a
    /// worker server sees a job in many Invocations, possibly after it
    /// forgot the previous target), and their batch keys must never collide.
    serial: u64,
    batches: AtomicU64,
    push: Option<(Arc<Publisher>, PushChannel)>,
}

impl JobTarget {
    pub fn new(keys: JobKeys, storage: Storage, inline_result_bytes: u64) -> Self {
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        JobTarget {
            keys,
            storage,
            inline_result_bytes,
            store_large: None,
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            batches: AtomicU64::new(0),
            push: None,
        }
    }

    /// Also push every stored batch to `channel`.
    pub fn with_push(mut self, publisher: Arc<Publisher>, channel: PushChannel) -> Self {
        self.push = Some((publisher, channel));
        self
    }
}

/// The stored status of `count` consecutive calls from `call_id` that ended
/// in one runner answer (`error`: how they failed); a successful result
/// travels separately to [`StatusWriter::finished`], which inlines or stores it.
pub fn finished_status(
    submit_ts: f64,
    completion: &Completion,
    call_id: CallId,
    count: u32,
    error: Option<CallError>,
    result_size: u64,
) -> CallStatus {
    CallStatus {
        call_id,
        count,
        state: if error.is_none() {
            CallState::Success
        } else {
            CallState::Error
        },
        stats: CallStats {
            submit_ts,
            start_ts: completion.start_ts,
            end_ts: Some(completion.end_ts),
            worker_id: completion.worker_id,
            cold_start: completion.cold_start,
            peak_memory_bytes: completion.peak_memory_bytes,
            result_size,
            memory_mb: None,
            attempt: 0,
        },
        result: None,
        error,
        retried: false,
    }
}

enum Event {
    Started {
        job: Arc<JobTarget>,
        call_id: CallId,
        count: u32,
        stats: CallStats,
    },
    Finished {
        job: Arc<JobTarget>,
        status: CallStatus,
        result: Option<Vec<u8>>,
    },
    Flush(SyncSender<Vec<String>>),
}

#[derive(Default)]
struct JobBuffer {
    finished: Vec<CallStatus>,
    /// Running calls (a batch is one entry: its first call and count).
    running: HashMap<CallId, (u32, CallStats)>,
}

/// A background writer of statuses. Dropping it flushes what it holds.
pub struct StatusWriter {
    tx: Option<Sender<Event>>,
    thread: Option<JoinHandle<()>>,
}

impl Default for StatusWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl StatusWriter {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("quelea-status".into())
            .spawn(move || writer_main(rx))
            .expect("the OS starts the status writer thread");
        StatusWriter {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    fn send(&self, event: Event) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(event);
        }
    }

    /// `count` calls from `call_id` (a batch, one record) started running.
    pub fn started(&self, job: &Arc<JobTarget>, call_id: CallId, count: u32, stats: CallStats) {
        self.send(Event::Started {
            count,
            job: job.clone(),
            call_id,
            stats,
        });
    }

    /// Records a terminal status; `result` is the successful call's output.
    pub fn finished(&self, job: &Arc<JobTarget>, status: CallStatus, result: Option<Vec<u8>>) {
        self.send(Event::Finished {
            job: job.clone(),
            status,
            result,
        });
    }

    /// Writes everything buffered now; returns the storage errors met since
    /// the last flush (empty when all writes landed).
    pub fn flush(&self) -> Vec<String> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Event::Flush(tx));
        rx.recv().unwrap_or_default()
    }
}

impl Drop for StatusWriter {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

type Buffers = HashMap<*const JobTarget, (Arc<JobTarget>, JobBuffer)>;

fn writer_main(rx: Receiver<Event>) {
    let mut buffers: Buffers = HashMap::new();
    let mut errors: Vec<String> = Vec::new();
    let mut pending = 0usize;
    let mut last_flush = Instant::now();
    loop {
        let wait = FLUSH_INTERVAL.saturating_sub(last_flush.elapsed());
        match rx.recv_timeout(wait) {
            Ok(Event::Started {
                job,
                call_id,
                count,
                stats,
            }) => {
                let entry = buffers
                    .entry(Arc::as_ptr(&job))
                    .or_insert_with(|| (job, JobBuffer::default()));
                entry.1.running.insert(call_id, (count, stats));
            }
            Ok(Event::Finished {
                job,
                mut status,
                result,
            }) => {
                if let Some(bytes) = result {
                    status.result = Some(store_result(&job, status.call_id, bytes, &mut errors));
                }
                let entry = buffers
                    .entry(Arc::as_ptr(&job))
                    .or_insert_with(|| (job, JobBuffer::default()));
                entry.1.running.remove(&status.call_id);
                entry.1.finished.push(status);
                pending += 1;
                if pending >= FLUSH_STATUSES {
                    flush_all(&mut buffers, &mut errors);
                    pending = 0;
                    last_flush = Instant::now();
                }
            }
            Ok(Event::Flush(reply)) => {
                flush_all(&mut buffers, &mut errors);
                pending = 0;
                last_flush = Instant::now();
                let _ = reply.send(std::mem::take(&mut errors));
            }
            Err(RecvTimeoutError::Timeout) => {
                flush_all(&mut buffers, &mut errors);
                pending = 0;
                last_flush = Instant::now();
            }
            Err(RecvTimeoutError::Disconnected) => {
                flush_all(&mut buffers, &mut errors);
                for e in errors {
                    eprintln!("quelea: status write failed: {e}");
                }
                return;
            }
        }
    }
}

fn store_result(
    job: &JobTarget,
    call_id: CallId,
    bytes: Vec<u8>,
    errors: &mut Vec<String>,
) -> ResultRef {
    if bytes.len() as u64 <= job.inline_result_bytes {
        return ResultRef::Inline(bytes);
    }
    let size = bytes.len() as u64;
    if let Some(store) = &job.store_large {
        if !store.load(Ordering::Acquire) {
            return ResultRef::Held { size };
        }
    }
    let key = job.keys.output(call_id);
    if let Err(e) = job.storage.put_blocking(&key, bytes) {
        errors.push(e.to_string());
    }
    ResultRef::Object { key, size }
}

fn flush_all(buffers: &mut Buffers, errors: &mut Vec<String>) {
    buffers.retain(|_, (job, buffer)| {
        if buffer.finished.is_empty() && buffer.running.is_empty() {
            // Nothing new: forget the job until it sends again.
            return false;
        }
        let mut statuses = std::mem::take(&mut buffer.finished);
        statuses.extend(
            buffer
                .running
                .iter()
                .map(|(call_id, (count, stats))| CallStatus {
                    call_id: *call_id,
                    count: *count,
                    state: CallState::Running,
                    stats: stats.clone(),
                    result: None,
                    error: None,
                    retried: false,
                }),
        );
        // Running calls are written once; their end comes in a later batch.
        buffer.running.clear();
        let key = job.keys.status_batch(
            &format!("{}-{}", writer_name(), job.serial),
            job.batches.fetch_add(1, Ordering::Relaxed),
        );
        let body = bytes::Bytes::from(Message::StatusBatch(StatusBatch { statuses }).encode());
        match job.storage.put_blocking(&key, body.clone()) {
            // Pushed only once stored: storage stays the truth.
            Ok(()) => {
                if let Some((publisher, channel)) = &job.push {
                    publisher.publish(channel, key, body);
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
        true
    });
}

/// Batches of different writers (processes) never collide.
fn writer_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| format!("{}-{}", quelea_core::ids::session_id(), std::process::id()))
}
