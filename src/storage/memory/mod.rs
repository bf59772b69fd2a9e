//! [`MemoryStorage`]: everything in this process's memory. The default, and the reference
//! implementation of the [`Storage`] contract.
//!
//! # Cost
//!
//! Users are spread over shards, each behind its own lock: an operation on one user locks one
//! shard, and a fan-out (one append call of up to [`FANOUT_CHUNK`](super::FANOUT_CHUNK)
//! messages) locks each shard once, for its share. Within a user's log every lookup is by
//! position ([`log`]); expiry, trimming, reaping and dedup records each have an index ordered by
//! time, swept in bounded slices. So no call costs more than what it reads or writes, whatever
//! the history or the number of users.

mod acks;
mod clients;
mod dedup;
mod expiries;
// Without a durable storage nothing reads the journal's changes: they are never recorded.
#[cfg_attr(not(feature = "durable"), allow(dead_code))]
pub(crate) mod journal;
mod log;
mod messages;
mod origins;
mod publish;
#[cfg(feature = "durable")]
pub(crate) mod restore;
mod rooms;

use std::collections::BTreeSet;
use std::hash::BuildHasher;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use self::acks::Acks;
use self::dedup::Dedup;
use self::expiries::Expiries;
use self::journal::{Change, Changes, Journal};
use self::log::{ClientRecord, Entry, PRESENCE_STEP, UserLog};
use self::origins::Origins;
use self::publish::Publisher;
use self::rooms::Rooms;
use super::{
    AppendOutcome, Appended, Arrival, Claim, DedupKey, DedupLimits, DeliveryState, DeliveryTarget,
    Departure, Epoch, FetchBatch, FetchRequest, Limit, Member, Millis, NewMessage, NewReply,
    Position, QueueLimits, RecordedReply, ReplyLimits, ReplyOutcome, Signal, Storage, StorageError,
    StoredMessage, now_millis,
};
use crate::hash::{HashMap, RandomState};
use crate::id::{ClientId, UserId};
use crate::sharded::ByShard;

/// How many signals a slow subscriber may fall behind before it is told to resync. Signals are
/// one per append call (on `DurableStorage`, one per log frame's appends), but two per poll
/// (its announcement and its confirmation), and the hub reads them on the same threads as the
/// polls: when 5,000 clients answer one broadcast and poll again at once, 10,000 come in a
/// burst. A lag costs a resync (every waiter reads again), not a message, but it should not
/// happen in normal operation: past half of it, appends' users are gathered and told together
/// (`publish.rs`), and `DurableStorage`'s writer waits for room rather than overflow it. About
/// 1.5 MB.
pub(crate) const SIGNAL_CAPACITY: usize = 16_384;
// tokio's channel rounds its capacity up to a power of two: `DurableStorage`'s writer counts on
// this one being exact.
const _: () = assert!(SIGNAL_CAPACITY.is_power_of_two());

/// How many shards users are spread over.
const SHARDS: usize = 32;

/// The most client records of one user, polled or not: [`Storage::join`] and
/// [`Storage::set_data`] for a new client past it fail with [`Limit::ClientsPerUser`]. Far above
/// the clients that may poll at once (64 by default), which a fetch refuses past its own bound.
pub(crate) const MAX_CLIENT_RECORDS: usize = 1_024;

/// How often, at most, a write also sweeps expired state out of its shard.
const SWEEP_EVERY: Millis = 1_000;

/// The most expired messages (or dedup records) one sweep removes, and the most lapsed clients
/// one reap step removes, while holding a shard's lock; the rest wait for the next one.
const SLICE: usize = 4_096;

/// Storage in this process's memory: fast, needs no setup, and gone when the process stops.
///
/// Use it for one process. For several processes behind a load balancer, use a shared storage
/// such as `RedisStorage` (feature `redis`). A new `MemoryStorage` has a new random [`Epoch`], so
/// clients of a restarted process resync instead of trusting cursors into data that is gone.
///
/// Cloning gives another handle to the same data.
///
/// ```
/// use simpleio::{MemoryStorage, SimpleIoLayer};
/// let (layer, io) = SimpleIoLayer::builder().storage(MemoryStorage::new()).build();
/// # let _ = (layer, io);
/// ```
#[derive(Clone, Debug)]
pub struct MemoryStorage {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// The current epoch. Operations hold it for reading while they work, so that `reset`,
    /// which takes it for writing, never lands in the middle of one.
    epoch: RwLock<Epoch>,
    /// Every user's state, spread by user.
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// Rooms span users, so they have a lock of their own.
    rooms: Mutex<Rooms>,
    /// Signals to every subscriber; in one process "every node" is just this channel.
    signals: Arc<Publisher>,
    /// Where changes and signals go first, if a durable storage is built on this one.
    journal: Option<Arc<dyn Journal>>,
}

