//! Group commit: one thread writes every change the storage made, in batches, each batch one
//! frame of the write-ahead log and one fsync, however many requests' changes it holds; every
//! 4 MiB of log, a checkpoint writes them into the redb file.
//!
//! Requests record their changes in a queue (in memory, under the lock that guards them) and
//! then wait until the batch holding them is durable; signals wait in the same queue and are
//! published only after the changes recorded before them are on disk, the batch's appends told
//! together (`signals.rs`). While the thread writes one batch the next one gathers, so the more
//! requests arrive at once the more share an fsync.
//!
//! If a write fails (the disk is full, an I/O error), the thread rebuilds the in-memory state
//! from the files, which hold exactly what was confirmed durable, and every request that might
//! have seen the lost changes fails with `503`: a sender is never told "stored" for something a
//! crash could take back, and a client never reads a message that could vanish.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redb::Database;
use tokio::sync::{Notify, broadcast};

use super::checkpoint::Checkpoint;
use super::load::{self, Loaded};
use super::log::Log;
use super::signals;
use super::tables::PayloadIds;
use crate::hash::HashSet;
use crate::id::UserId;
use crate::storage::memory::SIGNAL_CAPACITY;
use crate::storage::memory::journal::{self, Change};
use crate::storage::memory::restore::WeakMemory;
use crate::storage::{Signal, StorageError};

/// How long the thread waits before trying again to reopen a file it could not.
const RETRY_OPEN: Duration = Duration::from_millis(200);

/// The least time between the starts of two frames while the server is busy ([`BUSY`]): each
/// frame's fsync, and the thread's wake-up with it, then serves more changes. Under a load of
/// direct messages that saturates its core, 2 ms made a frame hold 8 times as many and the
/// storage 25% faster (`docs/benchmarks.md`); each change waits at most this much longer.
const SYNC_INTERVAL: Duration = Duration::from_millis(2);

/// How many changes waiting after a frame is written make the server busy: any. One client
/// sending one message after another has none waiting (it waits for its frame).
const BUSY: usize = 1;

/// A checkpoint begins once the log holds this much since the last one. It bounds the log (to
/// twice this while a checkpoint is written), what a start replays, and the changes the thread
/// keeps for the checkpoint.
const CHECKPOINT_BYTES: u64 = 4 << 20;

/// How long a checkpoint writes at a time before the thread writes the next frame. Written at
/// once, a checkpoint under 2,000 senders (64,000 messages in flight, each inserted into the
/// B-tree by one checkpoint and removed by the next) held every frame back for 0.1–0.17 s,
/// every 0.6 s. A checkpoint that has not caught up by the time the log holds twice
/// [`CHECKPOINT_BYTES`] is finished at once, which bounds the log.
const CHECKPOINT_SLICE: Duration = Duration::from_millis(2);

/// How long the thread waits for room in the signals' channel while no subscriber reads from it
/// ([`Thread::make_room`]): past it, one that stopped reading is left to lag.
const ROOM_WAIT: Duration = Duration::from_secs(1);

/// How often the thread looks whether the channel has room again: tokio's broadcast channel
/// tells no one when it is read, and this is short beside one fsync.
const ROOM_POLL: Duration = Duration::from_micros(100);

/// When the thread checkpoints, and how long at a time: the constants above, except in tests
/// that make a checkpoint fall behind the log the way a load that never lets the thread idle
/// does.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tuning {
    /// A checkpoint begins once the log holds this much ([`CHECKPOINT_BYTES`]); one in
    /// progress is finished at once at twice this.
    pub(super) checkpoint_bytes: u64,
    /// How long a checkpoint writes at a time ([`CHECKPOINT_SLICE`]).
    pub(super) slice: Duration,
    /// Whether a checkpoint goes on while nothing else is queued.
    pub(super) idle_steps: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            checkpoint_bytes: CHECKPOINT_BYTES,
            slice: CHECKPOINT_SLICE,
            idle_steps: true,
        }
    }
}

