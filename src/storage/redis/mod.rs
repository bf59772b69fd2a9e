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
//! **Memory stays bounded.** A log never holds more than `per_user` entries or `bytes_per_user`
//! bytes of data, nor more than `per_sender` entries or `bytes_per_sender` bytes from one
//! sender, and expired entries go on the next fetch of their user (and, a call's worth at a
//! time, on appends). A user has at most `max_clients` polled clients: a fetch by a new client
//! beyond them is refused before it writes anything. Every key but the epoch and the room keys
//! carries an absolute expiry, a safety net behind `reap`: a client's keys expire a grace after
//! its seen-until (the longer of [`REAP_GRACE`](args::REAP_GRACE) and twice the presence TTL,
//! while every node reaps every quarter of the presence TTL), the global zsets a grace after
//! their newest score, and a user's keys after `meta.until` (the last message's expiry and the
//! last client's seen-until plus grace) plus `IDLE_GRACE`, so they outlive the client records
//! that need them. A sender's set takes the user's expiry whenever an entry joins it, so it
//! outlives every entry in it; the dedup sets expire (in steps) once their latest record has.
//! Only if no node reaps for a whole grace do a client's keys expire unreported; `members` then
//! drops the client from its rooms. Expiries move in steps of `EXPIRY_STEP` (later than needed,
//! never earlier), so that a busy client or user has its keys' expiries moved once a step, not
//! on every fetch and append: the client's record keeps the step its keys (and the global
//! zsets) were given (`kept`), the user's `meta` the user's (`until`).
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
//!
//! # Where the code is
//!
//! Each script is a file of `scripts/`, run after the shared `scripts/prelude.lua` (see
//! [`scripts`]). The Rust side builds their arguments ([`args`], [`entries`], [`payloads`]),
//! decodes their replies ([`parse`], [`entries`]), keeps the pub/sub connection
//! ([`signals`]) and, if asked, makes writes wait for replicas ([`replicas`]); the [`Storage`]
//! methods below put them together.

mod args;
mod builder;
#[cfg(feature = "redis-cluster")]
mod cluster;
mod entries;
mod error;
mod parse;
mod payloads;
mod replicas;
mod scripts;
mod signals;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{FromRedisValue, Script, ScriptInvocation};
use tokio::sync::broadcast;
use tracing::warn;

use self::args::{
    FetchArgs, MAX_EXACT, dedup_args, join_args, member_args, millis, sender_arg, set_data_args,
};
pub use self::builder::RedisStorageBuilder;
#[cfg(feature = "redis-cluster")]
pub use self::cluster::{RedisClusterStorage, RedisClusterStorageBuilder};
use self::entries::{data_size, payload_value};
use self::error::{corrupt, within};
use self::parse::{
    parse_appended, parse_claim, parse_client, parse_delivery, parse_fetch, parse_members_page,
    parse_reap, parse_replies, parse_reply,
};
use self::payloads::{EntryBody, PayloadCache, SharedPayload, share_payloads};
use self::replicas::{Acknowledging, Replication, invoke_acked};
use self::scripts::{
    APPEND, CLAIM, COMPLETE, DELIVERY, EPOCH, FETCH, GET_DATA, JOIN, LEAVE, LIVE_CLIENTS,
    LIVE_USERS, MEMBERS, REAP, RENEW, REPLIES, REPLY, ROOMS, SET_DATA,
};
use self::signals::{AbortOnDrop, RESYNC_JSON, json_string, signal_json};
use super::{
    AppendOutcome, Appended, Claim, DedupKey, DedupLimits, DeliveryState, DeliveryTarget,
    Departure, Epoch, FetchBatch, FetchRequest, Member, NewMessage, NewReply, QueueLimits,
    RecordedReply, ReplyLimits, ReplyOutcome, Signal, Storage, StorageError,
};
use crate::hash::HashSet;
use crate::id::{ClientId, UserId};

/// The most clients one reap script removes; `reap` runs it again while it finds more, so that
/// one script never blocks Redis for long.
const REAP_BATCH: usize = 500;