#[derive(Debug, Default)]
struct Shard {
    /// The last position handed out in this shard; positions only grow, even if the clock
    /// steps back, and even for a user whose log was removed.
    last_pos: Position,
    logs: HashMap<UserId, UserLog>,
    /// Every message by expiry, so that the sweep finds the expired ones without a scan.
    expiries: Expiries,
    /// Every client record by the time its presence lapses, for `reap`.
    presence: BTreeSet<(Millis, UserId, ClientId)>,
    /// Every user with a polled client, by the latest time one of them lapses: `live_users`
    /// reads the live ones off its end without looking anything up.
    online: BTreeSet<(Millis, UserId)>,
    dedup: Dedup,
    origins: Origins,
    acks: Acks,
    /// Data of users (clients keep theirs in their record), by key.
    user_data: HashMap<UserId, HashMap<String, String>>,
    last_sweep: Millis,
    /// What changed, for a journaled storage.
    changes: Changes,
}

/// A locked shard that hands what changed under the lock to the journal, if any, before the
/// lock is released: so changes of one record reach it in the order they were made.
struct ShardGuard<'a> {
    guard: MutexGuard<'a, Shard>,
    journal: Option<&'a dyn Journal>,
}

impl Deref for ShardGuard<'_> {
    type Target = Shard;
    fn deref(&self) -> &Shard {
        &self.guard
    }
}

impl DerefMut for ShardGuard<'_> {
    fn deref_mut(&mut self) -> &mut Shard {
        &mut self.guard
    }
}

impl Drop for ShardGuard<'_> {
    fn drop(&mut self) {
        let Some(journal) = self.journal else {
            return;
        };
        let shard = &mut *self.guard;
        shard.dedup.changes.append_to(&mut shard.changes);
        shard.origins.changes.append_to(&mut shard.changes);
        shard.acks.changes.append_to(&mut shard.changes);
        let changes = shard.changes.list();
        if !changes.is_empty() {
            journal.record(changes);
        }
    }
}

/// The locked rooms, handing their changes to the journal like [`ShardGuard`].
struct RoomsGuard<'a> {
    guard: MutexGuard<'a, Rooms>,
    journal: Option<&'a dyn Journal>,
}

impl Deref for RoomsGuard<'_> {
    type Target = Rooms;
    fn deref(&self) -> &Rooms {
        &self.guard
    }
}

impl DerefMut for RoomsGuard<'_> {
    fn deref_mut(&mut self) -> &mut Rooms {
        &mut self.guard
    }
}

impl Drop for RoomsGuard<'_> {
    fn drop(&mut self) {
        if let Some(journal) = self.journal {
            let changes = self.guard.changes.list();
            if !changes.is_empty() {
                journal.record(changes);
            }
        }
    }
}

impl MemoryStorage {
    /// An empty storage with a fresh epoch.
    pub fn new() -> Self {
        Self::with_journal(Epoch::random(), None)
    }

    fn with_journal(epoch: Epoch, journal: Option<Arc<dyn Journal>>) -> Self {
        let signals = Arc::new(Publisher::new());
        MemoryStorage {
            shared: Arc::new(Shared {
                epoch: RwLock::new(epoch),
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                hasher: RandomState::default(),
                rooms: Mutex::default(),
                signals,
                journal,
            }),
        }
    }

    /// The channel signals are published on: a journal publishes them there once durable.
    #[cfg(feature = "durable")]
    pub(crate) fn signal_sender(&self) -> broadcast::Sender<Signal> {
        self.shared.signals.sender().clone()
    }

    /// Forgets everything and takes a new epoch, as a store that lost its data would.
    ///
    /// Clients resync on their next poll, and senders waiting for confirmations learn that their
    /// messages were lost. Useful in tests of the resync path.
    pub fn reset(&self) {
        let mut epoch = self.shared.epoch.write().unwrap_or_else(|p| p.into_inner());
        *epoch = Epoch::random();
        for shard in 0..SHARDS {
            let mut shard = self.shard(shard);
            let last_pos = shard.last_pos;
            *shard = Shard {
                last_pos,
                ..Shard::default()
            };
        }
        self.rooms().clear();
        drop(epoch);
        self.signal(Signal::Resync);
    }

