//! [`PostgresStorage`]: the [`Storage`] contract on one PostgreSQL database, for many processes.
//!
//! # How it maps onto PostgreSQL
//!
//! Every operation is **one transaction**, so a concurrent reader sees all of it or none. An
//! operation on a user locks the user's row of `users` first (`SELECT … FOR UPDATE`): the
//! operations of one user run one at a time, which is what makes positions increase and a
//! confirmation, a trim or an eviction exact, while other users' operations run beside them.
//! An operation on several users (an append of a fan-out's chunk, a reap) locks their rows in
//! `user_id` order, so two of them never wait for each other in a circle. The logic of an
//! operation is Rust; its statements are prepared once per connection and those that do not
//! depend on each other are pipelined ([`tx::Tx::pipeline`]): a fetch is four round trips
//! whatever it confirms (the transaction's start; its reads, with the nodes to signal; its
//! writes with the read: the client's record, the watermarks only if one rises, the trim,
//! every notification in one statement; the commit), and so is an append. `join` and
//! `set_data` lock the user's row too, so a reap goes before or after them, never between.
//!
//! The tables (`sql/migrations/`): `interest` (which node needs which users' signals, see
//! [`routes`]), `users` (per user: the last position, the queue's
//! counters), `messages` (each user's log, keyed by user and position), `payloads` (the event
//! and data of a fan-out, once: its messages refer to the row), `senders` (each sender's share
//! of a queue), `clients` (cursor, namespaces, presence), `watermarks` (per user and
//! namespace), `origins`, `acks` and `replies`, `dedup`, `rooms`, `member_data`, `meta` (the
//! epoch) and `signal_bodies` (signals too long for a notification). Statement-level triggers
//! keep the counters of `users` and `senders` from each statement's transition table, so a
//! fan-out's insert updates each of its users once.
//!
//! **Nothing walks the history.** A fetch reads its user's log from its cursor on, by primary
//! key; a new client finds its earliest message addressed to it by an index; a delivery check
//! is one lookup per target; an append reads its users' counters, not their logs, and looks at
//! no more than `EVICT_SCAN` of a full queue's oldest messages for one to evict. Expired rows
//! go in bounded sweeps (`SWEEP_BATCH` rows of each table per [`Storage::reap`], which every
//! node calls every quarter of the presence TTL), by indexes on their expiry; the rows of a
//! user nothing needs any more (`users`, `watermarks`) go after, in bounded batches (see
//! [`presence`]), so that user ids never seen again leave nothing behind.
//!
//! **A fan-out is set-based.** An append inserts all of its messages, payloads, ack records
//! and origins with one statement each (`unnest` of arrays), whatever its number of users, and
//! publishes one notification.
//!
//! # Where the code is
//!
//! Each statement is a file of `sql/` ([`sql`]); each operation a module: [`append`],
//! [`fetch`], [`delivery`] (delivery states and replies), [`dedup`], [`presence`] (reaping,
//! live users, the sweeps), [`rooms`] (rooms and data). [`signals`] keeps the listening
//! connection, [`routes`] sends each signal to the nodes that need it, [`schema`] the migrations, [`tx`] the transaction every operation runs in.

mod append;
mod builder;
mod dedup;
mod delivery;
mod error;
mod fetch;
mod presence;
mod rooms;
mod routes;
mod schema;
mod signals;
mod sql;
mod tx;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use tokio::sync::broadcast;

pub use self::builder::PostgresStorageBuilder;
use self::error::{OrUnavailable, tables_missing, within};
use self::routes::Routes;
use self::signals::AbortOnDrop;
use self::tx::Tx;
use super::{
    Appended, Claim, DedupKey, DedupLimits, DeliveryState, DeliveryTarget, Departure, Epoch,
    FetchBatch, FetchRequest, Member, NewMessage, NewReply, QueueLimits, RecordedReply,
    ReplyLimits, ReplyOutcome, Signal, Storage, StorageError, now_millis,
};
use crate::id::{ClientId, UserId};

