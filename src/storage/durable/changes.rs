//! The byte form of the journal's changes ([`Change`]) in the frames of the write-ahead log kept
//! in front of the redb file.
//!
//! A frame's body is a count of changes (u64), then each change: a tag byte naming its
//! variant, then its fields in order, with the [`codec`](super::codec) primitives (numbers
//! big-endian, strings with a u32 length). Options are a presence byte (or a bit of a message's
//! flag byte). A fan-out's payload of [`SHARE_FROM`] bytes or more is written once per frame:
//! its later messages refer to it by index, and decoding gives them one `Arc` again, so that
//! the redb writer still stores it once.
//!
//! Decoding checks every tag, flag, length, id and JSON text, and that the bytes end with the
//! last change: damage is a [`StorageError::Corrupt`], never a panic.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::value::RawValue;

use super::codec::{Reader, Writer};
use super::tables::SHARE_FROM;
use crate::id::{MessageId, UserId};
use crate::storage::memory::journal::Change;
use crate::storage::{DedupKey, Member, StorageError};

// One tag per variant. Never renumbered: a log written by one version is read by the next.
const MESSAGE: u8 = 0;
const UNMESSAGE: u8 = 1;
const CLIENT: u8 = 2;
const CURSOR: u8 = 3;
const UNCLIENT: u8 = 4;
const WATERMARK: u8 = 5;
const UNLOG: u8 = 6;
const DATA: u8 = 7;
const UNDATA: u8 = 8;
const DEDUP: u8 = 9;
const UNDEDUP: u8 = 10;
const ORIGIN: u8 = 11;
const UNORIGIN: u8 = 12;
const ACK: u8 = 13;
const UNACK: u8 = 14;
const JOIN: u8 = 15;
const LEAVE: u8 = 16;

// A message's flag byte.
const HAS_CLIENT: u8 = 1;
const HAS_SENDER: u8 = 2;
const ASKS_ACK: u8 = 4;
/// The payload follows, and later messages of the frame may refer to it by its index (the
/// count of such payloads before it).
const SHARES_PAYLOAD: u8 = 8;
/// A u32 index of a payload written earlier in the frame follows, instead of the payload.
const REFERS_PAYLOAD: u8 = 16;
const FLAGS: u8 = HAS_CLIENT | HAS_SENDER | ASKS_ACK | SHARES_PAYLOAD | REFERS_PAYLOAD;

// A member's kind.
const USER: u8 = 0;
const USER_CLIENT: u8 = 1;

/// Appends `changes` to `out` (does not clear it).
pub(super) fn encode(changes: &[Change], out: &mut Vec<u8>) {
    // The caller's buffer, borrowed for the call: nothing is allocated but its growth.
    let mut w = Writer(std::mem::take(out));
    w.u64(changes.len() as u64);
    let mut shared = Shared::default();
    for change in changes {
        encode_one(&mut w, change, &mut shared);
    }
    *out = w.0;
}

/// The large payloads written so far in one frame, by address: every `Arc` is held by the
/// changes being encoded, so no address is reused during the call.
#[derive(Default)]
struct Shared<'a> {
    /// The latest one: a fan-out's messages are contiguous, so this is nearly always the hit,
    /// and a frame with one fan-out never allocates the map.
    last: Option<(&'a Arc<RawValue>, u32)>,
    /// The ones before it, for a frame whose fan-outs interleave.
    earlier: HashMap<*const RawValue, u32>,
    count: u32,
}

/// How a message's payload is written.
enum PayloadForm {
    /// Whole, for this message only.
    Inline,
    /// Whole, and given the next index for later messages to refer to.
    Shares,
    /// As the index of one written earlier in the frame.
    Refers(u32),
}

impl<'a> Shared<'a> {
    /// How to write `data`, a large payload: by index if written earlier in the frame.
    fn form(&mut self, data: &'a Arc<RawValue>) -> PayloadForm {
        if let Some((last, index)) = self.last
            && Arc::ptr_eq(last, data)
        {
            return PayloadForm::Refers(index);
        }
        let (form, index) = match self.earlier.get(&Arc::as_ptr(data)) {
            Some(&index) => (PayloadForm::Refers(index), index),
            // Indices ran out (4 billion large payloads in one frame): no harm in writing it.
            None if self.count == u32::MAX => return PayloadForm::Inline,
            None => {
                self.count += 1;
                (PayloadForm::Shares, self.count - 1)
            }
        };
        if let Some((last, last_index)) = self.last.replace((data, index)) {
            self.earlier.insert(Arc::as_ptr(last), last_index);
        }
        form
    }
}

