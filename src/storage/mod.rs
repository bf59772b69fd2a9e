//! Where messages, confirmations and dedup records live: the [`Storage`] trait.
//!
//! Every piece of state a request needs is in storage, which is what lets any request land on any
//! node. The trait is shaped for a networked store: each method is one round trip, reads are
//! batches by cursor, appends are atomic and publish their wakeups in the same step.
//!
//! # The model
//!
//! * Each **user** has an ordered **log**. [`Storage::append`] gives each new message a
//!   [`Position`] greater than any before it in its user's log. A message may be addressed to one
//!   client of the user; other clients never read it.
//! * Every message belongs to a **namespace** (`/` unless the application says otherwise), and
//!   each client reads the namespaces it subscribed to, skipping the rest.
//! * Each **client** of a user has a **cursor**, the last position it confirmed. The user's
//!   **watermark** in a namespace is the highest cursor of any of its clients subscribed to that
//!   namespace. A message addressed to the user is delivered once its namespace's watermark
//!   reaches it; one addressed to a client, once that client's cursor does (while the client is
//!   subscribed to its namespace). A client seen for the first time starts at the lowest
//!   watermark of its namespaces, so a returning user receives everything no client of theirs
//!   has confirmed yet.
//! * A client is **live** while it polls: each fetch records it as seen for a presence TTL.
//!   [`Storage::reap`] removes clients whose TTL passed — once, on whichever node asks first — with
//!   their room memberships and data, so each departure is reported exactly once in a cluster.
//! * **Rooms** hold members, users or single clients ([`Member`]). A user's memberships last until
//!   they leave; a client's, as long as the client.
//! * **Data** ([`Storage::set_data`]) is small JSON attached to a member: a client's lasts as long
//!   as the client, a user's until their last client is reaped.
//! * A message stays readable until it **expires** (its `expires_at`), so every tab can catch
//!   up. Past it, readers skip it and it is removed. A message that expired unconfirmed is
//!   reported as [`DeliveryState::Expired`]. A storage may remove a delivered message earlier,
//!   once every client of its user that has polled confirmed past it: no client of theirs can
//!   read it again. (A new client starts at the lowest watermark of its namespaces, which may
//!   lie below it; it may then get it or not, but it was confirmed already.)
//! * **Dedup records** remember each client message id for a while ([`Storage::claim`],
//!   [`Storage::complete`]), so a retried POST is not handled twice.
//! * A message may **ask for replies** ([`NewMessage::ack`]): beside the log, an ack record
//!   keeps, until the message expires, one reply per client of its user ([`Storage::reply`]),
//!   so a sender on any node learns them ([`Signal::Replied`], [`Storage::replies`]).
//! * **Signals** wake waiters on every node: appends, confirmations, completed dedup records,
//!   volatile messages and poll take-overs are published with [`Storage::publish`] or as part of
//!   the operation that caused them, and every node receives them from [`Storage::subscribe`].
//! * The **epoch** names one generation of the data. A store that lost its data must come back
//!   with a new epoch; clients then resync and senders of unconfirmed messages get errors.
//!
//! # Implementing it
//!
//! Run the conformance suite (`simpleio::storage::conformance`, feature `conformance`) against
//! your type; it checks every rule above. [`MemoryStorage`] is the reference implementation.

mod memory;
pub use memory::MemoryStorage;

#[cfg(feature = "durable")]
mod durable;
#[cfg(feature = "durable")]
#[cfg_attr(docsrs, doc(cfg(feature = "durable")))]
pub use self::durable::DurableStorage;

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use self::postgres::{PostgresStorage, PostgresStorageBuilder};

#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis-cluster")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis-cluster")))]
pub use self::redis::{RedisClusterStorage, RedisClusterStorageBuilder};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{RedisStorage, RedisStorageBuilder};

#[cfg(any(test, feature = "conformance"))]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::broadcast;

use crate::id::{ClientId, MessageId, UserId};

/// A position in a user's log: increasing with each message of the user, never reused within an
/// [`Epoch`], not contiguous, below 2<sup>53</sup> (so JavaScript reads it exactly). 0 means "before
/// everything".
///
/// Implementations derive positions from the clock (milliseconds × 1000, plus one past the last
/// position when that is not greater), so a user whose log was emptied and removed never sees
/// positions start over below a cursor a client still holds.
pub type Position = u64;

/// Milliseconds since the Unix epoch: how storage records time, so that nodes agree on it.
pub type Millis = u64;

/// The current wall-clock time in [`Millis`].
pub fn now_millis() -> Millis {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0);
    wall.saturating_add(paused_clock_ahead())
}

