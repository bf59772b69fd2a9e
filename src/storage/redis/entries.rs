//! The log entry format (see [`super`]): what the append script stores, what a fetch decodes.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::value::RawValue;

use super::error::corrupt;
use crate::storage::{NewMessage, StorageError, StoredMessage};

/// What follows `pos:expires_at:client:` in a log entry that holds its payload (see the
/// format in [`super`]): the namespace, then [`payload_value`].
pub(super) fn entry_body(m: &NewMessage) -> String {
    format!(
        "{}:{}:{}{}",
        m.namespace.len(),
        m.namespace,
        ack_marker(m),
        payload_value(m)
    )
}

/// `!` before the payload of a message that asks for replies ([`NewMessage::ack`]), which
/// the append script gives an ack record; nothing otherwise.
pub(super) fn ack_marker(m: &NewMessage) -> &'static str {
    if m.ack { "!" } else { "" }
}

/// What a message counts for in its queue's byte limits: the length of its JSON payload.
pub(super) fn data_size(m: &NewMessage) -> usize {
    m.data.get().len()
}

/// The event and the JSON payload of a message, as a log entry or a payload key holds them.
pub(super) fn payload_value(m: &NewMessage) -> String {
    format!("{}:{}{}", m.event.len(), m.event, m.data.get())
}

/// Splits `len:` + `len` bytes off `s`: a length-prefixed field and the rest after it.
fn prefixed(s: &str) -> Option<(&str, &str)> {
    let (len, rest) = s.split_once(':')?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: usize = len.parse().ok()?;
    Some((rest.get(..len)?, rest.get(len..)?))
}

/// An event and its payload, decoded once per fetch and shared by the messages that use it.
pub(super) type Payload = (Arc<str>, Arc<RawValue>);

/// Decodes `event_len:event` followed by the JSON payload.
pub(super) fn parse_payload(s: &str) -> Option<Payload> {
    let (event, data) = prefixed(s)?;
    let data = RawValue::from_string(data.to_owned()).ok()?;
    Some((event.into(), Arc::from(data)))
}

/// Decodes a log entry: `pos:expires_at:client:`, `=SENDER:` (hex) if it has a sender,
/// `#SIZE:` (the data's length) unless it was written before byte limits, `ns_len:ns:`, then
/// `event_len:event` followed by the JSON payload, or `*ID` for the shared payload `ID` (in
/// `shared`).
pub(super) fn parse_entry(
    entry: &str,
    shared: &HashMap<String, Payload>,
) -> Result<StoredMessage, StorageError> {
    let bad = || corrupt("a log entry");
    let mut parts = entry.splitn(4, ':');
    let pos = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let _expires_at = parts.next().ok_or_else(bad)?;
    let _client = parts.next().ok_or_else(bad)?;
    let mut rest = parts.next().ok_or_else(bad)?;
    if let Some(after) = rest.strip_prefix('=') {
        let (sender, after) = after.split_once(':').ok_or_else(bad)?;
        if !sender.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        rest = after;
    }
    if let Some(after) = rest.strip_prefix('#') {
        let (size, after) = after.split_once(':').ok_or_else(bad)?;
        if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        rest = after;
    }
    let (ns, rest) = prefixed(rest).ok_or_else(bad)?;
    let rest = rest.strip_prefix(':').ok_or_else(bad)?;
    let (ack, rest) = match rest.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    let (event, data) = match rest.strip_prefix('*') {
        Some(id) => shared.get(id).cloned(),
        None => parse_payload(rest),
    }
    .ok_or_else(bad)?;
    Ok(StoredMessage {
        pos,
        ns: ns.into(),
        event,
        data,
        ack,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::id::UserId;

    pub(in crate::storage::redis) fn new_message(ns: &str, event: &str, data: &str) -> NewMessage {
        NewMessage {
            user: UserId::from("ann"),
            client: None,
            namespace: ns.into(),
            event: event.into(),
            data: Arc::from(RawValue::from_string(data.into()).expect("JSON")),
            expires_at: 0,
            sender: None,
            origin: None,
            ack: false,
        }
    }

    #[test]
    fn entries_decode_with_colons_in_the_namespace_event_and_data() {
        let body = entry_body(&new_message("/a:1", "a:b:c", r#"{"x":":"}"#));
        assert_eq!(body, r#"4:/a:1:5:a:b:c{"x":":"}"#);
        let none = HashMap::new();
        let m = parse_entry(
            &format!("1700000000000001:1700000600000:tab-1:{body}"),
            &none,
        )
        .expect("valid entry");
        assert_eq!(m.pos, 1_700_000_000_000_001);
        assert_eq!(&*m.ns, "/a:1");
        assert_eq!(&*m.event, "a:b:c");
        assert_eq!(m.data.get(), r#"{"x":":"}"#);
        let m = parse_entry(
            &format!("1:2::{}", entry_body(&new_message("/", "", "1"))),
            &none,
        )
        .expect("valid entry");
        assert_eq!((&*m.ns, &*m.event, m.data.get()), ("/", "", "1"));
    }

    #[test]
    fn entries_with_a_sender_or_a_size_decode_and_entries_without_them_too() {
        let body = entry_body(&new_message("/", "say", "1"));
        let none = HashMap::new();
        for (entry, pos) in [
            (format!("7:9::{body}"), 7),
            (format!("8:9::=6576653a6c6f67:{body}"), 8),
            (format!("9:9:tab1:=:{body}"), 9),
            (format!("10:9::#1:{body}"), 10),
            (format!("11:9:tab1:=61:#1:{body}"), 11),
        ] {
            let m = parse_entry(&entry, &none).expect("valid entry");
            assert_eq!((m.pos, &*m.ns, &*m.event), (pos, "/", "say"));
        }
        assert_eq!(data_size(&new_message("/", "say", r#"{"t":"é"}"#)), 10);
        for bad in [
            "1:2::=zz:1:/:1:a1",
            "1:2::=61",
            "1:2::=61:",
            "1:2::#:1:/:1:a1",
            "1:2::#x:1:/:1:a1",
            "1:2::#1",
            "1:2::#1:=61:1:/:1:a1",
        ] {
            assert!(
                matches!(parse_entry(bad, &none), Err(StorageError::Corrupt(_))),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn broken_entries_are_corrupt_not_panics() {
        let mut shared = HashMap::new();
        shared.insert("known".to_owned(), parse_payload("0:1").expect("payload"));
        for bad in [
            "",
            "1:2:c",
            "x:2::1:/:1:ab",
            "1:2::1:/:9:ab",
            "1:2::9:/:1:ab",
            "1:2::1:/1:ab",
            "1:2::1:/:1:é\"",
            "1:2::1:/:0:{",
            "1:2::-1:/:1:a1",
            "1:2::1:/:+1:a1",
            "1:2::1:/:*missing",
            "1:2::1:/*known",
        ] {
            assert!(
                matches!(parse_entry(bad, &shared), Err(StorageError::Corrupt(_))),
                "{bad:?} was accepted"
            );
        }
    }
}
