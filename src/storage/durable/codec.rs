//! The byte form of the records a [`DurableStorage`](super::DurableStorage) keeps: fixed-width
//! numbers and length-prefixed strings, so that reading one back checks every length and a
//! damaged record is reported, never trusted.

use std::sync::Arc;

use crate::id::{ClientId, UserId};
use crate::storage::{Millis, StorageError};

/// Appends records to a buffer.
#[derive(Default)]
pub(super) struct Writer(pub(super) Vec<u8>);

impl Writer {
    pub(super) fn u64(&mut self, n: u64) -> &mut Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    pub(super) fn u32(&mut self, n: u32) -> &mut Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    pub(super) fn u8(&mut self, n: u8) -> &mut Self {
        self.0.push(n);
        self
    }

    pub(super) fn str(&mut self, s: &str) -> &mut Self {
        self.0.extend_from_slice(&(s.len() as u32).to_be_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }

    /// The rest of the record, unprefixed.
    pub(super) fn tail(&mut self, s: &str) -> &mut Self {
        self.0.extend_from_slice(s.as_bytes());
        self
    }
}

/// Reads a record written by [`Writer`].
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader { bytes, what }
    }

    pub(super) fn corrupt(&self) -> StorageError {
        StorageError::Corrupt(format!("a damaged {} record", self.what))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StorageError> {
        if self.bytes.len() < n {
            return Err(self.corrupt());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub(super) fn u64(&mut self) -> Result<u64, StorageError> {
        let bytes = self.take(8)?;
        Ok(u64::from_be_bytes(
            bytes.try_into().map_err(|_| self.corrupt())?,
        ))
    }

    pub(super) fn u32(&mut self) -> Result<u32, StorageError> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes(
            bytes.try_into().map_err(|_| self.corrupt())?,
        ))
    }

    pub(super) fn u8(&mut self) -> Result<u8, StorageError> {
        Ok(self.take(1)?[0])
    }

    /// How many bytes are left to read.
    pub(super) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub(super) fn str(&mut self) -> Result<&'a str, StorageError> {
        let len = self.take(4)?;
        let len = u32::from_be_bytes(len.try_into().map_err(|_| self.corrupt())?) as usize;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| self.corrupt())
    }

    pub(super) fn client(&mut self) -> Result<ClientId, StorageError> {
        let s = self.str()?;
        ClientId::new(s).map_err(|_| self.corrupt())
    }

    /// The rest of the record.
    pub(super) fn tail(&mut self) -> Result<&'a str, StorageError> {
        let rest = std::mem::take(&mut self.bytes);
        std::str::from_utf8(rest).map_err(|_| self.corrupt())
    }
}

/// A message's record, beside its key (user, position).
pub(super) struct MessageRecord<'a> {
    pub(super) expires_at: Millis,
    pub(super) client: Option<ClientId>,
    pub(super) sender: Option<UserId>,
    pub(super) namespace: &'a str,
    pub(super) event: &'a str,
    pub(super) payload: Payload<'a>,
    /// It asks for replies (its ack record is in the `acks` table).
    pub(super) ack: bool,
}

/// Where a message's payload is.
pub(super) enum Payload<'a> {
    /// In the record.
    Inline(&'a str),
    /// In the payload table, shared with the other messages of its fan-out.
    Shared(u64),
}

const HAS_CLIENT: u8 = 1;
const HAS_SENDER: u8 = 2;
const SHARED: u8 = 4;
const ASKS_ACK: u8 = 8;

impl MessageRecord<'_> {
    #[cfg(test)]
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        self.encode_into(&mut w);
        w.0
    }

    /// Appends the record to `w` (emptied first, so that one buffer serves every record).
    pub(super) fn encode_into(&self, w: &mut Writer) {
        w.0.clear();
        let mut flags = 0;
        if self.client.is_some() {
            flags |= HAS_CLIENT;
        }
        if self.sender.is_some() {
            flags |= HAS_SENDER;
        }
        if let Payload::Shared(_) = self.payload {
            flags |= SHARED;
        }
        if self.ack {
            flags |= ASKS_ACK;
        }
        w.u64(self.expires_at).u8(flags);
        if let Some(c) = &self.client {
            w.str(c.as_str());
        }
        if let Some(s) = &self.sender {
            w.str(s.as_str());
        }
        w.str(self.namespace).str(self.event);
        match self.payload {
            Payload::Inline(data) => w.tail(data),
            Payload::Shared(id) => w.u64(id),
        };
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<MessageRecord<'_>, StorageError> {
        let mut r = Reader::new(bytes, "message");
        let expires_at = r.u64()?;
        let flags = r.u8()?;
        let client = if flags & HAS_CLIENT != 0 {
            Some(r.client()?)
        } else {
            None
        };
        let sender = if flags & HAS_SENDER != 0 {
            Some(UserId::from(r.str()?))
        } else {
            None
        };
        let namespace = r.str()?;
        let event = r.str()?;
        let payload = if flags & SHARED != 0 {
            Payload::Shared(r.u64()?)
        } else {
            Payload::Inline(r.tail()?)
        };
        Ok(MessageRecord {
            expires_at,
            client,
            sender,
            namespace,
            event,
            payload,
            ack: flags & ASKS_ACK != 0,
        })
    }

    /// The payload id, if shared: read on every removal, so the strings before it are skipped,
    /// not made into ids.
    pub(super) fn shared_payload(bytes: &[u8]) -> Result<Option<u64>, StorageError> {
        let mut r = Reader::new(bytes, "message");
        r.u64()?;
        let flags = r.u8()?;
        if flags & SHARED == 0 {
            return Ok(None);
        }
        if flags & HAS_CLIENT != 0 {
            r.str()?;
        }
        if flags & HAS_SENDER != 0 {
            r.str()?;
        }
        r.str()?;
        r.str()?;
        Ok(Some(r.u64()?))
    }
}