/// How far a paused tokio clock (`tokio::time::pause`, then `advance`: a test's time control,
/// see [`crate::testing`]) has run ahead of real time, so that expiry, leases and positions in
/// this process follow it, as the layer's own timers do. Zero outside such a test: an unpaused
/// tokio clock is the real one.
///
/// Only with the feature `test-util`: a production build never pauses the clock, and reads no
/// clock but the wall clock here.
#[cfg(feature = "test-util")]
fn paused_clock_ahead() -> Millis {
    let tokio_now = tokio::time::Instant::now().into_std();
    tokio_now
        .saturating_duration_since(std::time::Instant::now())
        .as_millis() as Millis
}

#[cfg(not(feature = "test-util"))]
#[inline]
fn paused_clock_ahead() -> Millis {
    0
}

/// `now + d`, in [`Millis`].
pub fn millis_after(d: Duration) -> Millis {
    now_millis().saturating_add(d.as_millis() as Millis)
}

/// One generation of a storage's data; changes only when the data was lost.
///
/// ```
/// use simpleio::storage::Epoch;
/// let a = Epoch::random();
/// assert_ne!(a, Epoch::random());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(Arc<str>);

impl Epoch {
    /// A new, unguessable-enough epoch (12 random characters).
    pub fn random() -> Self {
        Epoch(crate::id::random_token(12).into())
    }

    /// An epoch with the given text (as stored by a networked storage).
    pub fn new(s: impl Into<Arc<str>>) -> Self {
        Epoch(s.into())
    }

    /// The epoch as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The most messages simpleio hands to one [`Storage::append`] call: a larger fan-out goes in
/// several calls, so that no call holds a lock, or runs a script, for long.
pub const FANOUT_CHUNK: usize = 128;

/// A message to append to a user's log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewMessage {
    /// Whose log it goes to.
    pub user: UserId,
    /// If set, only this client of the user reads it, and only its cursor confirms it.
    pub client: Option<ClientId>,
    /// The namespace (`/` by default).
    pub namespace: Arc<str>,
    /// The event name.
    pub event: Arc<str>,
    /// The payload, as JSON text.
    pub data: Arc<RawValue>,
    /// When the message stops being readable if nobody confirmed it, in [`Millis`].
    pub expires_at: Millis,
    /// On whose behalf it is sent, if anyone's: the user whose message a handler relays. A
    /// sender may hold only [`QueueLimits::per_sender`] of a recipient's queue, so that one
    /// sender cannot fill it for everyone. `None` (the server's own messages) counts against
    /// [`QueueLimits::per_user`] only.
    #[serde(default)]
    pub sender: Option<UserId>,
    /// What names this send, if anything: while the user's log remembers an origin (until the
    /// message it came with expires, even once delivered), a message with the same one is not
    /// stored again, and its append answers the first one's position. simpleio names the sends
    /// of a handler after the client message it handles, so that a handler run again after a
    /// crash (its outcome was never recorded) does not send twice.
    #[serde(default)]
    pub origin: Option<Arc<str>>,
    /// Its sender waits for the replies of the receiving clients' applications
    /// ([`Storage::reply`]): the message is read back with [`StoredMessage::ack`] set, and an
    /// ack record is kept beside the log, until `expires_at`, for the replies.
    #[serde(default)]
    pub ack: bool,
}

/// How much a user's queue holds: the messages in their log neither expired nor delivered,
/// counted and in bytes of `data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// At most this many messages in all.
    pub per_user: usize,
    /// At most this many with the same [`NewMessage::sender`].
    pub per_sender: usize,
    /// At most this many bytes of `data` in all.
    pub bytes_per_user: usize,
    /// At most this many bytes of `data` with the same [`NewMessage::sender`].
    pub bytes_per_sender: usize,
}

/// How many dedup records one client and one user keep (see [`Storage::claim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupLimits {
    /// How long a new record stays in progress if it is neither completed nor renewed.
    pub lease: Duration,
    /// At most this many records per client.
    pub per_client: usize,
    /// At most this many records per user, over all of their clients.
    pub per_user: usize,
}

/// A bound that refused an operation (see [`StorageError::Limit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Limit {
    /// A new client of a user that has [`FetchRequest::max_clients`] clients already.
    #[error("the user has {0} clients, the most allowed; a new client id is refused")]
    ClientsPerUser(usize),
    /// A new dedup record where the client's or user's oldest record is still in progress.
    #[error("{0} messages of this user are in progress or remembered; wait for them to finish")]
    DedupRecords(usize),
}

