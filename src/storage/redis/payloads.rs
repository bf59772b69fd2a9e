//! Payloads shared by the entries of a fan-out (`{P}p:ID`), and the cache that lets its later
//! chunks refer to the payload its first chunk stored.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde_json::value::RawValue;

use super::entries::{ack_marker, entry_body, payload_value};
use crate::id::random_token;
use crate::storage::NewMessage;

/// The length of a shared payload's random id (`{P}p:ID`): 96 bits, never reused by chance.
const PAYLOAD_ID_LEN: usize = 16;

/// How many shared payloads a `RedisStorage` remembers having stored (see [`PayloadCache`]): the
/// later chunks of a fan-out refer to the payload its first chunk stored.
const PAYLOAD_CACHE: usize = 16;

/// The body of a log entry (see [`entry_body`]) and the index (from 1) of the shared payload
/// it refers to, or 0.
pub(super) type EntryBody = (usize, String);

/// What makes messages one fan-out: the same `data` `Arc` (its address), event and namespace.
type Identity<'a> = (usize, &'a str, &'a str);

fn identity(m: &NewMessage) -> Identity<'_> {
    (
        Arc::as_ptr(&m.data) as *const u8 as usize,
        &m.event,
        &m.namespace,
    )
}

/// A payload the entries of one call refer to (`{P}p:ID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SharedPayload {
    pub(super) id: String,
    /// Its value (see [`payload_value`]), or empty if it is `known`: stored by an earlier call.
    pub(super) value: String,
    /// For a payload an earlier call stored, the latest `expires_at` its key's expiry covers
    /// (the key expires a grace after it); 0 for one this call stores.
    pub(super) known_upto: u64,
    /// The first message that uses it, to write its value if a known payload is gone.
    pub(super) first: usize,
}

/// The payloads this storage stored lately, newest first, at most [`PAYLOAD_CACHE`]: the chunks
/// of one fan-out are separate append calls that share one `data` `Arc`, so the first chunk
/// stores the payload and the later ones refer to it. Each entry holds a clone of the `Arc`,
/// so that its address cannot be reused by another payload while it is remembered.
#[derive(Default)]
pub(super) struct PayloadCache {
    entries: VecDeque<CachedPayload>,
}

struct CachedPayload {
    data: Arc<RawValue>,
    event: Arc<str>,
    namespace: Arc<str>,
    id: String,
    /// The latest `expires_at` that the key's expiry covers.
    upto: u64,
}

impl PayloadCache {
    fn find(&self, m: &NewMessage) -> Option<&CachedPayload> {
        self.entries.iter().find(|c| {
            Arc::ptr_eq(&c.data, &m.data) && c.event == m.event && c.namespace == m.namespace
        })
    }

    /// Forgets the payload `id` (its key is gone).
    pub(super) fn forget(&mut self, id: &str) {
        self.entries.retain(|c| c.id != id);
    }

    /// Remembers that the key of `m`'s payload, `id`, covers `upto`, as the newest entry.
    pub(super) fn record(&mut self, m: &NewMessage, id: &str, upto: u64) {
        let upto = match self.entries.iter().position(|c| c.id == id) {
            Some(at) => self.entries.remove(at).map_or(upto, |c| c.upto.max(upto)),
            None => upto,
        };
        self.entries.push_front(CachedPayload {
            data: m.data.clone(),
            event: m.event.clone(),
            namespace: m.namespace.clone(),
            id: id.to_owned(),
            upto,
        });
        self.entries.truncate(PAYLOAD_CACHE);
    }
}

/// The bodies of a call's log entries, and the payloads they share.
///
/// Messages that share a payload (the same `data` `Arc`, event and namespace: how simpleio
/// builds a fan-out) refer to one payload key, `nslen:ns:*ID`: a payload in `cache` (an earlier
/// chunk of the fan-out stored it), or a new one if more than one message uses it here. A
/// payload used once and not cached stays in its entry, which saves a key.
pub(super) fn share_payloads(
    messages: &[NewMessage],
    cache: &PayloadCache,
) -> (Vec<EntryBody>, Vec<SharedPayload>) {
    // Every message, hence every `Arc`, is alive for the whole call (and the cache holds its
    // own clones), so no address is reused meanwhile.
    let mut uses: HashMap<Identity<'_>, usize> = HashMap::new();
    for m in messages {
        *uses.entry(identity(m)).or_default() += 1;
    }
    // A shared payload's index, and its entries' body, once it has one.
    let mut assigned: HashMap<Identity<'_>, (usize, String)> = HashMap::new();
    let mut payloads = Vec::new();
    let bodies = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let id = identity(m);
            if let Some((index, body)) = assigned.get(&id) {
                return (*index, body.clone());
            }
            let payload = match cache.find(m) {
                Some(known) => SharedPayload {
                    id: known.id.clone(),
                    value: String::new(),
                    known_upto: known.upto,
                    first: i,
                },
                None if uses.get(&id).copied().unwrap_or(0) >= 2 => SharedPayload {
                    id: random_token(PAYLOAD_ID_LEN),
                    value: payload_value(m),
                    known_upto: 0,
                    first: i,
                },
                None => return (0, entry_body(m)),
            };
            let body = format!(
                "{}:{}:{}*{}",
                m.namespace.len(),
                m.namespace,
                ack_marker(m),
                payload.id
            );
            payloads.push(payload);
            assigned.insert(id, (payloads.len(), body.clone()));
            (payloads.len(), body)
        })
        .collect();
    (bodies, payloads)
}

