//! [`RedisClusterStorage`]: the [`Storage`] contract on a Redis Cluster, for many processes and
//! more data, or more load, than one Redis server holds.
//!
//! # Design
//!
//! It is [`RedisStorage`](super::RedisStorage) cut along hash slots: the same keys, the same
//! Lua scripts (the same files, see [`scripts`]), each script run in **one slot**, and the
//! storage doing in Rust only what crosses slots.
//!
//! **Buckets.** Users are spread over [`BUCKETS`](buckets::BUCKETS) buckets by the CRC16 of their
//! id; every key of bucket N starts with `{P}{N}` (see [`buckets`]), so the hash tag `{N}` puts
//! the whole bucket in one slot. All of a user's keys — log, indexes, meta, watermarks, client
//! records, data, dedup records, ack records, replies — are in the user's bucket, so every
//! per-user script is one slot, as Redis Cluster requires. What one server kept once for all
//! users is kept per bucket, as the single-server scripts already build it from their prefix:
//!
//! | single server        | cluster                                                              |
//! |----------------------|----------------------------------------------------------------------|
//! | `{P}epoch`           | `{P}{N}epoch` per bucket, copies of the cluster's `{P}{epoch}epoch`   |
//! | `{P}presence`        | `{P}{N}presence`: the clients of the bucket's users                   |
//! | `{P}live`            | `{P}{N}live`: the bucket's live users                                 |
//! | `{P}p:ID`            | `{P}{N}p:ID`: a fan-out's payload, once per bucket it reaches         |
//! | `{P}room:ROOM`       | `{P}{R}room:ROOM`, R the bucket of the room's name                    |
//! | `{P}signals`, `n:ID` | sharded channels, `SPUBLISH`ed by the storage after the script        |
//!
//! **Many users, many slots.** An append groups its messages by bucket and runs one append
//! script per bucket, all at once: the cluster client pipelines them over its connection to each
//! master. So does a delivery or a replies check. `reap` and `live_users` run their script in
//! every bucket (a few hundred on each master, pipelined, each `O(log n)` when it finds
//! nothing).
//!
//! **Rooms** live in their own bucket, their members' reverse indexes in the members'. A script
//! cannot write both, so `join`, `leave` and `reap` *defer* the room's `SADD`/`SREM`: the script
//! (in the member's bucket) returns it and the storage sends it to the room's slot next. A join
//! writes the member's index first and the room second, a leave or a reap the same order: a
//! crash in between leaves at worst a client in a room it is no longer indexed in, which
//! `members` drops once the client has no presence record (it checks client members' presence
//! in their buckets, a pipelined `ZMSCORE` per bucket per page).
//!
//! **Signals** are the single server's, addressed to the same node channels, but sent with
//! sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7): a message goes to the shard that owns the
//! channel's slot, not to every node of the cluster as `PUBLISH` does. A script cannot
//! `SPUBLISH` to a channel outside its own slot, so the scripts' `PUBLISH`es are deferred like
//! the room writes and sent right after the script, before the operation returns: a signal
//! still follows the write it announces, a few hundred microseconds later than on one server.
//! An append over many buckets sends one `Appended` per node for the whole call, naming all its
//! users, as on one server. Each node subscribes to its own channel and to `{P}signals` on a
//! separate RESP3 connection; it probes its own channel every few seconds and subscribes again
//! (with a [`Signal::Resync`]) if the probe does not come back — after a failover or a slot
//! migration moved the channel — and resyncs whenever the client reconnects.
//!
//! **The epoch.** The rule is the single server's: data lost ⇒ a new epoch, never silently
//! empty data under the old one. In a cluster data is lost per shard (a master restarted
//! empty without a replica, a flush of one node), so each bucket keeps its copy of the epoch,
//! `{P}{N}epoch`, written when the epoch was made and never expiring: a bucket whose copy is
//! gone lost its data with it. A script never makes an epoch (it cannot tell the others): it
//! fails with `NOEPOCH` before writing anything, and the storage makes a new epoch for the
//! whole cluster, writes it to every bucket and then to `{P}{epoch}epoch`, publishes a resync,
//! and runs the operation again. Epochs are written `GEN.RANDOM`, and a key only ever takes a
//! later one (a higher generation, ties by text; see [`epoch`]), so two nodes renewing at once
//! end with the same epoch everywhere. While a renewal is spreading, the buckets of one call
//! may answer with two epochs: an append then spreads the later and reports it (its messages
//! are kept, under the new epoch), and a delivery or replies check asked about the old one
//! reports it lost, as it would after the renewal.
//!
//! # What is not as on one server
//!
//! * An append to users of several buckets is one atomic script per bucket, not one for the
//!   call: if one bucket's script fails, the call fails though the others stored their
//!   messages (as any networked send can fail after storing; a send with an
//!   [`origin`](crate::storage::NewMessage::origin) is then stored once when retried).
//! * Redis replication is asynchronous: by default a failover can lose the last writes a
//!   master acknowledged, and the epoch survives it. That is Redis's guarantee, the same as a
//!   single server with a replica; a shard that comes back *empty* gives a new epoch. With
//!   [`replica_acks`](RedisClusterStorageBuilder::replica_acks), the writes others act on are
//!   sent with a `WAIT` and return once replicas hold them (see [`replicas`]).
//! * A script's signals are published right after it, not inside it, so two operations that
//!   end at nearly the same time may have their signals arrive in the other order. The one
//!   rule that order serves: a poll ended by a newer poll of the same client started while its
//!   own fetch was still finishing may not be told, and then lasts its hold (it answers empty;
//!   nothing is lost, but it holds one of the user's polls until then).
//! * Needs Redis 7 (sharded pub/sub), with the `noeviction` or a `volatile-*` policy on every
//!   node (the epoch copies and rooms have no TTL).