/// A message as read back from a log. Its serde form is the protocol's (`ns` left out for `/`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Its position in the user's log.
    pub pos: Position,
    /// Its namespace.
    #[serde(
        default = "default_namespace",
        skip_serializing_if = "is_default_namespace"
    )]
    pub ns: Arc<str>,
    /// The event name.
    pub event: Arc<str>,
    /// The payload, as JSON text.
    pub data: Arc<RawValue>,
    /// Its sender waits for a reply of each receiving client (see [`NewMessage::ack`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ack: bool,
}

/// The namespace every message is in unless the application names another.
pub const DEFAULT_NAMESPACE: &str = "/";

fn default_namespace() -> Arc<str> {
    DEFAULT_NAMESPACE.into()
}

fn is_default_namespace(ns: &Arc<str>) -> bool {
    &**ns == DEFAULT_NAMESPACE
}

/// What [`Storage::append`] did with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendOutcome {
    /// Stored at this position of its user's log.
    Stored(Position),
    /// Not stored: with it, the user's queue would hold more than its [`QueueLimits`] allow,
    /// in all or from this message's sender, counted or in bytes.
    QueueFull,
}

/// The result of [`Storage::append`].
#[derive(Debug, Clone)]
pub struct Appended {
    /// The epoch the messages were stored in.
    pub epoch: Epoch,
    /// One outcome per message, in the order given.
    pub outcomes: Vec<AppendOutcome>,
    /// The most messages any recipient of this call holds in its queue once the call is done
    /// (what [`QueueLimits::per_user`] bounds), if the storage tells: what shows a queue
    /// nearing its bound before sends are refused.
    pub deepest: Option<usize>,
}

/// The second step of [`Storage::append_ordered`]: resolves once the messages it ordered are
/// stored.
#[must_use = "the messages are not known to be stored until it resolves"]
pub struct Persisting(Option<Written>);

/// The write a [`Persisting`] waits for.
type Written = Pin<Box<dyn Future<Output = Result<(), StorageError>> + Send>>;

impl Persisting {
    /// Already stored: nothing to wait for.
    pub fn done() -> Self {
        Persisting(None)
    }

    /// Stored once `until` resolves.
    pub fn new(until: impl Future<Output = Result<(), StorageError>> + Send + 'static) -> Self {
        Persisting(Some(Box::pin(until)))
    }

    /// Whether there is nothing to wait for.
    pub fn is_done(&self) -> bool {
        self.0.is_none()
    }

    /// Waits until the messages are stored.
    pub async fn wait(self) -> Result<(), StorageError> {
        match self.0 {
            Some(until) => until.await,
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Persisting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Persisting")
            .field(&if self.is_done() { "done" } else { "pending" })
            .finish()
    }
}

/// A client's request to read its user's log.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    /// The user whose log is read.
    pub user: UserId,
    /// The reading client.
    pub client: ClientId,
    /// The client's cursor and the epoch it came from, if it has one. If the epoch is the current
    /// one, the cursor is first recorded as confirmed (never beyond the log's last position; a
    /// client's recorded cursor never moves back) and reading starts after it (at the log's last
    /// position, for a cursor beyond it: a client cannot skip messages not yet written). Otherwise reading
    /// starts at the client's recorded cursor, or for a client seen for the first time at the
    /// user's watermark — or just before the earliest unexpired message addressed to that client,
    /// if one lies at or below the watermark — and that start is recorded as the client's cursor.
    pub cursor: Option<(Epoch, Position)>,
    /// The namespaces the client reads (at least one); recorded, replacing the previous list.
    pub namespaces: Arc<[Arc<str>]>,
    /// Read at most this many messages.
    pub limit: usize,
    /// Record the client as seen, for this long ([`Storage::live_users`]).
    pub presence_ttl: Duration,
    /// If set, publish [`Signal::PollStarted`] for this user, client and poll id in the same
    /// step: a new poll announces itself without a round trip of its own.
    pub announce: Option<u64>,
    /// A client not known yet is refused with [`Limit::ClientsPerUser`] while the user has this
    /// many clients that polled (live, or lapsed and not yet reaped); nothing is changed then.
    /// Records made by [`Storage::join`] or [`Storage::set_data`] alone do not count (the
    /// application made them), and such a client is known.
    pub max_clients: usize,
}