    fn epoch_guard(&self) -> RwLockReadGuard<'_, Epoch> {
        self.shared.epoch.read().unwrap_or_else(|p| p.into_inner())
    }

    fn shard_of(&self, user: &UserId) -> usize {
        (self.shared.hasher.hash_one(user) as usize) % SHARDS
    }

    fn shard(&self, index: usize) -> ShardGuard<'_> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing the process's messages, so keep serving.
        let guard = self.shared.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        ShardGuard {
            guard,
            journal: self.shared.journal.as_deref(),
        }
    }

    fn shard_for(&self, user: &UserId) -> ShardGuard<'_> {
        self.shard(self.shard_of(user))
    }

    fn rooms(&self) -> RoomsGuard<'_> {
        RoomsGuard {
            guard: self.shared.rooms.lock().unwrap_or_else(|p| p.into_inner()),
            journal: self.shared.journal.as_deref(),
        }
    }

    /// Indices of `items`, grouped by the shard of their user, so that each shard is locked
    /// once per call.
    fn by_shard<T>(&self, items: &[T], user: impl Fn(&T) -> &UserId) -> ByShard<usize, SHARDS> {
        ByShard::new(0..items.len(), |&i| self.shard_of(user(&items[i])))
    }

    fn signal(&self, signal: Signal) {
        match &self.shared.journal {
            Some(journal) => journal.signal(signal),
            None => self.shared.signals.publish(signal),
        }
    }
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl Shard {
    /// Removes expired messages and dedup records, at most once per `SWEEP_EVERY` and at most
    /// a slice of each. Client records are left to `reap`, which reports each departure.
    fn maybe_sweep(&mut self, now: Millis) {
        if now.saturating_sub(self.last_sweep) < SWEEP_EVERY {
            return;
        }
        self.last_sweep = now;
        for _ in 0..SLICE {
            let Some(expires_at) = self.expiries.first_expiry() else {
                break;
            };
            if expires_at > now {
                break;
            }
            let Some((pos, user)) = self.expiries.pop_first() else {
                break;
            };
            if let Some(log) = self.logs.get_mut(&user) {
                if log.remove(pos).is_some() {
                    self.changes.push(|| Change::Unmessage {
                        user: user.clone(),
                        pos,
                    });
                }
                if log.is_removable() {
                    self.logs.remove(&user);
                    self.changes.push(|| Change::Unlog { user });
                }
            }
        }
        self.dedup.sweep(now, SLICE);
        self.origins.sweep(now, SLICE);
        self.acks.sweep(now, SLICE);
    }

    /// The record of `client`, made (not live, not yet polled) if there is none, so that what is
    /// attached to a client before its first poll lives as long as it does. Refused for a new
    /// client past [`MAX_CLIENT_RECORDS`] of the user: the client id is the one a `POST` named,
    /// and a handler that joins or sets data for its sender would otherwise make a record for
    /// every id a client cares to send.
    fn touch_unpolled(
        &mut self,
        user: &UserId,
        client: &ClientId,
        ttl: Duration,
    ) -> Result<&mut ClientRecord, StorageError> {
        let records = self.logs.get(user).map(|log| &log.clients);
        let known = records.is_some_and(|clients| clients.contains_key(client));
        if !known && records.is_some_and(|clients| clients.len() >= MAX_CLIENT_RECORDS) {
            return Err(StorageError::Limit(Limit::ClientsPerUser(
                MAX_CLIENT_RECORDS,
            )));
        }
        let seen_until = now_millis().saturating_add(ttl.as_millis() as Millis);
        if !known {
            self.presence
                .insert((seen_until, user.clone(), client.clone()));
        }
        let log = self.logs.entry(user.clone()).or_default();
        if !known {
            self.changes.push(|| Change::Client {
                user: user.clone(),
                client: client.clone(),
                polled: false,
                namespaces: Vec::new(),
                presence_ttl: ttl.as_millis() as Millis,
            });
        }
        Ok(log.clients.get_or_insert_with(client, || ClientRecord {
            seen_until,
            indexed_until: seen_until,
            ..ClientRecord::default()
        }))
    }

    /// Reaps up to a slice of clients whose presence lapsed by `now`; whether more may be left.
    fn reap_slice(
        &mut self,
        now: Millis,
        departures: &mut Vec<Departure>,
        removed: &mut Vec<Member>,
    ) -> bool {
        let lapsed: Vec<(Millis, UserId, ClientId)> = self
            .presence
            .iter()
            .take_while(|(until, _, _)| *until <= now)
            .take(SLICE)
            .cloned()
            .collect();
        let more = lapsed.len() == SLICE;
        let mut departed: Vec<(UserId, ClientId)> = Vec::new();
        for key in lapsed {
            self.presence.remove(&key);
            let (_, user, client) = key;
            let Some(log) = self.logs.get_mut(&user) else {
                continue;
            };
            // The index lags a polling client by up to a step: if it polled since, it stays,
            // at its real time.
            if let Some(record) = log.clients.get_mut(&client)
                && record.seen_until > now
            {
                record.indexed_until = record.seen_until;
                self.presence.insert((record.seen_until, user, client));
                continue;
            }
            // Only clients that polled arrived, so only they depart; the rest just go.
            let record = log.clients.remove(&client);
            if let Some(record) = &record {
                // What it vouched for goes with it: its watermarks are written as they stand.
                if record.vouched > 0 {
                    for ns in record.namespaces.iter() {
                        self.changes.push(|| Change::Watermark {
                            user: user.clone(),
                            namespace: ns.clone(),
                            pos: log.watermark(ns),
                        });
                    }
                }
                self.changes.push(|| Change::Unclient {
                    user: user.clone(),
                    client: client.clone(),
                });
            }
            if record.is_some_and(|r| r.polled) {
                departed.push((user.clone(), client.clone()));
            }
            removed.push(Member::Client(user, client));
        }
        // Reported per user, the last of a user's departures saying whether they went offline.
        departed.sort();
        for (i, (user, client)) in departed.iter().enumerate() {
            let last_of_user = departed.get(i + 1).is_none_or(|(next, _)| next != user);
            let offline = last_of_user
                && self
                    .logs
                    .get(user)
                    .is_none_or(|log| !log.has_polled_client());
            if offline {
                if self.user_data.remove(user).is_some() {
                    self.changes.push(|| Change::Undata { user: user.clone() });
                }
                if let Some(log) = self.logs.get_mut(user) {
                    self.online.remove(&(log.online_indexed, user.clone()));
                    log.online_indexed = 0;
                }
            }
            departures.push(Departure {
                user: user.clone(),
                client: client.clone(),
                user_went_offline: offline,
            });
        }
        for (user, _) in &departed {
            if self.logs.get(user).is_some_and(UserLog::is_removable) {
                self.logs.remove(user);
                self.changes.push(|| Change::Unlog { user: user.clone() });
            }
        }
        more
    }
}

