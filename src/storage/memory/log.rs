//! One user's log, cursors and watermarks: every lookup by position, never a scan from the
//! start, so a long history costs nothing per call.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;

use super::super::{Millis, Position, StoredMessage};
use super::clients::Clients;
use super::messages::Messages;
use crate::hash::HashMap;
use crate::id::{ClientId, UserId};

/// How far a client's presence may run ahead of its place in the presence index: a poll moves
/// the index (two ordered-set operations) only once per step, not on every poll.
pub(super) const PRESENCE_STEP: Millis = 1_000;

/// The most entries a full log looks at, from its oldest, for one to evict: a full queue stays
/// a bounded cost per append, at the price of refusing when the oldest are all undelivered.
const EVICT_SCAN: usize = 64;

#[derive(Debug, Default)]
pub(super) struct UserLog {
    /// Unexpired messages (and expired ones not swept yet), by position.
    pub(super) messages: Messages,
    /// Indexes of messages to one client or sent on someone's behalf: most users never get
    /// one, so they are made with the first.
    rare: Option<Box<Rare>>,
    /// Bytes of `data` of every message held.
    pub(super) bytes: usize,
    /// The last position given to this user; confirmations never go beyond it.
    pub(super) last: Position,
    /// Per namespace, the highest cursor any client subscribed to it confirmed. Namespaces are
    /// the application's, so the list is short (and usually one).
    watermarks: Vec<(Arc<str>, Position)>,
    pub(super) clients: Clients,
    /// Messages up to here were looked at for trimming already; the undelivered ones among
    /// them stay until they expire.
    trimmed_to: Position,
    /// The user's time in the shard's online index (0: not in it): at most the latest
    /// seen-until of their polled clients, and less than [`PRESENCE_STEP`] below it.
    pub(super) online_indexed: Millis,
}

#[derive(Debug, Default)]
struct Rare {
    /// Positions of messages addressed to one client, per client: where a new client starts.
    addressed: HashMap<ClientId, BTreeSet<Position>>,
    /// Messages sent on a user's behalf, per sender: each sender's share.
    by_sender: HashMap<UserId, Share>,
}

/// One sender's messages in a log.
#[derive(Debug, Default)]
struct Share {
    positions: BTreeSet<Position>,
    bytes: usize,
}

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) client: Option<ClientId>,
    pub(super) sender: Option<UserId>,
    pub(super) message: StoredMessage,
    pub(super) expires_at: Millis,
}

#[derive(Debug, Default)]
pub(super) struct ClientRecord {
    pub(super) cursor: Position,
    /// The highest position it confirmed since its namespaces were last set: every watermark of
    /// them is at least this. A durable storage derives watermarks from it (see
    /// `Change::Cursor`).
    pub(super) vouched: Position,
    /// The client counts as live until then; past it, `reap` removes the record.
    pub(super) seen_until: Millis,
    /// Its time in the shard's presence index: at most `seen_until`, and less than
    /// [`PRESENCE_STEP`] below it (the index moves in steps, not on every poll).
    pub(super) indexed_until: Millis,
    /// It fetched at least once. A record made only by `join` or `set_data` is not live, and
    /// its arrival is still to be reported.
    pub(super) polled: bool,
    pub(super) namespaces: Arc<[Arc<str>]>,
    /// Data attached to the client, by key; made with the first.
    pub(super) data: Option<Box<HashMap<String, String>>>,
}

impl Entry {
    /// What it counts for in its queue's byte limits.
    pub(super) fn size(&self) -> usize {
        self.message.data.get().len()
    }
}

impl ClientRecord {
    pub(super) fn reads(&self, ns: &str) -> bool {
        self.namespaces.iter().any(|n| &**n == ns)
    }

    pub(super) fn is_live(&self, now: Millis) -> bool {
        self.polled && self.seen_until > now
    }
}

impl UserLog {
    pub(super) fn watermark(&self, ns: &str) -> Position {
        self.watermarks
            .iter()
            .find(|(n, _)| &**n == ns)
            .map_or(0, |(_, pos)| *pos)
    }

    /// Raises the watermark of `ns` to `to`; whether it moved.
    pub(super) fn raise_watermark(&mut self, ns: &Arc<str>, to: Position) -> bool {
        match self.watermarks.iter_mut().find(|(n, _)| n == ns) {
            Some((_, watermark)) => {
                let moved = to > *watermark;
                *watermark = (*watermark).max(to);
                moved
            }
            None => {
                self.watermarks.reserve_exact(1);
                self.watermarks.push((ns.clone(), to));
                to > 0
            }
        }
    }

    /// Whether the message at `pos` was confirmed by its recipient.
    pub(super) fn is_delivered(&self, entry: &Entry) -> bool {
        let pos = entry.message.pos;
        let ns = &entry.message.ns;
        match &entry.client {
            None => self.watermark(ns) >= pos,
            Some(c) => self
                .clients
                .get(c)
                .is_some_and(|r| r.cursor >= pos && r.reads(ns)),
        }
    }

    pub(super) fn insert(&mut self, entry: Entry) {
        let pos = entry.message.pos;
        if let Some(c) = &entry.client {
            let rare = self.rare.get_or_insert_with(Box::default);
            rare.addressed.entry(c.clone()).or_default().insert(pos);
        }
        let size = entry.size();
        if let Some(sender) = &entry.sender {
            let rare = self.rare.get_or_insert_with(Box::default);
            let share = rare.by_sender.entry(sender.clone()).or_default();
            share.positions.insert(pos);
            share.bytes += size;
        }
        self.bytes += size;
        self.last = self.last.max(pos);
        self.messages.insert(entry);
    }

