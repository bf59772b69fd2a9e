//! Group commit: one thread writes every change the storage made, in batches, each batch one
//! transaction and one fsync, however many requests' changes it holds.
//!
//! Requests record their changes in a queue (in memory, under the lock that guards them) and
//! then wait until the batch holding them is durable; signals wait in the same queue and are
//! published only after the changes recorded before them are on disk. While the thread writes
//! one batch the next one gathers, so the more requests arrive at once the more share an fsync.
//!
//! If a write fails (the disk is full, an I/O error), the thread rebuilds the in-memory state
//! from the file, which holds exactly what was confirmed durable, and every request that might
//! have seen the lost changes fails with `503`: a sender is never told "stored" for something a
//! crash could take back, and a client never reads a message that could vanish.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use redb::Database;
use tokio::sync::{Notify, broadcast};

use super::load::{self, Loaded};
use super::tables::{self, Open, PayloadIds};
use crate::storage::memory::journal::{self, Change};
use crate::storage::memory::restore::WeakMemory;
use crate::storage::{Signal, StorageError};

/// How long the thread waits before trying again to reopen a file it could not.
const RETRY_OPEN: Duration = Duration::from_millis(200);

/// The queue between the storage's operations and the writing thread.
#[derive(Debug)]
pub(super) struct Queue {
    state: Mutex<Pending>,
    ready: Condvar,
    /// Changes when memory is rebuilt after a failed write: an operation that overlapped it may
    /// have seen changes that are gone.
    generation: AtomicU64,
    /// Set while the file cannot be written or read back: every operation fails.
    broken: AtomicBool,
    commits: AtomicU64,
}

#[derive(Debug, Default)]
struct Pending {
    /// Changes, in the order they were made. Signals wait beside them: a batch's signals are
    /// published once all its changes are written, so each comes after the changes recorded
    /// before it. The thread swaps both lists for empty ones it keeps, so that neither is
    /// allocated again for every batch.
    changes: Vec<Change>,
    signals: Vec<Signal>,
    closed: bool,
    /// The thread waits for items: a new one must wake it (else it will look anyway).
    idle: bool,
    /// The batch gathering now, and whether it holds changes (else nobody waits for it).
    open: Arc<Batch>,
    open_changed: bool,
    /// The batch the thread took and is writing, if any: batches are written one at a time,
    /// in order.
    writing: Option<Arc<Batch>>,
}

/// One batch's end, for the operations waiting for it: each waits for one batch, the latest
/// that holds what it made or saw, and is woken once, when that batch is written (or failed).
/// The outcome is the batch's own: a later batch that fails does not undo it, so a wait that
/// comes late still learns the truth.
#[derive(Debug, Default)]
pub(super) struct Batch {
    done: AtomicBool,
    failed: AtomicBool,
    notify: Notify,
}

impl Batch {
    /// Waits for the batch's end; whether it was written.
    async fn wait(&self) -> bool {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so that an end in between is not missed.
            notified.as_mut().enable();
            if self.done.load(Ordering::Acquire) {
                return !self.failed.load(Ordering::Acquire);
            }
            notified.await;
        }
    }

    /// Ends the batch, `written` or not (its changes failed to write, or were dropped).
    fn finish(&self, written: bool) {
        if !written {
            self.failed.store(true, Ordering::Release);
        }
        self.done.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
}

/// Waits until `batch` (from [`Queue::latest`]) is written: an error if it was not.
pub(super) async fn settled(batch: Option<Arc<Batch>>) -> Result<(), StorageError> {
    match batch {
        Some(batch) if !batch.wait().await => Err(StorageError::Unavailable(
            "a write to the storage file failed; retry".into(),
        )),
        _ => Ok(()),
    }
}

/// A list's buffer is kept for the next batch up to this many entries; one a burst made larger
/// is let go, so that a burst does not hold its memory for good.
const KEEP: usize = 4_096;

/// Empties `list`, keeping its buffer unless a burst made it large.
fn recycle<T>(list: &mut Vec<T>) {
    list.clear();
    if list.capacity() > KEEP {
        *list = Vec::new();
    }
}

