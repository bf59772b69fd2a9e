//! The tables of a [`DurableStorage`](super::DurableStorage)'s file, and how one journaled
//! change is written to them.
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `format`, `epoch`, `last_pos`, `next_payload`, `log_tag`, `log_seq` | bytes |
//! | `messages` | position (8 bytes, big-endian), user | a message record ([`MessageRecord`]) |
//! | `payloads` | payload id | the JSON payload shared by a fan-out's messages |
//! | `payload_refs` | payload id | how many messages refer to it |
//! | `clients` | (user, client) | polled, presence TTL, namespaces |
//! | `cursors` | (user, client) | (cursor, vouched): see below |
//! | `watermarks` | (user, namespace) | position |
//! | `data` | (user, client or `""` for the user's own, key) | JSON text |
//! | `dedup` | (user, client, message id) | claim number, owner, until, outcome |
//! | `rooms` | (room, user, client or `""` for the whole user) | nothing |
//! | `origins` | (user, origin of a send) | (position, until) |
//! | `acks` | (user, position) | an ack record: expiry, addressed client, replies |
//!
//! A poll that confirms writes one row of 16 bytes, its client's `cursors` row: the cursor, and
//! the highest position the client confirmed for its namespaces (*vouched*), which every
//! watermark of them is at least. So watermarks are not written on every confirmation: a
//! watermark is the highest of its `watermarks` row and what the clients reading its namespace
//! vouch for, and its row is written only when a client that vouched for it stops reading it
//! (its namespaces change, or it is reaped). A client's record is rewritten only when it is
//! made, first polls, or its namespaces change.

use std::collections::VecDeque;
use std::sync::Arc;

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};
use serde_json::value::RawValue;

use super::codec::{self, MessageRecord, Payload};
use crate::storage::Member;
use crate::storage::memory::journal::Change;

pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Keyed by position first: positions follow the clock, so the messages a batch stores sit
/// together at the end of the table and those it removes (delivered, in the order they were
/// sent) near its start, a few pages for the whole batch, not a page or two per user. The key
/// is plain bytes ([`message_key`]): compared as they are, and made without allocating, where
/// a redb tuple is serialised into a new buffer for every lookup.
pub(super) const MESSAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("messages");
pub(super) const PAYLOADS: TableDefinition<u64, &str> = TableDefinition::new("payloads");
pub(super) const PAYLOAD_REFS: TableDefinition<u64, u64> = TableDefinition::new("payload_refs");
pub(super) const CLIENTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("clients");
pub(super) const CURSORS: TableDefinition<(&str, &str), (u64, u64)> =
    TableDefinition::new("cursors");
pub(super) const WATERMARKS: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("watermarks");
pub(super) const DATA: TableDefinition<(&str, &str, &str), &str> = TableDefinition::new("data");
pub(super) const DEDUP: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("dedup");
pub(super) const ROOMS: TableDefinition<(&str, &str, &str), ()> = TableDefinition::new("rooms");
pub(super) const ORIGINS: TableDefinition<(&str, &str), (u64, u64)> =
    TableDefinition::new("origins");
pub(super) const ACKS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("acks");

/// The file format this code writes; a file with another is not read. 3: a write-ahead log
/// beside the file (`log_tag`, `log_seq` in `meta`), which a version that does not read it must
/// not open; a file of 2 is given a log when opened. 2: cursors in a table of their own,
/// watermarks vouched for by them, messages keyed by position first (1 kept cursors in client
/// records, wrote every watermark, and keyed messages by user first).
pub(super) const FORMAT: u8 = 3;

/// Payloads at least this long are stored once per fan-out, in `payloads`; shorter ones are
/// cheaper inline than the lookup.
pub(super) const SHARE_FROM: usize = 256;

/// A message's key into `buf`: its position, 8 bytes big-endian so that keys sort by it, then
/// its user.
fn message_key(buf: &mut Vec<u8>, pos: u64, user: &str) {
    buf.clear();
    buf.extend_from_slice(&pos.to_be_bytes());
    buf.extend_from_slice(user.as_bytes());
}

/// A message's key read back: its position and user; `None` if damaged.
pub(super) fn split_message_key(key: &[u8]) -> Option<(u64, &str)> {
    let (pos, user) = key.split_at_checked(8)?;
    Some((
        u64::from_be_bytes(pos.try_into().ok()?),
        std::str::from_utf8(user).ok()?,
    ))
}

/// The client part of a key: a client's id, or `""` for the user as a whole (client ids are
/// never empty).
fn member_parts(member: &Member) -> (&str, &str) {
    match member {
        Member::User(user) => (user.as_str(), ""),
        Member::Client(user, client) => (user.as_str(), client.as_str()),
    }
}

/// The string right after `s`: `s` followed by U+0000 sorts after `s` and before every other
/// string greater than `s`, so `(s, "")..(next(s), "")` holds exactly the tuple keys whose
/// first element is `s`.
fn next(s: &str) -> String {
    let mut n = String::with_capacity(s.len() + 1);
    n.push_str(s);
    n.push('\0');
    n
}

