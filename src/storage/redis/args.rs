//! How values become script arguments: numbers Lua holds exactly, times in ms, members, senders.

use std::time::Duration;

use redis::ScriptInvocation;

use super::signals::{confirmed_fields, signal_json};
use crate::id::UserId;
use crate::storage::{DedupKey, FetchRequest, Member, Signal, StorageError};

/// How long, at least, a client's keys outlive its presence: the time `reap` has to remove it
/// and report its departure before Redis drops the keys by itself (twice the presence TTL if
/// that is longer). Every node reaps every quarter of the presence TTL, so only a cluster with
/// no node running for this long loses a departure report.
pub(super) const REAP_GRACE: Duration = Duration::from_secs(600);

/// Positions, cursors and times are Lua numbers (doubles) inside the scripts: anything above
/// this would lose precision, so inputs are clamped to it. Real positions are far below it.
pub(super) const MAX_EXACT: u64 = (1 << 53) - 1;

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .min(MAX_EXACT)
}

/// How long a client's keys outlive its presence (see [`REAP_GRACE`]), in ms.
fn reap_grace(presence_ttl: Duration) -> u64 {
    millis(REAP_GRACE.max(presence_ttl.saturating_mul(2)))
}

/// A user id in hex: what names a sender in keys and log entries, where it must not contain
/// `:` (see [`super`]).
fn hex(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A message's sender as the append script takes it: hex, or `-` for none (hex has no `-`,
/// and the empty user id is a sender too: the empty string).
pub(super) fn sender_arg(sender: Option<&UserId>) -> String {
    sender.map_or_else(|| "-".to_owned(), |s| hex(s.as_str()))
}

/// The user, client and message id of a dedup record, as the dedup scripts take them (see
/// `DEDUP` in [`scripts`](super::scripts)).
pub(super) fn dedup_args(inv: &mut ScriptInvocation<'_>, key: &DedupKey) {
    inv.arg(key.user.as_str())
        .arg(key.client.as_str())
        .arg(key.id.as_str());
}

/// A join's arguments: the room, the member, and how long the member's records live.
pub(super) fn join_args(
    inv: &mut ScriptInvocation<'_>,
    room: &str,
    member: &Member,
    presence_ttl: Duration,
) {
    let (user, client) = member_args(member);
    inv.arg(room)
        .arg(user)
        .arg(client)
        .arg(millis(presence_ttl))
        .arg(reap_grace(presence_ttl));
}

/// A data write's arguments: the member, the key, the value or its removal, and how long the
/// member's records live.
pub(super) fn set_data_args(
    inv: &mut ScriptInvocation<'_>,
    member: &Member,
    key: &str,
    value: Option<&str>,
    presence_ttl: Duration,
) {
    let (user, client) = member_args(member);
    inv.arg(user)
        .arg(client)
        .arg(key)
        .arg(if value.is_some() { "1" } else { "0" })
        .arg(value.unwrap_or(""))
        .arg(millis(presence_ttl))
        .arg(reap_grace(presence_ttl));
}

/// The user and client (`""` for a user) of a member, as the scripts take them.
pub(super) fn member_args(member: &Member) -> (&str, &str) {
    match member {
        Member::User(user) => (user.as_str(), ""),
        Member::Client(user, client) => (user.as_str(), client.as_str()),
    }
}

/// The fetch script's arguments (see `FETCH`), the same on one server and on a cluster: what
/// must be encoded first, then pushed in the script's order.
pub(super) struct FetchArgs {
    /// The `Confirmed` signal's fields; the script adds the epoch and the confirmed cursor,
    /// which only it knows.
    confirmed: String,
    /// The namespaces as JSON: recorded with the client, and compared with what it recorded
    /// last.
    namespaces: String,
    /// The `PollStarted` signal to publish, or empty.
    announcement: String,
}

impl FetchArgs {
    pub(super) fn new(request: &FetchRequest) -> Result<Self, StorageError> {
        let namespaces = serde_json::to_string(&request.namespaces)
            .map_err(|e| StorageError::Corrupt(format!("cannot encode namespaces: {e}")))?;
        let announcement = match request.announce {
            Some(poll) => signal_json(Signal::PollStarted {
                user: request.user.clone(),
                client: request.client.clone(),
                poll,
            })?,
            None => String::new(),
        };
        Ok(FetchArgs {
            confirmed: confirmed_fields(request)?,
            namespaces,
            announcement,
        })
    }

    pub(super) fn push(&self, inv: &mut ScriptInvocation<'_>, request: &FetchRequest) {
        let (has_cursor, cursor_epoch, cursor_pos) = match &request.cursor {
            Some((epoch, pos)) => ("1", epoch.as_str(), (*pos).min(MAX_EXACT)),
            None => ("0", "", 0),
        };
        inv.arg(request.user.as_str())
            .arg(request.client.as_str())
            .arg(has_cursor)
            .arg(cursor_epoch)
            .arg(cursor_pos)
            .arg(request.limit.min(MAX_EXACT as usize))
            .arg(millis(request.presence_ttl))
            .arg(reap_grace(request.presence_ttl))
            .arg(self.confirmed.as_str())
            .arg(self.announcement.as_str())
            .arg(self.namespaces.as_str())
            .arg(request.max_clients.min(MAX_EXACT as usize))
            .arg(request.namespaces.len());
        for ns in request.namespaces.iter() {
            inv.arg(&**ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_are_hex_or_a_dash() {
        assert_eq!(hex("eve:log"), "6576653a6c6f67");
        assert_eq!(sender_arg(None), "-");
        assert_eq!(sender_arg(Some(&UserId::from(""))), "");
        assert_eq!(sender_arg(Some(&UserId::from("é"))), "c3a9");
    }

    #[test]
    fn client_keys_outlive_presence_by_a_generous_grace() {
        assert_eq!(reap_grace(Duration::from_secs(60)), 600_000);
        assert_eq!(reap_grace(Duration::from_secs(3600)), 7_200_000);
    }
}