/// What the unit tests make the thread do, and see of it: faults a disk would cause, at the
/// moments a test needs them.
#[cfg(test)]
#[derive(Debug, Default)]
pub(super) struct Probe {
    /// The next frame fails before anything is written, as on a full disk.
    pub(super) fail_next_frame: AtomicBool,
    /// The next frame written while a checkpoint is partly written fails so.
    pub(super) fail_mid_checkpoint: AtomicBool,
    /// The thread locks this before it writes each frame: a test that holds it holds the
    /// thread there, with the frame's batch taken.
    pub(super) gate: Mutex<()>,
    /// Set once the thread is at the gate, with a batch taken.
    pub(super) at_gate: AtomicBool,
    /// How many changes the checkpoint being written had written when the thread last looked
    /// (before its last frame), if one was being written.
    pub(super) applied: Mutex<Option<usize>>,
    /// Checkpoints finished at once because the log reached twice its size, and how many of
    /// those had written changes before.
    pub(super) forced: AtomicU64,
    pub(super) forced_partly_written: AtomicU64,
    /// Batches dropped unwritten after a failed write whose files were not read back.
    pub(super) abandoned: AtomicU64,
}

#[cfg(test)]
impl Thread {
    /// Before each batch: how far the checkpoint being written has got.
    fn probe_looks(&self) {
        let applied = self.checkpointing.as_ref().map(Checkpoint::applied);
        *self
            .queue
            .probe
            .applied
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = applied;
    }

