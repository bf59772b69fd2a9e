//! Building a journaled [`MemoryStorage`] back from what a durable storage kept: the same
//! [`Change`]s it journaled, replayed without being journaled again.

use std::sync::{Arc, Weak};

use super::journal::{Change, Journal};
use super::log::{ClientRecord, Entry, PRESENCE_STEP};
use super::{MemoryStorage, SHARDS, Shard, Shared};
use crate::storage::{Epoch, Member, Millis, Position, StoredMessage, now_millis};

/// What a durable storage read back: its epoch, the highest position it ever handed out, and
/// its records as changes (messages, clients, watermarks, data, dedup records, memberships;
/// a client's record before its cursor and data).
#[derive(Debug, Default)]
pub(crate) struct Restored {
    pub(crate) epoch: Option<Epoch>,
    pub(crate) last_pos: Position,
    pub(crate) changes: Vec<Change>,
}

/// A handle that does not keep the storage alive: the journal's thread holds one, so that it
/// stops when the storage goes.
#[derive(Debug)]
pub(crate) struct WeakMemory(Weak<Shared>);

impl WeakMemory {
    pub(crate) fn upgrade(&self) -> Option<MemoryStorage> {
        self.0.upgrade().map(|shared| MemoryStorage { shared })
    }
}

impl MemoryStorage {
    pub(crate) fn downgrade(&self) -> WeakMemory {
        WeakMemory(Arc::downgrade(&self.shared))
    }

    /// A storage holding `restored`, whose later changes and signals go to `journal`.
    pub(crate) fn journaled(restored: Restored, journal: Arc<dyn Journal>) -> MemoryStorage {
        let epoch = restored.epoch.clone().unwrap_or_else(Epoch::random);
        let storage = MemoryStorage::with_journal(epoch, Some(journal));
        storage.replace(restored, || {});
        storage
    }

    /// Replaces everything with `restored` (after the journal failed to keep changes that this
    /// storage had already made); `under_lock` runs while no operation can run.
    pub(crate) fn replace(&self, restored: Restored, under_lock: impl FnOnce()) {
        let mut epoch = self.shared.epoch.write().unwrap_or_else(|p| p.into_inner());
        let mut shards: Vec<_> = (0..SHARDS).map(|i| self.shard(i)).collect();
        let mut rooms = self.rooms();
        for shard in shards.iter_mut() {
            **shard = Shard {
                last_pos: restored.last_pos,
                ..Shard::default()
            };
        }
        rooms.clear();
        if let Some(e) = restored.epoch {
            *epoch = e;
        }
        let now = now_millis();
        let mut joins = Vec::new();
        for change in restored.changes {
            match change {
                Change::Join { room, member } => joins.push((room, member)),
                change => {
                    let user = match &change {
                        Change::Message { user, .. }
                        | Change::Client { user, .. }
                        | Change::Cursor { user, .. }
                        | Change::Watermark { user, .. } => user,
                        Change::Dedup { key, .. } => &key.user,
                        Change::Origin { user, .. } | Change::Ack { user, .. } => user,
                        Change::Data { member, .. } => member.user(),
                        _ => continue,
                    };
                    let index = self.shard_of(user);
                    shards[index].restore(change, now);
                }
            }
        }
        // A client's memberships only with the client: `reap` journals a lapsed client's
        // removal and its leaving its rooms in steps, and a crash between the two (or a write
        // that failed) would otherwise bring back a member nothing reaps any more. Its leaving
        // is journaled now (below), or the record would come back with the client's id, should
        // it poll again.
        let mut lost = Vec::new();
        for (room, member) in joins {
            let known = match &member {
                Member::User(_) => true,
                Member::Client(user, client) => shards[self.shard_of(user)]
                    .logs
                    .get(user)
                    .is_some_and(|log| log.clients.contains_key(client)),
            };
            if known {
                rooms.join(&room, &member);
            } else {
                lost.push((room, member));
            }
        }
        for shard in shards.iter_mut() {
            shard.changes.set_recording(true);
            shard.dedup.changes.set_recording(true);
            shard.origins.changes.set_recording(true);
            shard.acks.changes.set_recording(true);
        }
        rooms.changes.set_recording(true);
        for (room, member) in lost {
            rooms.changes.push(|| Change::Leave { room, member });
        }
        under_lock();
        // Nothing replayed is journaled again: the guards drop with empty change lists, but for
        // the lost memberships left above.
    }
}