    pub(super) fn remove(&mut self, pos: Position) -> Option<Entry> {
        let entry = self.messages.remove(&pos)?;
        unindex(&mut self.rare, &mut self.bytes, pos, &entry);
        Some(entry)
    }

    /// Removes the messages [`UserLog::trimmable`] gave (ascending positions, with their
    /// expiries) in one pass over the log.
    pub(super) fn remove_trimmed(&mut self, trimmed: &[(Position, Millis)]) {
        let UserLog {
            messages,
            rare,
            bytes,
            ..
        } = self;
        for &(pos, _) in trimmed {
            if let Some(entry) = messages.get(&pos) {
                unindex(rare, bytes, pos, entry);
            }
        }
        messages.remove_sorted(trimmed, |&(pos, _)| pos);
    }

    /// How many messages of `sender` the log holds, and their bytes of `data`.
    pub(super) fn held_for(&self, sender: &UserId) -> (usize, usize) {
        self.rare
            .as_ref()
            .and_then(|rare| rare.by_sender.get(sender))
            .map_or((0, 0), |share| (share.positions.len(), share.bytes))
    }

    /// One message of `sender` that can go to make room for another of theirs: expired, or
    /// delivered, among their oldest.
    pub(super) fn evictable_of(&self, sender: &UserId, now: Millis) -> Option<(Position, Millis)> {
        self.rare
            .as_ref()?
            .by_sender
            .get(sender)?
            .positions
            .iter()
            .take(EVICT_SCAN)
            .filter_map(|pos| self.messages.get(pos))
            .find(|e| e.expires_at <= now || self.is_delivered(e))
            .map(|e| (e.message.pos, e.expires_at))
    }

    /// One message that can go to make room: expired, or delivered, among the oldest.
    pub(super) fn evictable(&self, now: Millis) -> Option<(Position, Millis)> {
        self.messages
            .values()
            .take(EVICT_SCAN)
            .find(|e| e.expires_at <= now || self.is_delivered(e))
            .map(|e| (e.message.pos, e.expires_at))
    }

    /// Delivered messages that no client can read again: each client that polled is past
    /// them, and a new client starts at a watermark past them too. Each message is looked at
    /// once; returns the positions and expiries of those to remove.
    pub(super) fn trimmable(&mut self) -> Vec<(Position, Millis)> {
        let Some(lowest) = self
            .clients
            .values()
            .filter(|r| r.polled)
            .map(|r| r.cursor)
            .min()
        else {
            return Vec::new();
        };
        if lowest <= self.trimmed_to {
            return Vec::new();
        }
        let range = (Bound::Excluded(self.trimmed_to), Bound::Included(lowest));
        let out = self
            .messages
            .range(range)
            .filter(|e| self.is_delivered(e))
            .map(|e| (e.message.pos, e.expires_at))
            .collect();
        self.trimmed_to = lowest;
        out
    }

    /// Where a client seen for the first time starts reading (see `FetchRequest::cursor`).
    pub(super) fn start_for_new_client(
        &self,
        client: &ClientId,
        namespaces: &[Arc<str>],
    ) -> Position {
        let lowest_watermark = namespaces
            .iter()
            .map(|ns| self.watermark(ns))
            .min()
            .unwrap_or(0);
        let earliest_addressed = self
            .rare
            .as_ref()
            .and_then(|rare| rare.addressed.get(client))
            .and_then(|set| set.first())
            .map(|pos| pos - 1);
        earliest_addressed.map_or(lowest_watermark, |p| p.min(lowest_watermark))
    }

    /// Unexpired messages for `client` in `namespaces` after `start`, at most `limit`, and the
    /// cursor after them (see `FetchBatch::cursor`).
    pub(super) fn read(
        &self,
        client: &ClientId,
        namespaces: &[Arc<str>],
        start: Position,
        limit: usize,
        now: Millis,
    ) -> (Vec<StoredMessage>, Position) {
        let mut messages = Vec::new();
        let mut cursor = start.max(self.last);
        for entry in self
            .messages
            .range((Bound::Excluded(start), Bound::Unbounded))
        {
            if messages.len() == limit {
                cursor = messages.last().map_or(start, |m: &StoredMessage| m.pos);
                break;
            }
            let for_this_client = entry.client.as_ref().is_none_or(|c| c == client);
            if for_this_client && entry.expires_at > now && namespaces.contains(&entry.message.ns) {
                messages.push(entry.message.clone());
            }
        }
        (messages, cursor)
    }

    pub(super) fn live_clients(&self, now: Millis) -> impl Iterator<Item = &ClientId> {
        self.clients
            .iter()
            .filter(move |(_, r)| r.is_live(now))
            .map(|(c, _)| c)
    }

    pub(super) fn has_polled_client(&self) -> bool {
        self.clients.values().any(|r| r.polled)
    }

    pub(super) fn is_removable(&self) -> bool {
        self.messages.is_empty() && self.clients.is_empty()
    }
}

/// Takes a removed message out of the log's byte count and its rare indexes.
fn unindex(rare_slot: &mut Option<Box<Rare>>, bytes: &mut usize, pos: Position, entry: &Entry) {
    let size = entry.size();
    if let Some(rare) = rare_slot {
        if let Some(c) = &entry.client
            && let Some(set) = rare.addressed.get_mut(c)
        {
            set.remove(&pos);
            if set.is_empty() {
                rare.addressed.remove(c);
            }
        }
        if let Some(sender) = &entry.sender
            && let Some(share) = rare.by_sender.get_mut(sender)
        {
            share.positions.remove(&pos);
            share.bytes -= size;
            if share.positions.is_empty() {
                rare.by_sender.remove(sender);
            }
        }
        if rare.addressed.is_empty() && rare.by_sender.is_empty() {
            *rare_slot = None;
        }
    }
    *bytes -= size;
}