/// An ack record: its message's expiry, the client it was addressed to (if one), and its
/// replies (client, JSON text).
pub(super) fn encode_ack(
    expires_at: Millis,
    client: Option<&ClientId>,
    replies: &[(ClientId, Arc<serde_json::value::RawValue>)],
) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(expires_at).str(client.map_or("", |c| c.as_str()));
    w.u64(replies.len() as u64);
    for (client, data) in replies {
        w.str(client.as_str()).str(data.get());
    }
    w.0
}

/// An ack record read back (see [`encode_ack`]).
#[allow(clippy::type_complexity)]
pub(super) fn decode_ack(
    bytes: &[u8],
) -> Result<
    (
        Millis,
        Option<ClientId>,
        Vec<(ClientId, Arc<serde_json::value::RawValue>)>,
    ),
    StorageError,
> {
    let mut r = Reader::new(bytes, "ack");
    let expires_at = r.u64()?;
    let client = match r.str()? {
        "" => None,
        c => Some(ClientId::new(c).map_err(|_| r.corrupt())?),
    };
    let n = r.u64()?;
    let mut replies = Vec::new();
    for _ in 0..n {
        let client = r.client()?;
        let text = r.str()?;
        let data =
            serde_json::value::RawValue::from_string(text.to_owned()).map_err(|_| r.corrupt())?;
        replies.push((client, Arc::from(data)));
    }
    Ok((expires_at, client, replies))
}

/// A client's record: whether it polled, its TTL and namespaces (its cursor has a row of its
/// own).
pub(super) fn encode_client(
    polled: bool,
    presence_ttl: Millis,
    namespaces: &[Arc<str>],
) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(polled as u8)
        .u64(presence_ttl)
        .u64(namespaces.len() as u64);
    for ns in namespaces {
        w.str(ns);
    }
    w.0
}

/// A client's record read back: polled, presence TTL, namespaces.
pub(super) type ClientFields = (bool, Millis, Vec<Arc<str>>);

pub(super) fn decode_client(bytes: &[u8]) -> Result<ClientFields, StorageError> {
    let mut r = Reader::new(bytes, "client");
    let polled = r.u8()? != 0;
    let ttl = r.u64()?;
    let count = r.u64()?;
    // A count is checked against what is there before anything is reserved for it.
    let mut namespaces = Vec::new();
    for _ in 0..count {
        namespaces.push(Arc::from(r.str()?));
    }
    Ok((polled, ttl, namespaces))
}

/// A dedup record: claim number, owner, until, and the outcome once completed.
pub(super) fn encode_dedup(seq: u64, owner: u64, until: Millis, outcome: Option<&str>) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(seq).u64(owner).u64(until);
    match outcome {
        Some(o) => w.u8(1).tail(o),
        None => w.u8(0),
    };
    w.0
}

/// A dedup record read back: claim number, owner, until, outcome.
pub(super) type DedupFields = (u64, u64, Millis, Option<Box<str>>);

pub(super) fn decode_dedup(bytes: &[u8]) -> Result<DedupFields, StorageError> {
    let mut r = Reader::new(bytes, "dedup");
    let seq = r.u64()?;
    let owner = r.u64()?;
    let until = r.u64()?;
    let outcome = match r.u8()? {
        0 => None,
        _ => Some(r.tail()?.into()),
    };
    Ok((seq, owner, until, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips_and_a_cut_one_is_corrupt() {
        let record = MessageRecord {
            expires_at: 42,
            client: Some(ClientId::new("c1").unwrap()),
            ack: true,
            sender: Some(UserId::from("bob")),
            namespace: "/chat",
            event: "line",
            payload: Payload::Inline(r#"{"text":"hi"}"#),
        };
        let bytes = record.encode();
        let back = MessageRecord::decode(&bytes).unwrap();
        assert_eq!(back.expires_at, 42);
        assert_eq!(back.client.unwrap().as_str(), "c1");
        assert_eq!(back.sender.unwrap().as_str(), "bob");
        assert_eq!((back.namespace, back.event), ("/chat", "line"));
        assert!(matches!(back.payload, Payload::Inline(r#"{"text":"hi"}"#)));
        assert!(MessageRecord::decode(&bytes[..12]).is_err());
        assert_eq!(MessageRecord::shared_payload(&bytes).unwrap(), None);
        let shared = MessageRecord {
            payload: Payload::Shared(9),
            ..record
        }
        .encode();
        assert_eq!(MessageRecord::shared_payload(&shared).unwrap(), Some(9));
        assert!(MessageRecord::shared_payload(&shared[..shared.len() - 1]).is_err());
    }

    #[test]
    fn a_client_and_a_dedup_record_round_trip() {
        let ns: Vec<Arc<str>> = vec!["/".into(), "/chat".into()];
        let (polled, ttl, back) = decode_client(&encode_client(true, 30_000, &ns)).unwrap();
        assert_eq!((polled, ttl, back), (true, 30_000, ns));
        let (seq, owner, until, outcome) =
            decode_dedup(&encode_dedup(3, 9, 11, Some("{}"))).unwrap();
        assert_eq!(
            (seq, owner, until, outcome.as_deref()),
            (3, 9, 11, Some("{}"))
        );
        assert!(decode_client(&[0; 5]).is_err());
    }
}