mod buckets;
mod builder;
mod effects;
mod epoch;
mod replicas;
mod scripts;
mod signals;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::future::join_all;
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, Script, ScriptInvocation, Value};
use tokio::sync::broadcast;
use tracing::warn;

use self::buckets::{BUCKETS, bucket_of, bucket_prefix};
pub use self::builder::RedisClusterStorageBuilder;
use self::effects::{Effect, merge_signals, split_reply};
use self::replicas::SlotMaster;
use self::scripts::{
    APPEND, CLAIM, COMPLETE, DELIVERY, FETCH, GET_DATA, JOIN, LEAVE, LIVE_CLIENTS, LIVE_USERS,
    REAP, RENEW, REPLIES, REPLY, ROOMS, SET_DATA,
};
use super::args::{
    FetchArgs, MAX_EXACT, dedup_args, join_args, member_args, millis, sender_arg, set_data_args,
};
use super::entries::{data_size, payload_value};
use super::error::{corrupt, storage_error, within};
use super::parse::{
    parse_appended, parse_claim, parse_client, parse_delivery, parse_fetch, parse_members_page,
    parse_reap, parse_replies, parse_reply,
};
use super::payloads::{PayloadCache, share_payloads};
use super::replicas::{Acknowledging, Replication, invoke_acked, write_acked};
use super::signals::{AbortOnDrop, json_string, signal_json};
use super::{MEMBERS_PAGE, REAP_BATCH};
use crate::hash::HashSet;
use crate::id::{ClientId, UserId};
use crate::storage::{
    AppendOutcome, Appended, Claim, DedupKey, DedupLimits, DeliveryState, DeliveryTarget,
    Departure, Epoch, FetchBatch, FetchRequest, Member, NewMessage, QueueLimits, RecordedReply,
    ReplyLimits, ReplyOutcome, Signal, Storage, StorageError,
};

/// How many bucket scripts one operation has in flight at once (`reap`, `live_users`, the
/// epoch's spread, a large append): enough to keep every master's pipeline full, few enough
/// that one operation does not queue thousands of requests ahead of the others.
const IN_FLIGHT: usize = 64;

/// Storage in a Redis Cluster: share it between any number of processes, with the data and the
/// load spread over the cluster's masters.
///
/// Everything [`RedisStorage`](super::RedisStorage) says of signals, presence, rooms, memory
/// bounds and outages holds: it runs the same Lua scripts, each in one hash slot.
///
/// * **Each user is one slot.** Users are spread over 1,024 buckets by the CRC16 of their id,
///   and every key of a bucket starts with the prefix and the bucket's hash tag (`{P}{N}`), so
///   each user's operations are one atomic script on the user's master.
/// * **Many users, many slots.** A fan-out, a delivery or a replies check runs one script per
///   bucket it reaches, all at once, pipelined per master; [`Storage::reap`] and
///   [`Storage::live_users`] run one per bucket. A fan-out's payload is stored once per bucket
///   it reaches.
/// * **Signals** go over sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`), to the shard of each
///   node's channel only, sent right after the script that decided them; an append call still
///   wakes each node once. A node probes its subscription every few seconds and subscribes
///   again (and resyncs) if a failover or a slot migration moved its channel.
/// * **Rooms** are sets in their own bucket; a join or leave writes the member's index, then
///   the room.
/// * **The epoch** has a copy in every bucket, with no TTL: a shard that comes back empty gives
///   the whole cluster a new [`Epoch`], so clients resync and senders of unconfirmed messages
///   learn they were lost, while the other shards' messages stay.
/// * **Not one atomic step across buckets:** if one bucket's script of an append fails, the
///   call fails after the others stored theirs (a send with an
///   [`origin`](crate::storage::NewMessage::origin) is stored once when retried). A failover
///   may lose the last writes a master acknowledged, as Redis replication is asynchronous,
///   unless they wait for replicas
///   ([`replica_acks`](RedisClusterStorageBuilder::replica_acks)).
///
/// The guide's "One Redis or a Redis Cluster" says when to move to a cluster and what it
/// costs.
///
/// Needs Redis 7 or later in cluster mode (`cluster-enabled yes`), for sharded pub/sub.
///
/// ```no_run
/// use simpleio::{RedisClusterStorage, SimpleIoLayer};
/// # async fn run() -> Result<(), simpleio::storage::StorageError> {
/// let storage = RedisClusterStorage::builder(["redis://10.0.0.1:6379/", "redis://10.0.0.2:6379/"])
///     .key_prefix("chat:")
///     .connect()
///     .await?;
/// let (layer, io) = SimpleIoLayer::builder().storage(storage).build();
/// # let _ = (layer, io);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisClusterStorage {
    inner: Arc<Inner>,
}

