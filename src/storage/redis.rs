//! [`RedisStorage`]: the [`Storage`] contract on one Redis server, for many processes.
//!
//! # How it maps onto Redis
//!
//! Every operation is one Lua script, so it is atomic and one round trip: an append assigns
//! positions and publishes its wakeup in the same script, a fetch confirms, records presence,
//! reads and publishes in the same script, a reap removes and reports departed clients in the
//! same script. All keys start with the configured prefix `{P}` (default `simpleio:`, so the
//! epoch is at `simpleio:epoch`).
//!
//! A **member** is written `u:USER` for a user and `c:CLIENT:USER` for one client of a user.
//! Client ids cannot contain `:`, so the client ends at the first `:` after `c:` and the user,
//! last, may be any string: no two members share a spelling. A member's own keys are the member
//! followed by `:` and a fixed suffix, and no suffix ends with another one after a `:`, so no
//! two keys collide either, whatever the user ids. A sender's share of a user's queue adds the
//! sender's id in hex (which has no `:`) before its suffix, `from`, so it is one key per user
//! and sender too. Dedup keys end with the user for the same reason: client and message ids
//! have no `:`.
//!
//! | key                      | type    | holds                                                  |
//! |--------------------------|---------|--------------------------------------------------------|
//! | `{P}epoch`               | string  | the current [`Epoch`] (no TTL)                         |
//! | `{P}signals`             | channel | [`Signal`]s as JSON (not scoped by database number)    |
//! | `{P}presence`            | zset    | every client record, `c:CLIENT:USER` → seen until (ms) |
//! | `{P}live`                | zset    | user → the latest seen-until of their polled clients   |
//! | `{P}u:USER:log`          | zset    | the user's messages: score = position, member = entry  |
//! | `{P}u:USER:exp`          | zset    | entry name (below) → `expires_at`, to expire fast      |
//! | `{P}u:USER:ix`           | zset    | entry names, all scored 0: read by lexical range       |
//! | `{P}u:USER:meta`         | hash    | `last` position given, `until` (below), bytes (below)  |
//! | `{P}u:USER:wm`           | hash    | namespace → the user's watermark in it                 |
//! | `{P}u:USER:live`         | zset    | client that polled (and was not reaped) → seen until   |
//! | `{P}u:USER:data`         | hash    | the user's data, key → JSON                            |
//! | `{P}u:USER:rooms`        | set     | the rooms the user is in (no TTL: until `leave`)       |
//! | `{P}u:USER:HEX:from`     | zset    | positions of the entries sent by user HEX (hex id)     |
//! | `{P}c:CLIENT:USER:rec`   | hash    | the client's `cur`sor, `ns` (JSON), `w`, `kept`        |
//! | `{P}c:CLIENT:USER:data`  | hash    | the client's data, key → JSON                          |
//! | `{P}c:CLIENT:USER:rooms` | set     | the rooms the client is in                             |
//! | `{P}room:ROOM`           | set     | the room's members (no TTL: until its members leave)   |
//! | `{P}d:CLIENT:ID:USER`    | string  | dedup record: `p` (in progress) or `d` + the outcome   |
//! | `{P}du:USER`             | zset    | the user's dedup records, `CLIENT:ID` → claim number   |
//! | `{P}dc:CLIENT:USER`      | zset    | the client's dedup records, `ID` → claim number        |
//! | `{P}p:ID`                | string  | a payload shared by the entries of one fan-out         |
//! | `{P}u:USER:orig`         | hash    | origin of a send → its position (`NewMessage::origin`) |
//! | `{P}u:USER:origx`        | zset    | the same origins by expiry, for the sweep and the bound |
//!
//! A log entry is `pos:expires_at:client:`, `=HEX:` if it has a sender (their id in hex),
//! `#SIZE:` (the byte length of its JSON payload), the namespace's byte length, `:`, the
//! namespace, `:`, then the event's byte length, `:`, the event and the JSON payload, so the
//! scripts can filter, expire and count bytes without touching the payload. (Entries written
//! before senders, or before byte limits, lack those parts; one without a size counts as 0
//! bytes, on its way in and out alike.)
//!
//! **No script walks the history.** An entry's *name* is `nslen:ns:client:` and its position
//! in 16 digits, so in `{P}u:USER:ix` the entries of one namespace addressed to one client (or
//! to the user, client empty) are one lexical range, in position order. A fetch reads the
//! ranges of its namespaces, for the user and for itself, from its cursor on, and never looks
//! at entries of other namespaces or clients; a new client finds its earliest message in the
//! same way. Expired entries are found by `exp`, and each one costs its removal; an append
//! removes at most its own number of messages plus twice `EXPIRE_SLACK` per user, so a mass
//! expiry is cleared over several calls (a fetch removes all its user's, before reading). An
//! append into a full log looks at no more than `EVICT_SCAN` undelivered entries per user for
//! a delivered one to evict.
//!
//! **A sender holds a share of a queue.** Each entry with a sender has its position in the
//! sender's set, `{P}u:USER:HEX:from`, and its `exp` name ends with `:=HEX`, so that every
//! removal (expiry, eviction) takes it out of the set too, without reading the entry. An append
//! from a sender counts their set (`ZCARD`) only once the user's log holds `per_sender`
//! entries, and at their share looks at no more than `EVICT_SCAN` of their own oldest entries
//! per user and call for one that expired or was delivered: a few `O(log n)` commands per
//! message (a `ZADD` to the set, and once per user and sender a `PEXPIREAT`), no scan.
//!
//! **A queue is bounded in bytes too.** The user's `meta` keeps the bytes of data of every
//! entry in the log (`b`) and of each sender's (`=HEX`, gone when it comes to 0). An entry
//! carries its size, and its `exp` name ends with `:#SIZE` (after the sender), so that every
//! removal — the expiry sweep, either eviction — subtracts it without reading the payload. An
//! append reads `b` and the fields of the senders of its messages with the `HMGET` of `meta` it
//! makes anyway, and writes them back with its `HSET`: no command more for a plain message. A
//! message that does not fit evicts as one over a count limit does, again until it fits (each
//! eviction removes an entry for good, within the same `EVICT_SCAN` bounds; if the call's
//! first expiry sweep of the user took all it was allowed, up to `EXPIRE_SLACK` more expired
//! entries go first); one larger than a limit by itself is refused at once. Bytes removed of a
//! sender with no message in the call, or by a fetch's expiry sweep, come off with an
//! `HINCRBY` per sender. A shared payload counts in each of its recipients' queues, as the
//! limits are per queue, though Redis holds it once.
//!
//! **Dedup records are bounded.** A claim orders its record in the user's `{P}du:USER` and the
//! client's `{P}dc:CLIENT:USER` by a claim number (ms × 1000, increasing per user). At a limit,
//! the oldest record goes first if it was completed or is gone, and the claim is refused if it
//! is in progress: a claim is about a dozen `O(log n)` commands, plus five per record forgotten
//! (one per limit at most, while the limits hold). The sets expire when their last record can.
//!
//! **A fan-out stores its payload once.** The messages that share a payload (the same `data`
//! `Arc`, event and namespace, as simpleio builds a fan-out) end their entries with `*ID`
//! instead of the event and payload, which are written once to `{P}p:ID` (ID: 16 random
//! characters), expiring a grace after the latest expiry of those entries. simpleio sends a
//! fan-out in chunks of [`FANOUT_CHUNK`](super::FANOUT_CHUNK), one append call each: a
//! `RedisStorage` remembers the last `PAYLOAD_CACHE` payloads it stored (holding their `Arc`,
//! so that no other payload takes the address), and a later chunk only refers to the key,
//! moving its expiry if the chunk's entries expire later. The script checks that the key is
//! still there first (an eviction policy or a flush may have taken it); if not, it writes
//! nothing and the call is made again with the payload, stored under the same id. A fetch
//! returns each payload it needs once, however many of its entries refer to it. A payload key
//! outlives entries removed before their expiry (delivered and evicted): memory is bounded by
//! the expiry, not by delivery. An entry whose payload key is gone (only an eviction policy
//! removes one early) is skipped, as if expired.
//!
//! **Presence.** `{P}presence` is the authority on which client records exist: a fetch, or a
//! `join`/`set_data` on a client never seen, adds the client with its seen-until; `reap` takes
//! every client past it with `ZRANGEBYSCORE` + `ZREM` in one script, so of several nodes reaping
//! at once exactly one removes (and reports) each client, deletes its keys and room
//! memberships, and for a user left with no polled client, the user's data. A client counts as
//! having polled while it is in `{P}u:USER:live`; an arrival is a fetch by a client not in it,
//! and the user came online if it was empty. Nothing else removes a client record: a fetch
//! never forgets a stale client, since its departure must be reported. A client that polls
//! again after its presence lapsed but before it was reaped has not left (no departure was
//! reported), so it does not arrive again either.
//!
//! **Memory stays bounded.** A log never holds more than `per_user` entries or
//! `bytes_per_user` bytes of data, nor more than `per_sender` entries or `bytes_per_sender`
//! bytes from one sender, and expired entries go on the next fetch of their user (and, a
//! call's worth at a time, on appends). A user has at most `max_clients` polled clients: a fetch
//! by a new client beyond them is refused before it writes anything. Every key but the epoch
//! and the room keys carries an absolute expiry, a safety net behind `reap`: a client's keys
//! expire a grace after its seen-until (the longer of [`REAP_GRACE`] and twice the presence
//! TTL, while every node reaps every quarter of the presence TTL), the global zsets a grace
//! after their newest score, and a user's keys after `meta.until` (the last message's expiry
//! and the last client's seen-until plus grace) plus [`IDLE_GRACE`], so they outlive the client
//! records that need them. A sender's set takes the user's expiry whenever an entry joins it,
//! so it outlives every entry in it; the dedup sets expire (in steps) once their latest record
//! has. Only if no node reaps for a whole grace do a client's keys expire unreported; `members`
//! then drops the client from its rooms. Expiries move in steps of `EXPIRY_STEP` (later than
//! needed, never earlier), so that a busy client or user has its keys' expiries moved once a
//! step, not on every fetch and append: the client's record keeps the step its keys (and the
//! global zsets) were given (`kept`), the user's `meta` the user's (`until`).
//!
//! **A fetch writes what changed.** The client's record keeps its namespaces as given (JSON)
//! and the cursor `w` that all their watermarks are known to have reached, so a poll that
//! confirms nothing new (the read after a wakeup) writes neither the cursor nor the
//! namespaces, nor reads the watermarks.
//!
//! What must **persist** has no TTL: the epoch, a user's room memberships (`{P}u:USER:rooms`
//! and the user in `{P}room:ROOM`), kept until the application calls `leave`. Room sets vanish
//! when their last member leaves or is reaped. A user's data lives while the user has a client
//! and is removed when the last one is reaped; set on a user with no client, it expires a grace
//! after the presence TTL.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::{FromRedisValue, Script, ScriptInvocation};
use serde_json::value::RawValue;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::{
    AppendOutcome, Appended, Arrival, Claim, DedupKey, DedupLimits, DeliveryState, DeliveryTarget,
    Departure, Epoch, FetchBatch, FetchRequest, Limit, Member, NewMessage, QueueLimits, Signal,
    Storage, StorageError, StoredMessage,
};
use crate::hash::HashSet;
use crate::id::{ClientId, UserId, random_token};

/// How many signals a slow subscriber may fall behind before it is told to resync: two per
/// poll (its announcement and its confirmation) come in bursts when thousands of clients
/// answer one broadcast and poll again at once (see `MemoryStorage`'s).
const SIGNAL_CAPACITY: usize = 16_384;

/// How long a user's keys outlive the last thing that needed them (a message's expiry, a
/// client record's expiry). Keeping the last position a little longer costs little.
const IDLE_GRACE: Duration = Duration::from_secs(60);

/// How long, at least, a client's keys outlive its presence: the time `reap` has to remove it
/// and report its departure before Redis drops the keys by itself (twice the presence TTL if
/// that is longer). Every node reaps every quarter of the presence TTL, so only a cluster with
/// no node running for this long loses a departure report.
const REAP_GRACE: Duration = Duration::from_secs(600);

/// The most clients one reap script removes; `reap` runs it again while it finds more, so that
/// one script never blocks Redis for long.
const REAP_BATCH: usize = 500;

/// The most room memberships one reap script removes, over all its clients: a client may be in
/// thousands of rooms, so the clients alone do not bound a script's work.
const REAP_ROOMS: usize = 4_096;

/// How many members of a room one script reads (`SSCAN`'s `COUNT`, a hint: a small set comes
/// whole); `members` reads page after page. One `SMEMBERS` of a 100,000-member room, and the
/// reply built from it, held Redis for about 100 ms, and every other command waited; a page
/// takes a millisecond or two, less than an append of a fan-out's chunk.
const MEMBERS_PAGE: usize = 2_048;

/// The most undelivered log entries one append call looks at, per user, for a delivered one
/// to evict from a full log (from the oldest on), and per user and sender, for one of the
/// sender's own to evict when they hold their share. A log whose delivered entries all lie
/// behind more undelivered ones than this refuses new messages ([`AppendOutcome::QueueFull`])
/// until those expire, rather than search the whole log.
const EVICT_SCAN: usize = 64;

/// How many expired entries an append removes per user beyond one per message it appends, and
/// then as many again, one at a time, while a message still needs room (one over a byte limit
/// may need several): the work is bounded by the call's size, and a mass expiry is cleared over
/// several calls (fetches clear their own user's, all of them, before reading).
const EXPIRE_SLACK: usize = 64;

/// The most dedup records one claim looks at to make room for a new one (see [`CLAIM`]): one
/// per limit when the limits hold, more only after they were lowered.
const CLAIM_EVICT: usize = 64;

/// An append moves its users' key expiries in steps this long (later, never earlier, than
/// needed), so that a busy user's keys get new expiries once a step rather than per message.
const EXPIRY_STEP: Duration = Duration::from_secs(10);

