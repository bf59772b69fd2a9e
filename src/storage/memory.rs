//! [`MemoryStorage`]: everything in this process's memory. The default, and the reference
//! implementation of the [`Storage`] contract.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{
    AppendOutcome, Appended, Arrival, Claim, DedupKey, DeliveryState, DeliveryTarget, Departure,
    Epoch, FetchBatch, FetchRequest, Member, Millis, NewMessage, Position, Signal, Storage,
    StorageError, StoredMessage, now_millis,
};
use crate::id::{ClientId, UserId};

/// How many signals a slow subscriber may fall behind before it is told to resync.
const SIGNAL_CAPACITY: usize = 4096;

/// How often, at most, a write also sweeps expired state out of every log.
const SWEEP_EVERY: Millis = 1_000;

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
    /// All data, behind one lock: every operation is short and must be atomic as a whole.
    state: Mutex<State>,
    /// Signals to every subscriber; in one process "every node" is just this channel.
    signals: broadcast::Sender<Signal>,
}

#[derive(Debug)]
struct State {
    epoch: Epoch,
    /// The last position handed out to any user; positions only grow, even if the clock steps
    /// back, and even for a user whose log was removed.
    last_pos: Position,
    logs: HashMap<UserId, UserLog>,
    dedup: HashMap<DedupKey, DedupRecord>,
    /// Room name → members.
    rooms: HashMap<Arc<str>, BTreeSet<Member>>,
    /// Data of users (clients keep theirs in their record), by key.
    user_data: HashMap<UserId, HashMap<String, String>>,
    last_sweep: Millis,
}

#[derive(Debug, Default)]
struct UserLog {
    /// Unexpired messages in position order.
    messages: VecDeque<Entry>,
    /// Per namespace, the highest cursor any client subscribed to it confirmed.
    watermarks: HashMap<Arc<str>, Position>,
    clients: HashMap<ClientId, ClientRecord>,
}

#[derive(Debug)]
struct Entry {
    client: Option<ClientId>,
    message: StoredMessage,
    expires_at: Millis,
}

#[derive(Debug, Default)]
struct ClientRecord {
    cursor: Position,
    /// The client counts as live until then; past it, `reap` removes the record.
    seen_until: Millis,
    /// It fetched at least once. A record made only by `set_data` is not live, and its arrival
    /// is still to be reported.
    polled: bool,
    namespaces: Vec<Arc<str>>,
    data: HashMap<String, String>,
}

#[derive(Debug)]
enum DedupRecord {
    InProgress { until: Millis },
    Done { outcome: String, until: Millis },
}

impl ClientRecord {
    fn reads(&self, ns: &str) -> bool {
        self.namespaces.iter().any(|n| &**n == ns)
    }

    fn is_live(&self, now: Millis) -> bool {
        self.polled && self.seen_until > now
    }
}

impl Entry {
    fn pos(&self) -> Position {
        self.message.pos
    }

    fn is_delivered(&self, log: &UserLog) -> bool {
        let ns = &self.message.ns;
        match &self.client {
            None => log.watermark(ns) >= self.pos(),
            Some(c) => log
                .clients
                .get(c)
                .is_some_and(|r| r.cursor >= self.pos() && r.reads(ns)),
        }
    }
}

impl UserLog {
    fn head(&self) -> Position {
        self.messages.back().map_or(0, Entry::pos)
    }

    fn watermark(&self, ns: &str) -> Position {
        self.watermarks.get(ns).copied().unwrap_or(0)
    }

    fn drop_expired(&mut self, now: Millis) {
        self.messages.retain(|e| e.expires_at > now);
    }

    fn live_clients(&self, now: Millis) -> impl Iterator<Item = &ClientId> {
        self.clients
            .iter()
            .filter(move |(_, r)| r.is_live(now))
            .map(|(c, _)| c)
    }

    /// Frees one slot by evicting the oldest delivered message; false if none is delivered.
    fn evict_one_delivered(&mut self) -> bool {
        let Some(i) = self.messages.iter().position(|e| e.is_delivered(self)) else {
            return false;
        };
        self.messages.remove(i);
        true
    }

    /// Where a client seen for the first time starts reading (see `FetchRequest::cursor`).
    fn start_for_new_client(&self, client: &ClientId, namespaces: &[Arc<str>]) -> Position {
        let lowest_watermark = namespaces
            .iter()
            .map(|ns| self.watermark(ns))
            .min()
            .unwrap_or(0);
        let earliest_addressed = self
            .messages
            .iter()
            .find(|e| e.client.as_ref() == Some(client))
            .map(|e| e.pos() - 1);
        earliest_addressed.map_or(lowest_watermark, |p| p.min(lowest_watermark))
    }

