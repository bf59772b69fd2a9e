//! [`MemoryStorage`]: everything in this process's memory. The default, and the reference
//! implementation of the [`Storage`] contract.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{
    AppendOutcome, Appended, Claim, DedupKey, DeliveryState, DeliveryTarget, Epoch, FetchBatch,
    FetchRequest, Millis, NewMessage, Position, Signal, Storage, StorageError, StoredMessage,
    now_millis,
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
    last_sweep: Millis,
}

#[derive(Debug, Default)]
struct UserLog {
    /// Unexpired messages in position order.
    messages: VecDeque<Entry>,
    /// The highest cursor any client of this user confirmed.
    watermark: Position,
    clients: HashMap<ClientId, ClientRecord>,
}

#[derive(Debug)]
struct Entry {
    pos: Position,
    client: Option<ClientId>,
    message: StoredMessage,
    expires_at: Millis,
}

#[derive(Debug)]
struct ClientRecord {
    cursor: Position,
    /// The client counts as live until then.
    seen_until: Millis,
}

#[derive(Debug)]
enum DedupRecord {
    InProgress { until: Millis },
    Done { outcome: String, until: Millis },
}

impl Entry {
    fn is_delivered(&self, log: &UserLog) -> bool {
        match &self.client {
            None => self.pos <= log.watermark,
            Some(c) => log.clients.get(c).is_some_and(|r| r.cursor >= self.pos),
        }
    }
}

impl UserLog {
    fn head(&self) -> Position {
        self.messages.back().map_or(0, |e| e.pos)
    }

    fn drop_expired(&mut self, now: Millis) {
        self.messages.retain(|e| e.expires_at > now);
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
    fn start_for_new_client(&self, client: &ClientId) -> Position {
        let earliest_addressed = self
            .messages
            .iter()
            .find(|e| e.client.as_ref() == Some(client))
            .map(|e| e.pos - 1);
        earliest_addressed.map_or(self.watermark, |p| p.min(self.watermark))
    }

    fn is_removable(&self, now: Millis) -> bool {
        self.messages.is_empty() && self.clients.values().all(|c| c.seen_until <= now)
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
    /// Removes expired messages, dedup records and idle users, at most once per `SWEEP_EVERY`.
    fn maybe_sweep(&mut self, now: Millis) {
        if now.saturating_sub(self.last_sweep) < SWEEP_EVERY {
            return;
        }
        self.last_sweep = now;
        self.logs.retain(|_, log| {
            log.drop_expired(now);
            let live_or_addressed = |c: &ClientId, r: &ClientRecord| {
                r.seen_until > now || log.messages.iter().any(|e| e.client.as_ref() == Some(c))
            };
            let keep: Vec<ClientId> = log
                .clients
                .iter()
                .filter(|(c, r)| live_or_addressed(c, r))
                .map(|(c, _)| c.clone())
                .collect();
            log.clients.retain(|c, _| keep.contains(c));
            !log.is_removable(now)
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
                pos,
                client: m.client,
                message: StoredMessage {
                    pos,
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
        for user in woken {
            self.signal(Signal::Appended { user });
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

        let mut advanced = false;
        let start = match req.cursor {
            Some((e, cursor)) if e == epoch => {
                let confirmed = cursor.min(head);
                let record = log
                    .clients
                    .entry(req.client.clone())
                    .or_insert(ClientRecord {
                        cursor: 0,
                        seen_until,
                    });
                // A client's own cursor confirms messages addressed to it even when another
                // client already moved the watermark past them, so its advance is a
                // confirmation too: its senders must be woken.
                if confirmed > record.cursor {
                    record.cursor = confirmed;
                    advanced = true;
                }
                if confirmed > log.watermark {
                    log.watermark = confirmed;
                    advanced = true;
                }
                cursor
            }
            _ => match log.clients.get(&req.client) {
                Some(record) => record.cursor,
                None => {
                    let start = log.start_for_new_client(&req.client);
                    log.clients.insert(
                        req.client.clone(),
                        ClientRecord {
                            cursor: start,
                            seen_until,
                        },
                    );
                    start
                }
            },
        };
        if let Some(record) = log.clients.get_mut(&req.client) {
            record.seen_until = seen_until;
        }

        let mut messages = Vec::new();
        let mut cursor = start.max(head);
        for e in log.messages.iter().filter(|e| e.pos > start) {
            if messages.len() == req.limit {
                cursor = messages.last().map_or(start, |m: &StoredMessage| m.pos);
                break;
            }
            if e.client.as_ref().is_none_or(|c| *c == req.client) {
                messages.push(e.message.clone());
            }
        }
        drop(state);
        if advanced {
            self.signal(Signal::Confirmed { user: req.user });
        }
        Ok(FetchBatch {
            epoch,
            cursor,
            messages,
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
                    None => log.watermark,
                    Some(c) => log.clients.get(c).map_or(0, |r| r.cursor),
                };
                if t.pos <= confirmed {
                    DeliveryState::Delivered
                } else if log
                    .messages
                    .iter()
                    .any(|e| e.pos == t.pos && e.expires_at > now)
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
            .filter(|(_, log)| log.clients.values().any(|c| c.seen_until > now))
            .map(|(user, _)| user.clone())
            .collect())
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