/// Positions, cursors and times are Lua numbers (doubles) inside the scripts: anything above
/// this would lose precision, so inputs are clamped to it. Real positions are far below it.
const MAX_EXACT: u64 = (1 << 53) - 1;

/// The length of a shared payload's random id (`{P}p:ID`): 96 bits, never reused by chance.
const PAYLOAD_ID_LEN: usize = 16;

/// How many shared payloads a `RedisStorage` remembers having stored (see [`PayloadCache`]): the
/// later chunks of a fan-out refer to the payload its first chunk stored.
const PAYLOAD_CACHE: usize = 16;

/// How often the pub/sub connection is pinged: a connection that died without a FIN (a NAT or a
/// firewall dropped it) is only noticed by a request that gets no answer.
const PING_EVERY: Duration = Duration::from_secs(5);

/// Backoff between attempts to get the pub/sub connection back.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Defaults for [`RedisStorageBuilder`].
const DEFAULT_PREFIX: &str = "simpleio:";
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Storage in Redis: share it between any number of processes behind a load balancer.
///
/// Every operation is one atomic Lua script (one round trip), but for the two whose work has
/// no bound, which run a bounded batch per script: [`Storage::members`] and [`Storage::reap`].
/// Wakeups travel over Redis pub/sub, with **one** subscribed connection per `RedisStorage`,
/// whatever the number of waiting polls. Clones share the connections.
///
/// * **Losing Redis's data** (a restart without persistence, a `FLUSHALL`) gives a new
///   [`Epoch`]: clients resync and senders of unconfirmed messages learn they were lost. Enable
///   persistence (`appendonly yes`) if messages must survive a Redis restart.
/// * **Losing the connection** makes operations fail with [`StorageError::Unavailable`] within
///   the connect plus response timeouts (never a hang), and both connections come back by
///   themselves when Redis does; the pub/sub one then sends [`Signal::Resync`], since signals may
///   have been missed meanwhile.
///
/// * **Presence** is one sorted set of client records by seen-until: [`Storage::reap`] removes
///   lapsed clients in one script, so when every node reaps, each departure is still reported
///   by exactly one of them.
/// * **Rooms** are sets, with a reverse index per member. A user's memberships have no TTL:
///   they persist until [`Storage::leave`], so remove users from rooms they should not stay in.
///   A client's memberships go when it is reaped. [`Storage::members`] reads a room a page at a
///   time, so that a 100,000-member room holds Redis for a millisecond at a time, not for a
///   tenth of a second: every member in the room throughout the read is in the answer, once,
///   while one who joins or leaves during it may or may not be.
///
/// Needs Redis 5 or later (tested with 7), as one server or a primary; not Redis Cluster, since
/// one script may touch the keys of several users. Use the `noeviction` or a `volatile-*`
/// eviction policy: the epoch and room keys have no TTL so that they are never evicted, while
/// an `allkeys-*` policy could evict the epoch (and change it) or a room.
///
/// ```no_run
/// use simpleio::{RedisStorage, SimpleIoLayer};
/// # async fn run() -> Result<(), simpleio::storage::StorageError> {
/// let storage = RedisStorage::builder("redis://127.0.0.1:6379/")
///     .key_prefix("chat:")
///     .connect()
///     .await?;
/// let (layer, io) = SimpleIoLayer::builder().storage(storage).build();
/// # let _ = (layer, io);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStorage {
    inner: Arc<Inner>,
}

struct Inner {
    /// Commands go over one multiplexed connection that reconnects by itself.
    conn: ConnectionManager,
    /// The first part of every key and of the signal channel.
    prefix: String,
    /// `prefix + "signals"`: pub/sub is not scoped by database, so it carries the prefix too.
    channel: String,
    /// Signals from the pub/sub connection, handed out by `subscribe`.
    signals: broadcast::Sender<Signal>,
    /// The most an operation may take, reconnecting included: connect + response timeouts.
    deadline: Duration,
    /// The payloads of the latest fan-outs, so that their later chunks do not store them again.
    payloads: Mutex<PayloadCache>,
    /// The task reading the pub/sub connection; stops with the last handle.
    _subscriber: AbortOnDrop,
}

impl fmt::Debug for RedisStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStorage")
            .field("key_prefix", &self.inner.prefix)
            .field("deadline", &self.inner.deadline)
            .finish_non_exhaustive()
    }
}