struct Inner {
    /// Commands go over the cluster client, which routes each by its key's slot and follows
    /// the cluster's changes (`MOVED`, failovers) by itself.
    conn: ClusterConnection,
    /// The first part of every key and channel; never contains `{` or `}`.
    prefix: String,
    /// This handle's node id, the last argument of every script: its channel is
    /// `prefix + "n:" + node`.
    node: String,
    /// Signals this node's subscription received.
    received: Arc<AtomicU64>,
    /// Signals from the subscription, handed out by `subscribe`.
    signals: broadcast::Sender<Signal>,
    /// The most one command may take, reconnecting included.
    deadline: Duration,
    /// Replicas that must hold an acknowledged write before its operation returns, and the
    /// cluster connections such writes go over; `None`: Redis's asynchronous replication (see
    /// [`replicas`]).
    acknowledging: Option<Acknowledging<ClusterConnection>>,
    /// Per bucket, the payloads of the latest fan-outs stored there (see `PayloadCache`).
    payloads: Mutex<Vec<PayloadCache>>,
    /// The task reading the subscription; stops with the last handle.
    _subscriber: AbortOnDrop,
}

impl fmt::Debug for RedisClusterStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisClusterStorage")
            .field("key_prefix", &self.inner.prefix)
            .field("deadline", &self.inner.deadline)
            .field(
                "replica_acks",
                &self.inner.acknowledging.as_ref().map(|a| a.acks),
            )
            .finish_non_exhaustive()
    }
}

/// One bucket's part of an append: the indexes of its messages in the call, and its outcome.
type BucketAppend = (Vec<usize>, Result<(Appended, Vec<Effect>), StorageError>);