/// What [`Storage::fetch`] read.
#[derive(Debug, Clone)]
pub struct FetchBatch {
    /// The current epoch.
    pub epoch: Epoch,
    /// The cursor the client should hold after these messages: the position up to which the log
    /// was read (the last message's, if `limit` stopped the read; else the log's last position,
    /// past messages that were skipped as expired or addressed to other clients), or where
    /// reading started if the log holds nothing after it.
    pub cursor: Position,
    /// Unexpired messages for this client after the starting cursor, in order, at most `limit`.
    pub messages: Vec<StoredMessage>,
    /// Set when this fetch made the client live: it was not known (or had been reaped).
    pub arrival: Option<Arrival>,
}

/// A client that became live with a fetch (see [`FetchBatch::arrival`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// No other client of the user was live: the user came online.
    pub user_came_online: bool,
}

/// A client removed by [`Storage::reap`] because its presence TTL passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departure {
    /// Its user.
    pub user: UserId,
    /// The client.
    pub client: ClientId,
    /// No client of the user is live any more: the user went offline.
    pub user_went_offline: bool,
}

/// A member of a room: a user (every client of theirs) or one client of a user.
///
/// ```
/// use simpleio::storage::Member;
/// use simpleio::{ClientId, UserId};
/// let ann = Member::from("ann");
/// let tab = Member::client("ann", ClientId::new("tab1").unwrap());
/// assert_eq!(ann, Member::User(UserId::from("ann")));
/// assert_eq!(tab.user(), &UserId::from("ann"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Member {
    /// Every client of a user, now and later, online or not.
    User(UserId),
    /// One client of a user, for as long as it is live.
    Client(UserId, ClientId),
}

impl Member {
    /// One client of a user.
    pub fn client(user: impl Into<UserId>, client: ClientId) -> Self {
        Member::Client(user.into(), client)
    }

    /// The user, or the client's user.
    pub fn user(&self) -> &UserId {
        match self {
            Member::User(user) | Member::Client(user, _) => user,
        }
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Member::User(user) => write!(f, "{user}"),
            Member::Client(user, client) => write!(f, "{user}/{client}"),
        }
    }
}

impl<T: Into<UserId>> From<T> for Member {
    fn from(user: T) -> Self {
        Member::User(user.into())
    }
}

/// Whether a message reached its recipient (see [`Storage::delivery`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryState {
    /// A cursor that covers it was confirmed.
    Delivered,
    /// Not yet confirmed, not yet expired.
    Pending,
    /// It expired (or was evicted) before anyone confirmed it.
    Expired,
    /// The storage's epoch changed: the message is gone with the old data.
    Lost,
}

/// One message whose delivery a sender is waiting for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeliveryTarget {
    /// The recipient user.
    pub user: UserId,
    /// The recipient client, if the message was addressed to one.
    pub client: Option<ClientId>,
    /// The message's namespace.
    pub namespace: Arc<str>,
    /// The message's position in the user's log.
    pub pos: Position,
}

/// The key of a dedup record: one message id of one client of one user.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DedupKey {
    /// The sending user (from the identity function).
    pub user: UserId,
    /// The sending client.
    pub client: ClientId,
    /// The client's message id.
    pub id: MessageId,
}

/// The state of a dedup record, as [`Storage::claim`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// No record existed; the caller now holds a lease and must handle the message, then call
    /// [`Storage::complete`].
    Acquired,
    /// Another request holds the lease and is handling the message now; its lease ends in
    /// `retry_after` unless renewed ([`Storage::renew`]).
    InProgress {
        /// What is left of the holder's lease.
        retry_after: Duration,
    },
    /// The message was handled; here is the stored outcome (opaque JSON text).
    Done(String),
}

/// A client's reply to a message that asked for one ([`NewMessage::ack`]); see
/// [`Storage::reply`].
#[derive(Debug, Clone)]
pub struct NewReply {
    /// The replying client's user: only a message in this user's log can be replied to.
    pub user: UserId,
    /// The replying client.
    pub client: ClientId,
    /// The position of the message replied to, in the user's log.
    pub pos: Position,
    /// The reply, as JSON text.
    pub data: Arc<RawValue>,
}

/// How many replies a storage keeps (see [`Storage::reply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyLimits {
    /// At most this many replies to one message (one per client of its user).
    pub per_message: usize,
    /// At most this many bytes of replies held for one user, over all of their messages.
    pub bytes_per_user: usize,
}

/// What [`Storage::reply`] did with a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplyOutcome {
    /// Recorded, and [`Signal::Replied`] published.
    Recorded,
    /// This client replied to the message before; the first reply stays, this one is dropped.
    Duplicate,
    /// No unexpired message that asks for replies is at this position of the user's log for
    /// this client (never there, addressed to another client, not asking, or expired).
    Unknown,
    /// Recording it would pass [`ReplyLimits`]; nothing changed.
    Full,
}