/// Configures and connects a [`RedisStorage`]; made by [`RedisStorage::builder`].
///
/// ```no_run
/// use std::time::Duration;
/// use simpleio::RedisStorage;
/// # async fn run() -> Result<(), simpleio::storage::StorageError> {
/// let storage = RedisStorage::builder("redis://127.0.0.1/2")
///     .key_prefix("myapp:simpleio:")
///     .connect_timeout(Duration::from_millis(500))
///     .response_timeout(Duration::from_secs(1))
///     .connect()
///     .await?;
/// # let _ = storage;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStorageBuilder {
    url: String,
    prefix: String,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl fmt::Debug for RedisStorageBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the URL: it may carry a password, and builders end up in logs.
        f.debug_struct("RedisStorageBuilder")
            .field("key_prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
struct Timeouts {
    connect: Duration,
    response: Duration,
}

impl RedisStorageBuilder {
    /// The prefix of every key and of the pub/sub channel (default `simpleio:`). Give each
    /// application sharing a Redis its own; a database number in the URL does not separate
    /// pub/sub channels.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one attempt to connect to Redis may take (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long Redis may take to answer one command (default 2 s). An operation fails with
    /// [`StorageError::Unavailable`] after at most the connect timeout plus this.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Connects the command connection and subscribes the pub/sub one.
    ///
    /// Fails with [`StorageError::Unavailable`] if the URL is invalid or Redis cannot be
    /// reached. Must be called within a Tokio runtime, which then runs the background task that
    /// forwards signals.
    pub async fn connect(self) -> Result<RedisStorage, StorageError> {
        let timeouts = Timeouts {
            connect: self.connect_timeout,
            response: self.response_timeout,
        };
        let deadline = timeouts.connect + timeouts.response;
        let client = redis::Client::open(self.url.as_str())
            .map_err(|e| StorageError::Unavailable(format!("invalid Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeouts.connect))
            .set_response_timeout(Some(timeouts.response))
            // Few, quick retries: a request should fail fast with 503 rather than wait out an
            // outage; the next request starts a new reconnection anyway.
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = within(
            deadline,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await?;
        let channel = format!("{}signals", self.prefix);
        // Subscribed before returning, so that no signal published after `connect` is missed.
        let pubsub = subscribe(&client, &channel, timeouts).await?;
        let (signals, _) = broadcast::channel(SIGNAL_CAPACITY);
        let subscriber = tokio::spawn(run_subscriber(
            client,
            channel.clone(),
            signals.clone(),
            pubsub,
            timeouts,
        ));
        Ok(RedisStorage {
            inner: Arc::new(Inner {
                conn,
                prefix: self.prefix,
                channel,
                signals,
                deadline,
                payloads: Mutex::new(PayloadCache::default()),
                _subscriber: AbortOnDrop(subscriber),
            }),
        })
    }
}

impl RedisStorage {
    /// Connects to the Redis at `url` (`redis://[user:password@]host[:port][/db]`) with the
    /// default settings. See [`RedisStorage::builder`] for the others.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), simpleio::storage::StorageError> {
    /// let storage = simpleio::RedisStorage::connect("redis://127.0.0.1/").await?;
    /// # let _ = storage;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(url: impl Into<String>) -> Result<Self, StorageError> {
        Self::builder(url).connect().await
    }

    /// A builder for a storage on the Redis at `url`, to set the key prefix and timeouts.
    pub fn builder(url: impl Into<String>) -> RedisStorageBuilder {
        RedisStorageBuilder {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
        }
    }

    /// The prefix of this storage's keys.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Runs one of the scripts below with the common leading arguments (see `PRELUDE`).
    async fn eval<T: FromRedisValue>(
        &self,
        script: &Script,
        args: impl FnOnce(&mut ScriptInvocation<'_>),
    ) -> Result<T, StorageError> {
        let mut invocation = script.prepare_invoke();
        invocation
            .arg(&self.inner.prefix)
            .arg(Epoch::random().as_str())
            .arg(RESYNC_JSON.as_str());
        args(&mut invocation);
        let mut conn = self.inner.conn.clone();
        within(self.inner.deadline, invocation.invoke_async(&mut conn)).await
    }

    /// Runs the append script (see [`APPEND`]); an empty reply means a known payload is gone.
    async fn append_script(
        &self,
        limits: QueueLimits,
        messages: &[NewMessage],
        users: &[(&str, String)],
        message_users: &[usize],
        bodies: &[EntryBody],
        payloads: &[SharedPayload],
    ) -> Result<Vec<String>, StorageError> {
        self.eval(&APPEND, |inv| {
            inv.arg(limits.per_user.min(MAX_EXACT as usize))
                .arg(limits.per_sender.min(MAX_EXACT as usize))
                .arg(limits.bytes_per_user.min(MAX_EXACT as usize))
                .arg(limits.bytes_per_sender.min(MAX_EXACT as usize))
                .arg(users.len())
                .arg(payloads.len())
                .arg(messages.len());
            for (user, json) in users {
                inv.arg(*user).arg(json.as_str());
            }
            for p in payloads {
                inv.arg(p.id.as_str())
                    .arg(p.known_upto)
                    .arg(p.value.as_str());
            }
            for ((m, user), (payload, body)) in messages.iter().zip(message_users).zip(bodies) {
                inv.arg(*user)
                    .arg(m.client.as_ref().map_or("", |c| c.as_str()))
                    .arg(m.expires_at.min(MAX_EXACT))
                    .arg(*payload)
                    .arg(body.as_str())
                    .arg(sender_arg(m.sender.as_ref()))
                    .arg(data_size(m))
                    .arg(m.origin.as_deref().unwrap_or(""));
            }
        })
        .await
    }
}

/// Runs `op` within `deadline`, turning every failure into a [`StorageError`].
async fn within<T>(
    deadline: Duration,
    op: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, StorageError> {
    match tokio::time::timeout(deadline, op).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(storage_error(err)),
        Err(_) => Err(StorageError::Unavailable(format!(
            "Redis did not answer within {deadline:?}"
        ))),
    }
}

fn storage_error(err: redis::RedisError) -> StorageError {
    debug!(cause = %err, "Redis operation failed");
    match err.kind() {
        redis::ErrorKind::UnexpectedReturnType | redis::ErrorKind::Parse => {
            StorageError::Corrupt(format!("Redis: {err}"))
        }
        _ => StorageError::Unavailable(format!("Redis: {err}")),
    }
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt(format!("unexpected reply from Redis: {what}"))
}

/// `s` as a JSON string literal, for the scripts to splice into the signals they build.
fn json_string(s: &str) -> Result<String, StorageError> {
    serde_json::to_string(s)
        .map_err(|e| StorageError::Corrupt(format!("cannot encode a signal: {e}")))
}

/// A user id in hex: what names a sender in keys and log entries, where it must not contain
/// `:` (see the module docs).
fn hex(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A message's sender as the append script takes it: hex, or `-` for none (hex has no `-`,
/// and the empty user id is a sender too: the empty string).
fn sender_arg(sender: Option<&UserId>) -> String {
    sender.map_or_else(|| "-".to_owned(), |s| hex(s.as_str()))
}

fn signal_json(signal: Signal) -> Result<String, StorageError> {
    serde_json::to_string(&signal)
        .map_err(|e| StorageError::Corrupt(format!("cannot encode a signal: {e}")))
}

/// The fields of a [`Signal::Confirmed`] that the fetch script does not compute, as JSON object
/// members (`"user":…,"client":…,"namespaces":[…]`); the script adds the epoch and the cursor.
fn confirmed_fields(request: &FetchRequest) -> Result<String, StorageError> {
    let user = serde_json::to_string(request.user.as_str());
    let client = serde_json::to_string(request.client.as_str());
    let namespaces = serde_json::to_string(&request.namespaces);
    match (user, client, namespaces) {
        (Ok(user), Ok(client), Ok(namespaces)) => Ok(format!(
            r#""user":{user},"client":{client},"namespaces":{namespaces}"#
        )),
        _ => Err(StorageError::Corrupt("cannot encode a signal".to_owned())),
    }
}

fn decode_signal(payload: &[u8]) -> Result<Signal, serde_json::Error> {
    serde_json::from_slice::<Signal>(payload)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .min(MAX_EXACT)
}

fn parse_u64(s: &str, what: &str) -> Result<u64, StorageError> {
    s.parse().map_err(|_| corrupt(what))
}

/// How long a client's keys outlive its presence (see [`REAP_GRACE`]), in ms.
fn reap_grace(presence_ttl: Duration) -> u64 {
    millis(REAP_GRACE.max(presence_ttl.saturating_mul(2)))
}

/// What follows `pos:expires_at:client:` in a log entry that holds its payload (see the
/// module docs): the namespace, then [`payload_value`].
fn entry_body(m: &NewMessage) -> String {
    format!("{}:{}:{}", m.namespace.len(), m.namespace, payload_value(m))
}

/// What a message counts for in its queue's byte limits: the length of its JSON payload.
fn data_size(m: &NewMessage) -> usize {
    m.data.get().len()
}

/// The event and the JSON payload of a message, as a log entry or a payload key holds them.
fn payload_value(m: &NewMessage) -> String {
    format!("{}:{}{}", m.event.len(), m.event, m.data.get())
}

/// The body of a log entry (see [`entry_body`]) and the index (from 1) of the shared payload
/// it refers to, or 0.
type EntryBody = (usize, String);

/// What makes messages one fan-out: the same `data` `Arc` (its address), event and namespace.
type Identity<'a> = (usize, &'a str, &'a str);

fn identity(m: &NewMessage) -> Identity<'_> {
    (
        Arc::as_ptr(&m.data) as *const u8 as usize,
        &m.event,
        &m.namespace,
    )
}

/// A payload the entries of one call refer to (`{P}p:ID`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct SharedPayload {
    id: String,
    /// Its value (see [`payload_value`]), or empty if it is `known`: stored by an earlier call.
    value: String,
    /// For a payload an earlier call stored, the latest `expires_at` its key's expiry covers
    /// (the key expires a grace after it); 0 for one this call stores.
    known_upto: u64,
    /// The first message that uses it, to write its value if a known payload is gone.
    first: usize,
}

/// The payloads this storage stored lately, newest first, at most [`PAYLOAD_CACHE`]: the chunks
/// of one fan-out are separate append calls that share one `data` `Arc`, so the first chunk
/// stores the payload and the later ones refer to it. Each entry holds a clone of the `Arc`,
/// so that its address cannot be reused by another payload while it is remembered.
#[derive(Default)]
struct PayloadCache {
    entries: VecDeque<CachedPayload>,
}

struct CachedPayload {
    data: Arc<RawValue>,
    event: Arc<str>,
    namespace: Arc<str>,
    id: String,
    /// The latest `expires_at` that the key's expiry covers.
    upto: u64,
}

impl PayloadCache {
    fn find(&self, m: &NewMessage) -> Option<&CachedPayload> {
        self.entries.iter().find(|c| {
            Arc::ptr_eq(&c.data, &m.data) && c.event == m.event && c.namespace == m.namespace
        })
    }

    /// Forgets the payload `id` (its key is gone).
    fn forget(&mut self, id: &str) {
        self.entries.retain(|c| c.id != id);
    }

    /// Remembers that the key of `m`'s payload, `id`, covers `upto`, as the newest entry.
    fn record(&mut self, m: &NewMessage, id: &str, upto: u64) {
        let upto = match self.entries.iter().position(|c| c.id == id) {
            Some(at) => self.entries.remove(at).map_or(upto, |c| c.upto.max(upto)),
            None => upto,
        };
        self.entries.push_front(CachedPayload {
            data: m.data.clone(),
            event: m.event.clone(),
            namespace: m.namespace.clone(),
            id: id.to_owned(),
            upto,
        });
        self.entries.truncate(PAYLOAD_CACHE);
    }
}

/// The bodies of a call's log entries, and the payloads they share.
///
/// Messages that share a payload (the same `data` `Arc`, event and namespace: how simpleio
/// builds a fan-out) refer to one payload key, `nslen:ns:*ID`: a payload in `cache` (an earlier
/// chunk of the fan-out stored it), or a new one if more than one message uses it here. A
/// payload used once and not cached stays in its entry, which saves a key.
fn share_payloads(
    messages: &[NewMessage],
    cache: &PayloadCache,
) -> (Vec<EntryBody>, Vec<SharedPayload>) {
    // Every message, hence every `Arc`, is alive for the whole call (and the cache holds its
    // own clones), so no address is reused meanwhile.
    let mut uses: HashMap<Identity<'_>, usize> = HashMap::new();
    for m in messages {
        *uses.entry(identity(m)).or_default() += 1;
    }
    // A shared payload's index, and its entries' body, once it has one.
    let mut assigned: HashMap<Identity<'_>, (usize, String)> = HashMap::new();
    let mut payloads = Vec::new();
    let bodies = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let id = identity(m);
            if let Some((index, body)) = assigned.get(&id) {
                return (*index, body.clone());
            }
            let payload = match cache.find(m) {
                Some(known) => SharedPayload {
                    id: known.id.clone(),
                    value: String::new(),
                    known_upto: known.upto,
                    first: i,
                },
                None if uses.get(&id).copied().unwrap_or(0) >= 2 => SharedPayload {
                    id: random_token(PAYLOAD_ID_LEN),
                    value: payload_value(m),
                    known_upto: 0,
                    first: i,
                },
                None => return (0, entry_body(m)),
            };
            let body = format!("{}:{}:*{}", m.namespace.len(), m.namespace, payload.id);
            payloads.push(payload);
            assigned.insert(id, (payloads.len(), body.clone()));
            (payloads.len(), body)
        })
        .collect();
    (bodies, payloads)
}

/// Splits `len:` + `len` bytes off `s`: a length-prefixed field and the rest after it.
fn prefixed(s: &str) -> Option<(&str, &str)> {
    let (len, rest) = s.split_once(':')?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: usize = len.parse().ok()?;
    Some((rest.get(..len)?, rest.get(len..)?))
}

/// An event and its payload, decoded once per fetch and shared by the messages that use it.
type Payload = (Arc<str>, Arc<RawValue>);

/// Decodes `event_len:event` followed by the JSON payload.
fn parse_payload(s: &str) -> Option<Payload> {
    let (event, data) = prefixed(s)?;
    let data = RawValue::from_string(data.to_owned()).ok()?;
    Some((event.into(), Arc::from(data)))
}

/// Decodes the shared payloads at the head of a fetch reply: their number, then id and value
/// of each.
fn parse_payloads(
    reply: &mut impl Iterator<Item = String>,
) -> Result<HashMap<String, Payload>, StorageError> {
    let n = parse_u64(
        &reply.next().ok_or_else(|| corrupt("no payload count"))?,
        "a payload count",
    )?;
    let mut payloads = HashMap::new();
    for _ in 0..n {
        let (Some(id), Some(value)) = (reply.next(), reply.next()) else {
            return Err(corrupt("a shared payload"));
        };
        let payload = parse_payload(&value).ok_or_else(|| corrupt("a shared payload"))?;
        payloads.insert(id, payload);
    }
    Ok(payloads)
}

/// Decodes a log entry: `pos:expires_at:client:`, `=SENDER:` (hex) if it has a sender,
/// `#SIZE:` (the data's length) unless it was written before byte limits, `ns_len:ns:`, then
/// `event_len:event` followed by the JSON payload, or `*ID` for the shared payload `ID` (in
/// `shared`).
fn parse_entry(
    entry: &str,
    shared: &HashMap<String, Payload>,
) -> Result<StoredMessage, StorageError> {
    let bad = || corrupt("a log entry");
    let mut parts = entry.splitn(4, ':');
    let pos = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let _expires_at = parts.next().ok_or_else(bad)?;
    let _client = parts.next().ok_or_else(bad)?;
    let mut rest = parts.next().ok_or_else(bad)?;
    if let Some(after) = rest.strip_prefix('=') {
        let (sender, after) = after.split_once(':').ok_or_else(bad)?;
        if !sender.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        rest = after;
    }
    if let Some(after) = rest.strip_prefix('#') {
        let (size, after) = after.split_once(':').ok_or_else(bad)?;
        if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        rest = after;
    }
    let (ns, rest) = prefixed(rest).ok_or_else(bad)?;
    let rest = rest.strip_prefix(':').ok_or_else(bad)?;
    let (event, data) = match rest.strip_prefix('*') {
        Some(id) => shared.get(id).cloned(),
        None => parse_payload(rest),
    }
    .ok_or_else(bad)?;
    Ok(StoredMessage {
        pos,
        ns: ns.into(),
        event,
        data,
    })
}

/// The user, client and message id of a dedup record, as the dedup scripts take them (see
/// [`DEDUP`]).
fn dedup_args(inv: &mut ScriptInvocation<'_>, key: &DedupKey) {
    inv.arg(key.user.as_str())
        .arg(key.client.as_str())
        .arg(key.id.as_str());
}

/// The user and client (`""` for a user) of a member, as the scripts take them.
fn member_args(member: &Member) -> (&str, &str) {
    match member {
        Member::User(user) => (user.as_str(), ""),
        Member::Client(user, client) => (user.as_str(), client.as_str()),
    }
}

/// Decodes a member as the scripts write it: `u:USER` or `c:CLIENT:USER`.
fn parse_member(s: &str) -> Result<Member, StorageError> {
    if let Some(user) = s.strip_prefix("u:") {
        return Ok(Member::User(UserId::from(user)));
    }
    let (client, user) = s
        .strip_prefix("c:")
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(|| corrupt("a room member"))?;
    let client = ClientId::new(client).map_err(|_| corrupt("a room member's client id"))?;
    Ok(Member::Client(UserId::from(user), client))
}

fn parse_client(s: String) -> Result<ClientId, StorageError> {
    ClientId::new(s).map_err(|_| corrupt("a client id"))
}

/// Aborts a task when dropped, so the signal task ends with the last storage handle.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn subscribe(
    client: &redis::Client,
    channel: &str,
    timeouts: Timeouts,
) -> Result<PubSub, StorageError> {
    let mut pubsub = within(timeouts.connect, client.get_async_pubsub()).await?;
    within(timeouts.response, pubsub.subscribe(channel)).await?;
    Ok(pubsub)
}

/// Forwards signals from the pub/sub connection, forever: when it drops, gets it back with
/// backoff and sends [`Signal::Resync`], since anything published meanwhile was missed.
async fn run_subscriber(
    client: redis::Client,
    channel: String,
    signals: broadcast::Sender<Signal>,
    mut pubsub: PubSub,
    timeouts: Timeouts,
) {
    loop {
        let cause = pump(pubsub, &signals, timeouts.response).await;
        warn!(%cause, "lost the Redis pub/sub connection; reconnecting");
        let mut delay = BACKOFF_MIN;
        let mut attempts = 0u32;
        pubsub = loop {
            // Jitter, so that many nodes do not reconnect in lockstep.
            let jitter = Duration::from_millis(fastrand::u64(0..=delay.as_millis() as u64 / 2));
            tokio::time::sleep(delay + jitter).await;
            attempts += 1;
            match subscribe(&client, &channel, timeouts).await {
                Ok(pubsub) => break pubsub,
                Err(err) => {
                    warn!(cause = %err, attempts, "cannot reconnect the Redis pub/sub connection");
                    delay = (delay * 2).min(BACKOFF_MAX);
                }
            }
        };
        warn!(attempts, "Redis pub/sub connection is back; waiters resync");
        // No receiver is fine: nobody is waiting.
        let _ = signals.send(Signal::Resync);
    }
}

/// Reads signals until the connection fails; returns why it did.
async fn pump(pubsub: PubSub, signals: &broadcast::Sender<Signal>, timeout: Duration) -> String {
    let (mut sink, mut stream) = pubsub.split();
    let start = tokio::time::Instant::now() + PING_EVERY;
    let mut ping = tokio::time::interval_at(start, PING_EVERY);
    // After a stall, one ping is enough; a burst of them would only add load.
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return "the connection closed".to_owned();
                };
                match decode_signal(msg.get_payload_bytes()) {
                    Ok(signal) => {
                        let _ = signals.send(signal);
                    }
                    // Someone else publishing on our channel is not our problem to crash on.
                    Err(err) => warn!(cause = %err, "ignored an unreadable signal from Redis"),
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => return format!("ping failed: {err}"),
                    Err(_) => return format!("no answer to a ping within {timeout:?}"),
                }
            }
        }
    }
}

static RESYNC_JSON: LazyLock<String> =
    LazyLock::new(|| signal_json(Signal::Resync).unwrap_or_default());

/// Shared by every script. `ARGV[1]` is the key prefix, `ARGV[2]` a fresh random epoch to take
/// if none is stored, `ARGV[3]` the `Resync` signal to publish then. Lua numbers are doubles:
/// `str` prints them exactly (tostring would switch to exponent notation past 14 digits).
const PRELUDE: &str = r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local P = ARGV[1]
local function str(n) return string.format('%.0f', n) end
local function num(v) return tonumber(v) or 0 end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- A missing epoch key means the data is gone (flushed, or a restart without persistence):
-- take a new epoch so that no old cursor is trusted, and wake everyone to resync.
local function current_epoch()
  local e = redis.call('GET', P .. 'epoch')
  if e then return e end
  redis.call('SET', P .. 'epoch', ARGV[2])
  redis.call('PUBLISH', P .. 'signals', ARGV[3])
  return ARGV[2]
end
-- Members: `u:USER`, or `c:CLIENT:USER` (client ids have no ':'); their keys add ':' .. what.
local function cmember(u, c) return 'c:' .. c .. ':' .. u end
local function member(u, c)
  if c == '' then return 'u:' .. u end
  return cmember(u, c)
end
local function mkey(m, what) return P .. m .. ':' .. what end
local function key(u, what) return P .. 'u:' .. u .. ':' .. what end
-- pos, expires_at, client ('' for all) and namespace of a log entry, the id of its shared
-- payload (`{P}p:ID`) if it refers to one, its sender (hex) if it has one, and the size of its
-- data as written (digits), if it was (nil for an entry older than byte limits: it counts as
-- 0).
local function parse(entry)
  local pos, exp, client, at = string.match(entry, '^(%d+):(%d+):([%w_%-]*):()')
  local sender, after_sender = string.match(entry, '^=(%x*):()', at)
  if sender then at = after_sender end
  local size, after_size = string.match(entry, '^#(%d+):()', at)
  if size then at = after_size end
  local nslen, ns_at = string.match(entry, '^(%d+):()', at)
  local after = ns_at + tonumber(nslen)
  local shared
  if string.sub(entry, after, after + 1) == ':*' then shared = string.sub(entry, after + 2) end
  return tonumber(pos), tonumber(exp), client, string.sub(entry, ns_at, after - 1), shared, sender,
    size
end
-- The set of the positions of a user's entries sent by `s` (hex), their share of the queue.
local function skey(u, s) return key(u, s .. ':from') end
-- The cursor by which client `c` confirms its own messages in `ns`: 0 unless it reads `ns`.
local function client_confirmed(u, c, ns)
  local rec = redis.call('HMGET', mkey(cmember(u, c), 'rec'), 'cur', 'ns')
  if not rec[1] or not rec[2] then return 0 end
  for _, n in ipairs(cjson.decode(rec[2])) do
    if n == ns then return tonumber(rec[1]) end
  end
  return 0
