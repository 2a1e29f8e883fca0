//! Group commit: a write is acknowledged only once it is durable, and concurrent writes share one
//! flush. One flusher thread takes every waiter queued, flushes sled once, fdatasyncs its data file
//! (sled's `flush` alone is not an fsync), then wakes them all.
//!
//! sled 0.34's `flush_async` was measured to deadlock with seven or more concurrent awaiters, so it
//! is never used; this thread is the only caller of `flush`.

use std::fs::File;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::oneshot;

/// What "durable" means before a call is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// sled flush + fdatasync of the data file: survives a power cut (the default).
    Fsync,
    /// sled flush only: survives a process crash, not a power cut or VM stop.
    Flush,
}

type Outcome = Result<(), String>;

/// The flusher counts as busy when its last flush ended less than this long ago.
const BUSY: Duration = Duration::from_millis(2);
/// The most waiters one flush takes when it lingers.
const MAX_BATCH: usize = 512;

enum Request {
    Wait(oneshot::Sender<Outcome>),
    Stop(oneshot::Sender<Outcome>),
}

#[derive(Default)]
struct Counters {
    flushes: AtomicU64,
    writes: AtomicU64,
    /// Whether the last flush failed.
    failing: std::sync::atomic::AtomicBool,
}

pub struct GroupCommit {
    requests: mpsc::Sender<Request>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    counters: std::sync::Arc<Counters>,
}

#[derive(Debug, thiserror::Error)]
#[error("durable commit failed: {0}")]
pub struct CommitError(pub String);

impl GroupCommit {
    /// `linger`: when writes keep coming (the last flush ended under 2 ms ago), the flusher waits
    /// up to this long for more of them before flushing, so one flush and fdatasync serves more
    /// calls (bench/RESULTS.md: +10% verify/s at 1 ms). A call arriving at an idle flusher is
    /// flushed at once.
    pub fn start(db: sled::Db, data_file: Option<File>, linger: Duration) -> std::io::Result<Self> {
        let (requests, queue) = mpsc::channel();
        let counters = std::sync::Arc::new(Counters::default());
        let thread_counters = counters.clone();
        let flusher = std::thread::Builder::new()
            .name("latchkey-flusher".into())
            .spawn(move || run_flusher(&db, data_file.as_ref(), &queue, linger, &thread_counters))?;
        Ok(Self {
            requests,
            flusher: Mutex::new(Some(flusher)),
            counters,
        })
    }

    /// Returns once every write made before the call is durable.
    pub async fn wait(&self) -> Result<(), CommitError> {
        let (done, outcome) = oneshot::channel();
        self.requests
            .send(Request::Wait(done))
            .map_err(|_| CommitError("the store is closed".into()))?;
        outcome
            .await
            .map_err(|_| CommitError("the flusher stopped".into()))?
            .map_err(CommitError)
    }

    /// Makes everything durable one last time and stops the flusher.
    pub async fn stop(&self) -> Result<(), CommitError> {
        let (done, outcome) = oneshot::channel();
        let sent = self.requests.send(Request::Stop(done)).is_ok();
        let result = if sent {
            outcome
                .await
                .map_err(|_| CommitError("the flusher stopped".into()))?
                .map_err(CommitError)
        } else {
            Ok(())
        };
        let flusher = self.flusher.lock().expect("flusher handle lock").take();
        if let Some(flusher) = flusher {
            let _ = tokio::task::spawn_blocking(move || flusher.join()).await;
        }
        result
    }

    /// Whether the last flush failed (a full or failing disk).
    pub fn failing(&self) -> bool {
        self.counters.failing.load(Ordering::Relaxed)
    }

    /// (flushes, writes acknowledged) since start: writes per flush shows how well commits group.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.counters.flushes.load(Ordering::Relaxed),
            self.counters.writes.load(Ordering::Relaxed),
        )
    }
}

fn run_flusher(
    db: &sled::Db,
    data_file: Option<&File>,
    queue: &mpsc::Receiver<Request>,
    linger: Duration,
    counters: &Counters,
) {
    let mut last_flush: Option<Instant> = None;
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        let busy = last_flush.is_some_and(|at| at.elapsed() < BUSY);
        if busy && !linger.is_zero() {
            let deadline = Instant::now() + linger;
            while batch.len() < MAX_BATCH {
                match queue.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
        } else {
            batch.extend(queue.try_iter());
        }
        let outcome = flush(db, data_file);
        counters.failing.store(outcome.is_err(), Ordering::Relaxed);
        last_flush = Some(Instant::now());
        counters.flushes.fetch_add(1, Ordering::Relaxed);
        counters.writes.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut stop = false;
        for request in batch {
            let done = match request {
                Request::Wait(done) => done,
                Request::Stop(done) => {
                    stop = true;
                    done
                }
            };
            let _ = done.send(outcome.clone());
        }
        if stop {
            return;
        }
    }
}

fn flush(db: &sled::Db, data_file: Option<&File>) -> Outcome {
    db.flush().map_err(|error| format!("sled flush: {error}"))?;
    if let Some(file) = data_file {
        file.sync_data().map_err(|error| format!("fdatasync: {error}"))?;
    }
    Ok(())
}