/// One client's reply to a message, as [`Storage::replies`] reads it back.
#[derive(Debug, Clone)]
pub struct RecordedReply {
    /// The client that replied.
    pub client: ClientId,
    /// Its reply, as JSON text.
    pub data: Arc<RawValue>,
}

/// A notification from one node to every node (see [`Storage::subscribe`]).
///
/// Signals are batched by the operation that causes them: one [`Signal::Appended`] per append
/// call, however many users it reached, and one [`Signal::Volatile`] per volatile message,
/// however many recipients it has. A storage may merge the `Appended` of several calls
/// (`DurableStorage` tells the appends of each write-ahead frame together, in signals of at most
/// [`FANOUT_CHUNK`] users, as it publishes a frame's signals at once). A confirmation carries
/// the cursor it confirmed, so a sender waiting for it learns its outcome from the signal alone,
/// without asking the storage.
///
/// Its serde form (externally tagged, so that the `RawValue` payload of `Volatile` round-trips)
/// is what networked storages put on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// New messages were appended to these users' logs (each user once).
    Appended {
        /// The users.
        users: Arc<[UserId]>,
    },
    /// A client confirmed a cursor: in each of `namespaces` its user's watermark is now at
    /// least `cursor`, and so is the client's own cursor. Published only when that moved
    /// something forward.
    Confirmed {
        /// The epoch the cursor belongs to; a waiter for a message of another epoch ignores it.
        epoch: Epoch,
        /// The user.
        user: UserId,
        /// The client that confirmed.
        client: ClientId,
        /// The position confirmed (never beyond the log's last position).
        cursor: Position,
        /// The namespaces the client reads, in which the cursor counts.
        namespaces: Arc<[Arc<str>]>,
    },
    /// A dedup record of this user was completed.
    Completed {
        /// The user.
        user: UserId,
    },
    /// A message for clients waiting right now; never stored.
    Volatile {
        /// The recipients: every client of a user, or one client.
        recipients: Arc<[Member]>,
        /// Its namespace: only clients subscribed to it receive it.
        namespace: Arc<str>,
        /// The event name.
        event: Arc<str>,
        /// The payload, as JSON text.
        data: Arc<RawValue>,
    },
    /// A client started a new poll; its older polls, on any node, end.
    PollStarted {
        /// The user.
        user: UserId,
        /// The client.
        client: ClientId,
        /// The new poll's random id.
        poll: u64,
    },
    /// A client replied to a message that asked for replies ([`Storage::reply`]). Carries the
    /// reply, so that its sender, on any node, learns it without asking the storage.
    Replied {
        /// The epoch the message belongs to.
        epoch: Epoch,
        /// The message's user.
        user: UserId,
        /// The message's position.
        pos: Position,
        /// The client that replied.
        client: ClientId,
        /// The reply, as JSON text.
        data: Arc<RawValue>,
    },
    /// Signals may have been lost (a subscription reconnected, or a receiver lagged): every
    /// waiter should look at storage again.
    Resync,
}

/// A storage operation failed. Requests that hit it answer `503` and can be retried.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The store could not be reached or did not answer in time.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The store answered with something this implementation cannot read.
    #[error("storage returned corrupt data: {0}")]
    Corrupt(String),
    /// Not a failure of the store: a bound refused the operation, and nothing changed.
    /// Requests that hit it answer `429`.
    #[error("{0}")]
    Limit(#[from] Limit),
}