/// The payload ids a writer gave the latest shared payloads: the later chunks of a fan-out
/// refer to the payload its first chunk stored. Holding each `Arc` keeps its address from being
/// reused by another payload while it is remembered.
#[derive(Clone, Default)]
pub(super) struct PayloadIds {
    recent: VecDeque<(Arc<RawValue>, u64)>,
    pub(super) next: u64,
}

const PAYLOADS_REMEMBERED: usize = 64;

impl PayloadIds {
    pub(super) fn starting_at(next: u64) -> Self {
        PayloadIds {
            next,
            ..PayloadIds::default()
        }
    }

    fn find(&self, data: &Arc<RawValue>) -> Option<u64> {
        self.recent
            .iter()
            .find(|(d, _)| Arc::ptr_eq(d, data))
            .map(|(_, id)| *id)
    }

    fn forget(&mut self, id: u64) {
        self.recent.retain(|(_, i)| *i != id);
    }
}

/// A table of [`Open`], once opened.
type Slot<'t, K, V> = Option<Table<'t, K, V>>;
/// Keys of two and of three strings.
type Two = (&'static str, &'static str);
type Three = (&'static str, &'static str, &'static str);

/// The tables of one write transaction, each opened when first written: a batch of direct
/// messages writes three of the twelve, and opening one (a lookup in redb's table tree, its
/// type checked) costs about as much as writing a record.
pub(super) struct Open<'t> {
    txn: &'t WriteTransaction,
    meta: Slot<'t, &'static str, &'static [u8]>,
    messages: Slot<'t, &'static [u8], &'static [u8]>,
    payloads: Slot<'t, u64, &'static str>,
    payload_refs: Slot<'t, u64, u64>,
    clients: Slot<'t, Two, &'static [u8]>,
    cursors: Slot<'t, Two, (u64, u64)>,
    watermarks: Slot<'t, Two, u64>,
    data: Slot<'t, Three, &'static str>,
    dedup: Slot<'t, Three, &'static [u8]>,
    rooms: Slot<'t, Three, ()>,
    origins: Slot<'t, Two, (u64, u64)>,
    acks: Slot<'t, (&'static str, u64), &'static [u8]>,
    /// Where each message record and key is encoded: buffers for the whole transaction.
    scratch: codec::Writer,
    key: Vec<u8>,
}

/// The accessor of a table of [`Open`], opening it on first use.
macro_rules! table {
    ($name:ident, $def:ident, $k:ty, $v:ty) => {
        pub(super) fn $name(&mut self) -> Result<&mut Table<'t, $k, $v>, redb::Error> {
            Ok(match &mut self.$name {
                Some(table) => table,
                slot @ None => slot.insert(self.txn.open_table($def)?),
            })
        }
    };
}

impl<'t> Open<'t> {
    /// No table open yet.
    pub(super) fn new(txn: &'t WriteTransaction) -> Self {
        Open {
            txn,
            meta: None,
            messages: None,
            payloads: None,
            payload_refs: None,
            clients: None,
            cursors: None,
            watermarks: None,
            data: None,
            dedup: None,
            rooms: None,
            origins: None,
            acks: None,
            scratch: codec::Writer::default(),
            key: Vec::new(),
        }
    }

    /// Opens every table, making them in a new file: a file is read back whole, table by table.
    pub(super) fn make_all(&mut self) -> Result<(), redb::Error> {
        self.meta()?;
        self.messages()?;
        self.payloads()?;
        self.payload_refs()?;
        self.clients()?;
        self.cursors()?;
        self.watermarks()?;
        self.data()?;
        self.dedup()?;
        self.rooms()?;
        self.origins()?;
        self.acks()?;
        Ok(())
    }