end
-- An entry's name in the user's `ix` and `exp`: namespace, client and position, sorted by
-- them, so that a prefix `nslen:ns:client:` names the entries of one namespace to one client
-- (or to the user, client ''), in position order. Positions are below 2^53: 16 digits.
local function ixm(ns, c, pos) return #ns .. ':' .. ns .. ':' .. c .. ':' .. string.format('%016.0f', pos) end
local function ix_prefix(ns, c) return #ns .. ':' .. ns .. ':' .. c .. ':' end
-- An entry's name in `exp`: its `ixm` name, `:=` and its sender (hex) if it has one, and `:#`
-- and the size of its data (if it has one: entries older than byte limits have none), so that
-- expiring it finds the sender's set and the bytes it held without reading the entry.
local function expm(m, s, size)
  if s then m = m .. ':=' .. s end
  if size then m = m .. ':#' .. size end
  return m
end
-- namespace, client, position, sender (hex, or nil) and size (digits, or nil) of an `ixm` or
-- `expm` name.
local function parse_ixm(m)
  local nslen, at = string.match(m, '^(%d+):()')
  local after = at + tonumber(nslen)
  local c, pos, rest = string.match(string.sub(m, after + 1), '^([%w_%-]*):(%d+)(.*)$')
  local s, size
  if rest ~= '' then
    local after_s
    s, after_s = string.match(rest, '^:=(%x*)()')
    if s then rest = string.sub(rest, after_s) end
    size = string.match(rest, '^:#(%d+)$')
  end
  return string.sub(m, at, after - 1), c, tonumber(pos), s, size
end
-- The entries of `ix` under `prefix` after position `after`, at most `limit`, as positions.
local function ix_after(ik, prefix, after, limit)
  local got = redis.call('ZRANGEBYLEX', ik, '(' .. prefix .. string.format('%016.0f', after),
    '(' .. prefix .. ';', 'LIMIT', 0, limit)
  local out = {}
  for i, m in ipairs(got) do out[i] = tonumber(string.sub(m, -16)) end
  return out
end
-- Removes one entry with its index names and its place in its sender's share. (Its bytes are
-- the caller's to subtract.)
local function remove_entry(u, ns, c, pos, s, size)
  local m = ixm(ns, c, pos)
  redis.call('ZREMRANGEBYSCORE', key(u, 'log'), str(pos), str(pos))
  redis.call('ZREM', key(u, 'ix'), m)
  redis.call('ZREM', key(u, 'exp'), expm(m, s, size))
  if s then redis.call('ZREM', skey(u, s), str(pos)) end