/// Where simpleio keeps its state. See the [module docs](self) for the model it implements.
///
/// Methods take `&self` and are called concurrently from many requests; an implementation is a
/// cheap handle to shared state. Each method should be one round trip to a networked store and
/// atomic: a concurrent reader sees all of an operation's effect or none of it.
#[async_trait]
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    /// The current epoch. A store that finds its data gone creates a new one.
    async fn epoch(&self) -> Result<Epoch, StorageError>;

    /// Appends each message to its user's log, atomically per user, and publishes one
    /// [`Signal::Appended`] naming every user that got a message, in the same step (or shares
    /// it with other appends made at the same time: `DurableStorage` does for those written in
    /// one frame, and `MemoryStorage` for those of a burst that fills half its channel, a
    /// millisecond at a time).
    ///
    /// The messages of one fan-out share one payload: the same `data` `Arc` (and the same
    /// `event` and `namespace`). A storage should store that payload once, not once per
    /// recipient. Callers keep calls small (simpleio sends a large fan-out in chunks of
    /// [`FANOUT_CHUNK`] messages), so an implementation may run one call as one atomic step.
    ///
    /// Positions of one user increase with each stored message, in the order given, and
    /// concurrent appends never interleave within one call's messages of a user. A message
    /// that would take the user's queue (its messages neither expired nor delivered) past
    /// `limits` is refused with [`AppendOutcome::QueueFull`]: past `per_user` messages or
    /// `bytes_per_user` bytes of `data`, or, from its [`sender`](NewMessage::sender), past
    /// `per_sender` or `bytes_per_sender`. Expired and delivered messages are evicted first to
    /// make room (the sender's own, for the sender's share).
    ///
    /// A message whose [`origin`](NewMessage::origin) the user's log remembers is not stored
    /// again: its outcome is the position it was stored at. A log remembers at most
    /// `limits.per_user` origins, each until its message's expiry.
    async fn append(
        &self,
        messages: Vec<NewMessage>,
        limits: QueueLimits,
    ) -> Result<Appended, StorageError>;

    /// [`append`](Self::append) in two steps: returns once the messages have their positions,
    /// with a [`Persisting`] that resolves once they are stored as `append` returns them (or
    /// fails as `append` would have).
    ///
    /// For a storage that orders messages well before they are safe, as `DurableStorage` does
    /// (positions in memory at once, the file's fsync shared by a batch later): a sender can
    /// append its next message meanwhile, after this one, and both share one write. Until the
    /// `Persisting` resolves nobody reads the messages, and no signal names them. If it fails,
    /// a message appended after these may still be stored: the sender learns of each from its
    /// own `Persisting`.
    ///
    /// The default calls `append`, which stores the messages before it returns; a storage whose
    /// one write both orders and stores them (Redis, PostgreSQL) keeps it.
    async fn append_ordered(
        &self,
        messages: Vec<NewMessage>,
        limits: QueueLimits,
    ) -> Result<(Appended, Persisting), StorageError> {
        Ok((self.append(messages, limits).await?, Persisting::done()))
    }

    /// Confirms the client's cursor (see [`FetchRequest::cursor`]), publishing
    /// [`Signal::Confirmed`] with the confirmed position if it advanced the client's cursor or a
    /// watermark, records the client as seen, publishes the
    /// [announcement](FetchRequest::announce) if any, and reads on.
    async fn fetch(&self, request: FetchRequest) -> Result<FetchBatch, StorageError>;

    /// Whether each target's message was delivered, in the order given. `epoch` is the one the
    /// messages were appended in; if it is no longer current, every answer is
    /// [`DeliveryState::Lost`].
    async fn delivery(
        &self,
        epoch: &Epoch,
        targets: &[DeliveryTarget],
    ) -> Result<Vec<DeliveryState>, StorageError>;

    /// Claims the dedup record `key` for `owner`, a random number the claiming request keeps.
    /// If none exists, creates it in progress for `limits.lease` (after which, unless renewed
    /// with [`Storage::renew`], it vanishes so a retry can handle the message) and returns
    /// [`Claim::Acquired`]. If it is in progress for the same `owner`, returns
    /// [`Claim::Acquired`] too and restarts the lease: a claim whose answer was lost is asked
    /// again by its request and resumed, not left for its lease to end.
    ///
    /// A new record is bounded: while its client holds `limits.per_client` records, or its
    /// user `limits.per_user`, the oldest (by claim) is forgotten first if it was completed;
    /// if it is still in progress, the claim fails with [`Limit::DedupRecords`] and nothing
    /// changes. A client retries only its latest messages, so forgetting its oldest costs
    /// nothing, while one that sends without end cannot grow the records without end.
    async fn claim(
        &self,
        key: &DedupKey,
        owner: u64,
        limits: DedupLimits,
    ) -> Result<Claim, StorageError>;

    /// Restarts the lease of `key`'s record for `lease`, if it is in progress for `owner`;
    /// whether it was. A request renews while its handler runs, so a lease only has to outlast
    /// the time a dead request blocks its retries, not the handler.
    async fn renew(
        &self,
        key: &DedupKey,
        owner: u64,
        lease: Duration,
    ) -> Result<bool, StorageError>;

    /// Completes the dedup record `key` with `outcome`, keeps it for `ttl`, and publishes
    /// [`Signal::Completed`]. A `ttl` of zero removes the record instead: the message's outcome
    /// is not known, and a retry is to be handled again.
    async fn complete(
        &self,
        key: &DedupKey,
        outcome: &str,
        ttl: Duration,
    ) -> Result<(), StorageError>;

    /// Users with a client seen within its presence TTL, each once, in no particular order.
    /// Many may be read in several steps, as [`members`](Storage::members) are: a user live
    /// throughout is in the answer, one who arrives or lapses during the call may or may not be.
    async fn live_users(&self) -> Result<Vec<UserId>, StorageError>;

    /// The clients of `user` seen within their presence TTL.
    async fn live_clients(&self, user: &UserId) -> Result<Vec<ClientId>, StorageError>;

    /// Removes every client whose presence TTL passed, with its room memberships and data (and,
    /// for a user left with no live client, the user's data), and returns them. Atomic: when
    /// several nodes reap at once, each departure is returned to exactly one of them.
    async fn reap(&self) -> Result<Vec<Departure>, StorageError>;

    /// Adds `member` to `room` (idempotent). A client not yet seen is kept for `presence_ttl`,
    /// as if it had polled, so that a client joining before its first poll stays a member. A
    /// storage may bound the client records of one user (memory and durable keep at most 1,024):
    /// past it, a client not yet seen is refused with [`Limit::ClientsPerUser`].
    async fn join(
        &self,
        room: &str,
        member: &Member,
        presence_ttl: Duration,
    ) -> Result<(), StorageError>;

    /// Removes `member` from `room` (idempotent).
    async fn leave(&self, room: &str, member: &Member) -> Result<(), StorageError>;

    /// The members of `room`, each once, in no particular order. A big room may be read in
    /// several steps, so as not to hold a lock or a server for long: a member in the room
    /// throughout is in the answer, one who joins or leaves during the call may or may not be.
    async fn members(&self, room: &str) -> Result<Vec<Member>, StorageError>;

    /// The rooms `member` is in, in no particular order.
    async fn rooms(&self, member: &Member) -> Result<Vec<Arc<str>>, StorageError>;

    /// Sets (`Some`) or removes (`None`) the data `key` of `member`, as JSON text. A client's data
    /// lives while it is live, a user's until their last client is reaped; setting data on a
    /// client not yet seen keeps it for `presence_ttl`, as if it had polled (refused past the
    /// storage's bound on a user's client records, as for [`join`](Self::join)).
    async fn set_data(
        &self,
        member: &Member,
        key: &str,
        value: Option<&str>,
        presence_ttl: Duration,
    ) -> Result<(), StorageError>;

    /// The data `key` of `member`, if set.
    async fn get_data(&self, member: &Member, key: &str) -> Result<Option<String>, StorageError>;

    /// Records `reply` for the message it names, and publishes [`Signal::Replied`] in the same
    /// step. Only a message of `reply.user`'s log that asked for replies
    /// ([`NewMessage::ack`]), is not expired, and was addressed to the user as a whole or to
    /// this very client can be replied to ([`ReplyOutcome::Unknown`] otherwise), once per
    /// client ([`ReplyOutcome::Duplicate`] after the first), within `limits`
    /// ([`ReplyOutcome::Full`]). The ack record lives until the message's expiry, even once
    /// the message itself was delivered and removed from the log; its replies go with it.
    async fn reply(
        &self,
        reply: NewReply,
        limits: ReplyLimits,
    ) -> Result<ReplyOutcome, StorageError>;

    /// The replies recorded for each target's message, in the order given (each in the order
    /// order). `epoch` is the one the messages were appended in; if it is no longer current,
    /// or a message's ack record expired, its answer is empty.
    async fn replies(
        &self,
        epoch: &Epoch,
        targets: &[DeliveryTarget],
    ) -> Result<Vec<Vec<RecordedReply>>, StorageError>;

    /// Publishes a signal to every node, this one included.
    async fn publish(&self, signal: Signal) -> Result<(), StorageError>;

    /// Signals from every node. Called once per process; the receiver may lag (the caller then
    /// treats it as [`Signal::Resync`]). A storage that publishes in bursts may hold signals
    /// back while a receiver is behind rather than make it lag (`DurableStorage` does: its
    /// writes wait meanwhile), but not for one that reads nothing (it gives up after a second).
    fn subscribe(&self) -> broadcast::Receiver<Signal>;
}

