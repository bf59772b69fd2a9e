//! A checkpoint: the changes of the log's frames since the last one, written into the redb file
//! in one transaction, with the number of the last frame they came from.
//!
//! What came and went between two checkpoints is left out: a message stored and then removed
//! (delivered, expired) is neither inserted nor removed, and of a client's cursor moves only
//! the last is written. Under a steady load of direct messages that is nearly every message:
//! the B-tree then holds what is still undelivered at a checkpoint, and a commit's pages are
//! written once per checkpoint rather than once per batch.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use redb::{Database, WriteTransaction};

use super::tables::{self, Open, PayloadIds};
use crate::hash::RandomState;
use crate::id::{ClientId, UserId};
use crate::storage::Position;
use crate::storage::memory::journal::Change;

/// Writes `changes`, those of the frames after the file's last checkpoint up to frame
/// `log_seq`, into `db` in one transaction. `last_pos` is the highest position the file
/// records; the one it records after is returned. On an error nothing was written and
/// `payloads` is as it was.
pub(super) fn write(
    db: &Database,
    changes: &[Change],
    payloads: &mut PayloadIds,
    last_pos: Position,
    log_seq: u64,
) -> Result<Position, redb::Error> {
    let mut checkpoint = Checkpoint::begin(db, changes, payloads, last_pos)?;
    let written = checkpoint
        .step(changes, payloads, None)
        .and_then(|_| checkpoint.commit(payloads, log_seq));
    if written.is_err() {
        checkpoint.abort(payloads);
    }
    written
}

/// A checkpoint being written a slice at a time, so that the writer can write frames in
/// between: one redb transaction, open until [`Checkpoint::commit`]. Until then the file is as
/// it was, and a crash leaves it so (the log still holds every frame). Changes recorded after
/// it began are written too, so that it holds every frame when it commits.
pub(super) struct Checkpoint {
    txn: Option<WriteTransaction>,
    /// Which of the changes there were when it began are left out ([`left_out`]); those
    /// recorded after are all written.
    skip: Vec<bool>,
    /// How many changes are written so far.
    applied: usize,
    last_pos: Position,
    payloads_before: PayloadIds,
}

impl Checkpoint {
    /// Begins a checkpoint of `changes` (and of those recorded after them, in later steps).
    pub(super) fn begin(
        db: &Database,
        changes: &[Change],
        payloads: &PayloadIds,
        last_pos: Position,
    ) -> Result<Checkpoint, redb::Error> {
        Ok(Checkpoint {
            txn: Some(db.begin_write()?),
            skip: left_out(changes),
            applied: 0,
            last_pos,
            payloads_before: payloads.clone(),
        })
    }

    /// Writes the next of `changes` (the same list, perhaps grown since) until `budget` has
    /// passed, or all of them without one; whether all are written.
    pub(super) fn step(
        &mut self,
        changes: &[Change],
        payloads: &mut PayloadIds,
        budget: Option<Duration>,
    ) -> Result<bool, redb::Error> {
        let Some(txn) = &self.txn else {
            return Ok(true);
        };
        let started = Instant::now();
        let mut t = Open::new(txn);
        while let Some(change) = changes.get(self.applied) {
            // A position handed out is never handed out again, even that of a message left out.
            if let Change::Message { pos, .. } = change {
                self.last_pos = self.last_pos.max(*pos);
            }
            if !self.skip.get(self.applied).copied().unwrap_or(false) {
                tables::apply(&mut t, change, payloads)?;
            }
            self.applied += 1;
            // The clock is read every few changes: each takes about a microsecond.
            if self.applied.is_multiple_of(STEP_CHECK)
                && budget.is_some_and(|budget| started.elapsed() >= budget)
            {
                break;
            }
        }
        Ok(self.applied >= changes.len())
    }

    /// Commits what was written, recording frame `log_seq` as the last it holds: every change
    /// must be written ([`Checkpoint::step`] returned `true` for all of them). Returns the
    /// highest position the file records.
    pub(super) fn commit(
        &mut self,
        payloads: &PayloadIds,
        log_seq: u64,
    ) -> Result<Position, redb::Error> {
        let Some(txn) = self.txn.take() else {
            return Ok(self.last_pos);
        };
        {
            let mut t = Open::new(&txn);
            let meta = t.meta()?;
            meta.insert("last_pos", self.last_pos.to_be_bytes().as_slice())?;
            meta.insert("log_seq", log_seq.to_be_bytes().as_slice())?;
            if payloads.next != self.payloads_before.next {
                meta.insert("next_payload", payloads.next.to_be_bytes().as_slice())?;
            }
        }
        txn.commit()?;
        Ok(self.last_pos)
    }

