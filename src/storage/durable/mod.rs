//! [`DurableStorage`]: everything in this process's memory, and in a file (with its log) on its
//! disk.

mod changes;
mod checkpoint;
mod codec;
mod load;
mod log;
mod signals;
mod tables;
mod writer;
#[cfg(test)]
mod writer_tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use self::load::Loaded;
use self::log::Log;
use self::tables::PayloadIds;
use self::writer::{Queue, Thread, Tuning};
use super::{
    Appended, Claim, DedupKey, DedupLimits, DeliveryState, DeliveryTarget, Departure, Epoch,
    FetchBatch, FetchRequest, Member, MemoryStorage, NewMessage, NewReply, Persisting, QueueLimits,
    RecordedReply, ReplyLimits, ReplyOutcome, Signal, Storage, StorageError,
};
use crate::id::{ClientId, UserId};

/// Storage in this process's memory and in a file on its disk: a restart, or a `SIGKILL`,
/// loses nothing that was confirmed stored (feature `durable`).
///
/// For one process. Several processes share a storage such as `RedisStorage` instead.
///
/// # How it works
///
/// Reads and the storage's rules are those of [`MemoryStorage`]: the state lives in memory and
/// every operation costs what it does there. Each change to what must survive (messages,
/// cursors and watermarks, client records and data, dedup records, room memberships) is also
/// recorded, and a writer thread appends them to a log beside the file, `PATH.log`: many
/// requests' changes in one frame and one fsync (*group commit*), a few KiB written in one
/// place. An operation returns only once every change it made or saw is in the log, and
/// signals are published only after the changes behind them: so `Sending::stored()`
/// resolving, an incoming message's ack, a confirmation, a client reading a message, all
/// happen after the data is on disk. A frame's signals are published at once; when the
/// channel is full, the writer (and so every write) waits for the hub to read rather than
/// overflow it (a lag makes every waiting poll and send read again), for at most a second
/// while nothing is read.
///
/// Every 4 MiB of log the thread writes what the log holds into the [redb](https://docs.rs/redb)
/// file, in one transaction (a *checkpoint*), and starts the log again. It writes 2 ms at a
/// time between frames, with the frames written meanwhile in the same transaction, and
/// commits once it has caught up (at once if the log reaches 8 MiB first): until then the
/// file is as it was, and the log holds everything. Frames still wait for its commit, and for
/// a finish at 8 MiB. What came and went in between is left out (found 2 ms at a time too): a
/// message delivered before the checkpoint began is never written to the file's B-tree, only
/// to the log. (Those there were when it began are one stretch, and each batch of changes it
/// takes after catching up another: a message and its removal in two stretches are both
/// written.) A start (or the rebuild after a failed write) first writes the log's frames
/// into the file the same way, so the two files are one store: delete both, or neither.
///
/// On start the file is read whole into memory. A missing file starts a new epoch; so does a
/// file that cannot be read, or whose log is gone (it is moved aside with a loud log, never
/// trusted, never a panic), and clients then resync, as the [`Epoch`](crate::storage::Epoch)
/// rules require. A frame of the log torn by a crash was never confirmed to anyone: it is
/// recognised by its checksum and not replayed. Only the last frame can be torn: one that
/// cannot be read (checksum, magic, length) with a whole frame numbered two or more past it
/// further on was damaged after it was synced, and makes the log unreadable (a new epoch),
/// never a log cut short in silence. A last frame damaged after it was synced looks torn, as
/// in any write-ahead log: nothing after it says it was whole.
///
/// If a write fails (a full disk, an I/O error), the requests waiting for it answer `503`,
/// memory is rebuilt from the files (which hold exactly what was confirmed), and writing goes
/// on once the disk takes writes again; requests answer `503` until then.
///
/// Presence (when each client last polled) is not written: it changes on every poll. After a
/// restart every client is given its presence TTL afresh, so one that does not come back is
/// reaped, with its departure reported, as if the process had never stopped.
///
/// # Cost
///
/// Memory as [`MemoryStorage`], plus the changes logged since the last checkpoint (those of
/// 4 MiB of log, at most 8 MiB and a frame while one is written, a few times that in memory),
/// plus the files: in the file each message, client and record once, a
/// fan-out's payload (from 256 bytes) once for all its recipients. The file's pages are reused
/// as messages are delivered or expire, so its size follows what is held, not what was ever
/// sent; the log is written over from its start after each checkpoint. One process opens a
/// file at a time.
///
/// Cloning gives another handle to the same storage; the file is closed when the last one goes.
///
/// ```
/// use simpleio::{DurableStorage, SimpleIoLayer};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = std::env::temp_dir().join(format!("simpleio-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// let storage = DurableStorage::open(dir.join("simpleio.redb")).await?;
/// let (layer, io) = SimpleIoLayer::builder().storage(storage).build();
/// # let _ = (layer, io);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct DurableStorage {
    memory: MemoryStorage,
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    queue: Arc<Queue>,
    path: PathBuf,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The thread writes what is still queued, then closes the file, so that the file can
        // be opened again as soon as the storage is gone.
        self.queue.close();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl DurableStorage {
    /// Opens the storage kept in the file at `path` and its log `PATH.log`, making them if
    /// there are none (the folder must exist). Writes the log's frames into the file, then
    /// reads the whole file into memory.
    ///
    /// Fails if the file is open in another process or cannot be read or written for now (an
    /// I/O error, a full disk). A file that is not a store this version can read, or whose log
    /// is gone, is moved aside to `PATH.unreadable-MILLIS` (with its log, if any) and a new one
    /// is made, with a new epoch and an `error` log.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_tuned(path.as_ref().to_path_buf(), Tuning::default()).await
    }

    /// [`DurableStorage::open`], its writer checkpointing as `tuning` says.
    async fn open_tuned(path: PathBuf, tuning: Tuning) -> Result<Self, StorageError> {
        let opened = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                let (db, loaded) = load::open(&path)?;
                let log = Log::open(
                    &log::path_for(&path),
                    loaded.log_tag,
                    loaded.log_seq.saturating_add(1),
                )
                .map_err(|e| StorageError::Unavailable(format!("opening the log: {e}")))?;
                Ok::<_, StorageError>((db, loaded, log))
            })
            .await
            .map_err(|e| StorageError::Unavailable(format!("opening the storage: {e}")))??
        };
        let (
            db,
            Loaded {
                restored,
                next_payload,
                ..
            },
            log,
        ) = opened;
        let last_pos = restored.last_pos;
        let queue = Arc::new(Queue::new());
        let memory = MemoryStorage::journaled(restored, queue.clone());
        let thread = Thread {
            queue: queue.clone(),
            db: Some(db),
            path: path.clone(),
            memory: memory.downgrade(),
            signals: memory.signal_sender(),
            payloads: PayloadIds::starting_at(next_payload),
            last_pos,
            spare: Default::default(),
            log,
            tuning,
            unwritten: Vec::new(),
            named: Default::default(),
            unread: false,
            checkpointing: None,
            abandoned: false,
        };
        let thread = std::thread::Builder::new()
            .name("simpleio-durable".into())
            .spawn(move || thread.run())
            .map_err(|e| StorageError::Unavailable(format!("starting the writer: {e}")))?;
        Ok(DurableStorage {
            memory,
            inner: Arc::new(Inner {
                queue,
                path,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// The file this storage keeps its data in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The log beside it, `PATH.log`: the changes since the last checkpoint. Part of the store,
    /// as the file is.
    pub fn log_path(&self) -> PathBuf {
        log::path_for(&self.inner.path)
    }

    /// How many times the storage has synced its files since it was opened: a frame of the log
    /// or a checkpoint, each one fsync. With group commit, far fewer than the operations that
    /// changed something.
    pub fn commits(&self) -> u64 {
        self.inner.queue.commits()
    }

    /// Runs `op` on the memory, then waits until what it made or saw is durable.
    async fn durably<T>(
        &self,
        op: impl Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        let generation = self.inner.queue.generation();
        let out = op.await?;
        self.inner.queue.durable(generation).await?;
        Ok(out)
    }
}

#[async_trait]
impl Storage for DurableStorage {
    async fn epoch(&self) -> Result<Epoch, StorageError> {
        self.memory.epoch().await
    }

    async fn append(
        &self,
        messages: Vec<NewMessage>,
        limits: QueueLimits,
    ) -> Result<Appended, StorageError> {
        self.durably(self.memory.append(messages, limits)).await
    }

    /// The messages have their positions once they are in memory; the batch that writes them is
    /// shared with whatever else the next commit holds, the sender's own next messages too.
    async fn append_ordered(
        &self,
        messages: Vec<NewMessage>,
        limits: QueueLimits,
    ) -> Result<(Appended, Persisting), StorageError> {
        let queue = &self.inner.queue;
        let generation = queue.generation();
        let appended = self.memory.append(messages, limits).await?;
        let batch = queue.latest(generation)?;
        Ok((appended, Persisting::new(writer::settled(batch))))
    }

    async fn fetch(&self, request: FetchRequest) -> Result<FetchBatch, StorageError> {
        self.durably(self.memory.fetch(request)).await
    }

    async fn delivery(
        &self,
        epoch: &Epoch,
        targets: &[DeliveryTarget],
    ) -> Result<Vec<DeliveryState>, StorageError> {
        self.durably(self.memory.delivery(epoch, targets)).await
    }

    async fn claim(
        &self,
        key: &DedupKey,
        owner: u64,
        limits: DedupLimits,
    ) -> Result<Claim, StorageError> {
        self.durably(self.memory.claim(key, owner, limits)).await
    }

    async fn renew(
        &self,
        key: &DedupKey,
        owner: u64,
        lease: Duration,
    ) -> Result<bool, StorageError> {
        self.durably(self.memory.renew(key, owner, lease)).await
    }

    async fn complete(
        &self,
        key: &DedupKey,
        outcome: &str,
        ttl: Duration,
    ) -> Result<(), StorageError> {
        self.durably(self.memory.complete(key, outcome, ttl)).await
    }

    async fn reply(
        &self,
        reply: NewReply,
        limits: ReplyLimits,
    ) -> Result<ReplyOutcome, StorageError> {
        self.durably(self.memory.reply(reply, limits)).await
    }

    async fn replies(
        &self,
        epoch: &Epoch,
        targets: &[DeliveryTarget],
    ) -> Result<Vec<Vec<RecordedReply>>, StorageError> {
        self.durably(self.memory.replies(epoch, targets)).await
    }

    async fn live_users(&self) -> Result<Vec<UserId>, StorageError> {
        self.durably(self.memory.live_users()).await
    }

    async fn live_clients(&self, user: &UserId) -> Result<Vec<ClientId>, StorageError> {
        self.durably(self.memory.live_clients(user)).await
    }

    async fn reap(&self) -> Result<Vec<Departure>, StorageError> {
        self.durably(self.memory.reap()).await
    }

    async fn join(
        &self,
        room: &str,
        member: &Member,
        presence_ttl: Duration,
    ) -> Result<(), StorageError> {
        self.durably(self.memory.join(room, member, presence_ttl))
            .await
    }

    async fn leave(&self, room: &str, member: &Member) -> Result<(), StorageError> {
        self.durably(self.memory.leave(room, member)).await
    }

    async fn members(&self, room: &str) -> Result<Vec<Member>, StorageError> {
        self.durably(self.memory.members(room)).await
    }

    async fn rooms(&self, member: &Member) -> Result<Vec<Arc<str>>, StorageError> {
        self.durably(self.memory.rooms(member)).await
    }

    async fn set_data(
        &self,
        member: &Member,
        key: &str,
        value: Option<&str>,
        presence_ttl: Duration,
    ) -> Result<(), StorageError> {
        self.durably(self.memory.set_data(member, key, value, presence_ttl))
            .await
    }

    async fn get_data(&self, member: &Member, key: &str) -> Result<Option<String>, StorageError> {
        self.durably(self.memory.get_data(member, key)).await
    }

    async fn publish(&self, signal: Signal) -> Result<(), StorageError> {
        // Through the journal: published after the changes recorded before it are durable.
        self.memory.publish(signal).await
    }

    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.memory.subscribe()
    }
}

/// A folder of its own under the system's temporary folder, for a test of this module's parts.
#[cfg(test)]
fn test_folder(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "simpleio-{name}-{}-{}",
        std::process::id(),
        crate::id::random_token(8)
    ));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fresh() -> DurableStorage {
        DurableStorage::open(test_folder("durable").join("store.redb"))
            .await
            .expect("a new storage file")
    }

    crate::storage_conformance_tests!(fresh);

    /// `reap` journals a lapsed client's removal and its leaving its rooms in separate frames.
    /// The files as a crash between the two leaves them (the removal synced, the leaving not):
    /// reopened, the room does not list a client that no longer exists, which nothing would
    /// reap again.
    #[tokio::test]
    async fn a_reaped_client_does_not_come_back_in_its_rooms_when_its_leaving_was_lost() {
        let file = test_folder("ghost").join("store.redb");
        let (user, client) = (
            UserId::from("ann"),
            ClientId::new("tab-0001").expect("an id"),
        );
        let member = Member::Client(user.clone(), client.clone());
        let storage = DurableStorage::open(&file).await.expect("a new file");
        storage
            .join("room", &member, Duration::from_millis(50))
            .await
            .expect("joined");
        storage
            .join(
                "room",
                &Member::User(user.clone()),
                Duration::from_millis(50),
            )
            .await
            .expect("joined");
        drop(storage);
        let (db, loaded) = load::open(&file).expect("the file");
        drop(db);
        let mut log =
            Log::open(&log::path_for(&file), loaded.log_tag, loaded.log_seq + 1).expect("its log");
        log.append(&[crate::storage::memory::journal::Change::Unclient {
            user: user.clone(),
            client,
        }])
        .expect("a frame");
        drop(log);
        for round in 0..3 {
            let storage = DurableStorage::open(&file).await.expect("the file");
            assert_eq!(
                storage.members("room").await.expect("members"),
                vec![Member::User(user.clone())],
                "the reaped client came back ({round})"
            );
            if round == 0 {
                // The same client id polls again: its old membership must not come back with
                // its new record.
                storage
                    .fetch(FetchRequest {
                        user: user.clone(),
                        client: ClientId::new("tab-0001").expect("an id"),
                        cursor: None,
                        namespaces: Arc::from([Arc::<str>::from("/")]),
                        limit: 100,
                        presence_ttl: Duration::from_secs(60),
                        announce: None,
                        max_clients: 64,
                    })
                    .await
                    .expect("a poll");
            }
            drop(storage);
        }
    }
}