/// Evicts expired or delivered messages until `m` fits in its user's queue: the sender's share
/// first, among the sender's own, then the whole queue. Whether it fits. Each eviction removes
/// a message for good, so the work is bounded by what was added before.
fn make_room(
    log: &mut UserLog,
    expiries: &mut Expiries,
    changes: &mut Changes,
    m: &NewMessage,
    limits: QueueLimits,
    now: Millis,
) -> bool {
    let size = m.data.get().len();
    if let Some(sender) = &m.sender {
        loop {
            let (count, bytes) = log.held_for(sender);
            if count < limits.per_sender && bytes + size <= limits.bytes_per_sender {
                break;
            }
            let Some((pos, expires_at)) = log.evictable_of(sender, now) else {
                return false;
            };
            log.remove(pos);
            expiries.remove(expires_at, pos);
            changes.push(|| Change::Unmessage {
                user: m.user.clone(),
                pos,
            });
        }
    }
    while log.messages.len() >= limits.per_user || log.bytes + size > limits.bytes_per_user {
        let Some((pos, expires_at)) = log.evictable(now) else {
            return false;
        };
        log.remove(pos);
        expiries.remove(expires_at, pos);
        changes.push(|| Change::Unmessage {
            user: m.user.clone(),
            pos,
        });
    }
    true
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn epoch(&self) -> Result<Epoch, StorageError> {
        Ok(self.epoch_guard().clone())
    }

    async fn append(
        &self,
        messages: Vec<NewMessage>,
        limits: QueueLimits,
    ) -> Result<Appended, StorageError> {
        let now = now_millis();
        let epoch_guard = self.epoch_guard();
        let epoch = epoch_guard.clone();
        let mut outcomes = vec![AppendOutcome::QueueFull; messages.len()];
        // Each user once, without a set: see `woken_before` below.
        let mut woken: Vec<UserId> = Vec::with_capacity(messages.len());
        let mut deepest = 0;
        let groups = self.by_shard(&messages, |m| &m.user);
        let mut messages: Vec<Option<NewMessage>> = messages.into_iter().map(Some).collect();
        for (shard, group) in groups.groups() {
            let mut shard = self.shard(shard);
            shard.maybe_sweep(now);
            // Every message a shard holds has a position at most its `last_pos` (appends and
            // restores both raise it), and each one appended by this call gets a higher one:
            // a log whose newest message is above this mark got it from this call, and its
            // user is among the woken already. A set of them cost a hash per recipient.
            let woken_above = shard.last_pos;
            for &i in group {
                let Some(m) = messages[i].take() else {
                    continue;
                };
                let shard = &mut *shard;
                if let Some(origin) = &m.origin
                    && let Some(pos) = shard.origins.find(&m.user, origin, now)
                {
                    // Stored before (a handler run again after a crash): not stored twice.
                    outcomes[i] = AppendOutcome::Stored(pos);
                    continue;
                }
                // An ack record per message that asks for replies, as many as its queue holds
                // messages: the records outlive delivered messages, so they have their own count.
                if m.ack && !shard.acks.has_room(&m.user, limits.per_user) {
                    continue;
                }
                let log = match shard.logs.get_mut(&m.user) {
                    Some(log) => log,
                    None => shard.logs.entry(m.user.clone()).or_default(),
                };
                let woken_before = log.messages.newest().is_some_and(|pos| pos > woken_above);
                if !make_room(
                    log,
                    &mut shard.expiries,
                    &mut shard.changes,
                    &m,
                    limits,
                    now,
                ) {
                    deepest = deepest.max(log.messages.len());
                    continue;
                }
                // Clock-based, and past anything given in this shard or to this user before.
                let pos = (now * 1000).max(shard.last_pos + 1).max(log.last + 1);
                shard.last_pos = pos;
                shard.expiries.insert(m.expires_at, pos, m.user.clone());
                shard.changes.push(|| Change::Message {
                    user: m.user.clone(),
                    pos,
                    client: m.client.clone(),
                    sender: m.sender.clone(),
                    namespace: m.namespace.clone(),
                    event: m.event.clone(),
                    data: m.data.clone(),
                    expires_at: m.expires_at,
                    ack: m.ack,
                });
                if m.ack {
                    shard
                        .acks
                        .open(&m.user, pos, m.client.clone(), m.expires_at);
                }
                deepest = deepest.max(log.messages.len() + 1);
                log.insert(Entry {
                    client: m.client,
                    sender: m.sender,
                    message: StoredMessage {
                        pos,
                        ns: m.namespace,
                        event: m.event,
                        data: m.data,
                        ack: m.ack,
                    },
                    expires_at: m.expires_at,
                });
                outcomes[i] = AppendOutcome::Stored(pos);
                if let Some(origin) = &m.origin {
                    shard
                        .origins
                        .remember(&m.user, origin, pos, m.expires_at, limits.per_user);
                }
                if !woken_before {
                    woken.push(m.user);
                }
            }
        }
        drop(epoch_guard);
        if !woken.is_empty() {
            self.signal(Signal::Appended {
                users: woken.into(),
            });
        }
        Ok(Appended {
            epoch,
            outcomes,
            deepest: Some(deepest),
        })
    }

    async fn fetch(&self, req: FetchRequest) -> Result<FetchBatch, StorageError> {
        let now = now_millis();
        let epoch_guard = self.epoch_guard();
        let epoch = epoch_guard.clone();
        let mut guard = self.shard_for(&req.user);
        let shard = &mut *guard;
        shard.maybe_sweep(now);
        let log = shard.logs.entry(req.user.clone()).or_default();
        let head = log.last;

        // Arrivals and departures pair up: a client has arrived from its first poll until `reap`
        // reports it gone, even if its presence lapsed meanwhile. A record made by `join` or
        // `set_data` alone has not arrived.
        // Counted only when it could matter: clients that polled (a record made by `join` or
        // `set_data` alone is the application's, not the client's, and is served).
        if !log.clients.contains_key(&req.client)
            && log.clients.len() >= req.max_clients
            && log.clients.values().filter(|r| r.polled).count() >= req.max_clients
        {
            return Err(Limit::ClientsPerUser(req.max_clients).into());
        }
        let known = log.clients.get(&req.client).is_some_and(|r| r.polled);
        let arrival = (!known).then(|| Arrival {
            user_came_online: !log.has_polled_client(),
        });
        let fresh_start = (!known && !matches!(&req.cursor, Some((e, _)) if *e == epoch))
            .then(|| log.start_for_new_client(&req.client, &req.namespaces));

        let mut advanced = None;
        let mut confirmed = None;
        // A client that stops reading namespaces it vouched for: their watermarks are written
        // as they stand before it vouches for others (see `Change::Cursor`).
        if let Some(record) = log.clients.get(&req.client)
            && record.vouched > 0
            && *record.namespaces != *req.namespaces
        {
            for ns in record.namespaces.iter() {
                shard.changes.push(|| Change::Watermark {
                    user: req.user.clone(),
                    namespace: ns.clone(),
                    pos: log.watermark(ns),
                });
            }
        }
        let mut client_changed = !log.clients.contains_key(&req.client);
        let record = log
            .clients
            .get_or_insert_with(&req.client, ClientRecord::default);
        let (cursor_was, vouched_was) = (record.cursor, record.vouched);
        let start = match &req.cursor {
            Some((e, cursor)) if *e == epoch => {
                let upto = (*cursor).min(head);
                // A client's own cursor confirms messages addressed to it even when the
                // watermark is already past them, so its advance is a confirmation too.
                if upto > record.cursor {
                    record.cursor = upto;
                    advanced = Some(upto);
                }
                confirmed = Some(upto);
                upto
            }
            _ => match fresh_start {
                Some(start) => {
                    record.cursor = start;
                    start
                }
                None => record.cursor,
            },
        };
        client_changed |= !record.polled;
        record.polled = true;
        if *record.namespaces != *req.namespaces {
            record.namespaces = req.namespaces.clone();
            record.vouched = 0;
            client_changed = true;
        }
        if client_changed {
            shard.changes.push(|| Change::Client {
                user: req.user.clone(),
                client: req.client.clone(),
                polled: true,
                namespaces: record.namespaces.to_vec(),
                presence_ttl: req.presence_ttl.as_millis() as Millis,
            });
        }
        // Every watermark of its namespaces is raised to `upto` below.
        if let Some(upto) = confirmed {
            record.vouched = record.vouched.max(upto);
        }
        if (record.cursor, record.vouched) != (cursor_was, vouched_was) {
            shard.changes.push(|| Change::Cursor {
                user: req.user.clone(),
                client: req.client.clone(),
                cursor: record.cursor,
                vouched: record.vouched,
            });
        }
        record.seen_until = now.saturating_add(req.presence_ttl.as_millis() as Millis);
        if record.seen_until >= record.indexed_until.saturating_add(PRESENCE_STEP) {
            let stale = (record.indexed_until, req.user.clone(), req.client.clone());
            shard.presence.remove(&stale);
            record.indexed_until = record.seen_until;
            shard
                .presence
                .insert((record.seen_until, req.user.clone(), req.client.clone()));
        }
        if record.seen_until >= log.online_indexed.saturating_add(PRESENCE_STEP) {
            shard.online.remove(&(log.online_indexed, req.user.clone()));
            log.online_indexed = record.seen_until;
            shard.online.insert((record.seen_until, req.user.clone()));
        }
        if let Some(upto) = confirmed {
            for ns in req.namespaces.iter() {
                // Journaled by the client's `Change::Cursor`, which vouches for it.
                if log.raise_watermark(ns, upto) {
                    advanced = Some(upto);
                }
            }
        }

        let (messages, cursor) = log.read(&req.client, &req.namespaces, start, req.limit, now);
        if advanced.is_some() {
            let trimmed = log.trimmable();
            log.remove_trimmed(&trimmed);
            for (pos, expires_at) in trimmed {
                shard.expiries.remove(expires_at, pos);
                shard.changes.push(|| Change::Unmessage {
                    user: req.user.clone(),
                    pos,
                });
            }
        }
        drop(guard);
        drop(epoch_guard);
        if let Some(poll) = req.announce {
            self.signal(Signal::PollStarted {
                user: req.user.clone(),
                client: req.client.clone(),
                poll,
            });
        }
        if let Some(cursor) = advanced {
            self.signal(Signal::Confirmed {
                epoch: epoch.clone(),
                user: req.user,
                client: req.client,
                cursor,
                namespaces: req.namespaces,
            });
        }
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
        let now = now_millis();
        let epoch_guard = self.epoch_guard();
        if *epoch_guard != *epoch {
            return Ok(vec![DeliveryState::Lost; targets.len()]);
        }
        let mut states = vec![DeliveryState::Expired; targets.len()];
        for (shard, group) in self.by_shard(targets, |t| &t.user).groups() {
            let shard = self.shard(shard);
            for &i in group {
                let t = &targets[i];
                let Some(log) = shard.logs.get(&t.user) else {
                    continue;
                };
                let confirmed = match &t.client {
                    None => log.watermark(&t.namespace),
                    Some(c) => log
                        .clients
                        .get(c)
                        .filter(|r| r.reads(&t.namespace))
                        .map_or(0, |r| r.cursor),
                };
                states[i] = if t.pos <= confirmed {
                    DeliveryState::Delivered
                } else if log.messages.get(&t.pos).is_some_and(|e| e.expires_at > now) {
                    DeliveryState::Pending
                } else {
                    DeliveryState::Expired
                };
            }
        }
        Ok(states)
    }

    async fn claim(
        &self,
        key: &DedupKey,
        owner: u64,
        limits: DedupLimits,
    ) -> Result<Claim, StorageError> {
        let now = now_millis();
        let _epoch = self.epoch_guard();
        let mut shard = self.shard_for(&key.user);
        shard.maybe_sweep(now);
        Ok(shard.dedup.claim(key, owner, limits, now)?)
    }

    async fn renew(
        &self,
        key: &DedupKey,
        owner: u64,
        lease: Duration,
    ) -> Result<bool, StorageError> {
        let now = now_millis();
        let until = now.saturating_add(lease.as_millis() as Millis);
        let _epoch = self.epoch_guard();
        Ok(self
            .shard_for(&key.user)
            .dedup
            .renew(key, owner, until, now))
    }

    async fn complete(
        &self,
        key: &DedupKey,
        outcome: &str,
        ttl: Duration,
    ) -> Result<(), StorageError> {
        let until = now_millis().saturating_add(ttl.as_millis() as Millis);
        {
            let _epoch = self.epoch_guard();
            self.shard_for(&key.user)
                .dedup
                .complete(key, outcome, until);
        }
        self.signal(Signal::Completed {
            user: key.user.clone(),
        });
        Ok(())
    }

    async fn live_users(&self) -> Result<Vec<UserId>, StorageError> {
        let now = now_millis();
        let mut users = Vec::new();
        for shard in 0..SHARDS {
            let shard = self.shard(shard);
            // From the latest down. A user indexed past `now` has a client live now (the index
            // never runs ahead of a record); one indexed within a step before it may, and is
            // looked up; before that, none is.
            let from = now.saturating_sub(PRESENCE_STEP);
            for (until, user) in shard
                .online
                .iter()
                .rev()
                .take_while(|(until, _)| *until > from)
            {
                let live = *until > now
                    || shard
                        .logs
                        .get(user)
                        .is_some_and(|log| log.clients.values().any(|record| record.is_live(now)));
                if live {
                    users.push(user.clone());
                }
            }
        }
        Ok(users)
    }

    async fn live_clients(&self, user: &UserId) -> Result<Vec<ClientId>, StorageError> {
        let now = now_millis();
        let shard = self.shard_for(user);
        Ok(shard
            .logs
            .get(user)
            .map(|log| log.live_clients(now).cloned().collect())
            .unwrap_or_default())
    }

    async fn reap(&self) -> Result<Vec<Departure>, StorageError> {
        let now = now_millis();
        let mut departures = Vec::new();
        let mut removed = Vec::new();
        for shard in 0..SHARDS {
            // A slice at a time, releasing the lock in between, so that a mass departure
            // never stalls the requests of the shard's other users.
            loop {
                let _epoch = self.epoch_guard();
                let more = self
                    .shard(shard)
                    .reap_slice(now, &mut departures, &mut removed);
                if !more {
                    break;
                }
            }
        }
        // Memberships go a slice at a time too: the lock is released after each SLICE of
        // them, however many rooms each removed client was in.
        let mut left = removed.iter().peekable();
        while left.peek().is_some() {
            let mut rooms = self.rooms();
            let mut budget = SLICE;
            while budget > 0
                && let Some(member) = left.peek()
            {
                if rooms.remove_from_some(member, &mut budget) {
                    left.next();
                }
            }
        }
        Ok(departures)
    }

    async fn join(
        &self,
        room: &str,
        member: &Member,
        presence_ttl: Duration,
    ) -> Result<(), StorageError> {
        let _epoch = self.epoch_guard();
        if let Member::Client(user, client) = member {
            self.shard_for(user)
                .touch_unpolled(user, client, presence_ttl)?;
        }
        self.rooms().join(room, member);
        Ok(())
    }

    async fn leave(&self, room: &str, member: &Member) -> Result<(), StorageError> {
        self.rooms().leave(room, member);
        Ok(())
    }

    async fn members(&self, room: &str) -> Result<Vec<Member>, StorageError> {
        Ok(self.rooms().members(room))
    }

    async fn rooms(&self, member: &Member) -> Result<Vec<Arc<str>>, StorageError> {
        Ok(self.rooms().rooms(member))
    }

    async fn set_data(
        &self,
        member: &Member,
        key: &str,
        value: Option<&str>,
        presence_ttl: Duration,
    ) -> Result<(), StorageError> {
        let _epoch = self.epoch_guard();
        let mut guard = self.shard_for(member.user());
        let shard = &mut *guard;
        let bag = match member {
            Member::User(user) => shard.user_data.entry(user.clone()).or_default(),
            Member::Client(user, client) => {
                (shard.touch_unpolled(user, client, presence_ttl)?.data)
                    .get_or_insert_with(Box::default)
            }
        };
        match value {
            Some(v) => {
                bag.insert(key.to_owned(), v.to_owned());
            }
            None => {
                bag.remove(key);
            }
        }
        shard.changes.push(|| Change::Data {
            member: member.clone(),
            key: key.to_owned(),
            value: value.map(str::to_owned),
        });
        Ok(())
    }

    async fn get_data(&self, member: &Member, key: &str) -> Result<Option<String>, StorageError> {
        let shard = self.shard_for(member.user());
        Ok(match member {
            Member::User(user) => shard.user_data.get(user).and_then(|d| d.get(key)).cloned(),
            Member::Client(user, client) => shard
                .logs
                .get(user)
                .and_then(|log| log.clients.get(client))
                .and_then(|r| r.data.as_ref()?.get(key))
                .cloned(),
        })
    }

    async fn reply(
        &self,
        reply: NewReply,
        limits: ReplyLimits,
    ) -> Result<ReplyOutcome, StorageError> {
        let now = now_millis();
        let epoch_guard = self.epoch_guard();
        let epoch = epoch_guard.clone();
        let mut shard = self.shard_for(&reply.user);
        shard.maybe_sweep(now);
        let outcome = shard.acks.reply(&reply, limits, now);
        drop(shard);
        drop(epoch_guard);
        if outcome == ReplyOutcome::Recorded {
            self.signal(Signal::Replied {
                epoch,
                user: reply.user,
                pos: reply.pos,
                client: reply.client,
                data: reply.data,
            });
        }
        Ok(outcome)
    }

    async fn replies(
        &self,
        epoch: &Epoch,
        targets: &[DeliveryTarget],
    ) -> Result<Vec<Vec<RecordedReply>>, StorageError> {
        let now = now_millis();
        let epoch_guard = self.epoch_guard();
        let mut out = vec![Vec::new(); targets.len()];
        if *epoch_guard != *epoch {
            return Ok(out);
        }
        for (shard, group) in self.by_shard(targets, |t| &t.user).groups() {
            let shard = self.shard(shard);
            for &i in group {
                out[i] = shard.acks.replies(&targets[i].user, targets[i].pos, now);
            }
        }
        Ok(out)
    }

    async fn publish(&self, signal: Signal) -> Result<(), StorageError> {
        self.signal(signal);
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.shared.signals.sender().subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fresh() -> MemoryStorage {
        MemoryStorage::new()
    }

    crate::storage_conformance_tests!(fresh);

    /// A `POST` names its client id, and a handler that joins or sets data for its sender makes
    /// a record for it: a user's records are bounded, and past the bound a new client's join and
    /// data are refused, a known client's still taken.
    #[tokio::test]
    async fn a_users_client_records_are_bounded() {
        let storage = MemoryStorage::new();
        let ttl = Duration::from_secs(60);
        let user = UserId::from("ann");
        let client =
            |i: usize| Member::Client(user.clone(), ClientId::new(format!("c{i}")).expect("an id"));
        for i in 0..MAX_CLIENT_RECORDS {
            storage
                .join("lobby", &client(i), ttl)
                .await
                .expect("joined");
        }
        let refused = storage
            .join("lobby", &client(MAX_CLIENT_RECORDS), ttl)
            .await;
        assert!(
            matches!(
                refused,
                Err(StorageError::Limit(Limit::ClientsPerUser(
                    MAX_CLIENT_RECORDS
                )))
            ),
            "{refused:?}"
        );
        let refused = storage
            .set_data(&client(MAX_CLIENT_RECORDS), "k", Some("1"), ttl)
            .await;
        assert!(
            matches!(refused, Err(StorageError::Limit(_))),
            "{refused:?}"
        );
        assert_eq!(
            storage.members("lobby").await.expect("members").len(),
            MAX_CLIENT_RECORDS
        );
        storage
            .join("other", &client(0), ttl)
            .await
            .expect("a known client");
        storage
            .set_data(&client(1), "k", Some("1"), ttl)
            .await
            .expect("a known client");
        // Another user is not held back by ann's records.
        let bob = Member::Client(UserId::from("bob"), ClientId::new("c0").expect("an id"));
        storage.join("lobby", &bob, ttl).await.expect("joined");
    }
}