impl Shard {
    /// Puts one kept record back.
    fn restore(&mut self, change: Change, now: Millis) {
        match change {
            Change::Message {
                user,
                pos,
                client,
                sender,
                namespace,
                event,
                data,
                expires_at,
                ack,
            } => {
                self.last_pos = self.last_pos.max(pos);
                self.expiries.insert(expires_at, pos, user.clone());
                self.logs.entry(user).or_default().insert(Entry {
                    client,
                    sender,
                    message: StoredMessage {
                        pos,
                        ns: namespace,
                        event,
                        data,
                        ack,
                    },
                    expires_at,
                });
            }
            Change::Client {
                user,
                client,
                polled,
                namespaces,
                presence_ttl,
            } => {
                // Seen now: a client that does not come back within its TTL is reaped (and its
                // departure reported) as if the process had never stopped.
                let seen_until = now.saturating_add(presence_ttl);
                self.presence
                    .insert((seen_until, user.clone(), client.clone()));
                let log = self.logs.entry(user.clone()).or_default();
                if polled && seen_until >= log.online_indexed.saturating_add(PRESENCE_STEP) {
                    self.online.remove(&(log.online_indexed, user.clone()));
                    log.online_indexed = seen_until;
                    self.online.insert((seen_until, user));
                }
                log.clients.insert(
                    client,
                    ClientRecord {
                        seen_until,
                        indexed_until: seen_until,
                        polled,
                        namespaces: namespaces.into(),
                        ..ClientRecord::default()
                    },
                );
            }
            Change::Cursor {
                user,
                client,
                cursor,
                vouched,
            } => {
                // After its client's record; one without is left out, as it would have gone
                // with the record.
                let Some(log) = self.logs.get_mut(&user) else {
                    return;
                };
                let Some(record) = log.clients.get_mut(&client) else {
                    return;
                };
                record.cursor = cursor;
                record.vouched = vouched;
                // The watermarks of its namespaces are at least what it vouched for.
                let namespaces = record.namespaces.clone();
                for ns in namespaces.iter() {
                    log.raise_watermark(ns, vouched);
                }
                // The log's last position bounds confirmations; its messages may all have been
                // trimmed, but no client's cursor is past it.
                log.last = log.last.max(cursor).max(vouched);
            }
            Change::Watermark {
                user,
                namespace,
                pos,
            } => {
                let log = self.logs.entry(user).or_default();
                log.last = log.last.max(pos);
                log.raise_watermark(&namespace, pos);
            }
            Change::Data {
                member,
                key,
                value: Some(value),
            } => match member {
                Member::User(user) => {
                    self.user_data.entry(user).or_default().insert(key, value);
                }
                Member::Client(user, client) => {
                    if let Some(record) = self
                        .logs
                        .get_mut(&user)
                        .and_then(|log| log.clients.get_mut(&client))
                    {
                        record
                            .data
                            .get_or_insert_with(Box::default)
                            .insert(key, value);
                    }
                }
            },
            Change::Dedup {
                key,
                seq,
                owner,
                until,
                outcome,
            } => self.dedup.restore(&key, outcome, until, owner, seq),
            Change::Origin {
                user,
                origin,
                pos,
                until,
            } => self.origins.restore(user, origin, pos, until),
            Change::Ack {
                user,
                pos,
                client,
                expires_at,
                replies,
            } => self.acks.restore(user, pos, client, expires_at, replies),
            _ => {}
        }
    }
}