end
-- Removes up to `most` expired entries, those expiring first: the work is what it removes.
-- Returns how many it removed and, if any, their senders and sizes, two per entry in one list:
-- the sender (hex, or false) and the size (0 for an entry written without one), so that the
-- caller subtracts their bytes.
local function drop_expired(u, now, most)
  local ek = key(u, 'exp')
  local names = redis.call('ZRANGEBYSCORE', ek, '-inf', str(now), 'LIMIT', 0, most)
  if #names == 0 then return 0 end
  local lk, ik = key(u, 'log'), key(u, 'ix')
  local removed = {}
  for i, m in ipairs(names) do
    local ns, c, pos, s, size = parse_ixm(m)
    redis.call('ZREMRANGEBYSCORE', lk, str(pos), str(pos))
    redis.call('ZREM', ik, ixm(ns, c, pos))
    if s then redis.call('ZREM', skey(u, s), str(pos)) end
    removed[2 * i - 1], removed[2 * i] = s or false, num(size)
  end
  -- They are the lowest scores of `exp`.
  redis.call('ZREMRANGEBYRANK', ek, 0, #names - 1)
  return #names, removed
end
-- The bytes of a user's queue are in `meta`: `b` for all of it, `=HEX` for what sender HEX
-- sent (no field once it is 0). Subtracts what `drop_expired` removed outside an append: a
-- command for the total and one per sender (two if that sender's bytes come to 0).
local function subtract_bytes(u, removed)
  local mk = key(u, 'meta')
  local total, senders, order = 0, {}, {}
  for i = 1, #removed, 2 do
    local s, size = removed[i], removed[i + 1]
    total = total + size
    if s then
      if not senders[s] then
        senders[s] = 0
        table.insert(order, s)
      end
      senders[s] = senders[s] + size
    end
  end
  if total > 0 then redis.call('HINCRBY', mk, 'b', -total) end
  for _, s in ipairs(order) do
    local f = '=' .. s
    if senders[s] > 0 and redis.call('HINCRBY', mk, f, -senders[s]) <= 0 then
      redis.call('HDEL', mk, f)
    end
  end
end
-- Every user key but `rooms` expires together once nothing needs it: a grace after `until`
-- in `meta`, which is at least `t` (the latest message expiry or client record expiry seen so
-- far) and moves in steps of EXPIRY_STEP_MS. Every user key that exists has that expiry: the
-- keys are given it when `until` moves, and a key made since (`fresh`, the suffixes of those
-- the caller may have created) when it is made.
-- Marks the user as having more than a log (`k`: clients, watermarks, data), so that an
-- append knows to keep those keys too.
local function touch(u, t, fresh)
  local mk = key(u, 'meta')
  local got = redis.call('HMGET', mk, 'until', 'k')
  local upto = num(got[1])
  local whats = fresh
  if t > upto or not got[2] then
    if t > upto then upto = math.ceil(t / EXPIRY_STEP_MS) * EXPIRY_STEP_MS end
    redis.call('HSET', mk, 'until', str(upto), 'k', '1')
    whats = {'log', 'exp', 'ix', 'meta', 'wm', 'live', 'data'}
  end
  local at = str(upto + GRACE_MS)
  for _, what in ipairs(whats) do redis.call('PEXPIREAT', key(u, what), at) end
end
-- Moves the expiry of `k` to `at` unless it is already later.
local function extend(k, at, now)
  local ttl = redis.call('PTTL', k)
  if ttl == -1 or (ttl >= 0 and now + ttl < at) then redis.call('PEXPIREAT', k, str(at)) end
end
-- A client's keys expire `grace` after its seen-until in `presence`: reap comes first. A
-- fetch moves them in steps, to the time in `rec`'s `kept`; this sets them to the exact
-- time, which may be earlier, so it drops `kept`: the next fetch moves them again.
local function keep_client(m, grace)
  local seen = redis.call('ZSCORE', P .. 'presence', m)
  if not seen then return end
  local at = str(tonumber(seen) + grace)
  redis.call('HDEL', mkey(m, 'rec'), 'kept')
  for _, what in ipairs({'rec', 'data', 'rooms'}) do redis.call('PEXPIREAT', mkey(m, what), at) end
end
-- The record of client `c` for `join` and `set_data`: if it has none, one that is kept for
-- `ttl` as if it had polled, but is not live (it is not in the user's `live`).
local function ensure_client(u, c, now, ttl, grace)
  local m = cmember(u, c)
  local seen = now + ttl
  if redis.call('ZADD', P .. 'presence', 'NX', str(seen), m) == 1 then
    extend(P .. 'presence', seen + grace, now)
    touch(u, seen + grace, {})
  end
  return m
end
"#;

fn script(body: &str) -> Script {
    Script::new(&source(body))
}

fn source(body: &str) -> String {
    format!("{PRELUDE}{body}")
        .replace("GRACE_MS", &IDLE_GRACE.as_millis().to_string())
        .replace("EVICT_SCAN", &EVICT_SCAN.to_string())
        .replace("EXPIRE_SLACK", &EXPIRE_SLACK.to_string())
        .replace("CLAIM_EVICT", &CLAIM_EVICT.to_string())
        .replace("REAP_ROOMS", &REAP_ROOMS.to_string())
        .replace("EXPIRY_STEP_MS", &EXPIRY_STEP.as_millis().to_string())
}

/// `ARGV[4]`: nothing. Returns the epoch.
static EPOCH: LazyLock<Script> = LazyLock::new(|| script("return current_epoch()"));

/// `ARGV[4]` the most messages per user, `[5]` per sender, `[6]` the most bytes of data per
/// user, `[7]` per sender, `[8]` nu, `[9]` np, `[10]` n, then two per user: its id and its id as
/// JSON text; three per shared payload: its id, the latest expiry its key covers if an earlier
/// call stored it (else 0), and its value (empty if stored earlier; see [`share_payloads`]);
/// seven per message: the index of its user (from 1), client (or ''), expires_at, the index of
/// its shared payload (from 1, or 0), body, its sender in hex (see [`sender_arg`]) or '-', and
/// the size of its data (what it counts for in the byte limits). Publishes one `Appended`
/// naming each user that stored a message. Returns the epoch, then per message its position or
/// 'full'; or nothing, having written nothing, if a payload stored earlier is gone (send its
/// value then).
static APPEND: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local nu, np, n = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
-- A shared payload is written once, if a message stored uses it, to expire a grace after the
-- last of them: its entries are gone by then (expired), unless they went earlier. One that an
-- earlier call stored (an earlier chunk of the fan-out) is only referred to, if its key is
-- still there (no eviction, no flush took it), and its expiry moved if this call needs it later.
local shared = {}
for j = 1, np do
  local b = 8 + nu * 2 + j * 3
  shared[j] = {id = ARGV[b], known = tonumber(ARGV[b + 1]), value = ARGV[b + 2], upto = 0}
  if shared[j].known > 0 and redis.call('EXISTS', P .. 'p:' .. shared[j].id) == 0 then
    return {}
  end
end
local now = now_ms()
local epoch = current_epoch()
local maxq, per_sender = tonumber(ARGV[4]), tonumber(ARGV[5])
local max_bytes, sender_bytes = tonumber(ARGV[6]), tonumber(ARGV[7])
-- A message to the user is delivered once its namespace's watermark reaches it, one to a
-- client once that client's cursor does while it reads the namespace. What a user's
-- watermarks and clients' cursors are is read once per call, when first needed.
local function evict_state(seen)
  local ev = seen.evict
  if not ev then
    local pairs_ = redis.call('HGETALL', key(seen.id, 'wm'))
    ev = {wm = {}, bound = 0, confirmed = {}, from = '-inf', budget = EVICT_SCAN}
    for i = 1, #pairs_, 2 do
      local w = tonumber(pairs_[i + 1])
      ev.wm[pairs_[i]] = w
      if w > ev.bound then ev.bound = w end
    end
    seen.evict = ev
  end
  return ev
end
local function delivered(seen, ev, pos, c, ns)
  local upto
  if c == '' then
    upto = ev.wm[ns] or 0
  else
    local k = c .. ':' .. ns
    upto = ev.confirmed[k]
    if not upto then
      upto = client_confirmed(seen.id, c, ns)
      ev.confirmed[k] = upto
    end
  end
  return upto >= pos
end
-- What the call knows of sender `s`'s share of a user's queue: their count (`ZCARD` of their
-- set), read only once it matters and nil until then; their bytes, read with the user's
-- `meta` if the call has a message of theirs (`known`), else only what the call removed, to
-- subtract at the end; and where the search for one of their entries to evict stands.
local function share_of(seen, s)
  local share = seen.shares[s]
  if not share then
    share = {bytes = 0, known = false, from = '-inf', budget = EVICT_SCAN}
    seen.shares[s] = share
    if not seen.share_order then seen.share_order = {} end
    table.insert(seen.share_order, s)
  end
  return share
end
-- Takes an entry that left the log (of sender `s` or nil, `size` bytes) off the call's bytes
-- of the user's queue and of the sender's share, and off the sender's count.
local function gone(seen, s, size)
  seen.bytes = seen.bytes - size
  if s then
    local share = share_of(seen, s)
    share.bytes = share.bytes - size
    if share.count then share.count = share.count - 1 end
  end
end
-- Takes what `drop_expired` removed off the call's bytes and counts (see `gone`).
local function gone_all(seen, removed)
  for i = 1, #removed, 2 do gone(seen, removed[i] or nil, removed[i + 1]) end
end
-- Removes an entry, keeping the call's counts and bytes of the user's log and of its sender's
-- share.
local function forget(seen, ns, c, pos, s, size)
  remove_entry(seen.id, ns, c, pos, s, size)
  seen.card = seen.card - 1
  gone(seen, s, num(size))
end
-- No cursor is above the highest watermark, so the search for a delivered entry to evict
-- stops there (an expired one it passes goes too). The search goes from the oldest entry on,
-- and looks at no more than EVICT_SCAN undelivered entries per user and call: what it passed
-- stays undelivered within the call, so each search resumes where the last one stopped, and a
-- log whose delivered entries lie behind more undelivered ones than that refuses the message
-- (QueueFull) until they expire.
local function evict_one_delivered(seen)
  local ev = evict_state(seen)
  local lk = key(seen.id, 'log')
  while ev.budget > 0 and ev.bound > 0 do
    local chunk = redis.call('ZRANGEBYSCORE', lk, ev.from, str(ev.bound), 'LIMIT', 0, ev.budget)
    if #chunk == 0 then break end
    for _, entry in ipairs(chunk) do
      local pos, exp, c, ns, _, s, size = parse(entry)
      ev.from = '(' .. str(pos)
      if exp <= now or delivered(seen, ev, pos, c, ns) then
        forget(seen, ns, c, pos, s, size)
        return true
      end
      ev.budget = ev.budget - 1
    end
  end
  ev.budget = 0
  return false
end
-- One entry of the user's log that can go: an expired one while the call may remove more of
-- them (the first removal took all it was allowed to, so some may be left; up to
-- EXPIRE_SLACK more per user and call), else a delivered one.
local function evict_one(seen)
  if seen.more_expired > 0 then
    local expired, removed = drop_expired(seen.id, now, 1)
    if expired > 0 then
      gone_all(seen, removed)
      seen.card = seen.card - 1
      seen.more_expired = seen.more_expired - 1
      return true
    end
    seen.more_expired = 0
  end
  return evict_one_delivered(seen)
end
-- The same for a sender at their share of the user's queue, among their own entries only
-- (their set of positions, from the oldest on): one that expired or was delivered makes room.
-- At most EVICT_SCAN entries that could not go are looked at per user, sender and call.
local function evict_one_of(seen, s, share)
  local ev = evict_state(seen)
  local lk, sk = key(seen.id, 'log'), skey(seen.id, s)
  while share.budget > 0 do
    local chunk = redis.call('ZRANGEBYSCORE', sk, share.from, '+inf', 'LIMIT', 0, share.budget)
    if #chunk == 0 then break end
    for _, p in ipairs(chunk) do
      share.from = '(' .. p
      local entry = redis.call('ZRANGEBYSCORE', lk, p, p)[1]
      if not entry then
        -- A place whose entry is gone holds nothing: it goes, which is the room needed.
        redis.call('ZREM', sk, p)
        if share.count then share.count = share.count - 1 end
        return true
      end
      local pos, exp, c, ns, _, _, size = parse(entry)
      if exp <= now or delivered(seen, ev, pos, c, ns) then
        forget(seen, ns, c, pos, s, size)
        return true
      end
      share.budget = share.budget - 1
    end
  end
  share.budget = 0
  return false
end
-- Whether a message of `size` bytes from `s` fits in their share of the user's queue, as far
-- as the call knows. Their count is read only once the log is large enough for it to matter.
local function fits_share(seen, s, share, size)
  if share.bytes + size > sender_bytes then return false end
  if seen.card < per_sender then return true end
  if not share.count then share.count = redis.call('ZCARD', skey(seen.id, s)) end
  return share.count < per_sender
end
local out = {epoch}
local users = {}
for i = 1, nu do
  users[i] = {id = ARGV[9 + i * 2], json = ARGV[10 + i * 2], upto = 0, stored = false, count = 0,
    shares = {}, sent = {}, senders = {}, more_expired = 0}
end
local first = 11 + nu * 2 + np * 3
-- Per user, the number of the call's messages and their senders, whose bytes are read once.
for i = 0, n - 1 do
  local b = first + i * 8
  local seen, s = users[tonumber(ARGV[b])], ARGV[b + 5]
  seen.count = seen.count + 1
  if s ~= '-' then
    if not seen.wanted then seen.wanted, seen.wants = {}, {} end
    if not seen.wants[s] then
      seen.wants[s] = true
      table.insert(seen.wanted, s)
    end
  end
end
-- Per user, what the call needs of its keys is read once, and written back once at the end:
-- a fan-out costs a few commands per message.
for i = 0, n - 1 do
  local b = first + i * 8
  local seen, c, exp = users[tonumber(ARGV[b])], ARGV[b + 1], tonumber(ARGV[b + 2])
  local payload, body, s = shared[tonumber(ARGV[b + 3])], ARGV[b + 4], ARGV[b + 5]
  local size_s, origin = ARGV[b + 6], ARGV[b + 7]
  local size = tonumber(size_s)
  if s == '-' then s = nil end
  local u = seen.id
  if not seen.last then
    -- One read: the last position, the keys' expiry, the bytes of the queue and those of
    -- each sender of the call's messages to this user.
    local got
    if seen.wanted then
      local fields = {'last', 'until', 'k', 'b'}
      for _, w in ipairs(seen.wanted) do table.insert(fields, '=' .. w) end
      got = redis.call('HMGET', key(u, 'meta'), unpack(fields))
    else
      got = redis.call('HMGET', key(u, 'meta'), 'last', 'until', 'k', 'b')
    end
    seen.last, seen.until_, seen.more = num(got[1]), num(got[2]), got[3]
    -- The log, `exp`, `ix` and `meta` expire together: no `last`, no log, no bytes.
    local logged = got[1] and true or false
    seen.bytes = logged and num(got[4]) or 0
    seen.bytes_read = seen.bytes
    for j, w in ipairs(seen.wanted or {}) do
      local share = share_of(seen, w)
      share.known = true
      share.bytes = logged and num(got[4 + j]) or 0
      share.bytes_read = share.bytes
    end
    if logged then
      -- Enough expired entries to make room for this call's messages, and some more: a mass
      -- expiry is cleared over several calls, never by one.
      local most = seen.count + EXPIRE_SLACK
      local expired, removed = drop_expired(u, now, most)
      if expired > 0 then gone_all(seen, removed) end
      if expired >= most then seen.more_expired = EXPIRE_SLACK end
      seen.card = redis.call('ZCARD', key(u, 'log'))
    else
      seen.card = 0
    end
    seen.was_empty = seen.card == 0
  end
  -- A send whose origin the user's log remembers was stored before (a handler run again
  -- after a crash): its outcome is that position, and nothing is stored. Origins live in
  -- `orig` (origin -> position) and `origx` (origin by expiry); a few lapsed ones are swept
  -- per user and call, and the keys expire with the last of them.
  local ok, ox = key(u, 'orig'), key(u, 'origx')
  local known
  if origin ~= '' then
    if not seen.origins_swept then
      seen.origins_swept = true
      local lapsed = redis.call('ZRANGEBYSCORE', ox, '-inf', str(now), 'LIMIT', 0, 16)
      if #lapsed > 0 then
        redis.call('ZREM', ox, unpack(lapsed))
        redis.call('HDEL', ok, unpack(lapsed))
      end
    end
    local until_ = redis.call('ZSCORE', ox, origin)
    if until_ and tonumber(until_) > now then known = redis.call('HGET', ok, origin) end
  end
  if known then
    table.insert(out, known)
  else
  -- The sender's share first: a sender at theirs, in count or in bytes, makes room among
  -- their own entries; then the user's queue, among everyone's. Each eviction removes an
  -- entry for good, so the loops are bounded by what was added before. A message larger than
  -- a limit by itself is refused at once, evicting nothing.
  local full = false
  if s then
    local share = seen.shares[s]
    if size > sender_bytes then full = true end
    while not full and not fits_share(seen, s, share, size) do
      if not evict_one_of(seen, s, share) then full = true end
    end
  end
  if not full and size > max_bytes then full = true end
  while not full and (seen.card >= maxq or seen.bytes + size > max_bytes) do
    if not evict_one(seen) then full = true end
  end
  if full then
    table.insert(out, 'full')
  else
    -- Clock-based, so positions never start over below a cursor a client still holds, even
    -- after this user's keys expired.
    local pos = math.max(now * 1000, seen.last + 1)
    seen.last = pos
    seen.card = seen.card + 1
    seen.bytes = seen.bytes + size
    local p = str(pos)
    local from = ''
    if s then from = '=' .. s .. ':' end
    redis.call('ZADD', key(u, 'log'), p,
      p .. ':' .. str(exp) .. ':' .. c .. ':' .. from .. '#' .. size_s .. ':' .. body)
    local nslen, at = string.match(body, '^(%d+):()')
    local m = ixm(string.sub(body, at, at + tonumber(nslen) - 1), c, pos)
    redis.call('ZADD', key(u, 'ix'), 0, m)
    redis.call('ZADD', key(u, 'exp'), str(exp), expm(m, s, size_s))
    if s then
      redis.call('ZADD', skey(u, s), p, p)
      local share = seen.shares[s]
      share.bytes = share.bytes + size
      if share.count then share.count = share.count + 1 end
      if not seen.sent[s] then
        seen.sent[s] = true
        table.insert(seen.senders, s)
      end
    end
    table.insert(out, p)
    seen.stored = true
    seen.upto = math.max(seen.upto, exp)
    if payload then payload.upto = math.max(payload.upto, exp) end
    -- Remembered while the user has fewer than the queue's limit of them: past it a send is
    -- stored without, so a user sent to without end costs a bounded amount.
    if origin ~= '' and redis.call('ZCARD', ox) < maxq then
      redis.call('HSET', ok, origin, p)
      redis.call('ZADD', ox, str(exp), origin)
      extend(ok, exp, now)
      extend(ox, exp, now)
    end
  end
  end
end
for _, payload in ipairs(shared) do
  if payload.upto > 0 then
    local pk = P .. 'p:' .. payload.id
    local at = payload.upto + GRACE_MS
    if payload.known > 0 then
      if payload.upto > payload.known then extend(pk, at, now) end
    elseif redis.call('SET', pk, payload.value, 'NX') then
      redis.call('PEXPIREAT', pk, str(at))
    else
      -- Stored meanwhile by another call that found it gone: never shorten its expiry.
      extend(pk, at, now)
    end
  end
end
-- Per user, what changed in `meta` is written in one HSET: the last position, `until`, the
-- bytes of the queue and of the shares the call read (see `subtract_bytes`). The shares of
-- senders with no message in the call only lost entries: their bytes go down by HINCRBY.
-- A user's keys expire together (see `touch`). `until` moves in steps of EXPIRY_STEP_MS, so
-- that a user receiving many messages has their expiries moved once a step, not per message;
-- keys this call created (an empty log) get theirs at once.
local function push(t, a, b)
  t[#t + 1] = a
  t[#t + 1] = b
end
for _, seen in ipairs(users) do
  local u = seen.id
  local mk = key(u, 'meta')
  local fields = {}
  if seen.bytes ~= seen.bytes_read then push(fields, 'b', str(math.max(seen.bytes, 0))) end
  if seen.share_order then
    local dels = {}
    for _, s in ipairs(seen.share_order) do
      local share, f = seen.shares[s], '=' .. s
      if share.known then
        if share.bytes ~= share.bytes_read then
          if share.bytes > 0 then push(fields, f, str(share.bytes)) else table.insert(dels, f) end
        end
      elseif share.bytes < 0 and redis.call('HINCRBY', mk, f, str(share.bytes)) <= 0 then
        table.insert(dels, f)
      end
    end
    if #dels > 0 then redis.call('HDEL', mk, unpack(dels)) end
  end
  local whats
  if seen.stored then
    push(fields, 'last', str(seen.last))
    if seen.upto > seen.until_ then
      seen.until_ = math.ceil(seen.upto / EXPIRY_STEP_MS) * EXPIRY_STEP_MS
      push(fields, 'until', str(seen.until_))
      if seen.more then
        whats = {'log', 'exp', 'ix', 'meta', 'wm', 'live', 'data'}
      else
        whats = {'log', 'exp', 'ix', 'meta'}
      end
    elseif seen.was_empty then
      whats = {'log', 'exp', 'ix'}
    end
  end
  -- Only a user whose log existed, or that stored a message, has anything to write: `meta`
  -- exists then, or gets its expiry below.
  if #fields > 0 then redis.call('HSET', mk, unpack(fields)) end
  if seen.stored then
    local at = str(seen.until_ + GRACE_MS)
    for _, what in ipairs(whats or {}) do redis.call('PEXPIREAT', key(u, what), at) end
    -- A sender's set expires with the log as it is now, after every entry in it: `until` is
    -- past their expiries, and only moves later. So a set outlives its entries, whatever
    -- moves the user's other keys afterwards.
    for _, s in ipairs(seen.senders) do redis.call('PEXPIREAT', skey(u, s), at) end
  end
end
-- One signal for the whole call, naming each user that stored a message once.
local named = {}
for _, seen in ipairs(users) do
  if seen.stored then table.insert(named, seen.json) end
end
if #named > 0 then
  redis.call('PUBLISH', P .. 'signals', '{"appended":{"users":[' .. table.concat(named, ',') .. ']}}')
end
return out
"#,
    )
});

/// `ARGV[4]` user, `[5]` client, `[6]` '1' if a cursor was sent, `[7]` its epoch, `[8]` its
/// position, `[9]` limit, `[10]` presence ttl (ms), `[11]` reap grace (ms), `[12]` the
/// `Confirmed` signal, `[13]` the `PollStarted` signal to publish or '', `[14]` the namespaces
/// as a JSON array, `[15]` the most clients of the user, `[16]` n, then the n namespaces read.
/// Returns the epoch, the new cursor, the arrival ('online', 'arrived' or ''), the number of
/// shared payloads, then two per payload (its id and value), each once, then the entries read;
/// or {'limit'}, having changed nothing, for a new client of a user with the most clients.
///
/// A poll that finds nothing and the one that reads the next message are a few commands each:
/// what did not change is not written again (the client's cursor and namespaces, watermarks
/// already past the cursor), and key expiries move once per EXPIRY_STEP.
static FETCH: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local u, c = ARGV[4], ARGV[5]
local limit, ttl, grace = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local nsjson = ARGV[14]
-- `nsl` as given (recorded, and confirmed in); `distinct` each once (read).
local nsl, distinct, wanted = {}, {}, {}
for i = 1, tonumber(ARGV[16]) do
  nsl[i] = ARGV[16 + i]
  if not wanted[nsl[i]] then
    wanted[nsl[i]] = true
    table.insert(distinct, nsl[i])
  end
end
local now = now_ms()
local epoch = current_epoch()
local lk, wk, lv, ik = key(u, 'log'), key(u, 'wm'), key(u, 'live'), key(u, 'ix')
local m = cmember(u, c)
local rk = mkey(m, 'rec')
-- The client's record: its cursor, its namespaces (as JSON), the cursor `w` that every
-- watermark of those namespaces is known to have reached, and `kept`, the time its keys
-- expire at. Fields that change are written at once, below.
local rec = redis.call('HMGET', rk, 'cur', 'ns', 'w', 'kept')
-- A client with no record is refused while its user has the most clients: those in `live`
-- (polled and not reaped, lapsed or not). One that polled before has a cursor, so a poll
-- costs nothing more; one with a record made by join or set_data is in `presence`. Nothing is
-- written before this.
if not rec[1] and redis.call('ZCARD', lv) >= tonumber(ARGV[15])
    and not redis.call('ZSCORE', lv, c) and not redis.call('ZSCORE', P .. 'presence', m) then
  return {'limit'}
end
-- All of them: the index read below must find no expired entry. The work is what it removes,
-- and their bytes come off the queue's, in a command per sender (none if nothing expired).
local expired, removed = drop_expired(u, now, -1)
if expired > 0 then subtract_bytes(u, removed) end
-- The last position given: no cursor is confirmed beyond it, and one beyond it reads from it.
local head = num(redis.call('HGET', key(u, 'meta'), 'last'))
local recorded, same_ns, kept = rec[1], rec[2] == nsjson, num(rec[4])
local fields = {}
local function set(f, v) table.insert(fields, f) table.insert(fields, v) end
-- User keys this fetch may create, to get their expiry (see `touch`).
local fresh = {}
local function watermarks()
  if #distinct == 0 then return {} end
  return redis.call('HMGET', wk, unpack(distinct))
end
local start, w
local advanced = false
local confirmed_at = 0
if ARGV[6] == '1' and ARGV[7] == epoch then
  local cursor = tonumber(ARGV[8])
  -- Never confirm beyond the log: that would confirm messages appended later.
  local confirmed = math.min(cursor, head)
  confirmed_at = confirmed
  local was = num(recorded)
  -- The client's own cursor confirms messages addressed to it even when the watermark is
  -- already past them, so its advance is a confirmation too.
  if confirmed > was then advanced = true end
  if confirmed > was or not recorded then set('cur', str(math.max(confirmed, was))) end
  -- Watermarks only move up: with the same namespaces, a cursor no higher than one they all
  -- reached moves none of them.
  if not same_ns or confirmed > num(rec[3]) then
    local wms = watermarks()
    for i, ns in ipairs(distinct) do
      if confirmed > num(wms[i]) then
        if not wms[i] then fresh = {'wm'} end
        redis.call('HSET', wk, ns, str(confirmed))
        advanced = true
      end
    end
    w = str(confirmed)
  end
  -- A cursor beyond the log reads from its end: nothing written later is skipped.
  start = confirmed
elseif recorded then
  start = tonumber(recorded)
else
  -- A client seen for the first time (a record made by join or set_data has no cursor yet)
  -- starts at the lowest watermark of its namespaces, or just before the earliest message
  -- addressed to it that lies at or below it.
  local lowest
  for _, w in ipairs(watermarks()) do
    if not lowest or num(w) < lowest then lowest = num(w) end
  end
  start = lowest or 0
  -- The index names the earliest entry to this client in each namespace, whatever lies below.
  for _, ns in ipairs(distinct) do
    local earliest = ix_after(ik, ix_prefix(ns, c), 0, 1)[1]
    if earliest and earliest <= start then start = earliest - 1 end
  end
  set('cur', str(start))
end
if not same_ns then
  set('ns', nsjson)
  -- What `w` says holds for the namespaces it was set with.
  w = w or '0'
end
if w then set('w', w) end

-- Read through the index: the entries after `start` of each namespace read, to the user and
-- to this client, at most limit + 1 of each, merged in position order. Entries of other
-- namespaces and clients are never looked at, so the work is bounded by the batch (times the
-- namespaces read), however many of them lie in between. The first limit + 1 of the merge
-- are the log's first matching entries, whatever each list left out.
local found, truncated = {}, false
for _, ns in ipairs(distinct) do
  for _, to in ipairs({'', c}) do
    local got = ix_after(ik, ix_prefix(ns, to), start, limit + 1)
    if #got > limit then truncated = true end
    for _, pos in ipairs(got) do table.insert(found, pos) end
  end
end
table.sort(found)

local messages, payloads, shared = {}, {}, {}
local last_read, looked = start, start
local i = 1
while i <= #found and #messages < limit do
  local pos = found[i]
  local entry = redis.call('ZRANGEBYSCORE', lk, str(pos), str(pos))[1]
  local id
  if entry then id = select(5, parse(entry)) end
  -- Each shared payload once per batch. One that is gone (an eviction policy took it) takes
  -- its entries with it: they are skipped, as if expired.
  if id and payloads[id] == nil then
    payloads[id] = redis.call('GET', P .. 'p:' .. id)
    if payloads[id] then
      table.insert(shared, id)
      table.insert(shared, payloads[id])
    end
  end
  if entry and (not id or payloads[id]) then
    table.insert(messages, entry)
    last_read = pos
  end
  looked = pos
  i = i + 1
end
local cursor
if i <= #found then
  -- The limit stopped the read.
  cursor = last_read
elseif truncated then
  -- Skipped entries used up what the index gave: read up to there, the rest next time.
  cursor = looked
else
  cursor = math.max(start, head)
end

-- The client arrives if it has not polled since it was last reaped (or ever); its user comes
-- online if no other client of theirs has. A client whose presence lapsed but that was not
-- reaped yet has not left: its departure was not reported, so neither is an arrival.
local seen = now + ttl
redis.call('ZADD', P .. 'presence', str(seen), m)
local arrival = ''
if redis.call('ZADD', lv, str(seen), c) == 1 then
  if redis.call('ZCARD', lv) == 1 then arrival = 'online' else arrival = 'arrived' end
  table.insert(fresh, 'live')
end
local latest = redis.call('ZRANGE', lv, -1, -1, 'WITHSCORES')
redis.call('ZADD', P .. 'live', latest[2], u)
-- The client's keys, the global zsets and the user's keys must outlive `seen + grace`: they
-- are given a time at least that, a step ahead, when it passes `kept`.
local moved = seen + grace > kept
if moved then
  kept = math.ceil((seen + grace) / EXPIRY_STEP_MS) * EXPIRY_STEP_MS
  set('kept', str(kept))
end
if #fields > 0 then redis.call('HSET', rk, unpack(fields)) end
if moved then
  local at = str(kept)
  for _, what in ipairs({'rec', 'data', 'rooms'}) do redis.call('PEXPIREAT', mkey(m, what), at) end
  extend(P .. 'presence', kept, now)
  extend(P .. 'live', kept, now)
end
if moved or #fresh > 0 then touch(u, kept, fresh) end
if ARGV[13] ~= '' then redis.call('PUBLISH', P .. 'signals', ARGV[13]) end
if advanced then
  local quoted
  if string.find(epoch, '^[%w_%-]*$') then quoted = '"' .. epoch .. '"' else quoted = cjson.encode(epoch) end
  redis.call('PUBLISH', P .. 'signals', '{"confirmed":{"epoch":' .. quoted .. ','
    .. ARGV[12] .. ',"cursor":' .. str(confirmed_at) .. '}}')
end

local out = {epoch, str(cursor), arrival, str(#shared / 2)}
for _, v in ipairs(shared) do table.insert(out, v) end
for _, entry in ipairs(messages) do table.insert(out, entry) end
return out
"#,
    )
});

