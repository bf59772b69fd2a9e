//! The changes a [`MemoryStorage`](super::MemoryStorage) makes to what a durable storage keeps,
//! record by record, and the sink they go to. A plain `MemoryStorage` has no sink and records
//! nothing; a durable storage built on it writes each batch to disk before anyone may see it.
//!
//! Changes are recorded while the lock that guards the changed state is held, so that changes of
//! one record reach the sink in the order they were made. Presence (when a client was last
//! seen) is not recorded: it changes on every poll, and after a restart every client is given
//! its presence TTL afresh.

use std::fmt;
use std::sync::Arc;

use serde_json::value::RawValue;

use super::super::{DedupKey, Member, Millis, Position, Signal};
use crate::id::{ClientId, UserId};

/// One change to persisted state.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// A message was added to a user's log.
    Message {
        user: UserId,
        pos: Position,
        client: Option<ClientId>,
        sender: Option<UserId>,
        namespace: Arc<str>,
        event: Arc<str>,
        /// Shared by every message of one fan-out: the sink may store it once.
        data: Arc<RawValue>,
        expires_at: Millis,
        /// It asks for replies (its ack record is a change of its own, [`Change::Ack`]).
        ack: bool,
    },
    /// A message left a user's log (delivered and trimmed, expired, or evicted).
    Unmessage { user: UserId, pos: Position },
    /// A client's record was made, it polled for the first time, or its namespaces changed. Its
    /// cursor is a change of its own ([`Change::Cursor`]), made far more often.
    Client {
        user: UserId,
        client: ClientId,
        polled: bool,
        namespaces: Vec<Arc<str>>,
        /// How long it stays live without polling: what it is given again after a restart.
        presence_ttl: Millis,
    },
    /// A client's cursor moved, or what it vouches for (recorded after its [`Change::Client`]).
    Cursor {
        user: UserId,
        client: ClientId,
        cursor: Position,
        /// The highest position it confirmed for its namespaces: each of their watermarks is at
        /// least this, so a confirmation needs no [`Change::Watermark`] of its own. Watermarks
        /// are the highest of what their rows and the clients reading them vouch for.
        vouched: Position,
    },
    /// A client's record went, with its data and cursor.
    Unclient { user: UserId, client: ClientId },
    /// A watermark rose, or a client that vouched for it stopped reading it (its namespaces
    /// changed or it went): the watermark is then written as it stands.
    Watermark {
        user: UserId,
        namespace: Arc<str>,
        pos: Position,
    },
    /// A user's log went, with its watermarks (no message and no client was left).
    Unlog { user: UserId },
    /// A member's data was set (`Some`) or removed (`None`).
    Data {
        member: Member,
        key: String,
        value: Option<String>,
    },
    /// Every data of a user went (their last client was reaped).
    Undata { user: UserId },
    /// A dedup record was made or changed.
    Dedup {
        key: DedupKey,
        seq: u64,
        owner: u64,
        until: Millis,
        outcome: Option<Box<str>>,
    },
    /// A dedup record went.
    Undedup { key: DedupKey },
    /// A user's log remembered a send's origin (see `NewMessage::origin`).
    Origin {
        user: UserId,
        origin: Arc<str>,
        pos: Position,
        until: Millis,
    },
    /// It forgot one.
    Unorigin { user: UserId, origin: Arc<str> },
    /// An ack record was made or got a reply: its whole state (at most one reply per client).
    Ack {
        user: UserId,
        pos: Position,
        client: Option<ClientId>,
        expires_at: Millis,
        replies: Vec<(ClientId, Arc<RawValue>)>,
    },
    /// An ack record went (its message expired).
    Unack { user: UserId, pos: Position },
    /// A member joined a room.
    Join { room: Arc<str>, member: Member },
    /// A member left a room.
    Leave { room: Arc<str>, member: Member },
}

/// Where a journaled storage's changes and signals go.
pub(crate) trait Journal: Send + Sync + fmt::Debug {
    /// Takes a batch of changes, in the order they were made, leaving `changes` empty (its
    /// buffer stays with the caller, to be filled again without allocating). Called with the
    /// lock held that guards them.
    fn record(&self, changes: &mut Vec<Change>);

    /// Takes a signal, to be published once every change recorded before it is durable: no
    /// node may act on state that a crash could still take back.
    fn signal(&self, signal: Signal);
}

/// The changes one lock holder made, recorded only when the storage is journaled.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    on: bool,
    list: Vec<Change>,
}

impl Changes {
    pub(crate) fn set_recording(&mut self, on: bool) {
        self.on = on;
    }

    /// Records the change `make` builds, if recording.
    #[inline]
    pub(crate) fn push(&mut self, make: impl FnOnce() -> Change) {
        if self.on {
            self.list.push(make());
        }
    }

    /// Forgets the changes recorded since they were last handed over.
    pub(crate) fn clear(&mut self) {
        self.list.clear();
    }

    /// Moves the changes recorded into `other`'s list, after its own: both keep their buffers.
    pub(crate) fn append_to(&mut self, other: &mut Changes) {
        other.list.append(&mut self.list);
    }

    /// The changes recorded since they were last handed over, for [`Journal::record`].
    pub(crate) fn list(&mut self) -> &mut Vec<Change> {
        &mut self.list
    }
}