/// How many members of a room (or live users) one script reads (`SSCAN`'s and `ZSCAN`'s
/// `COUNT`, a hint: a small set comes whole); `members` and `live_users` read page after page. One `SMEMBERS` of a 100,000-member room, and the
/// reply built from it, held Redis for about 100 ms, and every other command waited; a page
/// takes a millisecond or two, less than an append of a fan-out's chunk.
const MEMBERS_PAGE: usize = 2_048;

/// Storage in Redis: share it between any number of processes behind a load balancer.
///
/// Every operation is one atomic Lua script (one round trip), but for the two whose work has
/// no bound, which run a bounded batch per script: [`Storage::members`] and [`Storage::reap`].
/// Wakeups travel over Redis pub/sub, with **one** subscribed connection per `RedisStorage`,
/// whatever the number of waiting polls. Clones share the connections.
///
/// * **Signals go to the nodes that need them.** Each `RedisStorage` is a node with a random
///   id and a channel of its own. A node receives the signals of the users it has polls of
///   (noted by its fetches) or waits for (noted by its appends, claims and delivery checks),
///   those of its own operations, and the few every node needs (resyncs, volatile messages):
///   so what one node receives follows the users it serves, not the number of nodes
///   ([`RedisStorage::signals_received`] counts them). A node's interest in a user's
///   confirmations and replies lasts 60 s from its latest append to the user, or its latest
///   check of a message still waited for (every
///   [`recheck_interval`](crate::Builder::recheck_interval), 10 s by default): with a recheck
///   interval above that, confirmations come with the rechecks. An append notes it whether
///   or not anyone awaits the message's confirmation.
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
/// one script may touch the keys of several users: for a cluster, use `RedisClusterStorage`
/// (feature `redis-cluster`), the same scripts run one hash slot at a time. Use the `noeviction` or a `volatile-*`
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
    /// What every node needs goes there (resyncs, volatile messages); the rest goes to the
    /// channels of the nodes that need it (see `signals`).
    channel: String,
    /// This handle's node id, the last argument of every script: its channel is
    /// `prefix + "n:" + node`.
    node: String,
    /// Signals this node's pub/sub connection received.
    received: Arc<AtomicU64>,
    /// Signals from the pub/sub connection, handed out by `subscribe`.
    signals: broadcast::Sender<Signal>,
    /// The most an operation may take, reconnecting included: connect + response timeouts.
    deadline: Duration,
    /// Replicas that must hold an acknowledged write before its operation returns, and the
    /// connections such writes go over; `None`: Redis's asynchronous replication (see
    /// [`replicas`]).
    acknowledging: Option<Acknowledging<ConnectionManager>>,
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
        RedisStorageBuilder::new(url.into())
    }

    /// The prefix of this storage's keys.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// How many signals this node has received from Redis since it connected.
    ///
    /// A node receives the signals of the users it has polls of or waits for (their new
    /// messages, confirmations, replies), those of its own operations, and the ones every node
    /// needs (resyncs, volatile messages): not every node's. So what each node receives per
    /// message stays the same as nodes are added. A figure to watch, or to compare nodes by.
    pub fn signals_received(&self) -> u64 {
        self.inner.received.load(Ordering::Relaxed)
    }

    /// Runs one of the [`scripts`] with the leading arguments they all take (see `PRELUDE`).
    /// An [acknowledged](Replication::Acknowledged) script returns once replicas hold its
    /// write, if the storage asks for that (see [`replicas`]).
    async fn eval<T: FromRedisValue>(
        &self,
        script: &Script,
        replication: Replication,
        args: impl FnOnce(&mut ScriptInvocation<'_>),
    ) -> Result<T, StorageError> {
        let mut invocation = script.prepare_invoke();
        invocation
            .arg(&self.inner.prefix)
            .arg(Epoch::random().as_str())
            .arg(RESYNC_JSON.as_str());
        args(&mut invocation);
        // Last, whatever the script's own arguments: the prelude reads it as `ARGV[#ARGV]`.
        invocation.arg(&self.inner.node);
        match self
            .inner
            .acknowledging
            .as_ref()
            .filter(|_| replication == Replication::Acknowledged)
        {
            Some(acknowledging) => {
                let mut conn = acknowledging.connection();
                let acked = async {
                    let reply = invoke_acked(&mut conn, &invocation, acknowledging.acks).await?;
                    T::from_redis_value(reply).map_err(redis::RedisError::from)
                };
                within(self.inner.deadline, acked).await
            }
            None => {
                let mut conn = self.inner.conn.clone();
                within(self.inner.deadline, invocation.invoke_async(&mut conn)).await
            }
        }
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
        self.eval(&APPEND, Replication::Acknowledged, |inv| {
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

#[async_trait]
impl Storage for RedisStorage {
    async fn epoch(&self) -> Result<Epoch, StorageError> {
        let epoch: String = self.eval(&EPOCH, Replication::Asynchronous, |_| {}).await?;
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
        let appended = parse_appended(reply, count)?;
        // What each payload's key now covers: the latest expiry of the entries stored with it.
        let mut upto: Vec<u64> = payloads.iter().map(|p| p.known_upto).collect();
        for ((m, (index, _)), outcome) in messages.iter().zip(&bodies).zip(&appended.outcomes) {
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
        Ok(appended)
    }

    async fn fetch(&self, request: FetchRequest) -> Result<FetchBatch, StorageError> {
        let args = FetchArgs::new(&request)?;
        let reply: Vec<String> = self
            .eval(&FETCH, Replication::Asynchronous, |inv| {
                args.push(inv, &request)
            })
            .await?;
        parse_fetch(reply, request.max_clients)
    }

    async fn delivery(
        &self,
        epoch: &Epoch,
        targets: &[DeliveryTarget],
    ) -> Result<Vec<DeliveryState>, StorageError> {
        let reply: Vec<String> = self
            .eval(&DELIVERY, Replication::Asynchronous, |inv| {
                inv.arg(epoch.as_str()).arg(targets.len());
                for t in targets {
                    inv.arg(t.user.as_str())
                        .arg(t.client.as_ref().map_or("", |c| c.as_str()))
                        .arg(&*t.namespace)
                        .arg(t.pos.min(MAX_EXACT));
                }
            })
            .await?;
        parse_delivery(reply, targets.len())
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
            .eval(&CLAIM, Replication::Acknowledged, |inv| {
                dedup_args(inv, key);
                inv.arg(lease)
                    .arg(limits.per_client.min(MAX_EXACT as usize))
                    .arg(limits.per_user.min(MAX_EXACT as usize))
                    // As text: Lua's numbers hold 53 bits.
                    .arg(owner.to_string());
            })
            .await?;
        parse_claim(reply)
    }

    async fn renew(
        &self,
        key: &DedupKey,
        owner: u64,
        lease: Duration,
    ) -> Result<bool, StorageError> {
        let renewed: i64 = self
            .eval(&RENEW, Replication::Asynchronous, |inv| {
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
            .eval(&COMPLETE, Replication::Acknowledged, |inv| {
                dedup_args(inv, key);
                // 0 (or under a millisecond) forgets the record: Redis refuses `PX 0`.
                inv.arg(outcome).arg(millis(ttl)).arg(signal.as_str());
            })
            .await?;
        Ok(())
    }

    async fn live_users(&self) -> Result<Vec<UserId>, StorageError> {
        // A page per script, as for a room's members: 100,000 live users are never one reply.
        // `ZSCAN` may return one twice if the index is resized between pages.
        let mut users: HashSet<UserId> = HashSet::default();
        let mut cursor = String::from("0");
        loop {
            let mut page: Vec<String> = self
                .eval(&LIVE_USERS, Replication::Asynchronous, |inv| {
                    inv.arg(cursor.as_str()).arg(MEMBERS_PAGE);
                })
                .await?;
            if page.is_empty() {
                return Err(corrupt("a live-users page without a cursor"));
            }
            cursor = page.remove(0);
            users.extend(page.into_iter().map(UserId::from));
            if cursor == "0" {
                return Ok(users.into_iter().collect());
            }
        }
    }

    async fn live_clients(&self, user: &UserId) -> Result<Vec<ClientId>, StorageError> {
        let clients: Vec<String> = self
            .eval(&LIVE_CLIENTS, Replication::Asynchronous, |inv| {
                inv.arg(user.as_str());
            })
            .await?;
        clients.into_iter().map(parse_client).collect()
    }

    async fn reap(&self) -> Result<Vec<Departure>, StorageError> {
        let mut departures = Vec::new();
        loop {
            let reply: Vec<String> = match self
                .eval(&REAP, Replication::Asynchronous, |inv| {
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
            let more = parse_reap(&reply, &mut departures)?;
            // Each batch is atomic on its own: what one batch removed, no other reap reports.
            if !more {
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
        let _: i64 = self
            .eval(&JOIN, Replication::Acknowledged, |inv| {
                join_args(inv, room, member, presence_ttl);
            })
            .await?;
        Ok(())
    }

    async fn leave(&self, room: &str, member: &Member) -> Result<(), StorageError> {
        let (user, client) = member_args(member);
        let _: i64 = self
            .eval(&LEAVE, Replication::Acknowledged, |inv| {
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
                .eval(&MEMBERS, Replication::Asynchronous, |inv| {
                    inv.arg(room).arg(cursor.as_str()).arg(MEMBERS_PAGE);
                })
                .await?;
            cursor = parse_members_page(page, &mut members)?;
            if cursor == "0" {
                return Ok(members.into_iter().collect());
            }
        }
    }

    async fn rooms(&self, member: &Member) -> Result<Vec<Arc<str>>, StorageError> {
        let (user, client) = member_args(member);
        let rooms: Vec<String> = self
            .eval(&ROOMS, Replication::Asynchronous, |inv| {
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
        let _: i64 = self
            .eval(&SET_DATA, Replication::Acknowledged, |inv| {
                set_data_args(inv, member, key, value, presence_ttl);
            })
            .await?;
        Ok(())
    }

    async fn get_data(&self, member: &Member, key: &str) -> Result<Option<String>, StorageError> {
        let (user, client) = member_args(member);
        self.eval(&GET_DATA, Replication::Asynchronous, |inv| {
            inv.arg(user).arg(client).arg(key);
        })
        .await
    }

    async fn reply(
        &self,
        reply: NewReply,
        limits: ReplyLimits,
    ) -> Result<ReplyOutcome, StorageError> {
        // The signal as serde writes it, with the epoch left for the script to put in.
        let signal = signal_json(Signal::Replied {
            epoch: Epoch::new(""),
            user: reply.user.clone(),
            pos: reply.pos,
            client: reply.client.clone(),
            data: reply.data.clone(),
        })?;
        let tail = signal
            .strip_prefix(r#"{"replied":{"epoch":"","#)
            .ok_or_else(|| corrupt("the form of a Replied signal"))?
            .to_owned();
        let outcome: String = self
            .eval(&REPLY, Replication::Acknowledged, |inv| {
                inv.arg(reply.user.as_str())
                    .arg(reply.client.as_str())
                    .arg(reply.pos.min(MAX_EXACT))
                    .arg(reply.data.get())
                    .arg(limits.per_message.min(MAX_EXACT as usize))
                    .arg(limits.bytes_per_user.min(MAX_EXACT as usize))
                    .arg(tail);
            })
            .await?;
        parse_reply(outcome)
    }

    async fn replies(
        &self,
        epoch: &Epoch,
        targets: &[DeliveryTarget],
    ) -> Result<Vec<Vec<RecordedReply>>, StorageError> {
        let reply: Vec<String> = self
            .eval(&REPLIES, Replication::Asynchronous, |inv| {
                inv.arg(epoch.as_str()).arg(targets.len());
                for t in targets {
                    inv.arg(t.user.as_str()).arg(t.pos.min(MAX_EXACT));
                }
            })
            .await?;
        parse_replies(reply, targets.len())
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