    /// A checkpoint is finished at once.
    fn probe_forces(&self) {
        if let Some(checkpoint) = &self.checkpointing {
            let probe = &self.queue.probe;
            probe.forced.fetch_add(1, Ordering::SeqCst);
            if checkpoint.applied() > 0 {
                probe.forced_partly_written.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// Before a frame is written: waits at the gate, then fails it if the test asked for it.
    fn probe_writes(&self) -> std::io::Result<()> {
        let probe = &self.queue.probe;
        probe.at_gate.store(true, Ordering::SeqCst);
        let _held = probe.gate.lock().unwrap_or_else(|p| p.into_inner());
        let mid_checkpoint = self.checkpointing.as_ref().is_some_and(|c| c.applied() > 0)
            && probe.fail_mid_checkpoint.swap(false, Ordering::SeqCst);
        if probe.fail_next_frame.swap(false, Ordering::SeqCst) || mid_checkpoint {
            return Err(std::io::Error::other("a failed write the test asked for"));
        }
        Ok(())
    }
}

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
    #[cfg(test)]
    pub(super) probe: Probe,
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
            #[cfg(test)]
            probe: Probe::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The generation an operation starts in; pass it to [`Queue::durable`] after.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// How many times the files were synced: frames of the log and checkpoints.
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

    /// Whether nothing is queued for the thread, and it is not told to stop.
    fn nothing_waiting(&self) -> bool {
        let state = self.lock();
        state.changes.is_empty() && state.signals.is_empty() && !state.closed
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
        // With no writer left, nothing would write them, and they would pile up for good.
        if self.broken.load(Ordering::SeqCst) {
            changes.clear();
            return;
        }
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
        if self.broken.load(Ordering::SeqCst) {
            return;
        }
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
    /// The highest position the file records.
    pub(super) last_pos: u64,
    /// The lists the thread swaps with the queue's for each batch (see [`Pending`]).
    pub(super) spare: (Vec<Change>, Vec<Signal>),
    pub(super) log: Log,
    pub(super) tuning: Tuning,
    /// The changes of the log's frames since the last checkpoint: what the next one writes.
    pub(super) unwritten: Vec<Change>,
    /// Scratch space for [`signals::coalesce`].
    pub(super) named: HashSet<UserId>,
    /// A subscriber stopped reading with the channel full ([`Thread::make_room`]): the thread
    /// does not wait for it again until the channel is half empty.
    pub(super) unread: bool,
    /// The checkpoint being written between frames, if any ([`Thread::checkpoint_step`]).
    pub(super) checkpointing: Option<Checkpoint>,
    /// A failed write was not followed by reading the files back, as the storage closed or was
    /// dropped first: memory may hold changes the log lacks (and the log frames the file
    /// lacks), so nothing more is written, not even the closing checkpoint. The next start
    /// replays the log as it is.
    pub(super) abandoned: bool,
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
            // Later operations find a finished batch and the broken flag; what was queued for
            // the writer is let go of, as what comes later is (`record`, `signal`).
            state.open_changed = true;
            state.changes = Vec::new();
            state.signals = Vec::new();
        }
    }
}

impl Thread {
    pub(super) fn run(mut self) {
        let _released = Released(self.queue.clone());
        let mut started = Instant::now();
        loop {
            #[cfg(test)]
            self.probe_looks();
            if self.tuning.idle_steps
                && self.checkpointing.is_some()
                && self.queue.nothing_waiting()
            {
                // Idle: the checkpoint goes on.
                if self.checkpoint_step(Some(self.tuning.slice)).is_err() {
                    self.recover();
                }
                continue;
            }
            self.pace(started);
            let Some(batch) = self.next_batch() else {
                break;
            };
            let (mut changes, mut signals) = std::mem::take(&mut self.spare);
            if self.abandoned {
                // The files were not read back after a failed write, and the storage is gone:
                // nothing more is written, so that the file never claims frames it lacks.
                changes.clear();
                signals.clear();
                #[cfg(test)]
                self.queue.probe.abandoned.fetch_add(1, Ordering::SeqCst);
                self.done_writing(&batch, false);
                self.spare = (changes, signals);
                continue;
            }
            if changes.is_empty() {
                self.done_writing(&batch, true);
                self.publish(&mut signals);
                self.spare = (changes, signals);
                continue;
            }
            started = Instant::now();
            match self.write_frame(&changes) {
                Ok(()) => {
                    self.queue.commits.fetch_add(1, Ordering::Relaxed);
                    self.done_writing(&batch, true);
                    self.publish(&mut signals);
                    // Kept for the checkpoint; the buffer stays with the batch lists.
                    self.unwritten.append(&mut changes);
                    let size = self.tuning.checkpoint_bytes;
                    if self.checkpointing.is_some() || self.log.end() >= size {
                        let budget = (self.log.end() < 2 * size).then_some(self.tuning.slice);
                        #[cfg(test)]
                        if budget.is_none() {
                            self.probe_forces();
                        }
                        if self.checkpoint_step(budget).is_err() {
                            // Memory is rebuilt from the files: the redb file may or may not
                            // hold the failed transaction, and only it knows.
                            self.recover();
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(
                        path = %self.path.display(),
                        error = %e,
                        "simpleio: writing the storage's log failed; the requests of this batch \
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
        // Closed: the file is left holding everything, so that the next start replays nothing
        // (if this fails, the next start writes the log into it).
        if self.abandoned {
            if let Some(checkpoint) = self.checkpointing.take() {
                checkpoint.abort(&mut self.payloads);
            }
        } else if !self.unwritten.is_empty() || self.checkpointing.is_some() {
            let _ = self.checkpoint_step(None);
        }
    }

    /// Appends `changes` to the log as one frame, synced.
    fn write_frame(&mut self, changes: &[Change]) -> std::io::Result<()> {
        #[cfg(test)]
        self.probe_writes()?;
        self.log.append(changes)
    }

    /// Writes the changes kept since the last checkpoint into the redb file for about `budget`
    /// (all of them without one), beginning a checkpoint if none is being written; once it
    /// holds every change kept (those of frames written meanwhile too), commits it and starts
    /// the log again. On an error the checkpoint is given up and the caller rebuilds memory
    /// from the files ([`Thread::recover`]): a commit that failed may still have reached the
    /// file, so the changes kept are not tried again, the log is replayed from what the file
    /// says it holds.
    fn checkpoint_step(&mut self, budget: Option<Duration>) -> Result<(), ()> {
        let stepped = self.try_checkpoint_step(budget);
        if let Err(e) = stepped {
            if let Some(checkpoint) = self.checkpointing.take() {
                checkpoint.abort(&mut self.payloads);
            }
            // After an I/O error the handle refuses every later transaction: reopened next time.
            self.db = None;
            tracing::error!(
                path = %self.path.display(),
                error = %e,
                "simpleio: writing the storage's log into its file failed; memory is \
                 rebuilt from the files, and requests answer 503 until they can be written"
            );
            return Err(());
        }
        Ok(())
    }

    fn try_checkpoint_step(&mut self, budget: Option<Duration>) -> Result<(), redb::Error> {
        if self.checkpointing.is_none() {
            let db = match self.db.take() {
                Some(db) => db,
                None => load::reopen(&self.path)?,
            };
            let begun = Checkpoint::begin(&db, &self.payloads, self.last_pos);
            self.db = Some(db);
            self.checkpointing = Some(begun?);
        }
        let Some(checkpoint) = self.checkpointing.as_mut() else {
            return Ok(());
        };
        if !checkpoint.step(&self.unwritten, &mut self.payloads, budget)? {
            return Ok(());
        }
        let Some(checkpoint) = self.checkpointing.take() else {
            return Ok(());
        };
        let last_pos = checkpoint.commit(&mut self.payloads, self.log.last_seq())?;
        self.queue.commits.fetch_add(1, Ordering::Relaxed);
        self.last_pos = last_pos;
        self.unwritten.clear();
        if self.unwritten.capacity() > KEEP * 64 {
            self.unwritten = Vec::new();
        }
        let next_seq = self.log.last_seq() + 1;
        self.restart_log(next_seq);
        Ok(())
    }

    /// Writes the log from its start again, from frame `next_seq`.
    fn restart_log(&mut self, next_seq: u64) {
        if let Err(e) = self.log.restart(next_seq) {
            tracing::warn!(
                path = %self.path.display(),
                error = %e,
                "simpleio: cutting the storage's log back failed"
            );
        }
    }

    /// Before the next frame: if the server is busy (changes came while the last frame was
    /// written), waits until [`SYNC_INTERVAL`] has passed since that frame began, so that the
    /// next one takes more of them. A quiet server, or one client sending one message after
    /// another, never waits: its next change finds the writer idle.
    fn pace(&self, started: Instant) {
        let waiting = self.queue.lock().changes.len();
        if waiting >= BUSY {
            let since = started.elapsed();
            if since < SYNC_INTERVAL {
                std::thread::sleep(SYNC_INTERVAL - since);
            }
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

    fn publish(&mut self, signals: &mut Vec<Signal>) {
        signals::coalesce(signals, &mut self.named);
        // The channel's length takes its lock: asked once per frame, and again only when the
        // frame's signals would fill it.
        let mut room = SIGNAL_CAPACITY.saturating_sub(self.signals.len());
        for signal in signals.drain(..) {
            if room == 0 {
                room = match self.make_room() {
                    true => SIGNAL_CAPACITY.saturating_sub(self.signals.len()),
                    // Left to lag: not asked again for this frame.
                    false => usize::MAX,
                };
            }
            // No subscriber yet is fine: nobody is waiting.
            let _ = self.signals.send(signal);
            room -= 1;
        }
    }

    /// With the signals' channel full, waits until every subscriber has read its oldest signal,
    /// rather than overflow it: an overflow makes the hub resync, and every waiting poll and
    /// send read again. A frame's signals come at once, and the hub's task, woken from this
    /// thread, runs only once the tasks woken before it have, which are many while thousands
    /// of polls are answered: 10,000 polls confirming a broadcast overflowed the channel 1 to 4
    /// times a run. Meanwhile the next frame gathers (and holds more). Whether there is room
    /// again is looked at every [`ROOM_POLL`]: the channel tells no one when it is read.
    ///
    /// A subscriber that reads nothing for [`ROOM_WAIT`] is taken to have stopped: it lags,
    /// and the thread waits for no one again until the channel is half empty. Nor does it
    /// wait once the storage is closing: the hub may run on the very thread that waits for
    /// this one to end. Returns whether there is room.
    fn make_room(&mut self) -> bool {
        if self.unread {
            if self.signals.len() > SIGNAL_CAPACITY / 2 {
                return false;
            }
            self.unread = false;
        }
        let mut queued = self.signals.len();
        let mut since_read = Instant::now();
        while queued >= SIGNAL_CAPACITY {
            if self.queue.lock().closed {
                return false;
            }
            if since_read.elapsed() >= ROOM_WAIT {
                tracing::warn!(
                    path = %self.path.display(),
                    queued,
                    "simpleio: a subscriber to the storage's signals reads none; it will lag"
                );
                self.unread = true;
                return false;
            }
            std::thread::sleep(ROOM_POLL);
            let now = self.signals.len();
            if now < queued {
                since_read = Instant::now();
            }
            queued = now;
        }
        true
    }

    /// After a failed write: reopens the file and rebuilds memory from it, failing every
    /// operation that overlapped. Until the file can be read back (the disk is still full, it
    /// is gone), every operation fails and it is tried again every [`RETRY_OPEN`].
    fn recover(&mut self) {
        if let Some(checkpoint) = self.checkpointing.take() {
            checkpoint.abort(&mut self.payloads);
        }
        self.payloads = PayloadIds::default();
        // In the log's frames, which the file is rebuilt from.
        self.unwritten.clear();
        // The handle may refuse every later transaction after an I/O error; the file is
        // reopened, which also drops its lock first.
        self.db = None;
        let mut logged = false;
        loop {
            let Some(memory) = self.memory.upgrade() else {
                self.abandoned = true;
                return;
            };
            let opened = load::reload(&self.path, self.log.last_seq());
            let queue = self.queue.clone();
            match opened {
                Ok((
                    db,
                    Loaded {
                        restored,
                        next_payload,
                        log_seq,
                        ..
                    },
                )) => {
                    self.payloads.next = next_payload;
                    self.last_pos = restored.last_pos;
                    self.restart_log(log_seq.saturating_add(1));
                    let mut dropped = None;
                    let queue = &queue;
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
                    // Nor is the batch whose write failed: its waiters answer now, not once
                    // the file can be rebuilt (which writes the log into it: a full disk must
                    // have room again first).
                    if let Some(batch) = queue.lock().writing.take() {
                        batch.finish(false);
                    }
                    if queue.lock().closed {
                        self.abandoned = true;
                        return;
                    }
                    drop(memory);
                    std::thread::sleep(RETRY_OPEN);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ClientId;
    use crate::storage::memory::journal::Journal;

    /// Once the writer thread panicked, operations fail with 503: what they record and signal
    /// is let go of, as nothing will write it, instead of piling up for good.
    #[test]
    fn after_the_writer_panicked_nothing_piles_up_for_it() {
        let change = || Change::Unclient {
            user: UserId::from("ann"),
            client: ClientId::new("tab").expect("an id"),
        };
        let queue = Arc::new(Queue::new());
        queue.record(&mut vec![change()]);
        let writer = queue.clone();
        let panicked = std::thread::spawn(move || {
            let _released = Released(writer);
            panic!("the writer fails");
        })
        .join();
        assert!(panicked.is_err());
        assert!(queue.broken.load(Ordering::SeqCst));
        for _ in 0..1_000 {
            queue.record(&mut vec![change()]);
            queue.signal(Signal::Resync);
        }
        let state = queue.lock();
        assert!(
            state.changes.is_empty(),
            "{} changes queued",
            state.changes.len()
        );
        assert!(
            state.signals.is_empty(),
            "{} signals queued",
            state.signals.len()
        );
    }
}