fn encode_one<'a>(w: &mut Writer, change: &'a Change, shared: &mut Shared<'a>) {
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
            let form = if data.get().len() >= SHARE_FROM {
                shared.form(data)
            } else {
                PayloadForm::Inline
            };
            let mut flags = 0;
            if client.is_some() {
                flags |= HAS_CLIENT;
            }
            if sender.is_some() {
                flags |= HAS_SENDER;
            }
            if *ack {
                flags |= ASKS_ACK;
            }
            match form {
                PayloadForm::Inline => {}
                PayloadForm::Shares => flags |= SHARES_PAYLOAD,
                PayloadForm::Refers(_) => flags |= REFERS_PAYLOAD,
            }
            w.u8(MESSAGE).u8(flags).str(user.as_str()).u64(*pos);
            if let Some(c) = client {
                w.str(c.as_str());
            }
            if let Some(s) = sender {
                w.str(s.as_str());
            }
            w.str(namespace).str(event);
            match form {
                PayloadForm::Refers(index) => w.u32(index),
                PayloadForm::Inline | PayloadForm::Shares => w.str(data.get()),
            };
            w.u64(*expires_at);
        }
        Change::Unmessage { user, pos } => {
            w.u8(UNMESSAGE).str(user.as_str()).u64(*pos);
        }
        Change::Client {
            user,
            client,
            polled,
            namespaces,
            presence_ttl,
        } => {
            w.u8(CLIENT)
                .str(user.as_str())
                .str(client.as_str())
                .u8(*polled as u8)
                .u64(*presence_ttl)
                .u32(count(namespaces.len()));
            for ns in namespaces.iter().take(u32::MAX as usize) {
                w.str(ns);
            }
        }
        Change::Cursor {
            user,
            client,
            cursor,
            vouched,
        } => {
            w.u8(CURSOR)
                .str(user.as_str())
                .str(client.as_str())
                .u64(*cursor)
                .u64(*vouched);
        }
        Change::Unclient { user, client } => {
            w.u8(UNCLIENT).str(user.as_str()).str(client.as_str());
        }
        Change::Watermark {
            user,
            namespace,
            pos,
        } => {
            w.u8(WATERMARK).str(user.as_str()).str(namespace).u64(*pos);
        }
        Change::Unlog { user } => {
            w.u8(UNLOG).str(user.as_str());
        }
        Change::Data { member, key, value } => {
            w.u8(DATA);
            encode_member(w, member);
            w.str(key);
            encode_option(w, value.as_deref());
        }
        Change::Undata { user } => {
            w.u8(UNDATA).str(user.as_str());
        }
        Change::Dedup {
            key,
            seq,
            owner,
            until,
            outcome,
        } => {
            w.u8(DEDUP);
            encode_dedup_key(w, key);
            w.u64(*seq).u64(*owner).u64(*until);
            encode_option(w, outcome.as_deref());
        }
        Change::Undedup { key } => {
            w.u8(UNDEDUP);
            encode_dedup_key(w, key);
        }
        Change::Origin {
            user,
            origin,
            pos,
            until,
        } => {
            w.u8(ORIGIN)
                .str(user.as_str())
                .str(origin)
                .u64(*pos)
                .u64(*until);
        }
        Change::Unorigin { user, origin } => {
            w.u8(UNORIGIN).str(user.as_str()).str(origin);
        }
        Change::Ack {
            user,
            pos,
            client,
            expires_at,
            replies,
        } => {
            w.u8(ACK).str(user.as_str()).u64(*pos);
            encode_option(w, client.as_ref().map(|c| c.as_str()));
            w.u64(*expires_at).u32(count(replies.len()));
            for (client, data) in replies.iter().take(u32::MAX as usize) {
                w.str(client.as_str()).str(data.get());
            }
        }
        Change::Unack { user, pos } => {
            w.u8(UNACK).str(user.as_str()).u64(*pos);
        }
        Change::Join { room, member } => {
            w.u8(JOIN).str(room);
            encode_member(w, member);
        }
        Change::Leave { room, member } => {
            w.u8(LEAVE).str(room);
            encode_member(w, member);
        }
    }
}