/// `ARGV[4]` the epoch asked about, `[5]` n, then four per target: user, client (or ''),
/// namespace, position. Returns {'lost'} or one of 'd', 'p', 'e' per target.
static DELIVERY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if current_epoch() ~= ARGV[4] then return {'lost'} end
local now = now_ms()
local out = {}
for i = 0, tonumber(ARGV[5]) - 1 do
  local b = 6 + i * 4
  local u, c, ns, pos = ARGV[b], ARGV[b + 1], ARGV[b + 2], tonumber(ARGV[b + 3])
  local confirmed
  if c == '' then
    confirmed = num(redis.call('HGET', key(u, 'wm'), ns))
  else
    confirmed = client_confirmed(u, c, ns)
  end
  if pos <= confirmed then
    table.insert(out, 'd')
  else
    local found = redis.call('ZRANGEBYSCORE', key(u, 'log'), str(pos), str(pos))
    local state = 'e'
    if #found > 0 then
      local _, exp = parse(found[1])
      if exp > now then state = 'p' end
    end
    table.insert(out, state)
  end
end
return out
"#,
    )
});

/// Shared by the dedup scripts: `ARGV[4]` user, `[5]` client, `[6]` message id. A user's
/// records are ordered by claim in `{P}du:USER` (`CLIENT:ID` → claim number) and a client's in
/// `{P}dc:CLIENT:USER` (`ID` → the same number); each expires once the last record it orders
/// could have: its expiry moves, in steps, to the latest record expiry set.
const DEDUP: &str = r#"
local u, c, id = ARGV[4], ARGV[5], ARGV[6]
local function dkey(c_, id_) return P .. 'd:' .. c_ .. ':' .. id_ .. ':' .. u end
local uk, ck = P .. 'du:' .. u, P .. 'dc:' .. c .. ':' .. u
local name = c .. ':' .. id
local rk = dkey(c, id)
-- Claim numbers follow the clock (ms × 1000), one past the user's latest if that is not less.
local function next_seq(now)
  local top = redis.call('ZRANGE', uk, -1, -1, 'WITHSCORES')
  local seq = now * 1000
  if top[2] and tonumber(top[2]) >= seq then seq = tonumber(top[2]) + 1 end
  return seq
end
local function order(now, seq, until_)
  redis.call('ZADD', uk, str(seq), name)
  redis.call('ZADD', ck, str(seq), id)
  local at = math.ceil(until_ / EXPIRY_STEP_MS) * EXPIRY_STEP_MS
  extend(uk, at, now)
  extend(ck, at, now)
end
"#;

/// `ARGV[4..6]` (see [`DEDUP`]), `[7]` lease (ms), `[8]` the most records per client, `[9]`
/// per user, `[10]` the owner. Returns {'acquired'}, {'progress', ms left on the lease},
/// {'done', outcome} or {'limit', the limit}.
///
/// A record in progress holds `p` and its owner's number: the same owner claiming again (its
/// first answer was lost) gets it back, with its lease restarted.
///
/// A new record needs room under both limits: the client's oldest records go first while the
/// client is at its limit, then the user's oldest while the user is at theirs. One still in
/// progress refuses the claim; one completed, or gone (its key expired), is forgotten. What to
/// forget is decided before anything is written, so a refused claim changes nothing. At most
/// CLAIM_EVICT records are looked at; a user far above a limit (it was lowered) gets the new
/// record anyway and comes down by that many per claim.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    script(&format!(
        "{DEDUP}{}",
        r#"
local lease, per_client, per_user = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local held = 'p' .. ARGV[10]
local v = redis.call('GET', rk)
if v then
  if string.sub(v, 1, 1) == 'd' then return {'done', string.sub(v, 2)} end
  if v == held then
    redis.call('PEXPIRE', rk, lease)
    return {'acquired'}
  end
  return {'progress', str(math.max(redis.call('PTTL', rk), 0))}
end
-- No record: one whose key expired may still have its place in the order. A new claim
-- takes a new place.
redis.call('ZREM', uk, name)
redis.call('ZREM', ck, id)
local in_client, in_user = redis.call('ZCARD', ck), redis.call('ZCARD', uk)
local forget, planned = {}, {}
local crank, urank, budget = 0, 0, CLAIM_EVICT
while budget > 0 do
  local oldest, limit
  if in_client >= per_client then
    -- The client's records are the user's too: while the client is over, only its own go.
    local got = redis.call('ZRANGE', ck, crank, crank)[1]
    if not got then break end
    crank = crank + 1
    oldest, limit = c .. ':' .. got, per_client
  elseif in_user >= per_user then
    local got = redis.call('ZRANGE', uk, urank, urank)[1]
    if not got then break end
    urank = urank + 1
    if not planned[got] then oldest, limit = got, per_user end
  else
    break
  end
  if oldest then
    budget = budget - 1
    local oc, oid = string.match(oldest, '^([^:]*):(.*)$')
    local ov = redis.call('GET', dkey(oc, oid))
    if ov and string.sub(ov, 1, 1) == 'p' then return {'limit', str(limit)} end
    planned[oldest] = true
    table.insert(forget, {oc, oid})
    if oc == c then in_client = in_client - 1 end
    in_user = in_user - 1
  end
end
for _, f in ipairs(forget) do
  redis.call('DEL', dkey(f[1], f[2]))
  redis.call('ZREM', uk, f[1] .. ':' .. f[2])
  redis.call('ZREM', P .. 'dc:' .. f[1] .. ':' .. u, f[2])
end
local now = now_ms()
redis.call('SET', rk, held, 'PX', lease)
order(now, next_seq(now), now + lease)
return {'acquired'}
"#
    ))
});

/// `ARGV[4..6]` (see [`DEDUP`]), `[7]` lease (ms), `[8]` the owner. Restarts the lease of a
/// record in progress for that owner; returns 1 if it was, else 0.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    script(&format!(
        "{DEDUP}{}",
        r#"
if redis.call('GET', rk) ~= 'p' .. ARGV[8] then return 0 end
local now = now_ms()
redis.call('PEXPIRE', rk, ARGV[7])
-- The order sets outlive the record they hold.
local at = math.ceil((now + tonumber(ARGV[7])) / EXPIRY_STEP_MS) * EXPIRY_STEP_MS
extend(uk, at, now)
extend(ck, at, now)
return 1
"#
    ))
});

/// `ARGV[4..6]` (see [`DEDUP`]), `[7]` the outcome, `[8]` ttl (ms), `[9]` the `Completed`
/// signal. A ttl of 0 forgets the record instead.
static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    script(&format!(
        "{DEDUP}{}",
        r#"
local ttl = tonumber(ARGV[8])
if ttl <= 0 then
  redis.call('DEL', rk)
  redis.call('ZREM', uk, name)
  redis.call('ZREM', ck, id)
else
  local now = now_ms()
  redis.call('SET', rk, 'd' .. ARGV[7], 'PX', ARGV[8])
  -- A record whose lease lapsed may have lost its place: it takes a new one, beyond the
  -- limits (a handled message must be remembered), and the next claim makes room again.
  local seq = redis.call('ZSCORE', uk, name)
  if not seq then seq = next_seq(now) end
  order(now, tonumber(seq), now + ttl)
end
redis.call('PUBLISH', P .. 'signals', ARGV[9])
return 1
"#
    ))
});

/// No more arguments. Returns the users with a polled client within its presence ttl.
static LIVE_USERS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
return redis.call('ZRANGEBYSCORE', P .. 'live', '(' .. str(now_ms()), '+inf')
"#,
    )
});

/// `ARGV[4]` user. Returns their polled clients within their presence ttl.
static LIVE_CLIENTS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
return redis.call('ZRANGEBYSCORE', key(ARGV[4], 'live'), '(' .. str(now_ms()), '+inf')
"#,
    )
});