    table!(meta, META, &'static str, &'static [u8]);
    table!(messages, MESSAGES, &'static [u8], &'static [u8]);
    table!(payloads, PAYLOADS, u64, &'static str);
    table!(payload_refs, PAYLOAD_REFS, u64, u64);
    table!(clients, CLIENTS, Two, &'static [u8]);
    table!(cursors, CURSORS, Two, (u64, u64));
    table!(watermarks, WATERMARKS, Two, u64);
    table!(data, DATA, Three, &'static str);
    table!(dedup, DEDUP, Three, &'static [u8]);
    table!(rooms, ROOMS, Three, ());
    table!(origins, ORIGINS, Two, (u64, u64));
    table!(acks, ACKS, (&'static str, u64), &'static [u8]);
}

/// Writes one change.
pub(super) fn apply(
    t: &mut Open<'_>,
    change: &Change,
    payloads: &mut PayloadIds,
) -> Result<(), redb::Error> {
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
            let payload = if data.get().len() >= SHARE_FROM {
                let id = match payloads.find(data) {
                    Some(id) => id,
                    None => {
                        let id = payloads.next;
                        payloads.next += 1;
                        t.payloads()?.insert(id, data.get())?;
                        payloads.recent.push_back((data.clone(), id));
                        if payloads.recent.len() > PAYLOADS_REMEMBERED {
                            payloads.recent.pop_front();
                        }
                        id
                    }
                };
                let count = t.payload_refs()?.get(id)?.map_or(0, |c| c.value());
                t.payload_refs()?.insert(id, count + 1)?;
                Payload::Shared(id)
            } else {
                Payload::Inline(data.get())
            };
            let record = MessageRecord {
                expires_at: *expires_at,
                client: client.clone(),
                sender: sender.clone(),
                namespace,
                event,
                payload,
                ack: *ack,
            };
            let (mut scratch, mut key) =
                (std::mem::take(&mut t.scratch), std::mem::take(&mut t.key));
            record.encode_into(&mut scratch);
            message_key(&mut key, *pos, user.as_str());
            t.messages()?.insert(key.as_slice(), scratch.0.as_slice())?;
            (t.scratch, t.key) = (scratch, key);
        }
        Change::Unmessage { user, pos } => {
            let mut key = std::mem::take(&mut t.key);
            message_key(&mut key, *pos, user.as_str());
            let shared = match t.messages()?.remove(key.as_slice())? {
                Some(bytes) => MessageRecord::shared_payload(bytes.value())
                    .map_err(|e| redb::Error::Corrupted(e.to_string()))?,
                None => None,
            };
            t.key = key;
            if let Some(id) = shared {
                let count = t.payload_refs()?.get(id)?.map_or(0, |c| c.value());
                if count <= 1 {
                    t.payload_refs()?.remove(id)?;
                    t.payloads()?.remove(id)?;
                    payloads.forget(id);
                } else {
                    t.payload_refs()?.insert(id, count - 1)?;
                }
            }
        }
        Change::Client {
            user,
            client,
            polled,
            namespaces,
            presence_ttl,
        } => {
            let record = codec::encode_client(*polled, *presence_ttl, namespaces);
            t.clients()?
                .insert((user.as_str(), client.as_str()), record.as_slice())?;
        }
        Change::Cursor {
            user,
            client,
            cursor,
            vouched,
        } => {
            t.cursors()?
                .insert((user.as_str(), client.as_str()), (*cursor, *vouched))?;
        }
        Change::Unclient { user, client } => {
            t.clients()?.remove((user.as_str(), client.as_str()))?;
            t.cursors()?.remove((user.as_str(), client.as_str()))?;
            let after = next(client.as_str());
            t.data()?.retain_in(
                (user.as_str(), client.as_str(), "")..(user.as_str(), after.as_str(), ""),
                |_, _| false,
            )?;
        }
        Change::Watermark {
            user,
            namespace,
            pos,
        } => {
            t.watermarks()?
                .insert((user.as_str(), &**namespace), *pos)?;
        }
        Change::Unlog { user } => {
            let after = next(user.as_str());
            t.watermarks()?
                .retain_in((user.as_str(), "")..(after.as_str(), ""), |_, _| false)?;
        }
        Change::Data { member, key, value } => {
            let (user, client) = member_parts(member);
            match value {
                Some(v) => {
                    t.data()?.insert((user, client, key.as_str()), v.as_str())?;
                }
                None => {
                    t.data()?.remove((user, client, key.as_str()))?;
                }
            }
        }
        Change::Undata { user } => {
            t.data()?.retain_in(
                (user.as_str(), "", "")..(user.as_str(), "\0", ""),
                |_, _| false,
            )?;
        }
        Change::Dedup {
            key,
            seq,
            owner,
            until,
            outcome,
        } => {
            let record = codec::encode_dedup(*seq, *owner, *until, outcome.as_deref());
            t.dedup()?.insert(
                (key.user.as_str(), key.client.as_str(), key.id.as_str()),
                record.as_slice(),
            )?;
        }
        Change::Undedup { key } => {
            t.dedup()?
                .remove((key.user.as_str(), key.client.as_str(), key.id.as_str()))?;
        }
        Change::Origin {
            user,
            origin,
            pos,
            until,
        } => {
            t.origins()?
                .insert((user.as_str(), &**origin), (*pos, *until))?;
        }
        Change::Unorigin { user, origin } => {
            t.origins()?.remove((user.as_str(), &**origin))?;
        }
        Change::Ack {
            user,
            pos,
            client,
            expires_at,
            replies,
        } => {
            let record = codec::encode_ack(*expires_at, client.as_ref(), replies);
            t.acks()?.insert((user.as_str(), *pos), record.as_slice())?;
        }
        Change::Unack { user, pos } => {
            t.acks()?.remove((user.as_str(), *pos))?;
        }
        Change::Join { room, member } => {
            let (user, client) = member_parts(member);
            t.rooms()?.insert((&**room, user, client), ())?;
        }
        Change::Leave { room, member } => {
            let (user, client) = member_parts(member);
            t.rooms()?.remove((&**room, user, client))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_key_sorts_by_position_and_reads_back() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        message_key(&mut a, 255, "zed");
        message_key(&mut b, 256, "amy");
        assert!(a < b, "keys do not sort by position first");
        assert_eq!(split_message_key(&b), Some((256, "amy")));
        assert_eq!(split_message_key(&b[..7]), None);
        assert_eq!(split_message_key(&[0, 0, 0, 0, 0, 0, 0, 1, 0xff]), None);
    }
}