/// A list's length as written: lists are a client's namespaces and an ack's replies, far below
/// 2<sup>32</sup>; a longer one would be cut there rather than make the frame unreadable.
fn count(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn encode_option(w: &mut Writer, value: Option<&str>) {
    match value {
        Some(v) => w.u8(1).str(v),
        None => w.u8(0),
    };
}

fn encode_member(w: &mut Writer, member: &Member) {
    match member {
        Member::User(user) => w.u8(USER).str(user.as_str()),
        Member::Client(user, client) => w.u8(USER_CLIENT).str(user.as_str()).str(client.as_str()),
    };
}

fn encode_dedup_key(w: &mut Writer, key: &DedupKey) {
    w.str(key.user.as_str())
        .str(key.client.as_str())
        .str(key.id.as_str());
}

/// Decodes bytes written by one `encode` call, pushing the changes to `out` in order.
///
/// On an error `out` is left as it was: a damaged frame gives none of its changes.
pub(super) fn decode(bytes: &[u8], out: &mut Vec<Change>) -> Result<(), StorageError> {
    let start = out.len();
    let result = decode_all(&mut Reader::new(bytes, "write-ahead log"), out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// The fewest bytes a change takes (a tag and a string's length): a count is checked against
/// it before anything is reserved for it.
const SMALLEST_CHANGE: usize = 5;

fn decode_all(r: &mut Reader<'_>, out: &mut Vec<Change>) -> Result<(), StorageError> {
    let n = r.u64()?;
    if n > (r.remaining() / SMALLEST_CHANGE) as u64 {
        return Err(r.corrupt());
    }
    out.reserve(n as usize);
    // The payloads of the frame that later messages refer to, by index.
    let mut shared: Vec<Arc<RawValue>> = Vec::new();
    for _ in 0..n {
        let change = decode_one(r, &mut shared)?;
        out.push(change);
    }
    if r.remaining() != 0 {
        return Err(r.corrupt());
    }
    Ok(())
}

fn decode_one(r: &mut Reader<'_>, shared: &mut Vec<Arc<RawValue>>) -> Result<Change, StorageError> {
    Ok(match r.u8()? {
        MESSAGE => {
            let flags = r.u8()?;
            if flags & !FLAGS != 0 || flags & SHARES_PAYLOAD != 0 && flags & REFERS_PAYLOAD != 0 {
                return Err(r.corrupt());
            }
            let user = user_id(r)?;
            let pos = r.u64()?;
            let client = if flags & HAS_CLIENT != 0 {
                Some(r.client()?)
            } else {
                None
            };
            let sender = if flags & HAS_SENDER != 0 {
                Some(user_id(r)?)
            } else {
                None
            };
            let namespace = Arc::from(r.str()?);
            let event = Arc::from(r.str()?);
            let data = if flags & REFERS_PAYLOAD != 0 {
                let index = r.u32()? as usize;
                shared.get(index).cloned().ok_or_else(|| r.corrupt())?
            } else {
                let data = json(r)?;
                if flags & SHARES_PAYLOAD != 0 {
                    shared.push(data.clone());
                }
                data
            };
            Change::Message {
                user,
                pos,
                client,
                sender,
                namespace,
                event,
                data,
                expires_at: r.u64()?,
                ack: flags & ASKS_ACK != 0,
            }
        }
        UNMESSAGE => Change::Unmessage {
            user: user_id(r)?,
            pos: r.u64()?,
        },
        CLIENT => {
            let user = user_id(r)?;
            let client = r.client()?;
            let polled = boolean(r)?;
            let presence_ttl = r.u64()?;
            let n = r.u32()?;
            let mut namespaces = Vec::new();
            for _ in 0..n {
                namespaces.push(Arc::from(r.str()?));
            }
            Change::Client {
                user,
                client,
                polled,
                namespaces,
                presence_ttl,
            }
        }
        CURSOR => Change::Cursor {
            user: user_id(r)?,
            client: r.client()?,
            cursor: r.u64()?,
            vouched: r.u64()?,
        },
        UNCLIENT => Change::Unclient {
            user: user_id(r)?,
            client: r.client()?,
        },
        WATERMARK => Change::Watermark {
            user: user_id(r)?,
            namespace: Arc::from(r.str()?),
            pos: r.u64()?,
        },
        UNLOG => Change::Unlog { user: user_id(r)? },
        DATA => Change::Data {
            member: member(r)?,
            key: r.str()?.to_owned(),
            value: option(r)?.map(str::to_owned),
        },
        UNDATA => Change::Undata { user: user_id(r)? },
        DEDUP => Change::Dedup {
            key: dedup_key(r)?,
            seq: r.u64()?,
            owner: r.u64()?,
            until: r.u64()?,
            outcome: option(r)?.map(Box::from),
        },
        UNDEDUP => Change::Undedup { key: dedup_key(r)? },
        ORIGIN => Change::Origin {
            user: user_id(r)?,
            origin: Arc::from(r.str()?),
            pos: r.u64()?,
            until: r.u64()?,
        },
        UNORIGIN => Change::Unorigin {
            user: user_id(r)?,
            origin: Arc::from(r.str()?),
        },
        ACK => {
            let user = user_id(r)?;
            let pos = r.u64()?;
            let client = match boolean(r)? {
                true => Some(r.client()?),
                false => None,
            };
            let expires_at = r.u64()?;
            let n = r.u32()?;
            let mut replies = Vec::new();
            for _ in 0..n {
                replies.push((r.client()?, json(r)?));
            }
            Change::Ack {
                user,
                pos,
                client,
                expires_at,
                replies,
            }
        }
        UNACK => Change::Unack {
            user: user_id(r)?,
            pos: r.u64()?,
        },
        JOIN => Change::Join {
            room: Arc::from(r.str()?),
            member: member(r)?,
        },
        LEAVE => Change::Leave {
            room: Arc::from(r.str()?),
            member: member(r)?,
        },
        _ => return Err(r.corrupt()),
    })
}

fn user_id(r: &mut Reader<'_>) -> Result<UserId, StorageError> {
    Ok(UserId::from(r.str()?))
}

/// A presence or flag byte: anything but 0 and 1 is damage.
fn boolean(r: &mut Reader<'_>) -> Result<bool, StorageError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(r.corrupt()),
    }
}

fn option<'a>(r: &mut Reader<'a>) -> Result<Option<&'a str>, StorageError> {
    Ok(match boolean(r)? {
        true => Some(r.str()?),
        false => None,
    })
}