#[async_trait]
impl<T: Storage + ?Sized> Storage for Arc<T> {
    async fn epoch(&self) -> Result<Epoch, StorageError> {
        (**self).epoch().await
    }
    async fn append(
        &self,
        messages: Vec<NewMessage>,
        limits: QueueLimits,
    ) -> Result<Appended, StorageError> {
        (**self).append(messages, limits).await
    }
    async fn append_ordered(
        &self,
        messages: Vec<NewMessage>,
        limits: QueueLimits,
    ) -> Result<(Appended, Persisting), StorageError> {
        (**self).append_ordered(messages, limits).await
    }
    async fn fetch(&self, request: FetchRequest) -> Result<FetchBatch, StorageError> {
        (**self).fetch(request).await
    }
    async fn delivery(
        &self,
        epoch: &Epoch,
        targets: &[DeliveryTarget],
    ) -> Result<Vec<DeliveryState>, StorageError> {
        (**self).delivery(epoch, targets).await
    }
    async fn claim(
        &self,
        key: &DedupKey,
        owner: u64,
        limits: DedupLimits,
    ) -> Result<Claim, StorageError> {
        (**self).claim(key, owner, limits).await
    }
    async fn renew(
        &self,
        key: &DedupKey,
        owner: u64,
        lease: Duration,
    ) -> Result<bool, StorageError> {
        (**self).renew(key, owner, lease).await
    }
    async fn complete(
        &self,
        key: &DedupKey,
        outcome: &str,
        ttl: Duration,
    ) -> Result<(), StorageError> {
        (**self).complete(key, outcome, ttl).await
    }
    async fn live_users(&self) -> Result<Vec<UserId>, StorageError> {
        (**self).live_users().await
    }
    async fn live_clients(&self, user: &UserId) -> Result<Vec<ClientId>, StorageError> {
        (**self).live_clients(user).await
    }
    async fn reap(&self) -> Result<Vec<Departure>, StorageError> {
        (**self).reap().await
    }
    async fn join(
        &self,
        room: &str,
        member: &Member,
        presence_ttl: Duration,
    ) -> Result<(), StorageError> {
        (**self).join(room, member, presence_ttl).await
    }
    async fn leave(&self, room: &str, member: &Member) -> Result<(), StorageError> {
        (**self).leave(room, member).await
    }
    async fn members(&self, room: &str) -> Result<Vec<Member>, StorageError> {
        (**self).members(room).await
    }
    async fn rooms(&self, member: &Member) -> Result<Vec<Arc<str>>, StorageError> {
        (**self).rooms(member).await
    }
    async fn set_data(
        &self,
        member: &Member,
        key: &str,
        value: Option<&str>,
        presence_ttl: Duration,
    ) -> Result<(), StorageError> {
        (**self).set_data(member, key, value, presence_ttl).await
    }
    async fn get_data(&self, member: &Member, key: &str) -> Result<Option<String>, StorageError> {
        (**self).get_data(member, key).await
    }
    async fn reply(
        &self,
        reply: NewReply,
        limits: ReplyLimits,
    ) -> Result<ReplyOutcome, StorageError> {
        (**self).reply(reply, limits).await
    }
    async fn replies(
        &self,
        epoch: &Epoch,
        targets: &[DeliveryTarget],
    ) -> Result<Vec<Vec<RecordedReply>>, StorageError> {
        (**self).replies(epoch, targets).await
    }
    async fn publish(&self, signal: Signal) -> Result<(), StorageError> {
        (**self).publish(signal).await
    }
    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        (**self).subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_signal_round_trips_through_json() {
        let user = UserId::from("ann");
        let client = ClientId::new("tab1").expect("id");
        let data: Arc<RawValue> =
            Arc::from(RawValue::from_string("{\"x\":[1]}".into()).expect("json"));
        let signals = [
            Signal::Appended {
                users: Arc::from([user.clone(), UserId::from("bob")]),
            },
            Signal::Confirmed {
                epoch: Epoch::new("e1"),
                user: user.clone(),
                client: client.clone(),
                cursor: 1_700_000_000_000_001,
                namespaces: Arc::from([Arc::<str>::from("/"), Arc::from("/chat")]),
            },
            Signal::Completed { user: user.clone() },
            Signal::Volatile {
                recipients: Arc::from([
                    Member::User(UserId::from("bob")),
                    Member::Client(user.clone(), client.clone()),
                ]),
                namespace: "/chat".into(),
                event: "typing".into(),
                data,
            },
            Signal::PollStarted {
                user: user.clone(),
                client: client.clone(),
                poll: 7,
            },
            Signal::Replied {
                epoch: Epoch::new("e1"),
                user,
                pos: 1_700_000_000_000_002,
                client,
                data: Arc::from(RawValue::from_string("{\"ok\":true}".into()).expect("json")),
            },
            Signal::Resync,
        ];
        for signal in signals {
            let json = serde_json::to_string(&signal).expect("encode");
            let back: Signal = serde_json::from_str(&json).expect("decode");
            assert_eq!(serde_json::to_string(&back).expect("encode"), json);
        }
    }
}