impl Queue {
    pub(super) fn new() -> Self {
        Queue {
            state: Mutex::default(),
            ready: Condvar::new(),
            generation: AtomicU64::new(0),
            broken: AtomicBool::new(false),
            commits: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The generation an operation starts in; pass it to [`Queue::durable`] after.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// How many batches have been committed.
    pub(super) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Waits until every change recorded so far is durable: whatever the operation that just
    /// ended made or saw is then on disk. An error if a write failed meanwhile.
    pub(super) async fn durable(&self, generation: u64) -> Result<(), StorageError> {
        settled(self.latest(generation)?).await
    }

    /// For an operation that started in `generation` and just ended: the batch that holds
    /// every change it made or saw, if that one is not written yet (it is the batch gathering
    /// now, or the one being written, or it was written already). An error if the storage
    /// cannot write, or if memory was rebuilt meanwhile: the operation may have made or seen
    /// changes that are gone.
    pub(super) fn latest(&self, generation: u64) -> Result<Option<Arc<Batch>>, StorageError> {
        let state = self.lock();
        if self.broken.load(Ordering::SeqCst) {
            return Err(StorageError::Unavailable(
                "the storage file cannot be written; see the log".into(),
            ));
        }
        if self.generation() != generation {
            return Err(StorageError::Unavailable(
                "a write to the storage file failed; retry".into(),
            ));
        }
        Ok(if state.open_changed {
            Some(state.open.clone())
        } else {
            state.writing.clone()
        })
    }

    /// Drops what is queued, and returns the batch its operations wait for (to finish, not
    /// written, once they may wake).
    fn drop_pending(&self) -> Arc<Batch> {
        let mut state = self.lock();
        state.changes.clear();
        state.signals.clear();
        state.open_changed = false;
        std::mem::take(&mut state.open)
    }

    /// Tells the thread to finish what is queued and stop.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }
}

impl journal::Journal for Queue {
    fn record(&self, changes: &mut Vec<Change>) {
        let mut state = self.lock();
        state.changes.append(changes);
        state.open_changed = true;
        let wake = state.idle;
        drop(state);
        // The caller's buffer is filled again by its next operation: kept, unless a burst
        // made it large.
        recycle(changes);
        if wake {
            self.ready.notify_one();
        }
    }

    fn signal(&self, signal: Signal) {
        let mut state = self.lock();
        state.signals.push(signal);
        let wake = state.idle;
        drop(state);
        if wake {
            self.ready.notify_one();
        }
    }
}

/// The writing thread's own state.
pub(super) struct Thread {
    pub(super) queue: Arc<Queue>,
    pub(super) db: Option<Database>,
    pub(super) path: PathBuf,
    pub(super) memory: WeakMemory,
    pub(super) signals: broadcast::Sender<Signal>,
    pub(super) payloads: PayloadIds,
    pub(super) last_pos: u64,
    /// The lists the thread swaps with the queue's for each batch (see [`Pending`]).
    pub(super) spare: (Vec<Change>, Vec<Signal>),
}

/// Releases every waiter if the thread ends by a panic: operations then fail with `503`
/// instead of waiting for a write that will never come.
struct Released(Arc<Queue>);

impl Drop for Released {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                "simpleio: the storage's writer thread panicked; every request answers 503"
            );
            self.0.broken.store(true, Ordering::SeqCst);
            let mut state = self.0.lock();
            state.open.finish(false);
            if let Some(batch) = state.writing.take() {
                batch.finish(false);
            }
            // Later operations find a finished batch and the broken flag.
            state.open_changed = true;
        }
    }
}

impl Thread {
    pub(super) fn run(mut self) {
        let _released = Released(self.queue.clone());
        while let Some(batch) = self.next_batch() {
            let (mut changes, mut signals) = std::mem::take(&mut self.spare);
            if changes.is_empty() {
                self.done_writing(&batch, true);
                self.publish(&mut signals);
                self.spare = (changes, signals);
                continue;
            }
            let written = match self.db.take() {
                Some(db) => {
                    let written = self.commit(&db, &changes);
                    self.db = Some(db);
                    written
                }
                None => Err(redb::Error::DatabaseClosed),
            };
            match written {
                Ok(()) => {
                    self.queue.commits.fetch_add(1, Ordering::Relaxed);
                    self.done_writing(&batch, true);
                    self.publish(&mut signals);
                }
                Err(e) => {
                    tracing::error!(
                        path = %self.path.display(),
                        error = %e,
                        "simpleio: writing the storage file failed; the requests of this batch \
                         answer 503 and memory is rebuilt from the file"
                    );
                    self.recover();
                    self.done_writing(&batch, false);
                }
            }
            // Emptied once the waiters are woken: dropping the changes is not on their path.
            recycle(&mut changes);
            recycle(&mut signals);
            self.spare = (changes, signals);
        }
    }