/// `ARGV[4]` the most clients to remove. Returns '1' if there may be more to reap (else '0'),
/// then three per departure: user, client, '1' if the user went offline (else '0').
///
/// `ZRANGEBYSCORE` and `ZREM` of `{P}presence` in one script: of several nodes reaping at once,
/// the first takes every lapsed client, the others find none.
static REAP: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
local limit = tonumber(ARGV[4])
local pk = P .. 'presence'
local lapsed = redis.call('ZRANGEBYSCORE', pk, '-inf', str(now), 'LIMIT', 0, limit)
local departed, order = {}, {}
-- Memberships go at most REAP_ROOMS per script: a client whose rooms are not all gone yet stays
-- lapsed in the presence index, and the next script goes on with it.
local budget, unfinished = REAP_ROOMS, false
for _, m in ipairs(lapsed) do
  local c, u = string.match(m, '^c:([%w_%-]+):(.*)$')
  local rooms = c and mkey(m, 'rooms')
  if c then
    if budget <= 0 then
      unfinished = true
      break
    end
    local popped = redis.call('SPOP', rooms, budget)
    for _, room in ipairs(popped) do
      redis.call('SREM', P .. 'room:' .. room, m)
    end
    budget = budget - #popped
    if redis.call('SCARD', rooms) > 0 then
      unfinished = true
      break
    end
  end
  redis.call('ZREM', pk, m)
  if c then
    redis.call('DEL', mkey(m, 'rec'), mkey(m, 'data'), rooms)
    -- Only clients that polled arrived, so only they depart; the rest just go.
    if redis.call('ZREM', key(u, 'live'), c) == 1 then
      if not departed[u] then
        departed[u] = {}
        table.insert(order, u)
      end
      table.insert(departed[u], c)
    end
  end
end
local out = {(unfinished or #lapsed >= limit) and '1' or '0'}
for _, u in ipairs(order) do
  local latest = redis.call('ZRANGE', key(u, 'live'), -1, -1, 'WITHSCORES')
  local offline = #latest == 0
  if offline then
    redis.call('ZREM', P .. 'live', u)
    redis.call('DEL', key(u, 'data'))
  else
    redis.call('ZADD', P .. 'live', latest[2], u)
  end
  local gone = departed[u]
  for i, c in ipairs(gone) do
    table.insert(out, u)
    table.insert(out, c)
    table.insert(out, (offline and i == #gone) and '1' or '0')
  end
end
return out
"#,
    )
});

/// `ARGV[4]` room, `[5]` user, `[6]` client (or ''), `[7]` presence ttl (ms), `[8]` reap grace
/// (ms).
static JOIN: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local room, u, c = ARGV[4], ARGV[5], ARGV[6]
local m = member(u, c)
if c ~= '' then ensure_client(u, c, now_ms(), tonumber(ARGV[7]), tonumber(ARGV[8])) end
redis.call('SADD', P .. 'room:' .. room, m)
redis.call('SADD', mkey(m, 'rooms'), room)
if c ~= '' then keep_client(m, tonumber(ARGV[8])) end
return 1
"#,
    )
});

/// `ARGV[4]` room, `[5]` user, `[6]` client (or '').
static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local room, m = ARGV[4], member(ARGV[5], ARGV[6])
redis.call('SREM', P .. 'room:' .. room, m)
redis.call('SREM', mkey(m, 'rooms'), room)
return 1
"#,
    )
});

/// `ARGV[4]` room, `[5]` the `SSCAN` cursor ('0' to start), `[6]` the page size. Returns the
/// next cursor ('0' once done), then this page's members as written in the room (`u:USER`,
/// `c:CLIENT:USER`).
static MEMBERS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local rk = P .. 'room:' .. ARGV[4]
local page = redis.call('SSCAN', rk, ARGV[5], 'COUNT', ARGV[6])
local out = {page[1]}
for _, m in ipairs(page[2]) do
  -- A client with no record expired without being reaped (no node reaped for a whole
  -- grace): it is gone, so is its membership.
  if string.sub(m, 1, 2) == 'c:' and not redis.call('ZSCORE', P .. 'presence', m) then
    redis.call('SREM', rk, m)
  else
    table.insert(out, m)
  end
end
return out
"#,
    )
});

/// `ARGV[4]` user, `[5]` client (or ''). Returns the rooms of that member.
static ROOMS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
return redis.call('SMEMBERS', mkey(member(ARGV[4], ARGV[5]), 'rooms'))
"#,
    )
});

/// `ARGV[4]` user, `[5]` client (or ''), `[6]` key, `[7]` '1' to set (else remove), `[8]` the
/// value, `[9]` presence ttl (ms), `[10]` reap grace (ms).
static SET_DATA: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local u, c = ARGV[4], ARGV[5]
local now, ttl, grace = now_ms(), tonumber(ARGV[9]), tonumber(ARGV[10])
local m = member(u, c)
if c ~= '' then ensure_client(u, c, now, ttl, grace) end
local dk = mkey(m, 'data')
if ARGV[7] == '1' then
  redis.call('HSET', dk, ARGV[6], ARGV[8])
else
  redis.call('HDEL', dk, ARGV[6])
end
if c == '' then touch(u, now + ttl + grace, {'data'}) else keep_client(m, grace) end
return 1
"#,
    )
});

/// `ARGV[4]` user, `[5]` client (or ''), `[6]` key. Returns the value, or nil.
static GET_DATA: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
return redis.call('HGET', mkey(member(ARGV[4], ARGV[5]), 'data'), ARGV[6])
"#,
    )
});

#[async_trait]
impl Storage for RedisStorage {
    async fn epoch(&self) -> Result<Epoch, StorageError> {
        let epoch: String = self.eval(&EPOCH, |_| {}).await?;
        Ok(Epoch::new(epoch))
    }