/// Storage in PostgreSQL: share it between any number of processes behind a load balancer,
/// on the database a team already runs.
///
/// Every operation is one transaction over a pool of connections (tokio-postgres with
/// deadpool). Wakeups travel with `LISTEN`/`NOTIFY`, on **one** listening connection per
/// `PostgresStorage`, whatever the number of waiting polls; a notification is sent in the
/// transaction of the operation that caused it, so it is delivered when that commits. Clones
/// share the pool and the listening connection.
///
/// * **Signals go to the nodes that need them.** Each `PostgresStorage` is a node with a random
///   id and a channel of its own; it receives the signals of the users it has polls of or waits
///   for (noted in the `interest` table by its fetches, appends, claims and delivery checks,
///   for a minute), those of its own operations, and what every node needs (resyncs, volatile
///   messages): [`PostgresStorage::signals_received`] counts them.
/// * **Not through a transaction-pooling proxy.** `LISTEN` is session state: behind PgBouncer
///   in `transaction` (or `statement`) mode, notifications go to whichever client has the
///   session. Point the storage at PostgreSQL itself, or a proxy in `session` mode.
/// * **Losing the connection** makes operations fail with [`StorageError::Unavailable`] (a
///   `503`) within the connect plus response timeouts, never a hang; the pool makes new
///   connections when the server is back, and the listening connection comes back by itself
///   and sends [`Signal::Resync`], since notifications may have been missed meanwhile.
/// * **Losing the data** (a new database, a dropped schema) gives a new [`Epoch`]: clients
///   resync and senders of unconfirmed messages learn they were lost. A running node that
///   finds its tables gone answers that operation `503`, applies the migrations again (a new
///   epoch) and tells every node to resync; its next operations work. A restart of
///   PostgreSQL loses nothing committed.
/// * **Time** is each node's clock, as for every storage: expiry and presence are in
///   milliseconds of the node that wrote them, so keep the nodes' clocks in sync (NTP).
///
/// Needs PostgreSQL 12 or later (tested with 15). The user needs the right to create a schema
/// the first time (or an existing schema it owns); migrations run on connect.
///
/// ```no_run
/// use simpleio::{PostgresStorage, SimpleIoLayer};
/// # async fn run() -> Result<(), simpleio::storage::StorageError> {
/// let storage = PostgresStorage::builder("postgres://app:secret@127.0.0.1/app")
///     .schema("chat")
///     .connect()
///     .await?;
/// let (layer, io) = SimpleIoLayer::builder().storage(storage).build();
/// # let _ = (layer, io);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresStorage {
    inner: Arc<Inner>,
}

struct Inner {
    /// Connections for the operations, one transaction at a time each.
    pool: Pool,
    /// The schema of the tables (every connection's `search_path`).
    schema: String,
    /// This node's channels, and the users whose signals it noted it needs.
    routes: Routes,
    /// Notifications this node's listening connection received.
    received: Arc<AtomicU64>,
    /// Signals from the listening connection, handed out by `subscribe`.
    signals: broadcast::Sender<Signal>,
    /// The most an operation may take, a new connection included.
    deadline: Duration,
    /// Where this node's reaps go on looking through `users` for rows to forget.
    scan_from: std::sync::Mutex<String>,
    /// When this node last made the tables again after finding them gone: at most once a
    /// second, however many operations fail meanwhile.
    remade_at: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// The task reading the listening connection; stops with the last handle.
    _listener: AbortOnDrop,
}

impl fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("schema", &self.inner.schema)
            .field("node", &self.inner.routes.node)
            .field("deadline", &self.inner.deadline)
            .finish_non_exhaustive()
    }
}

impl PostgresStorage {
    /// Connects to the PostgreSQL at `url` (`postgres://user:password@host:port/database`, or
    /// key-value form) with the default settings. See [`PostgresStorage::builder`] for others.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), simpleio::storage::StorageError> {
    /// let storage = simpleio::PostgresStorage::connect("postgres://app@127.0.0.1/app").await?;
    /// # let _ = storage;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(url: impl Into<String>) -> Result<Self, StorageError> {
        Self::builder(url).connect().await
    }

    /// A builder for a storage on the PostgreSQL at `url`, to set the schema, pool and timeouts.
    pub fn builder(url: impl Into<String>) -> PostgresStorageBuilder {
        PostgresStorageBuilder::new(url.into())
    }

    /// The schema of this storage's tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// How many notifications this node has received since it connected: a figure to watch.
    pub fn signals_received(&self) -> u64 {
        self.inner.received.load(Ordering::Relaxed)
    }

    /// A connection of the pool.
    async fn conn(&self) -> Result<Object, StorageError> {
        self.inner.pool.get().await.or_unavailable()
    }

    /// Runs `op` within the storage's deadline; if it found the tables gone, makes them again.
    async fn within<T>(
        &self,
        op: impl Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        let result = within(self.inner.deadline, op).await;
        if let Err(err) = &result {
            self.remake_if_gone(err).await;
        }
        result
    }

    /// After `err`, if it says the tables are gone (the schema was dropped under this running
    /// node), applies the migrations again, which makes the schema anew with a **new epoch**:
    /// clients resync and senders of unconfirmed messages learn they were lost, as after a
    /// restart on an empty database, rather than the node serving empty tables under the old
    /// epoch. The operation that found them gone answers `503`; the next ones work. Every
    /// subscriber here, and every node, is told to resync.
    async fn remake_if_gone(&self, err: &StorageError) {
        if !tables_missing(err) {
            return;
        }
        let mut remade_at = self.inner.remade_at.lock().await;
        if remade_at.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            return;
        }
        *remade_at = Some(std::time::Instant::now());
        let schema = &self.inner.schema;
        let remade = within(self.inner.deadline * 2, async {
            let mut conn = self.conn().await?;
            schema::migrate(&mut conn, schema).await
        })
        .await;
        match remade {
            Ok(()) => {
                tracing::warn!(
                    schema,
                    "the tables were gone: made them again, with a new epoch"
                );
                // Interest rows and the forgetting scan's place went with the tables.
                self.inner.routes.forget_noted();
                *self
                    .inner
                    .scan_from
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = String::new();
                let _ = self.inner.signals.send(Signal::Resync);
                if let Err(err) =
                    within(self.inner.deadline, self.publish_now(Signal::Resync)).await
                {
                    tracing::warn!(cause = %err, "could not tell the other nodes to resync");
                }
            }
            Err(err) => {
                tracing::warn!(schema, cause = %err, "the tables are gone, and making them again failed")
            }
        }
    }

    async fn epoch_now(&self) -> Result<Epoch, StorageError> {
        let mut conn = self.conn().await?;
        let tx = Tx::begin(&mut conn).await?;
        let epoch = delivery::read_epoch(&tx).await?;
        tx.commit().await?;
        Ok(epoch)
    }

    async fn publish_now(&self, signal: Signal) -> Result<(), StorageError> {
        let mut conn = self.conn().await?;
        let tx = Tx::begin(&mut conn).await?;
        self.inner.routes.send(&tx, &signal, now_millis()).await?;
        tx.commit().await
    }
}