    /// Takes everything queued into [`Thread::spare`] (whose empty lists the queue gets), and
    /// returns the batch its waiters wait for; `None` once closed and drained.
    fn next_batch(&mut self) -> Option<Arc<Batch>> {
        let mut state = self.queue.lock();
        while state.changes.is_empty() && state.signals.is_empty() {
            if state.closed {
                return None;
            }
            state.idle = true;
            state = self
                .queue
                .ready
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
            state.idle = false;
        }
        let batch = std::mem::take(&mut state.open);
        state.open_changed = false;
        state.writing = Some(batch.clone());
        std::mem::swap(&mut state.changes, &mut self.spare.0);
        std::mem::swap(&mut state.signals, &mut self.spare.1);
        Some(batch)
    }

    /// Ends `batch`, `written` or not: no operation starts waiting for it any more, and those
    /// waiting wake.
    fn done_writing(&self, batch: &Batch, written: bool) {
        self.queue.lock().writing = None;
        batch.finish(written);
    }

    fn publish(&self, signals: &mut Vec<Signal>) {
        for signal in signals.drain(..) {
            // No subscriber yet is fine: nobody is waiting.
            let _ = self.signals.send(signal);
        }
    }

    fn commit(&mut self, db: &Database, changes: &[Change]) -> Result<(), redb::Error> {
        let txn = db.begin_write()?;
        let next_payload = self.payloads.next;
        let mut last_pos = self.last_pos;
        {
            let mut t = Open::new(&txn);
            for change in changes {
                if let Change::Message { pos, .. } = change {
                    last_pos = last_pos.max(*pos);
                }
                tables::apply(&mut t, change, &mut self.payloads)?;
            }
            if last_pos != self.last_pos {
                t.meta()?
                    .insert("last_pos", last_pos.to_be_bytes().as_slice())?;
            }
            if self.payloads.next != next_payload {
                t.meta()?
                    .insert("next_payload", self.payloads.next.to_be_bytes().as_slice())?;
            }
        }
        txn.commit()?;
        self.last_pos = last_pos;
        Ok(())
    }

    /// After a failed write: reopens the file and rebuilds memory from it, failing every
    /// operation that overlapped. Until the file can be read back (the disk is still full, it
    /// is gone), every operation fails and it is tried again every [`RETRY_OPEN`].
    fn recover(&mut self) {
        self.payloads = PayloadIds::default();
        // The handle may refuse every later transaction after an I/O error; the file is
        // reopened, which also drops its lock first.
        self.db = None;
        let mut logged = false;
        loop {
            let Some(memory) = self.memory.upgrade() else {
                return;
            };
            let opened = load::reopen(&self.path)
                .map_err(|e| StorageError::Unavailable(e.to_string()))
                .and_then(|db| load::read_all(&db).map(|loaded| (db, loaded)));
            let queue = &self.queue;
            match opened {
                Ok((
                    db,
                    Loaded {
                        restored,
                        next_payload,
                    },
                )) => {
                    self.payloads.next = next_payload;
                    self.last_pos = restored.last_pos;
                    let mut dropped = None;
                    memory.replace(restored, || {
                        // No operation runs now: what is queued was made on the state just
                        // replaced, and goes with it.
                        dropped = Some(queue.drop_pending());
                        queue.generation.fetch_add(1, Ordering::SeqCst);
                        queue.broken.store(false, Ordering::SeqCst);
                    });
                    self.db = Some(db);
                    if let Some(batch) = dropped {
                        batch.finish(false);
                    }
                    let _ = self.signals.send(Signal::Resync);
                    tracing::warn!(
                        path = %self.path.display(),
                        "simpleio: memory rebuilt from the storage file; writing again"
                    );
                    return;
                }
                Err(e) => {
                    if !logged {
                        tracing::error!(
                            path = %self.path.display(),
                            error = %e,
                            "simpleio: the storage file cannot be read back; every request \
                             answers 503 until it can"
                        );
                        logged = true;
                    }
                    queue.broken.store(true, Ordering::SeqCst);
                    queue.generation.fetch_add(1, Ordering::SeqCst);
                    queue.drop_pending().finish(false);
                    if queue.lock().closed {
                        return;
                    }
                    drop(memory);
                    std::thread::sleep(RETRY_OPEN);
                }
            }
        }
    }
}