    async fn append(
        &self,
        messages: Vec<NewMessage>,
        limits: QueueLimits,
    ) -> Result<Appended, StorageError> {
        let count = messages.len();
        // Each user once, with their id as JSON text: the script builds the one `Appended`
        // signal of the call from the users that stored a message.
        let mut user_index: HashMap<&str, usize> = HashMap::new();
        let mut users: Vec<(&str, String)> = Vec::new();
        let mut message_users = Vec::with_capacity(count);
        for m in &messages {
            let next = users.len() + 1;
            let index = *user_index.entry(m.user.as_str()).or_insert(next);
            if index == next {
                users.push((m.user.as_str(), json_string(m.user.as_str())?));
            }
            message_users.push(index);
        }
        let (bodies, mut payloads) = {
            let cache = self
                .inner
                .payloads
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            share_payloads(&messages, &cache)
        };
        // At most two attempts: an empty reply means a payload an earlier call stored is gone
        // (evicted, or the data was flushed) and nothing was written; the second attempt stores
        // every payload it uses.
        let mut reply = Vec::new();
        for attempt in 0..2 {
            if attempt > 0 {
                let mut cache = self
                    .inner
                    .payloads
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                for p in payloads.iter_mut().filter(|p| p.known_upto > 0) {
                    cache.forget(&p.id);
                    p.value = payload_value(&messages[p.first]);
                    p.known_upto = 0;
                }
            }
            reply = self
                .append_script(
                    limits,
                    &messages,
                    &users,
                    &message_users,
                    &bodies,
                    &payloads,
                )
                .await?;
            if !reply.is_empty() {
                break;
            }
        }
        let mut reply = reply.into_iter();
        let epoch = Epoch::new(reply.next().ok_or_else(|| corrupt("no epoch"))?);
        let outcomes = reply
            .map(|o| match o.as_str() {
                "full" => Ok(AppendOutcome::QueueFull),
                pos => parse_u64(pos, "a position").map(AppendOutcome::Stored),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if outcomes.len() != count {
            return Err(corrupt("wrong number of append outcomes"));
        }
        // What each payload's key now covers: the latest expiry of the entries stored with it.
        let mut upto: Vec<u64> = payloads.iter().map(|p| p.known_upto).collect();
        for ((m, (index, _)), outcome) in messages.iter().zip(&bodies).zip(&outcomes) {
            if *index > 0 && matches!(outcome, AppendOutcome::Stored(_)) {
                upto[index - 1] = upto[index - 1].max(m.expires_at.min(MAX_EXACT));
            }
        }
        let mut cache = self
            .inner
            .payloads
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (p, upto) in payloads.iter().zip(upto) {
            if upto > 0 {
                cache.record(&messages[p.first], &p.id, upto);
            }
        }
        drop(cache);
        Ok(Appended { epoch, outcomes })
    }

    async fn fetch(&self, request: FetchRequest) -> Result<FetchBatch, StorageError> {
        // The script adds the epoch and the confirmed cursor, which only it knows.
        let confirmed = confirmed_fields(&request)?;
        // Recorded with the client, and compared with what it recorded last.
        let namespaces = serde_json::to_string(&request.namespaces)
            .map_err(|e| StorageError::Corrupt(format!("cannot encode namespaces: {e}")))?;
        let announcement = match request.announce {
            Some(poll) => signal_json(Signal::PollStarted {
                user: request.user.clone(),
                client: request.client.clone(),
                poll,
            })?,
            None => String::new(),
        };
        let (has_cursor, cursor_epoch, cursor_pos) = match &request.cursor {
            Some((epoch, pos)) => ("1", epoch.as_str(), (*pos).min(MAX_EXACT)),
            None => ("0", "", 0),
        };
        let reply: Vec<String> = self
            .eval(&FETCH, |inv| {
                inv.arg(request.user.as_str())
                    .arg(request.client.as_str())
                    .arg(has_cursor)
                    .arg(cursor_epoch)
                    .arg(cursor_pos)
                    .arg(request.limit.min(MAX_EXACT as usize))
                    .arg(millis(request.presence_ttl))
                    .arg(reap_grace(request.presence_ttl))
                    .arg(confirmed.as_str())
                    .arg(announcement.as_str())
                    .arg(namespaces.as_str())
                    .arg(request.max_clients.min(MAX_EXACT as usize))
                    .arg(request.namespaces.len());
                for ns in &request.namespaces {
                    inv.arg(&**ns);
                }
            })
            .await?;
        if let [only] = reply.as_slice()
            && only == "limit"
        {
            return Err(Limit::ClientsPerUser(request.max_clients).into());
        }
        let mut reply = reply.into_iter();
        let epoch = Epoch::new(reply.next().ok_or_else(|| corrupt("no epoch"))?);
        let cursor = parse_u64(
            &reply.next().ok_or_else(|| corrupt("no cursor"))?,
            "a cursor",
        )?;
        let arrival = match reply.next().as_deref() {
            Some("") => None,
            Some("online") => Some(Arrival {
                user_came_online: true,
            }),
            Some("arrived") => Some(Arrival {
                user_came_online: false,
            }),
            _ => return Err(corrupt("an arrival")),
        };
        let shared = parse_payloads(&mut reply)?;
        let messages = reply
            .map(|entry| parse_entry(&entry, &shared))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FetchBatch {
            epoch,
            cursor,
            messages,
            arrival,
        })
    }

    async fn delivery(
        &self,
        epoch: &Epoch,
        targets: &[DeliveryTarget],
    ) -> Result<Vec<DeliveryState>, StorageError> {
        let reply: Vec<String> = self
            .eval(&DELIVERY, |inv| {
                inv.arg(epoch.as_str()).arg(targets.len());
                for t in targets {
                    inv.arg(t.user.as_str())
                        .arg(t.client.as_ref().map_or("", |c| c.as_str()))
                        .arg(&*t.namespace)
                        .arg(t.pos.min(MAX_EXACT));
                }
            })
            .await?;
        if reply.first().map(String::as_str) == Some("lost") {
            return Ok(vec![DeliveryState::Lost; targets.len()]);
        }
        if reply.len() != targets.len() {
            return Err(corrupt("wrong number of delivery states"));
        }
        reply
            .iter()
            .map(|s| match s.as_str() {
                "d" => Ok(DeliveryState::Delivered),
                "p" => Ok(DeliveryState::Pending),
                "e" => Ok(DeliveryState::Expired),
                _ => Err(corrupt("a delivery state")),
            })
            .collect()
    }

    async fn claim(
        &self,
        key: &DedupKey,
        owner: u64,
        limits: DedupLimits,
    ) -> Result<Claim, StorageError> {
        // PX 0 is an error in Redis; a zero lease means "gone at once" anyway.
        let lease = millis(limits.lease).max(1);
        let reply: Vec<String> = self
            .eval(&CLAIM, |inv| {
                dedup_args(inv, key);
                inv.arg(lease)
                    .arg(limits.per_client.min(MAX_EXACT as usize))
                    .arg(limits.per_user.min(MAX_EXACT as usize))
                    // As text: Lua's numbers hold 53 bits.
                    .arg(owner.to_string());
            })
            .await?;
        let mut reply = reply.into_iter();
        match (reply.next().as_deref(), reply.next()) {
            (Some("acquired"), None) => Ok(Claim::Acquired),
            (Some("progress"), Some(left)) => Ok(Claim::InProgress {
                retry_after: Duration::from_millis(parse_u64(&left, "a lease")?),
            }),
            (Some("done"), Some(outcome)) => Ok(Claim::Done(outcome)),
            (Some("limit"), Some(limit)) => {
                let limit = parse_u64(&limit, "a dedup limit")?;
                Err(Limit::DedupRecords(usize::try_from(limit).unwrap_or(usize::MAX)).into())
            }
            _ => Err(corrupt("a dedup claim")),
        }
    }

    async fn renew(
        &self,
        key: &DedupKey,
        owner: u64,
        lease: Duration,
    ) -> Result<bool, StorageError> {
        let renewed: i64 = self
            .eval(&RENEW, |inv| {
                dedup_args(inv, key);
                inv.arg(millis(lease).max(1)).arg(owner.to_string());
            })
            .await?;
        Ok(renewed == 1)
    }

    async fn complete(
        &self,
        key: &DedupKey,
        outcome: &str,
        ttl: Duration,
    ) -> Result<(), StorageError> {
        let signal = signal_json(Signal::Completed {
            user: key.user.clone(),
        })?;
        let _: i64 = self
            .eval(&COMPLETE, |inv| {
                dedup_args(inv, key);
                // 0 (or under a millisecond) forgets the record: Redis refuses `PX 0`.
                inv.arg(outcome).arg(millis(ttl)).arg(signal.as_str());
            })
            .await?;
        Ok(())
    }

    async fn live_users(&self) -> Result<Vec<UserId>, StorageError> {
        let users: Vec<String> = self.eval(&LIVE_USERS, |_| {}).await?;
        Ok(users.into_iter().map(UserId::from).collect())
    }

    async fn live_clients(&self, user: &UserId) -> Result<Vec<ClientId>, StorageError> {
        let clients: Vec<String> = self
            .eval(&LIVE_CLIENTS, |inv| {
                inv.arg(user.as_str());
            })
            .await?;
        clients.into_iter().map(parse_client).collect()
    }

    async fn reap(&self) -> Result<Vec<Departure>, StorageError> {
        let mut departures = Vec::new();
        loop {
            let reply: Vec<String> = match self
                .eval(&REAP, |inv| {
                    inv.arg(REAP_BATCH);
                })
                .await
            {
                Ok(reply) => reply,
                // Earlier batches are gone from Redis: report them now, the rest next time.
                Err(err) if !departures.is_empty() => {
                    warn!(cause = %err, "reaping stopped after a batch; will go on next time");
                    return Ok(departures);
                }
                Err(err) => return Err(err),
            };
            let (more, rest) = reply.split_first().ok_or_else(|| corrupt("no reap flag"))?;
            if rest.len() % 3 != 0 {
                return Err(corrupt("a departure"));
            }
            for d in rest.chunks_exact(3) {
                departures.push(Departure {
                    user: UserId::from(d[0].as_str()),
                    client: parse_client(d[1].clone())?,
                    user_went_offline: d[2] == "1",
                });
            }
            // Each batch is atomic on its own: what one batch removed, no other reap reports.
            if more != "1" {
                return Ok(departures);
            }
        }
    }

    async fn join(
        &self,
        room: &str,
        member: &Member,
        presence_ttl: Duration,
    ) -> Result<(), StorageError> {
        let (user, client) = member_args(member);
        let _: i64 = self
            .eval(&JOIN, |inv| {
                inv.arg(room)
                    .arg(user)
                    .arg(client)
                    .arg(millis(presence_ttl))
                    .arg(reap_grace(presence_ttl));
            })
            .await?;
        Ok(())
    }

    async fn leave(&self, room: &str, member: &Member) -> Result<(), StorageError> {
        let (user, client) = member_args(member);
        let _: i64 = self
            .eval(&LEAVE, |inv| {
                inv.arg(room).arg(user).arg(client);
            })
            .await?;
        Ok(())
    }

    async fn members(&self, room: &str) -> Result<Vec<Member>, StorageError> {
        // A page per script, so that a big room never holds Redis (nor the shared connection,
        // with its reply) for long. `SSCAN` returns every member that stays in the room
        // throughout, but one may come twice if the set is resized between pages: the set
        // keeps each once, as a room's members are distinct.
        let mut members: HashSet<Member> = HashSet::default();
        let mut cursor = String::from("0");
        loop {
            let page: Vec<String> = self
                .eval(&MEMBERS, |inv| {
                    inv.arg(room).arg(cursor.as_str()).arg(MEMBERS_PAGE);
                })
                .await?;
            let mut page = page.into_iter();
            cursor = page.next().ok_or_else(|| corrupt("no room cursor"))?;
            for m in page {
                members.insert(parse_member(&m)?);
            }
            if cursor == "0" {
                return Ok(members.into_iter().collect());
            }
        }
    }

    async fn rooms(&self, member: &Member) -> Result<Vec<Arc<str>>, StorageError> {
        let (user, client) = member_args(member);
        let rooms: Vec<String> = self
            .eval(&ROOMS, |inv| {
                inv.arg(user).arg(client);
            })
            .await?;
        Ok(rooms.into_iter().map(Arc::from).collect())
    }

    async fn set_data(
        &self,
        member: &Member,
        key: &str,
        value: Option<&str>,
        presence_ttl: Duration,
    ) -> Result<(), StorageError> {
        let (user, client) = member_args(member);
        let _: i64 = self
            .eval(&SET_DATA, |inv| {
                inv.arg(user)
                    .arg(client)
                    .arg(key)
                    .arg(if value.is_some() { "1" } else { "0" })
                    .arg(value.unwrap_or(""))
                    .arg(millis(presence_ttl))
                    .arg(reap_grace(presence_ttl));
            })
            .await?;
        Ok(())
    }

    async fn get_data(&self, member: &Member, key: &str) -> Result<Option<String>, StorageError> {
        let (user, client) = member_args(member);
        self.eval(&GET_DATA, |inv| {
            inv.arg(user).arg(client).arg(key);
        })
        .await
    }

    async fn publish(&self, signal: Signal) -> Result<(), StorageError> {
        let json = signal_json(signal)?;
        let mut conn = self.inner.conn.clone();
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(&self.inner.channel).arg(json);
        within(self.inner.deadline, publish.query_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.inner.signals.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_message(ns: &str, event: &str, data: &str) -> NewMessage {
        NewMessage {
            user: UserId::from("ann"),
            client: None,
            namespace: ns.into(),
            event: event.into(),
            data: Arc::from(RawValue::from_string(data.into()).expect("JSON")),
            expires_at: 0,
            sender: None,
            origin: None,
        }
    }

    #[test]
    fn entries_decode_with_colons_in_the_namespace_event_and_data() {
        let body = entry_body(&new_message("/a:1", "a:b:c", r#"{"x":":"}"#));
        assert_eq!(body, r#"4:/a:1:5:a:b:c{"x":":"}"#);
        let none = HashMap::new();
        let m = parse_entry(
            &format!("1700000000000001:1700000600000:tab-1:{body}"),
            &none,
        )
        .expect("valid entry");
        assert_eq!(m.pos, 1_700_000_000_000_001);
        assert_eq!(&*m.ns, "/a:1");
        assert_eq!(&*m.event, "a:b:c");
        assert_eq!(m.data.get(), r#"{"x":":"}"#);
        let m = parse_entry(
            &format!("1:2::{}", entry_body(&new_message("/", "", "1"))),
            &none,
        )
        .expect("valid entry");
        assert_eq!((&*m.ns, &*m.event, m.data.get()), ("/", "", "1"));
    }

    #[test]
    fn entries_with_a_sender_or_a_size_decode_and_entries_without_them_too() {
        assert_eq!(hex("eve:log"), "6576653a6c6f67");
        assert_eq!(sender_arg(None), "-");
        assert_eq!(sender_arg(Some(&UserId::from(""))), "");
        assert_eq!(sender_arg(Some(&UserId::from("é"))), "c3a9");
        let body = entry_body(&new_message("/", "say", "1"));
        let none = HashMap::new();
        for (entry, pos) in [
            (format!("7:9::{body}"), 7),
            (format!("8:9::=6576653a6c6f67:{body}"), 8),
            (format!("9:9:tab1:=:{body}"), 9),
            (format!("10:9::#1:{body}"), 10),
            (format!("11:9:tab1:=61:#1:{body}"), 11),
        ] {
            let m = parse_entry(&entry, &none).expect("valid entry");
            assert_eq!((m.pos, &*m.ns, &*m.event), (pos, "/", "say"));
        }
        assert_eq!(data_size(&new_message("/", "say", r#"{"t":"é"}"#)), 10);
        for bad in [
            "1:2::=zz:1:/:1:a1",
            "1:2::=61",
            "1:2::=61:",
            "1:2::#:1:/:1:a1",
            "1:2::#x:1:/:1:a1",
            "1:2::#1",
            "1:2::#1:=61:1:/:1:a1",
        ] {
            assert!(
                matches!(parse_entry(bad, &none), Err(StorageError::Corrupt(_))),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn a_fan_out_refers_its_entries_to_one_payload() {
        let shared = new_message("/chat", "say", r#"{"t":"hi"}"#);
        let mut to_bob = shared.clone();
        to_bob.user = UserId::from("bob");
        // Equal but not the same `Arc`: not known to be one fan-out, so not shared.
        let mut lookalike = shared.clone();
        lookalike.data = Arc::from(RawValue::from_string(r#"{"t":"hi"}"#.into()).expect("JSON"));
        let mut other_event = shared.clone();
        other_event.event = "shout".into();
        let messages = [shared, to_bob, lookalike, other_event];
        let (bodies, payloads) = share_payloads(&messages, &PayloadCache::default());
        assert_eq!(payloads.len(), 1);
        let (id, value) = (&payloads[0].id, &payloads[0].value);
        assert_eq!(id.len(), PAYLOAD_ID_LEN);
        assert_eq!(value, r#"3:say{"t":"hi"}"#);
        assert_eq!((payloads[0].known_upto, payloads[0].first), (0, 0));
        let reference = format!("5:/chat:*{id}");
        assert_eq!(bodies[0], (1, reference.clone()));
        assert_eq!(bodies[1], (1, reference.clone()));
        assert_eq!(bodies[2], (0, r#"5:/chat:3:say{"t":"hi"}"#.to_owned()));
        assert_eq!(bodies[3], (0, r#"5:/chat:5:shout{"t":"hi"}"#.to_owned()));

        let mut known = HashMap::new();
        known.insert(id.clone(), parse_payload(value).expect("payload"));
        let a = parse_entry(&format!("7:9::{reference}"), &known).expect("entry");
        let b = parse_entry(&format!("8:9:tab1:{reference}"), &known).expect("entry");
        assert_eq!((a.pos, &*a.ns, &*a.event), (7, "/chat", "say"));
        assert_eq!(b.data.get(), r#"{"t":"hi"}"#);
        assert!(Arc::ptr_eq(&a.data, &b.data), "one payload decoded twice");

        // The next chunk of the fan-out, even of one message, refers to the stored payload.
        let mut cache = PayloadCache::default();
        cache.record(&messages[0], id, 9);
        let mut to_cy = messages[0].clone();
        to_cy.user = UserId::from("cy");
        let (later, known) = share_payloads(&[messages[2].clone(), to_cy], &cache);
        assert_eq!(later[1], (1, reference.clone()));
        assert_eq!(
            later[0].0, 0,
            "an equal payload in another Arc is another payload"
        );
        assert_eq!(
            known,
            [SharedPayload {
                id: id.clone(),
                value: String::new(),
                known_upto: 9,
                first: 1
            }]
        );
    }

    #[test]
    fn the_payload_cache_keeps_the_latest_expiry_and_a_bounded_number() {
        let mut cache = PayloadCache::default();
        let first = new_message("/", "e", "1");
        cache.record(&first, "a", 9);
        cache.record(&first, "a", 5);
        assert_eq!(cache.find(&first).map(|c| c.upto), Some(9));
        for i in 0..PAYLOAD_CACHE {
            cache.record(&new_message("/", "e", "1"), &format!("x{i}"), 1);
        }
        assert_eq!(cache.entries.len(), PAYLOAD_CACHE);
        assert!(cache.find(&first).is_none(), "the oldest payload was kept");
        let last = cache.entries[0].data.clone();
        let m = NewMessage {
            data: last,
            ..new_message("/", "e", "1")
        };
        assert_eq!(cache.find(&m).map(|c| c.id.as_str()), Some("x15"));
        let mut other_ns = m.clone();
        other_ns.namespace = "/x".into();
        assert!(cache.find(&other_ns).is_none());
        cache.forget("x15");
        assert!(cache.find(&m).is_none());
    }

    #[test]
    fn broken_entries_are_corrupt_not_panics() {
        let mut shared = HashMap::new();
        shared.insert("known".to_owned(), parse_payload("0:1").expect("payload"));
        for bad in [
            "",
            "1:2:c",
            "x:2::1:/:1:ab",
            "1:2::1:/:9:ab",
            "1:2::9:/:1:ab",
            "1:2::1:/1:ab",
            "1:2::1:/:1:é\"",
            "1:2::1:/:0:{",
            "1:2::-1:/:1:a1",
            "1:2::1:/:+1:a1",
            "1:2::1:/:*missing",
            "1:2::1:/*known",
        ] {
            assert!(
                matches!(parse_entry(bad, &shared), Err(StorageError::Corrupt(_))),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn scripts_print_large_numbers_exactly() {
        // The prelude's `str` must not be `tostring`, which prints 1.7e+15.
        assert!(PRELUDE.contains("string.format('%.0f', n)"));
        let full = source("return GRACE_MS");
        assert!(
            !full.contains("GRACE_MS"),
            "a placeholder was left in a script"
        );
        assert!(full.ends_with("return 60000"));
    }

    #[test]
    fn a_builder_does_not_print_its_password() {
        let builder = RedisStorage::builder("redis://:hunter2@127.0.0.1/");
        assert!(!format!("{builder:?}").contains("hunter2"));
    }

    #[test]
    fn members_decode_whatever_the_user_id() {
        let tab = ClientId::new("tab-1").expect("id");
        for user in ["ann", "", "c:tab-1:ann", "u:x", "a:b:c", "ann\n:rooms"] {
            let as_user = Member::User(UserId::from(user));
            let as_client = Member::Client(UserId::from(user), tab.clone());
            let (u, c) = member_args(&as_user);
            assert_eq!(parse_member(&format!("u:{u}")).expect("user"), as_user);
            let (u, c2) = member_args(&as_client);
            assert_eq!(c, "");
            assert_eq!(
                parse_member(&format!("c:{c2}:{u}")).expect("client"),
                as_client
            );
        }
        for bad in ["", "x:ann", "c:", "c:tab", "c:bad id:ann"] {
            assert!(
                matches!(parse_member(bad), Err(StorageError::Corrupt(_))),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn client_keys_outlive_presence_by_a_generous_grace() {
        assert_eq!(reap_grace(Duration::from_secs(60)), 600_000);
        assert_eq!(reap_grace(Duration::from_secs(3600)), 7_200_000);
    }

    #[test]
    fn the_resync_signal_is_encoded_once() {
        assert_eq!(*RESYNC_JSON, r#""resync""#);
    }
}