impl RedisClusterStorage {
    /// A builder for a storage on the cluster that the nodes at `urls` belong to (any of its
    /// nodes will do: the client learns the rest), to set the key prefix and timeouts.
    pub fn builder<I, S>(urls: I) -> RedisClusterStorageBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisClusterStorageBuilder::new(urls.into_iter().map(Into::into).collect())
    }

    /// Connects to the cluster that the nodes at `urls` belong to, with the default settings.
    pub async fn connect<I, S>(urls: I) -> Result<Self, StorageError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::builder(urls).connect().await
    }

    /// The prefix of this storage's keys.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// How many signals this node has received since it connected (see
    /// [`RedisStorage::signals_received`](super::RedisStorage::signals_received)).
    pub fn signals_received(&self) -> u64 {
        self.inner.received.load(Ordering::Relaxed)
    }

    /// The key of a room's member set, in the room's bucket.
    fn room_key(&self, room: &str) -> String {
        format!(
            "{}room:{room}",
            bucket_prefix(&self.inner.prefix, bucket_of(room))
        )
    }

    /// Runs one of the [`scripts`] in `bucket`, and carries out what it deferred.
    async fn eval_in<T: FromRedisValue>(
        &self,
        bucket: usize,
        script: &Script,
        replication: Replication,
        args: impl Fn(&mut ScriptInvocation<'_>),
    ) -> Result<T, StorageError> {
        let (reply, effects) = self
            .eval_deferred(bucket, script, replication, args)
            .await?;
        self.apply(effects, replication).await?;
        Ok(reply)
    }

    /// Runs one of the [`scripts`] in `bucket` with the leading arguments they all take (the
    /// bucket's prefix first), and returns its reply and what it deferred. A bucket with no
    /// epoch (`NOEPOCH`: the script wrote nothing) gets one, and the script runs again. An
    /// [acknowledged](Replication::Acknowledged) script returns once replicas hold its write,
    /// if the storage asks for that.
    async fn eval_deferred<T: FromRedisValue>(
        &self,
        bucket: usize,
        script: &Script,
        replication: Replication,
        args: impl Fn(&mut ScriptInvocation<'_>),
    ) -> Result<(T, Vec<Effect>), StorageError> {
        let prefix = bucket_prefix(&self.inner.prefix, bucket);
        // The bucket's epoch key routes the script to the bucket's slot.
        let key = format!("{prefix}epoch");
        let acknowledging = self
            .inner
            .acknowledging
            .as_ref()
            .filter(|_| replication == Replication::Acknowledged);
        let mut recovered = false;
        loop {
            let mut invocation = script.key(&key);
            // The single-server prelude's new-epoch arguments: unused here (see `scripts`).
            invocation.arg(&prefix).arg("-").arg("-");
            args(&mut invocation);
            invocation.arg(&self.inner.node);
            let run = async {
                match acknowledging {
                    Some(acknowledging) => {
                        let mut conn = acknowledging.connection();
                        let mut master = SlotMaster {
                            conn: &mut conn,
                            key: &key,
                        };
                        invoke_acked(&mut master, &invocation, acknowledging.acks).await
                    }
                    None => {
                        let mut conn = self.inner.conn.clone();
                        invocation.invoke_async::<Value>(&mut conn).await
                    }
                }
            };
            match tokio::time::timeout(self.inner.deadline, run).await {
                Ok(Ok(reply)) => return split_reply(reply),
                Ok(Err(err)) if err.code() == Some("NOEPOCH") && !recovered => {
                    recovered = true;
                    self.recover_epoch(bucket).await?;
                }
                Ok(Err(err)) => return Err(storage_error(err)),
                Err(_) => {
                    return Err(StorageError::Unavailable(format!(
                        "Redis did not answer within {:?}",
                        self.inner.deadline
                    )));
                }
            }
        }
    }

    /// Carries out what scripts deferred: room writes (their failure fails the operation,
    /// which may be retried: they are idempotent) and signals (a failure is only logged:
    /// signals are wakeups, waiters recheck anyway, and the write they announce is made).
    /// Room writes are acknowledged by replicas with `replication`, the deferring script's.
    async fn apply(
        &self,
        mut effects: Vec<Effect>,
        replication: Replication,
    ) -> Result<(), StorageError> {
        if effects.is_empty() {
            return Ok(());
        }
        merge_signals(&mut effects)?;
        let mut rooms = Vec::new();
        let mut signals = Vec::new();
        for effect in effects {
            match effect {
                Effect::Publish { channel, json } => {
                    signals.push(self.spublish(format!("{}{channel}", self.inner.prefix), json));
                }
                Effect::RoomAdd { room, member } => {
                    rooms.push(self.room_write("SADD", self.room_key(&room), member, replication));
                }
                Effect::RoomRemove { room, member } => {
                    rooms.push(self.room_write("SREM", self.room_key(&room), member, replication));
                }
            }
        }
        let (signals, rooms) = tokio::join!(join_all(signals), join_all(rooms));
        for sent in signals {
            if let Err(err) = sent {
                warn!(cause = %err, "a signal was not published; waiters will recheck");
            }
        }
        rooms.into_iter().collect()
    }

    /// A room's `SADD` or `SREM`, deferred by a join, a leave or a reap: acknowledged by
    /// replicas if the script that deferred it is.
    async fn room_write(
        &self,
        command: &str,
        key: String,
        member: String,
        replication: Replication,
    ) -> Result<(), StorageError> {
        let mut cmd = redis::cmd(command);
        cmd.arg(&key).arg(member);
        match self
            .inner
            .acknowledging
            .as_ref()
            .filter(|_| replication == Replication::Acknowledged)
        {
            Some(acknowledging) => {
                let mut conn = acknowledging.connection();
                let mut master = SlotMaster {
                    conn: &mut conn,
                    key: &key,
                };
                let write = write_acked(&mut master, cmd, acknowledging.acks);
                within(self.inner.deadline, write).await
            }
            None => {
                let mut conn = self.inner.conn.clone();
                within(self.inner.deadline, cmd.query_async::<i64>(&mut conn)).await?;
                Ok(())
            }
        }
    }

    /// `SPUBLISH`: to the shard that owns the channel's slot, and its subscribers only.
    async fn spublish(&self, channel: String, json: String) -> Result<(), StorageError> {
        let mut conn = self.inner.conn.clone();
        let mut cmd = redis::cmd("SPUBLISH");
        cmd.arg(channel).arg(json);
        within(self.inner.deadline, cmd.query_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    /// One bucket's share of an append: the single server's append, with the bucket's cache
    /// of shared payloads (see `RedisStorage::append`).
    async fn append_bucket(
        &self,
        bucket: usize,
        messages: Vec<NewMessage>,
        limits: QueueLimits,
    ) -> Result<(Appended, Vec<Effect>), StorageError> {
        let count = messages.len();
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
            let caches = self
                .inner
                .payloads
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            share_payloads(&messages, &caches[bucket])
        };
        let mut reply: Vec<String> = Vec::new();
        let mut effects = Vec::new();
        for attempt in 0..2 {
            if attempt > 0 {
                let mut caches = self
                    .inner
                    .payloads
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                for p in payloads.iter_mut().filter(|p| p.known_upto > 0) {
                    caches[bucket].forget(&p.id);
                    p.value = payload_value(&messages[p.first]);
                    p.known_upto = 0;
                }
            }
            (reply, effects) = self
                .eval_deferred(bucket, &APPEND, Replication::Acknowledged, |inv| {
                    inv.arg(limits.per_user.min(MAX_EXACT as usize))
                        .arg(limits.per_sender.min(MAX_EXACT as usize))
                        .arg(limits.bytes_per_user.min(MAX_EXACT as usize))
                        .arg(limits.bytes_per_sender.min(MAX_EXACT as usize))
                        .arg(users.len())
                        .arg(payloads.len())
                        .arg(messages.len());
                    for (user, json) in &users {
                        inv.arg(*user).arg(json.as_str());
                    }
                    for p in &payloads {
                        inv.arg(p.id.as_str())
                            .arg(p.known_upto)
                            .arg(p.value.as_str());
                    }
                    for ((m, user), (payload, body)) in
                        messages.iter().zip(&message_users).zip(&bodies)
                    {
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
                .await?;
            if !reply.is_empty() {
                break;
            }
        }
        let appended = parse_appended(reply, count)?;
        let mut upto: Vec<u64> = payloads.iter().map(|p| p.known_upto).collect();
        for ((m, (index, _)), outcome) in messages.iter().zip(&bodies).zip(&appended.outcomes) {
            if *index > 0 && matches!(outcome, AppendOutcome::Stored(_)) {
                upto[index - 1] = upto[index - 1].max(m.expires_at.min(MAX_EXACT));
            }
        }
        let mut caches = self
            .inner
            .payloads
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (p, upto) in payloads.iter().zip(upto) {
            if upto > 0 {
                caches[bucket].record(&messages[p.first], &p.id, upto);
            }
        }
        drop(caches);
        Ok((appended, effects))
    }

    /// Groups `targets` by their user's bucket, runs `script` once per bucket (with the epoch
    /// asked about, the count, then `per_target`'s arguments), and puts the replies back in the
    /// targets' order with `parse`. Any bucket under another epoch makes the whole answer
    /// `None` (lost), as the single server's script answers for all.
    async fn per_bucket<R>(
        &self,
        script: &Script,
        epoch: &Epoch,
        targets: &[DeliveryTarget],
        per_target: impl Fn(&mut ScriptInvocation<'_>, &DeliveryTarget) + Copy,
        parse: impl Fn(Vec<String>, usize) -> Result<Option<Vec<R>>, StorageError> + Copy,
    ) -> Result<Option<Vec<R>>, StorageError> {
        let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, t) in targets.iter().enumerate() {
            groups
                .entry(bucket_of(t.user.as_str()))
                .or_default()
                .push(i);
        }
        let runs = groups.into_iter().map(|(bucket, indexes)| async move {
            let reply: Vec<String> = self
                .eval_in(bucket, script, Replication::Asynchronous, |inv| {
                    inv.arg(epoch.as_str()).arg(indexes.len());
                    for &i in &indexes {
                        per_target(inv, &targets[i]);
                    }
                })
                .await?;
            Ok::<_, StorageError>((indexes.clone(), parse(reply, indexes.len())?))
        });
        let mut out: Vec<Option<R>> = (0..targets.len()).map(|_| None).collect();
        let mut results = futures_util::stream::iter(runs).buffer_unordered(IN_FLIGHT);
        let mut lost = false;
        while let Some(result) = results.next().await {
            match result? {
                (_, None) => lost = true,
                (indexes, Some(states)) => {
                    for (i, state) in indexes.into_iter().zip(states) {
                        out[i] = Some(state);
                    }
                }
            }
        }
        if lost {
            return Ok(None);
        }
        out.into_iter()
            .map(|s| s.ok_or_else(|| corrupt("a target without an answer")))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Each bucket's live users, a page at a time (see `RedisStorage::live_users`).
    async fn live_users_in(&self, bucket: usize) -> Result<Vec<String>, StorageError> {
        let mut users = Vec::new();
        let mut cursor = String::from("0");
        loop {
            let mut page: Vec<String> = self
                .eval_in(bucket, &LIVE_USERS, Replication::Asynchronous, |inv| {
                    inv.arg(cursor.as_str()).arg(MEMBERS_PAGE);
                })
                .await?;
            if page.is_empty() {
                return Err(corrupt("a live-users page without a cursor"));
            }
            cursor = page.remove(0);
            users.extend(page);
            if cursor == "0" {
                return Ok(users);
            }
        }
    }

    /// Reaps one bucket, a batch per script, as `RedisStorage::reap` reaps the server. The
    /// room removals each batch deferred are made after it; if one fails, the room keeps a
    /// client with no presence, which `members` drops.
    async fn reap_bucket(
        &self,
        bucket: usize,
        departures: &mut Vec<Departure>,
    ) -> Result<(), StorageError> {
        loop {
            let (reply, effects): (Vec<String>, _) = self
                .eval_deferred(bucket, &REAP, Replication::Asynchronous, |inv| {
                    inv.arg(REAP_BATCH);
                })
                .await?;
            let more = parse_reap(&reply, departures)?;
            if let Err(err) = self.apply(effects, Replication::Asynchronous).await {
                warn!(cause = %err, "a reaped client's room membership was not removed");
            }
            if !more {
                return Ok(());
            }
        }
    }

    /// Drops from `page` (room members as written) the clients with no presence record: they
    /// expired without being reaped (see `members.lua`), so they are gone, and so is their
    /// membership, which is removed from the room. Clients are looked up in their users'
    /// buckets, one `ZMSCORE` per bucket.
    async fn drop_departed(
        &self,
        room_key: &str,
        page: Vec<String>,
    ) -> Result<Vec<String>, StorageError> {
        let mut by_bucket: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, m) in page.iter().enumerate() {
            if let Some(user) = m
                .strip_prefix("c:")
                .and_then(|r| r.split_once(':'))
                .map(|(_, u)| u)
            {
                by_bucket.entry(bucket_of(user)).or_default().push(i);
            }
        }
        if by_bucket.is_empty() {
            return Ok(page);
        }
        let checks = by_bucket.into_iter().map(|(bucket, indexes)| {
            let page = &page;
            async move {
                let mut cmd = redis::cmd("ZMSCORE");
                cmd.arg(format!(
                    "{}presence",
                    bucket_prefix(&self.inner.prefix, bucket)
                ));
                for &i in &indexes {
                    cmd.arg(&page[i]);
                }
                let mut conn = self.inner.conn.clone();
                let scores: Vec<Option<f64>> =
                    within(self.inner.deadline, cmd.query_async(&mut conn)).await?;
                Ok::<_, StorageError>(
                    indexes
                        .into_iter()
                        .zip(scores)
                        .filter(|(_, s)| s.is_none())
                        .map(|(i, _)| i)
                        .collect::<Vec<_>>(),
                )
            }
        });
        let mut gone = std::collections::HashSet::new();
        for checked in join_all(checks).await {
            gone.extend(checked?);
        }
        if gone.is_empty() {
            return Ok(page);
        }
        let mut kept = Vec::with_capacity(page.len());
        let mut srem = redis::cmd("SREM");
        srem.arg(room_key);
        for (i, m) in page.into_iter().enumerate() {
            if gone.contains(&i) {
                srem.arg(m);
            } else {
                kept.push(m);
            }
        }
        let mut conn = self.inner.conn.clone();
        within(self.inner.deadline, srem.query_async::<i64>(&mut conn)).await?;
        Ok(kept)
    }
}

#[async_trait]
impl Storage for RedisClusterStorage {
    async fn epoch(&self) -> Result<Epoch, StorageError> {
        self.cluster_epoch().await
    }

    async fn append(
        &self,
        messages: Vec<NewMessage>,
        limits: QueueLimits,
    ) -> Result<Appended, StorageError> {
        let count = messages.len();
        if count == 0 {
            return Ok(Appended {
                epoch: self.cluster_epoch().await?,
                outcomes: Vec::new(),
                deepest: Some(0),
            });
        }
        let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, m) in messages.iter().enumerate() {
            groups
                .entry(bucket_of(m.user.as_str()))
                .or_default()
                .push(i);
        }
        let messages = &messages;
        let runs = groups.into_iter().map(|(bucket, indexes)| async move {
            let part: Vec<NewMessage> = indexes.iter().map(|&i| messages[i].clone()).collect();
            let result = self.append_bucket(bucket, part, limits).await;
            (indexes, result)
        });
        let parts: Vec<BucketAppend> = futures_util::stream::iter(runs)
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        let mut outcomes: Vec<Option<AppendOutcome>> = vec![None; count];
        let mut effects = Vec::new();
        let mut epochs: Vec<Epoch> = Vec::new();
        let mut deepest = 0;
        let mut failure = None;
        for (indexes, result) in parts {
            match result {
                Ok((appended, deferred)) => {
                    effects.extend(deferred);
                    if !epochs.contains(&appended.epoch) {
                        epochs.push(appended.epoch);
                    }
                    deepest = deepest.max(appended.deepest.unwrap_or(0));
                    for (i, outcome) in indexes.into_iter().zip(appended.outcomes) {
                        outcomes[i] = Some(outcome);
                    }
                }
                Err(err) => failure = Some(err),
            }
        }
        // What was stored is announced, even if another bucket failed.
        self.apply(effects, Replication::Acknowledged).await?;
        if let Some(err) = failure {
            return Err(err);
        }
        let epoch = match epochs.len() {
            1 => epochs.remove(0),
            // A renewal was spreading: the later epoch is made every bucket's, messages kept.
            _ => self.agree_on(epochs).await?,
        };
        let outcomes = outcomes
            .into_iter()
            .map(|o| o.ok_or_else(|| corrupt("a message without an outcome")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Appended {
            epoch,
            outcomes,
            deepest: Some(deepest),
        })
    }

    async fn fetch(&self, request: FetchRequest) -> Result<FetchBatch, StorageError> {
        let args = FetchArgs::new(&request)?;
        let reply: Vec<String> = self
            .eval_in(
                bucket_of(request.user.as_str()),
                &FETCH,
                Replication::Asynchronous,
                |inv| args.push(inv, &request),
            )
            .await?;
        parse_fetch(reply, request.max_clients)
    }

    async fn delivery(
        &self,
        epoch: &Epoch,
        targets: &[DeliveryTarget],
    ) -> Result<Vec<DeliveryState>, StorageError> {
        let states = self
            .per_bucket(
                &DELIVERY,
                epoch,
                targets,
                |inv, t| {
                    inv.arg(t.user.as_str())
                        .arg(t.client.as_ref().map_or("", |c| c.as_str()))
                        .arg(&*t.namespace)
                        .arg(t.pos.min(MAX_EXACT));
                },
                |reply, n| {
                    let states = parse_delivery(reply, n)?;
                    // `parse_delivery` answers `Lost` for all when the script said 'lost'.
                    Ok((!states.contains(&DeliveryState::Lost)).then_some(states))
                },
            )
            .await?;
        Ok(states.unwrap_or_else(|| vec![DeliveryState::Lost; targets.len()]))
    }

    async fn claim(
        &self,
        key: &DedupKey,
        owner: u64,
        limits: DedupLimits,
    ) -> Result<Claim, StorageError> {
        let lease = millis(limits.lease).max(1);
        let reply: Vec<String> = self
            .eval_in(
                bucket_of(key.user.as_str()),
                &CLAIM,
                Replication::Acknowledged,
                |inv| {
                    dedup_args(inv, key);
                    inv.arg(lease)
                        .arg(limits.per_client.min(MAX_EXACT as usize))
                        .arg(limits.per_user.min(MAX_EXACT as usize))
                        .arg(owner.to_string());
                },
            )
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
            .eval_in(
                bucket_of(key.user.as_str()),
                &RENEW,
                Replication::Asynchronous,
                |inv| {
                    dedup_args(inv, key);
                    inv.arg(millis(lease).max(1)).arg(owner.to_string());
                },
            )
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
            .eval_in(
                bucket_of(key.user.as_str()),
                &COMPLETE,
                Replication::Acknowledged,
                |inv| {
                    dedup_args(inv, key);
                    inv.arg(outcome).arg(millis(ttl)).arg(signal.as_str());
                },
            )
            .await?;
        Ok(())
    }

    async fn live_users(&self) -> Result<Vec<UserId>, StorageError> {
        let mut pages = futures_util::stream::iter(0..BUCKETS)
            .map(|bucket| self.live_users_in(bucket))
            .buffer_unordered(IN_FLIGHT);
        let mut users: HashSet<UserId> = HashSet::default();
        while let Some(page) = pages.next().await {
            users.extend(page?.into_iter().map(UserId::from));
        }
        Ok(users.into_iter().collect())
    }

    async fn live_clients(&self, user: &UserId) -> Result<Vec<ClientId>, StorageError> {
        let clients: Vec<String> = self
            .eval_in(
                bucket_of(user.as_str()),
                &LIVE_CLIENTS,
                Replication::Asynchronous,
                |inv| {
                    inv.arg(user.as_str());
                },
            )
            .await?;
        clients.into_iter().map(parse_client).collect()
    }

    async fn reap(&self) -> Result<Vec<Departure>, StorageError> {
        let mut runs = futures_util::stream::iter(0..BUCKETS)
            .map(|bucket| async move {
                let mut departures = Vec::new();
                let result = self.reap_bucket(bucket, &mut departures).await;
                (departures, result)
            })
            .buffer_unordered(IN_FLIGHT);
        let mut departures = Vec::new();
        let mut failure = None;
        while let Some((gone, result)) = runs.next().await {
            // What a bucket removed is gone from Redis: it is reported whatever the others did.
            departures.extend(gone);
            if let Err(err) = result {
                failure = Some(err);
            }
        }
        match failure {
            Some(err) if departures.is_empty() => Err(err),
            Some(err) => {
                warn!(cause = %err, "reaping stopped in a bucket; will go on next time");
                Ok(departures)
            }
            None => Ok(departures),
        }
    }

    async fn join(
        &self,
        room: &str,
        member: &Member,
        presence_ttl: Duration,
    ) -> Result<(), StorageError> {
        let _: i64 = self
            .eval_in(
                bucket_of(member.user().as_str()),
                &JOIN,
                Replication::Acknowledged,
                |inv| {
                    join_args(inv, room, member, presence_ttl);
                },
            )
            .await?;
        Ok(())
    }

    async fn leave(&self, room: &str, member: &Member) -> Result<(), StorageError> {
        let (user, client) = member_args(member);
        let _: i64 = self
            .eval_in(bucket_of(user), &LEAVE, Replication::Acknowledged, |inv| {
                inv.arg(room).arg(user).arg(client);
            })
            .await?;
        Ok(())
    }

    async fn members(&self, room: &str) -> Result<Vec<Member>, StorageError> {
        // A page at a time, as on one server (see `RedisStorage::members`).
        let key = self.room_key(room);
        let mut members: HashSet<Member> = HashSet::default();
        let mut cursor = String::from("0");
        loop {
            let mut conn = self.inner.conn.clone();
            let mut scan = redis::cmd("SSCAN");
            scan.arg(&key).arg(&cursor).arg("COUNT").arg(MEMBERS_PAGE);
            let (next, page): (String, Vec<String>) =
                within(self.inner.deadline, scan.query_async(&mut conn)).await?;
            let mut kept = vec![next];
            kept.extend(self.drop_departed(&key, page).await?);
            cursor = parse_members_page(kept, &mut members)?;
            if cursor == "0" {
                return Ok(members.into_iter().collect());
            }
        }
    }

    async fn rooms(&self, member: &Member) -> Result<Vec<Arc<str>>, StorageError> {
        let (user, client) = member_args(member);
        let rooms: Vec<String> = self
            .eval_in(bucket_of(user), &ROOMS, Replication::Asynchronous, |inv| {
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
            .eval_in(
                bucket_of(member.user().as_str()),
                &SET_DATA,
                Replication::Acknowledged,
                |inv| {
                    set_data_args(inv, member, key, value, presence_ttl);
                },
            )
            .await?;
        Ok(())
    }

    async fn get_data(&self, member: &Member, key: &str) -> Result<Option<String>, StorageError> {
        let (user, client) = member_args(member);
        self.eval_in(
            bucket_of(user),
            &GET_DATA,
            Replication::Asynchronous,
            |inv| {
                inv.arg(user).arg(client).arg(key);
            },
        )
        .await
    }

    async fn reply(
        &self,
        reply: crate::storage::NewReply,
        limits: ReplyLimits,
    ) -> Result<ReplyOutcome, StorageError> {
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
            .eval_in(
                bucket_of(reply.user.as_str()),
                &REPLY,
                Replication::Acknowledged,
                |inv| {
                    inv.arg(reply.user.as_str())
                        .arg(reply.client.as_str())
                        .arg(reply.pos.min(MAX_EXACT))
                        .arg(reply.data.get())
                        .arg(limits.per_message.min(MAX_EXACT as usize))
                        .arg(limits.bytes_per_user.min(MAX_EXACT as usize))
                        .arg(tail.as_str());
                },
            )
            .await?;
        parse_reply(outcome)
    }

    async fn replies(
        &self,
        epoch: &Epoch,
        targets: &[DeliveryTarget],
    ) -> Result<Vec<Vec<RecordedReply>>, StorageError> {
        let replies = self
            .per_bucket(
                &REPLIES,
                epoch,
                targets,
                |inv, t| {
                    inv.arg(t.user.as_str()).arg(t.pos.min(MAX_EXACT));
                },
                |reply, n| {
                    if reply.first().is_some_and(|s| s == "lost") && reply.len() == 1 {
                        return Ok(None);
                    }
                    parse_replies(reply, n).map(Some)
                },
            )
            .await?;
        // Lost: no replies can be known (as `parse_replies` answers for 'lost').
        Ok(replies.unwrap_or_else(|| vec![Vec::new(); targets.len()]))
    }

    async fn publish(&self, signal: Signal) -> Result<(), StorageError> {
        let json = signal_json(signal)?;
        self.spublish(format!("{}signals", self.inner.prefix), json)
            .await
    }

    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.inner.signals.subscribe()
    }
}