    fn is_removable(&self) -> bool {
        self.messages.is_empty() && self.clients.is_empty()
    }
}

impl MemoryStorage {
    /// An empty storage with a fresh epoch.
    pub fn new() -> Self {
        let (signals, _) = broadcast::channel(SIGNAL_CAPACITY);
        MemoryStorage {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    epoch: Epoch::random(),
                    last_pos: 0,
                    logs: HashMap::new(),
                    dedup: HashMap::new(),
                    rooms: HashMap::new(),
                    user_data: HashMap::new(),
                    last_sweep: 0,
                }),
                signals,
            }),
        }
    }

    /// Forgets everything and takes a new epoch, as a store that lost its data would.
    ///
    /// Clients resync on their next poll, and senders waiting for confirmations learn that their
    /// messages were lost. Useful in tests of the resync path.
    pub fn reset(&self) {
        let mut state = self.lock();
        state.epoch = Epoch::random();
        state.logs.clear();
        state.dedup.clear();
        state.rooms.clear();
        state.user_data.clear();
        drop(state);
        self.signal(Signal::Resync);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing the process's messages, so keep serving.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn signal(&self, signal: Signal) {
        // No subscriber yet is fine: nobody is waiting.
        let _ = self.shared.signals.send(signal);
    }
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    /// Removes expired messages, dedup records and empty logs, at most once per `SWEEP_EVERY`.
    /// Client records are left to `reap`, which reports each departure.
    fn maybe_sweep(&mut self, now: Millis) {
        if now.saturating_sub(self.last_sweep) < SWEEP_EVERY {
            return;
        }
        self.last_sweep = now;
        self.logs.retain(|_, log| {
            log.drop_expired(now);
            !log.is_removable()
        });
        self.dedup.retain(|_, r| match r {
            DedupRecord::InProgress { until } | DedupRecord::Done { until, .. } => *until > now,
        });
    }

    fn next_pos(&mut self, now: Millis, after: Position) -> Position {
        let pos = (now * 1000).max(self.last_pos + 1).max(after + 1);
        self.last_pos = pos;
        pos
    }

    /// The record of `client`, made (not live, not yet polled) if there is none, so that what is
    /// attached to a client before its first poll lives as long as it does.
    fn touch_unpolled(
        &mut self,
        user: &UserId,
        client: &ClientId,
        ttl: Duration,
    ) -> &mut ClientRecord {
        let seen_until = now_millis().saturating_add(ttl.as_millis() as Millis);
        let log = self.logs.entry(user.clone()).or_default();
        log.clients
            .entry(client.clone())
            .or_insert_with(|| ClientRecord {
                seen_until,
                ..ClientRecord::default()
            })
    }

    fn remove_member_everywhere(&mut self, member: &Member) {
        self.rooms.retain(|_, members| {
            members.remove(member);
            !members.is_empty()
        });
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn epoch(&self) -> Result<Epoch, StorageError> {
        Ok(self.lock().epoch.clone())
    }

    async fn append(
        &self,
        messages: Vec<NewMessage>,
        max_queue: usize,
    ) -> Result<Appended, StorageError> {
        let now = now_millis();
        let mut state = self.lock();
        state.maybe_sweep(now);
        let mut outcomes = Vec::with_capacity(messages.len());
        let mut woken: Vec<UserId> = Vec::new();
        for m in messages {
            let head = {
                let log = state.logs.entry(m.user.clone()).or_default();
                log.drop_expired(now);
                if log.messages.len() >= max_queue && !log.evict_one_delivered() {
                    outcomes.push(AppendOutcome::QueueFull);
                    continue;
                }
                log.head()
            };
            let pos = state.next_pos(now, head);
            let log = state.logs.entry(m.user.clone()).or_default();
            log.messages.push_back(Entry {
                client: m.client,
                message: StoredMessage {
                    pos,
                    ns: m.namespace,
                    event: m.event,
                    data: m.data,
                },
                expires_at: m.expires_at,
            });
            outcomes.push(AppendOutcome::Stored(pos));
            if !woken.contains(&m.user) {
                woken.push(m.user);
            }
        }
        let epoch = state.epoch.clone();
        drop(state);
        if !woken.is_empty() {
            self.signal(Signal::Appended {
                users: woken.into(),
            });
        }
        Ok(Appended { epoch, outcomes })
    }

    async fn fetch(&self, req: FetchRequest) -> Result<FetchBatch, StorageError> {
        let now = now_millis();
        let mut state = self.lock();
        state.maybe_sweep(now);
        let epoch = state.epoch.clone();
        let log = state.logs.entry(req.user.clone()).or_default();
        log.drop_expired(now);
        let head = log.head();
        let seen_until = now.saturating_add(req.presence_ttl.as_millis() as Millis);

        // Arrivals and departures pair up: a client has arrived from its first poll until `reap`
        // reports it gone, even if its presence lapsed meanwhile. A record made by `join` or
        // `set_data` alone has not arrived.
        let known = log.clients.get(&req.client).is_some_and(|r| r.polled);
        let arrival = (!known).then(|| Arrival {
            user_came_online: !log.clients.values().any(|r| r.polled),
        });

        let mut advanced = None;
        let start = match req.cursor {
            Some((e, cursor)) if e == epoch => {
                let confirmed = cursor.min(head);
                let record = log.clients.entry(req.client.clone()).or_default();
                record.namespaces = req.namespaces.clone();
                // A client's own cursor confirms messages addressed to it even when the
                // watermark is already past them, so its advance is a confirmation too.
                if confirmed > record.cursor {
                    record.cursor = confirmed;
                    advanced = Some(confirmed);
                }
                for ns in &req.namespaces {
                    let watermark = log.watermarks.entry(ns.clone()).or_insert(0);
                    if confirmed > *watermark {
                        *watermark = confirmed;
                        advanced = Some(confirmed);
                    }
                }
                cursor
            }
            _ if known => log.clients.get(&req.client).map_or(0, |r| r.cursor),
            _ => {
                let start = log.start_for_new_client(&req.client, &req.namespaces);
                log.clients.entry(req.client.clone()).or_default().cursor = start;
                start
            }
        };
        let record = log.clients.entry(req.client.clone()).or_default();
        record.seen_until = seen_until;
        record.polled = true;
        record.namespaces = req.namespaces.clone();

        let mut messages = Vec::new();
        let mut cursor = start.max(head);
        for e in log.messages.iter().filter(|e| e.pos() > start) {
            if messages.len() == req.limit {
                cursor = messages.last().map_or(start, |m: &StoredMessage| m.pos);
                break;
            }
            let for_this_client = e.client.as_ref().is_none_or(|c| *c == req.client);
            if for_this_client && req.namespaces.contains(&e.message.ns) {
                messages.push(e.message.clone());
            }
        }
        drop(state);
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
                namespaces: req.namespaces.into(),
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
        let state = self.lock();
        if state.epoch != *epoch {
            return Ok(vec![DeliveryState::Lost; targets.len()]);
        }
        Ok(targets
            .iter()
            .map(|t| {
                let Some(log) = state.logs.get(&t.user) else {
                    return DeliveryState::Expired;
                };
                let confirmed = match &t.client {
                    None => log.watermark(&t.namespace),
                    Some(c) => log
                        .clients
                        .get(c)
                        .filter(|r| r.reads(&t.namespace))
                        .map_or(0, |r| r.cursor),
                };
                if t.pos <= confirmed {
                    DeliveryState::Delivered
                } else if log
                    .messages
                    .iter()
                    .any(|e| e.pos() == t.pos && e.expires_at > now)
                {
                    DeliveryState::Pending
                } else {
                    DeliveryState::Expired
                }
            })
            .collect())
    }

    async fn claim(&self, key: &DedupKey, lease: Duration) -> Result<Claim, StorageError> {
        let now = now_millis();
        let mut state = self.lock();
        state.maybe_sweep(now);
        match state.dedup.get(key) {
            Some(DedupRecord::Done { outcome, until }) if *until > now => {
                Ok(Claim::Done(outcome.clone()))
            }
            Some(DedupRecord::InProgress { until }) if *until > now => Ok(Claim::InProgress),
            _ => {
                let until = now.saturating_add(lease.as_millis() as Millis);
                state
                    .dedup
                    .insert(key.clone(), DedupRecord::InProgress { until });
                Ok(Claim::Acquired)
            }
        }
    }

    async fn complete(
        &self,
        key: &DedupKey,
        outcome: &str,
        ttl: Duration,
    ) -> Result<(), StorageError> {
        let until = now_millis().saturating_add(ttl.as_millis() as Millis);
        self.lock().dedup.insert(
            key.clone(),
            DedupRecord::Done {
                outcome: outcome.to_owned(),
                until,
            },
        );
        self.signal(Signal::Completed {
            user: key.user.clone(),
        });
        Ok(())
    }

    async fn live_users(&self) -> Result<Vec<UserId>, StorageError> {
        let now = now_millis();
        let state = self.lock();
        Ok(state
            .logs
            .iter()
            .filter(|(_, log)| log.live_clients(now).next().is_some())
            .map(|(user, _)| user.clone())
            .collect())
    }

    async fn live_clients(&self, user: &UserId) -> Result<Vec<ClientId>, StorageError> {
        let now = now_millis();
        let state = self.lock();
        Ok(state
            .logs
            .get(user)
            .map(|log| log.live_clients(now).cloned().collect())
            .unwrap_or_default())
    }

    async fn reap(&self) -> Result<Vec<Departure>, StorageError> {
        let now = now_millis();
        let mut state = self.lock();
        let mut departures = Vec::new();
        let mut removed = Vec::new();
        for (user, log) in &mut state.logs {
            let expired: Vec<ClientId> = log
                .clients
                .iter()
                .filter(|(_, r)| r.seen_until <= now)
                .map(|(c, _)| c.clone())
                .collect();
            // Only clients that polled arrived, so only they depart; the rest just go.
            let mut departed = Vec::new();
            for client in expired {
                if log.clients.remove(&client).is_some_and(|r| r.polled) {
                    departed.push(client.clone());
                }
                removed.push(Member::Client(user.clone(), client));
            }
            let offline = !departed.is_empty() && !log.clients.values().any(|r| r.polled);
            let last = departed.len().saturating_sub(1);
            for (i, client) in departed.into_iter().enumerate() {
                departures.push(Departure {
                    user: user.clone(),
                    client,
                    user_went_offline: offline && i == last,
                });
            }
        }
        for member in &removed {
            state.remove_member_everywhere(member);
        }
        for d in departures.iter().filter(|d| d.user_went_offline) {
            state.user_data.remove(&d.user);
        }
        Ok(departures)
    }

    async fn join(
        &self,
        room: &str,
        member: &Member,
        presence_ttl: Duration,
    ) -> Result<(), StorageError> {
        let mut state = self.lock();
        if let Member::Client(user, client) = member {
            state.touch_unpolled(user, client, presence_ttl);
        }
        state
            .rooms
            .entry(room.into())
            .or_default()
            .insert(member.clone());
        Ok(())
    }

    async fn leave(&self, room: &str, member: &Member) -> Result<(), StorageError> {
        let mut state = self.lock();
        if let Some(members) = state.rooms.get_mut(room) {
            members.remove(member);
            if members.is_empty() {
                state.rooms.remove(room);
            }
        }
        Ok(())
    }

    async fn members(&self, room: &str) -> Result<Vec<Member>, StorageError> {
        Ok(self
            .lock()
            .rooms
            .get(room)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn rooms(&self, member: &Member) -> Result<Vec<Arc<str>>, StorageError> {
        Ok(self
            .lock()
            .rooms
            .iter()
            .filter(|(_, members)| members.contains(member))
            .map(|(room, _)| room.clone())
            .collect())
    }

    async fn set_data(
        &self,
        member: &Member,
        key: &str,
        value: Option<&str>,
        presence_ttl: Duration,
    ) -> Result<(), StorageError> {
        let mut state = self.lock();
        let bag = match member {
            Member::User(user) => state.user_data.entry(user.clone()).or_default(),
            Member::Client(user, client) => {
                &mut state.touch_unpolled(user, client, presence_ttl).data
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
        Ok(())
    }

    async fn get_data(&self, member: &Member, key: &str) -> Result<Option<String>, StorageError> {
        let state = self.lock();
        Ok(match member {
            Member::User(user) => state.user_data.get(user).and_then(|d| d.get(key)).cloned(),
            Member::Client(user, client) => state
                .logs
                .get(user)
                .and_then(|log| log.clients.get(client))
                .and_then(|r| r.data.get(key))
                .cloned(),
        })
    }

    async fn publish(&self, signal: Signal) -> Result<(), StorageError> {
        self.signal(signal);
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.shared.signals.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fresh() -> MemoryStorage {
        MemoryStorage::new()
    }

    crate::storage_conformance_tests!(fresh);
}
