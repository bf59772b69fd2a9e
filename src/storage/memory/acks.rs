//! One shard's ack records: for each message that asked for replies
//! ([`NewMessage::ack`](crate::storage::NewMessage::ack)), who may reply and the replies so far.
//! Kept beside the log, not in it: a delivered message leaves the log as soon as every client
//! confirmed it, which may be before its reply arrives (a client confirms with its next `GET`
//! while the reply goes out in a `POST`). Each record lives until its message's expiry, bounded
//! per user in count and in bytes of replies, and swept by time.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::value::RawValue;

use super::super::{Millis, NewReply, Position, RecordedReply, ReplyLimits, ReplyOutcome};
use super::journal::{Change, Changes};
use crate::hash::HashMap;
use crate::id::{ClientId, UserId};

#[derive(Debug, Default)]
pub(super) struct Acks {
    records: HashMap<(UserId, Position), Record>,
    /// Every record by its message's expiry, for the sweep.
    expiries: BTreeSet<(Millis, UserId, Position)>,
    /// Per user, how many records and how many bytes of replies they hold: the bounds.
    tallies: HashMap<UserId, Tally>,
    /// What changed, for a journaled storage.
    pub(super) changes: Changes,
}

#[derive(Debug)]
struct Record {
    /// The client the message was addressed to, if one: only it may reply.
    client: Option<ClientId>,
    expires_at: Millis,
    replies: Vec<RecordedReply>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    records: usize,
    bytes: usize,
}

impl Acks {
    /// Whether `user` may have one more record: fewer than `most`, counting lapsed ones not
    /// swept yet (the sweep comes at least once a second).
    pub(super) fn has_room(&self, user: &UserId, most: usize) -> bool {
        self.tallies.get(user).is_none_or(|t| t.records < most)
    }

    /// Opens the record of the message at `pos` of `user`'s log.
    pub(super) fn open(
        &mut self,
        user: &UserId,
        pos: Position,
        client: Option<ClientId>,
        expires_at: Millis,
    ) {
        self.changes.push(|| Change::Ack {
            user: user.clone(),
            pos,
            client: client.clone(),
            expires_at,
            replies: Vec::new(),
        });
        self.restore(user.clone(), pos, client, expires_at, Vec::new());
    }

    /// Records `reply` (see [`Storage::reply`](crate::storage::Storage::reply)).
    pub(super) fn reply(
        &mut self,
        reply: &NewReply,
        limits: ReplyLimits,
        now: Millis,
    ) -> ReplyOutcome {
        let key = (reply.user.clone(), reply.pos);
        let Some(record) = self.records.get_mut(&key) else {
            return ReplyOutcome::Unknown;
        };
        if record.expires_at <= now || record.client.as_ref().is_some_and(|c| *c != reply.client) {
            return ReplyOutcome::Unknown;
        }
        if record.replies.iter().any(|r| r.client == reply.client) {
            return ReplyOutcome::Duplicate;
        }
        let tally = self.tallies.entry(reply.user.clone()).or_default();
        let size = reply.data.get().len();
        if record.replies.len() >= limits.per_message || tally.bytes + size > limits.bytes_per_user
        {
            return ReplyOutcome::Full;
        }
        tally.bytes += size;
        record.replies.push(RecordedReply {
            client: reply.client.clone(),
            data: reply.data.clone(),
        });
        self.changes.push(|| Change::Ack {
            user: reply.user.clone(),
            pos: reply.pos,
            client: record.client.clone(),
            expires_at: record.expires_at,
            replies: record
                .replies
                .iter()
                .map(|r| (r.client.clone(), r.data.clone()))
                .collect(),
        });
        ReplyOutcome::Recorded
    }

    /// The replies to the message at `pos` of `user`'s log, while its record lives.
    pub(super) fn replies(&self, user: &UserId, pos: Position, now: Millis) -> Vec<RecordedReply> {
        self.records
            .get(&(user.clone(), pos))
            .filter(|r| r.expires_at > now)
            .map(|r| r.replies.clone())
            .unwrap_or_default()
    }

    /// Puts back a record that a durable storage kept (and, from `open`, adds one).
    pub(super) fn restore(
        &mut self,
        user: UserId,
        pos: Position,
        client: Option<ClientId>,
        expires_at: Millis,
        replies: Vec<(ClientId, Arc<RawValue>)>,
    ) {
        let replies: Vec<RecordedReply> = replies
            .into_iter()
            .map(|(client, data)| RecordedReply { client, data })
            .collect();
        let bytes: usize = replies.iter().map(|r| r.data.get().len()).sum();
        let record = Record {
            client,
            expires_at,
            replies,
        };
        let tally = self.tallies.entry(user.clone()).or_default();
        tally.bytes += bytes;
        match self.records.insert((user.clone(), pos), record) {
            // Restored twice (a record's later state): the earlier one's share goes.
            Some(old) => {
                tally.bytes -= old
                    .replies
                    .iter()
                    .map(|r| r.data.get().len())
                    .sum::<usize>();
                self.expiries.remove(&(old.expires_at, user.clone(), pos));
            }
            None => tally.records += 1,
        }
        self.expiries.insert((expires_at, user, pos));
    }

    /// Forgets up to `most` records whose message expired by `now`.
    pub(super) fn sweep(&mut self, now: Millis, most: usize) {
        for _ in 0..most {
            match self.expiries.first() {
                Some((until, _, _)) if *until <= now => {}
                _ => break,
            }
            let Some((_, user, pos)) = self.expiries.pop_first() else {
                break;
            };
            let Some(record) = self.records.remove(&(user.clone(), pos)) else {
                continue;
            };
            self.changes.push(|| Change::Unack {
                user: user.clone(),
                pos,
            });
            if let Some(tally) = self.tallies.get_mut(&user) {
                tally.records -= 1;
                tally.bytes -= record
                    .replies
                    .iter()
                    .map(|r| r.data.get().len())
                    .sum::<usize>();
                if tally.records == 0 {
                    self.tallies.remove(&user);
                }
            }
        }
    }
}