#[cfg(test)]
mod tests {
    use super::super::entries::tests::new_message;
    use super::super::entries::{parse_entry, parse_payload};
    use super::*;
    use crate::id::UserId;

    #[test]
    fn a_fan_out_refers_its_entries_to_one_payload() {
        let shared = new_message("/chat", "say", r#"{"t":"hi"}"#);
        let mut to_bob = shared.clone();
        to_bob.user = UserId::from("bob");
        // Equal but not the same `Arc`: not known to be one fan-out, so not shared.
        let mut lookalike = shared.clone();
        lookalike.data = Arc::from(RawValue::from_string(r#"{"t":"hi"}"#.into()).expect("JSON"));
        let mut other_event = shared.clone();
        other_event.event = "shout".into();
        let messages = [shared, to_bob, lookalike, other_event];
        let (bodies, payloads) = share_payloads(&messages, &PayloadCache::default());
        assert_eq!(payloads.len(), 1);
        let (id, value) = (&payloads[0].id, &payloads[0].value);
        assert_eq!(id.len(), PAYLOAD_ID_LEN);
        assert_eq!(value, r#"3:say{"t":"hi"}"#);
        assert_eq!((payloads[0].known_upto, payloads[0].first), (0, 0));
        let reference = format!("5:/chat:*{id}");
        assert_eq!(bodies[0], (1, reference.clone()));
        assert_eq!(bodies[1], (1, reference.clone()));
        assert_eq!(bodies[2], (0, r#"5:/chat:3:say{"t":"hi"}"#.to_owned()));
        assert_eq!(bodies[3], (0, r#"5:/chat:5:shout{"t":"hi"}"#.to_owned()));

        let mut known = HashMap::new();
        known.insert(id.clone(), parse_payload(value).expect("payload"));
        let a = parse_entry(&format!("7:9::{reference}"), &known).expect("entry");
        let b = parse_entry(&format!("8:9:tab1:{reference}"), &known).expect("entry");
        assert_eq!((a.pos, &*a.ns, &*a.event), (7, "/chat", "say"));
        assert_eq!(b.data.get(), r#"{"t":"hi"}"#);
        assert!(Arc::ptr_eq(&a.data, &b.data), "one payload decoded twice");

        // The next chunk of the fan-out, even of one message, refers to the stored payload.
        let mut cache = PayloadCache::default();
        cache.record(&messages[0], id, 9);
        let mut to_cy = messages[0].clone();
        to_cy.user = UserId::from("cy");
        let (later, known) = share_payloads(&[messages[2].clone(), to_cy], &cache);
        assert_eq!(later[1], (1, reference.clone()));
        assert_eq!(
            later[0].0, 0,
            "an equal payload in another Arc is another payload"
        );
        assert_eq!(
            known,
            [SharedPayload {
                id: id.clone(),
                value: String::new(),
                known_upto: 9,
                first: 1
            }]
        );
    }

    #[test]
    fn the_payload_cache_keeps_the_latest_expiry_and_a_bounded_number() {
        let mut cache = PayloadCache::default();
        let first = new_message("/", "e", "1");
        cache.record(&first, "a", 9);
        cache.record(&first, "a", 5);
        assert_eq!(cache.find(&first).map(|c| c.upto), Some(9));
        for i in 0..PAYLOAD_CACHE {
            cache.record(&new_message("/", "e", "1"), &format!("x{i}"), 1);
        }
        assert_eq!(cache.entries.len(), PAYLOAD_CACHE);
        assert!(cache.find(&first).is_none(), "the oldest payload was kept");
        let last = cache.entries[0].data.clone();
        let m = NewMessage {
            data: last,
            ..new_message("/", "e", "1")
        };
        assert_eq!(cache.find(&m).map(|c| c.id.as_str()), Some("x15"));
        let mut other_ns = m.clone();
        other_ns.namespace = "/x".into();
        assert!(cache.find(&other_ns).is_none());
        cache.forget("x15");
        assert!(cache.find(&m).is_none());
    }
}