/// A payload's JSON text, checked.
fn json(r: &mut Reader<'_>) -> Result<Arc<RawValue>, StorageError> {
    let text = r.str()?;
    RawValue::from_string(text.to_owned())
        .map(Arc::from)
        .map_err(|_| r.corrupt())
}

fn member(r: &mut Reader<'_>) -> Result<Member, StorageError> {
    Ok(match r.u8()? {
        USER => Member::User(user_id(r)?),
        USER_CLIENT => Member::Client(user_id(r)?, r.client()?),
        _ => return Err(r.corrupt()),
    })
}

fn dedup_key(r: &mut Reader<'_>) -> Result<DedupKey, StorageError> {
    Ok(DedupKey {
        user: user_id(r)?,
        client: r.client()?,
        id: MessageId::new(r.str()?).map_err(|_| r.corrupt())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ClientId;

    fn raw(text: &str) -> Arc<RawValue> {
        Arc::from(RawValue::from_string(text.to_owned()).unwrap())
    }

    fn client(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
    }

    fn message(user: &str, pos: u64, data: &Arc<RawValue>) -> Change {
        Change::Message {
            user: UserId::from(user),
            pos,
            client: None,
            sender: Some(UserId::from("u0")),
            namespace: "/".into(),
            event: "chat".into(),
            data: data.clone(),
            expires_at: 1_700_000_000_000,
            ack: false,
        }
    }

    fn round_trip(changes: &[Change]) -> Vec<Change> {
        let mut bytes = Vec::new();
        encode(changes, &mut bytes);
        let mut back = Vec::new();
        decode(&bytes, &mut back).unwrap();
        back
    }

    fn key(id: &str) -> DedupKey {
        DedupKey {
            user: UserId::from("ann"),
            client: client("c1"),
            id: MessageId::new(id).unwrap(),
        }
    }

    /// Every variant, each option both ways, both kinds of member.
    fn every_variant() -> Vec<Change> {
        let ann = || UserId::from("ann");
        let big = raw(&format!(r#"{{"text":"{}"}}"#, "x".repeat(SHARE_FROM)));
        vec![
            Change::Message {
                user: ann(),
                pos: 1,
                client: Some(client("c1")),
                sender: None,
                namespace: "/chat".into(),
                event: "line".into(),
                data: raw(r#"{"text":"hi"}"#),
                expires_at: 10,
                ack: true,
            },
            Change::Message {
                user: ann(),
                pos: 2,
                client: None,
                sender: Some(UserId::from("bob")),
                namespace: "/".into(),
                event: "é".into(),
                data: big.clone(),
                expires_at: 11,
                ack: false,
            },
            message("cy", 3, &big),
            Change::Unmessage {
                user: ann(),
                pos: 1,
            },
            Change::Client {
                user: ann(),
                client: client("c1"),
                polled: true,
                namespaces: vec!["/".into(), "/chat".into()],
                presence_ttl: 30_000,
            },
            Change::Client {
                user: ann(),
                client: client("c2"),
                polled: false,
                namespaces: Vec::new(),
                presence_ttl: 0,
            },
            Change::Cursor {
                user: ann(),
                client: client("c1"),
                cursor: 5,
                vouched: 4,
            },
            Change::Unclient {
                user: ann(),
                client: client("c2"),
            },
            Change::Watermark {
                user: ann(),
                namespace: "/chat".into(),
                pos: u64::MAX,
            },
            Change::Unlog { user: ann() },
            Change::Data {
                member: Member::User(ann()),
                key: "status".into(),
                value: Some(r#""away""#.into()),
            },
            Change::Data {
                member: Member::Client(ann(), client("c1")),
                key: "".into(),
                value: None,
            },
            Change::Undata { user: ann() },
            Change::Dedup {
                key: key("m1"),
                seq: 1,
                owner: 2,
                until: 3,
                outcome: None,
            },
            Change::Dedup {
                key: key("m2"),
                seq: 4,
                owner: 5,
                until: 6,
                outcome: Some(r#"{"ok":true}"#.into()),
            },
            Change::Undedup { key: key("m1") },
            Change::Origin {
                user: ann(),
                origin: "node-a".into(),
                pos: 7,
                until: 8,
            },
            Change::Unorigin {
                user: ann(),
                origin: "node-a".into(),
            },
            Change::Ack {
                user: ann(),
                pos: 1,
                client: Some(client("c1")),
                expires_at: 10,
                replies: vec![(client("c1"), raw("[1,2]")), (client("c3"), raw("null"))],
            },
            Change::Ack {
                user: ann(),
                pos: 2,
                client: None,
                expires_at: 11,
                replies: Vec::new(),
            },
            Change::Unack {
                user: ann(),
                pos: 2,
            },
            Change::Join {
                room: "lobby".into(),
                member: Member::User(ann()),
            },
            Change::Leave {
                room: "lobby".into(),
                member: Member::Client(ann(), client("c1")),
            },
        ]
    }

    #[test]
    fn every_variant_round_trips() {
        let changes = every_variant();
        let back = round_trip(&changes);
        assert_eq!(format!("{changes:#?}"), format!("{back:#?}"));
        // The two messages that shared the large payload share it again.
        let (Change::Message { data: a, .. }, Change::Message { data: b, .. }) =
            (&back[1], &back[2])
        else {
            panic!("not messages: {back:?}");
        };
        assert!(Arc::ptr_eq(a, b));
    }

    #[test]
    fn an_empty_list_round_trips_and_appends_after_what_is_there() {
        assert!(round_trip(&[]).is_empty());
        let mut bytes = vec![9, 9];
        encode(&[], &mut bytes);
        assert_eq!(&bytes[..2], &[9, 9]);
        let mut back = Vec::new();
        decode(&bytes[2..], &mut back).unwrap();
        assert!(back.is_empty());
        assert!(decode(&[], &mut back).is_err());
    }

    #[test]
    fn a_fan_out_writes_its_payload_once_and_decodes_to_one_arc() {
        let payload = raw(&format!(r#""{}""#, "p".repeat(1022)));
        assert_eq!(payload.get().len(), 1024);
        let changes: Vec<Change> = (0..1000)
            .map(|i| message(&format!("user-{i}"), i, &payload))
            .collect();
        let mut bytes = Vec::new();
        encode(&changes, &mut bytes);
        assert!(bytes.len() < 1000 * 200, "{} bytes", bytes.len());
        let back = round_trip(&changes);
        assert_eq!(format!("{changes:?}"), format!("{back:?}"));
        let datas: Vec<&Arc<RawValue>> = back
            .iter()
            .map(|c| match c {
                Change::Message { data, .. } => data,
                other => panic!("not a message: {other:?}"),
            })
            .collect();
        assert!(datas.iter().all(|d| Arc::ptr_eq(d, datas[0])));
    }

    #[test]
    fn interleaved_fan_outs_each_keep_one_payload() {
        let a = raw(&format!(r#""{}""#, "a".repeat(SHARE_FROM)));
        let b = raw(&format!(r#""{}""#, "b".repeat(SHARE_FROM)));
        let small = raw(r#""s""#);
        let changes: Vec<Change> = (0..12)
            .map(|i| message("u", i, [&a, &b, &small][i as usize % 3]))
            .collect();
        let mut bytes = Vec::new();
        encode(&changes, &mut bytes);
        assert!(
            bytes.len() < 2 * SHARE_FROM + 12 * 100,
            "{} bytes",
            bytes.len()
        );
        let back = round_trip(&changes);
        assert_eq!(format!("{changes:?}"), format!("{back:?}"));
        let data = |i: usize| match &back[i] {
            Change::Message { data, .. } => data.clone(),
            other => panic!("not a message: {other:?}"),
        };
        for i in 3..12 {
            assert_eq!(
                Arc::ptr_eq(&data(i), &data(i % 3)),
                i % 3 != 2,
                "message {i}"
            );
        }
        assert!(!Arc::ptr_eq(&data(0), &data(1)));
    }

    #[test]
    fn damage_is_an_error_never_a_panic() {
        let changes = every_variant();
        let mut bytes = Vec::new();
        encode(&changes, &mut bytes);
        let mut out = Vec::new();
        // The count says how many changes follow: every cut is noticed.
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len], &mut out).is_err(), "cut at {len}");
            assert!(out.is_empty(), "a damaged frame gave changes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer, &mut out).is_err());
        // The first change's tag, right after the count.
        let mut bad = bytes.clone();
        bad[8] = 0xFF;
        assert!(decode(&bad, &mut out).is_err());
        // Any byte changed to anything: an error or some changes, never a panic.
        for i in 0..bytes.len() {
            for v in [0x00, 0x01, 0x02, 0x10, 0x7F, 0xFF] {
                let mut bad = bytes.clone();
                bad[i] = v;
                let _ = decode(&bad, &mut out);
                out.clear();
            }
        }
        // A count far beyond the bytes reserves nothing.
        let mut huge = u64::MAX.to_be_bytes().to_vec();
        huge.extend_from_slice(&bytes[8..]);
        assert!(decode(&huge, &mut out).is_err());
    }

    /// The two changes of nearly every frame: a direct message (60 bytes of payload) and a
    /// cursor. Any change to these sizes is a change of the log's format.
    #[test]
    fn a_direct_message_and_a_cursor_are_small() {
        let data = raw(&format!(r#"{{"t":"{}"}}"#, "x".repeat(52)));
        assert_eq!(data.get().len(), 60);
        let cursor = Change::Cursor {
            user: UserId::from("u1"),
            client: client("c1"),
            cursor: 1,
            vouched: 1,
        };
        let size = |change: Change| {
            let mut bytes = Vec::new();
            encode(&[change], &mut bytes);
            bytes.len() - 8
        };
        assert_eq!(size(message("u1", 1, &data)), 107);
        assert_eq!(size(cursor), 29);
    }
}