#[async_trait]
impl Storage for PostgresStorage {
    async fn epoch(&self) -> Result<Epoch, StorageError> {
        self.within(self.epoch_now()).await
    }

    async fn append(
        &self,
        messages: Vec<NewMessage>,
        limits: QueueLimits,
    ) -> Result<Appended, StorageError> {
        self.within(self.append_now(messages, limits)).await
    }

    async fn fetch(&self, request: FetchRequest) -> Result<FetchBatch, StorageError> {
        self.within(self.fetch_now(request)).await
    }

    async fn delivery(
        &self,
        epoch: &Epoch,
        targets: &[DeliveryTarget],
    ) -> Result<Vec<DeliveryState>, StorageError> {
        self.within(self.delivery_now(epoch, targets)).await
    }

    async fn claim(
        &self,
        key: &DedupKey,
        owner: u64,
        limits: DedupLimits,
    ) -> Result<Claim, StorageError> {
        self.within(self.claim_now(key, owner, limits)).await
    }

    async fn renew(
        &self,
        key: &DedupKey,
        owner: u64,
        lease: Duration,
    ) -> Result<bool, StorageError> {
        self.within(self.renew_now(key, owner, lease)).await
    }

    async fn complete(
        &self,
        key: &DedupKey,
        outcome: &str,
        ttl: Duration,
    ) -> Result<(), StorageError> {
        self.within(self.complete_now(key, outcome, ttl)).await
    }

    async fn live_users(&self) -> Result<Vec<UserId>, StorageError> {
        self.within(self.live_users_now()).await
    }

    async fn live_clients(&self, user: &UserId) -> Result<Vec<ClientId>, StorageError> {
        self.within(self.live_clients_now(user)).await
    }

    async fn reap(&self) -> Result<Vec<Departure>, StorageError> {
        // Not within one deadline: it runs bounded batches, each within its own.
        let result = self.reap_now().await;
        if let Err(err) = &result {
            self.remake_if_gone(err).await;
        }
        result
    }

    async fn join(
        &self,
        room: &str,
        member: &Member,
        presence_ttl: Duration,
    ) -> Result<(), StorageError> {
        self.within(self.join_now(room, member, presence_ttl)).await
    }

    async fn leave(&self, room: &str, member: &Member) -> Result<(), StorageError> {
        self.within(self.leave_now(room, member)).await
    }

    async fn members(&self, room: &str) -> Result<Vec<Member>, StorageError> {
        self.within(self.members_now(room)).await
    }

    async fn rooms(&self, member: &Member) -> Result<Vec<Arc<str>>, StorageError> {
        self.within(self.rooms_now(member)).await
    }

    async fn set_data(
        &self,
        member: &Member,
        key: &str,
        value: Option<&str>,
        presence_ttl: Duration,
    ) -> Result<(), StorageError> {
        self.within(self.set_data_now(member, key, value, presence_ttl))
            .await
    }

    async fn get_data(&self, member: &Member, key: &str) -> Result<Option<String>, StorageError> {
        self.within(self.get_data_now(member, key)).await
    }

    async fn reply(
        &self,
        reply: NewReply,
        limits: ReplyLimits,
    ) -> Result<ReplyOutcome, StorageError> {
        self.within(self.reply_now(reply, limits)).await
    }

    async fn replies(
        &self,
        epoch: &Epoch,
        targets: &[DeliveryTarget],
    ) -> Result<Vec<Vec<RecordedReply>>, StorageError> {
        self.within(self.replies_now(epoch, targets)).await
    }

    async fn publish(&self, signal: Signal) -> Result<(), StorageError> {
        self.within(self.publish_now(signal)).await
    }

    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.inner.signals.subscribe()
    }
}
