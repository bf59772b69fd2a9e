//! A checkpoint: the changes of the log's frames since the last one, written into the redb file
//! in one transaction, with the number of the last frame they came from.
//!
//! What came and went between two checkpoints is left out: a message stored and then removed
//! (delivered, expired) is neither inserted nor removed, and of a client's cursor moves only
//! the last is written. Under a steady load of direct messages that is nearly every message:
//! the B-tree then holds what is still undelivered at a checkpoint, and a commit's pages are
//! written once per checkpoint rather than once per batch.

use std::collections::{HashMap, HashSet};

use redb::Database;

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
    let before = payloads.clone();
    let written = write_all(db, changes, payloads, last_pos, log_seq);
    if written.is_err() {
        *payloads = before;
    }
    written
}

fn write_all(
    db: &Database,
    changes: &[Change],
    payloads: &mut PayloadIds,
    mut last_pos: Position,
    log_seq: u64,
) -> Result<Position, redb::Error> {
    let skip = left_out(changes);
    let next_payload = payloads.next;
    let txn = db.begin_write()?;
    {
        let mut t = Open::new(&txn);
        for (change, skip) in changes.iter().zip(skip) {
            // A position handed out is never handed out again, even that of a message left out.
            if let Change::Message { pos, .. } = change {
                last_pos = last_pos.max(*pos);
            }
            if !skip {
                tables::apply(&mut t, change, payloads)?;
            }
        }
        let meta = t.meta()?;
        meta.insert("last_pos", last_pos.to_be_bytes().as_slice())?;
        meta.insert("log_seq", log_seq.to_be_bytes().as_slice())?;
        if payloads.next != next_payload {
            meta.insert("next_payload", payloads.next.to_be_bytes().as_slice())?;
        }
    }
    txn.commit()?;
    Ok(last_pos)
}

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