    /// Gives the checkpoint up: the file is left as it was, and `payloads` as they were when
    /// it began.
    pub(super) fn abort(mut self, payloads: &mut PayloadIds) {
        if let Some(txn) = self.txn.take() {
            let _ = txn.abort();
        }
        *payloads = self.payloads_before;
    }
}

/// How many changes a step writes between two looks at the clock.
const STEP_CHECK: usize = 64;

/// Which of `changes` need not be written: a message and its removal both, a cursor that a
/// later one (or the client's removal) replaces. One pass from the end, each change looked up
/// once.
///
/// A fan-out's shared payload stays right: it is stored by the first of its messages that is
/// written (the others find its id by the payload's address), and counted by those written
/// alone, so a payload whose messages all came and went is never stored.
fn left_out(changes: &[Change]) -> Vec<bool> {
    let mut skip = vec![false; changes.len()];
    let mut removed: HashMap<(Position, &UserId), usize, RandomState> = HashMap::default();
    let mut replaced: HashSet<(&UserId, &ClientId), RandomState> = HashSet::default();
    for (i, change) in changes.iter().enumerate().rev() {
        match change {
            Change::Unmessage { user, pos } => {
                removed.insert((*pos, user), i);
            }
            Change::Message { user, pos, .. } => {
                if let Some(removal) = removed.remove(&(*pos, user)) {
                    skip[i] = true;
                    skip[removal] = true;
                }
            }
            Change::Cursor { user, client, .. } if !replaced.insert((user, client)) => {
                skip[i] = true;
            }
            Change::Unclient { user, client } => {
                replaced.insert((user, client));
            }
            _ => {}
        }
    }
    skip
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::value::RawValue;

    use super::*;

    fn message(user: &str, pos: Position, data: &Arc<RawValue>) -> Change {
        Change::Message {
            user: UserId::from(user),
            pos,
            client: None,
            sender: None,
            namespace: "/".into(),
            event: "e".into(),
            data: data.clone(),
            expires_at: 0,
            ack: false,
        }
    }

    fn cursor(user: &str, client: &str, cursor: Position) -> Change {
        Change::Cursor {
            user: UserId::from(user),
            client: ClientId::new(client).expect("an id"),
            cursor,
            vouched: cursor,
        }
    }

    #[test]
    fn what_came_and_went_is_left_out_and_the_rest_kept() {
        let small: Arc<RawValue> = RawValue::from_string("1".into()).expect("json").into();
        let large: Arc<RawValue> = RawValue::from_string(format!("\"{}\"", "x".repeat(300)))
            .expect("json")
            .into();
        let changes = [
            message("a", 1, &small),
            message("b", 2, &small),
            message("a", 3, &large),
            cursor("a", "tab-0001", 1),
            Change::Unmessage {
                user: UserId::from("a"),
                pos: 1,
            },
            Change::Unmessage {
                user: UserId::from("a"),
                pos: 3,
            },
            // Removed before the checkpoint before: in the file, so its removal is written.
            Change::Unmessage {
                user: UserId::from("c"),
                pos: 0,
            },
            cursor("a", "tab-0001", 3),
            cursor("b", "tab-0002", 2),
            Change::Unclient {
                user: UserId::from("b"),
                client: ClientId::new("tab-0002").expect("an id"),
            },
            cursor("b", "tab-0002", 5),
        ];
        let skip = left_out(&changes);
        assert_eq!(
            skip,
            [
                true,  // a@1: stored and removed
                false, // b@2: still there
                true,  // a@3: its payload shared, but never stored
                true,  // a's first cursor: replaced
                true,  // a@1's removal
                true,  // a@3's removal
                false, // c@0's removal
                false, // a's last cursor
                true,  // b's cursor before its client went
                false, // the client's removal
                false, // the new client's cursor
            ]
        );
    }
}
