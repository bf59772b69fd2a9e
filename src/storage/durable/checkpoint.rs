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
    let mut checkpoint = Checkpoint::begin(db, payloads, last_pos)?;
    if let Err(e) = checkpoint.step(changes, payloads, None) {
        checkpoint.abort(payloads);
        return Err(e);
    }
    checkpoint.commit(payloads, log_seq)
}

/// A checkpoint being written a slice at a time, so that the writer can write frames in
/// between: one redb transaction, open until [`Checkpoint::commit`]. Until then the file is as
/// it was, and a crash leaves it so (the log still holds every frame). Changes recorded after
/// it began are written too, so that it holds every frame when it commits.
pub(super) struct Checkpoint {
    txn: WriteTransaction,
    /// Which changes are left out ([`Finder`]), found a stretch at a time: those there were
    /// when it began, then each time it has written all it knew of, those recorded since. A
    /// pair split between two stretches (a message and its removal) is written both.
    skip: Vec<bool>,
    /// The stretch after `skip`'s, while what it leaves out is being found.
    finding: Option<Finder>,
    /// How many changes are written so far.
    applied: usize,
    last_pos: Position,
    payloads_before: PayloadIds,
}

impl Checkpoint {
    /// Begins a checkpoint; its steps write the changes given them.
    pub(super) fn begin(
        db: &Database,
        payloads: &PayloadIds,
        last_pos: Position,
    ) -> Result<Checkpoint, redb::Error> {
        Ok(Checkpoint {
            txn: db.begin_write()?,
            skip: Vec::new(),
            finding: None,
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
        let started = Instant::now();
        let out_of_time = || budget.is_some_and(|budget| started.elapsed() >= budget);
        let mut t = Open::new(&self.txn);
        while let Some(change) = changes.get(self.applied) {
            if self.applied == self.skip.len() {
                // A new stretch: what came and went in it is found first (a part at a time,
                // as it takes about 0.3 µs a change, and a checkpoint begins with 100,000),
                // then left out too.
                let finder = self
                    .finding
                    .get_or_insert_with(|| Finder::new(self.applied, changes.len()));
                if !finder.look(changes, out_of_time) {
                    return Ok(false);
                }
                if let Some(found) = self.finding.take() {
                    self.skip.extend(found.skip);
                }
            }
            // A position handed out is never handed out again, even that of a message left out.
            if let Change::Message { pos, .. } = change {
                self.last_pos = self.last_pos.max(*pos);
            }
            if !self.skip.get(self.applied).copied().unwrap_or(false) {
                tables::apply(&mut t, change, payloads)?;
            }
            self.applied += 1;
            // The clock is read every few changes: each takes about a microsecond.
            if self.applied.is_multiple_of(STEP_CHECK) && out_of_time() {
                break;
            }
        }
        Ok(self.applied >= changes.len())
    }

    /// How many of the changes are written (or left out) so far.
    #[cfg(test)]
    pub(super) fn applied(&self) -> usize {
        self.applied
    }

    /// Commits what was written, recording frame `log_seq` as the last it holds: every change
    /// must be written ([`Checkpoint::step`] returned `true` for all of them). Returns the
    /// highest position the file records; on an error nothing was written, and `payloads` are
    /// as they were when it began.
    pub(super) fn commit(
        self,
        payloads: &mut PayloadIds,
        log_seq: u64,
    ) -> Result<Position, redb::Error> {
        let Checkpoint {
            txn,
            last_pos,
            payloads_before,
            ..
        } = self;
        let written = Self::finish(txn, payloads, &payloads_before, last_pos, log_seq);
        if written.is_err() {
            *payloads = payloads_before;
        }
        written
    }

    fn finish(
        txn: WriteTransaction,
        payloads: &PayloadIds,
        payloads_before: &PayloadIds,
        last_pos: Position,
        log_seq: u64,
    ) -> Result<Position, redb::Error> {
        {
            let mut t = Open::new(&txn);
            let meta = t.meta()?;
            meta.insert("last_pos", last_pos.to_be_bytes().as_slice())?;
            meta.insert("log_seq", log_seq.to_be_bytes().as_slice())?;
            if payloads.next != payloads_before.next {
                meta.insert("next_payload", payloads.next.to_be_bytes().as_slice())?;
            }
        }
        txn.commit()?;
        Ok(last_pos)
    }

    /// Gives the checkpoint up: the file is left as it was, and `payloads` as they were when
    /// it began.
    pub(super) fn abort(self, payloads: &mut PayloadIds) {
        let _ = self.txn.abort();
        *payloads = self.payloads_before;
    }
}

/// How many changes a step writes between two looks at the clock.
const STEP_CHECK: usize = 64;

/// Which of a stretch of changes need not be written: a message and its removal both, a
/// cursor that a later one (or the client's removal) replaces. Found from the stretch's end
/// back to its start, each change looked up once, a part at a time: the maps own their keys,
/// so that the list may grow (and move) between two parts.
///
/// A fan-out's shared payload stays right: it is stored by the first of its messages that is
/// written (the others find its id by the payload's address), and counted by those written
/// alone, so a payload whose messages all came and went is never stored.
struct Finder {
    start: usize,
    /// The changes from here to the stretch's end are looked at.
    next: usize,
    /// One per change of the stretch.
    skip: Vec<bool>,
    /// Removals found, by message: their index in the stretch.
    removed: HashMap<(Position, UserId), usize, RandomState>,
    /// Clients whose cursor a later change replaces.
    replaced: HashSet<(UserId, ClientId), RandomState>,
}

impl Finder {
    /// To look through `changes[start..end]`.
    fn new(start: usize, end: usize) -> Finder {
        Finder {
            start,
            next: end,
            skip: vec![false; end - start],
            removed: HashMap::default(),
            replaced: HashSet::default(),
        }
    }

    /// Looks at the stretch's changes not looked at yet, last first, until `out_of_time` (asked
    /// every [`STEP_CHECK`] changes); whether the whole stretch is looked at.
    fn look(&mut self, changes: &[Change], out_of_time: impl Fn() -> bool) -> bool {
        let mut looked = 0;
        while self.next > self.start {
            self.next -= 1;
            let at = self.next - self.start;
            match &changes[self.next] {
                Change::Unmessage { user, pos } => {
                    self.removed.insert((*pos, user.clone()), at);
                }
                Change::Message { user, pos, .. } => {
                    if let Some(removal) = self.removed.remove(&(*pos, user.clone())) {
                        self.skip[at] = true;
                        self.skip[removal] = true;
                    }
                }
                Change::Cursor { user, client, .. }
                    if !self.replaced.insert((user.clone(), client.clone())) =>
                {
                    self.skip[at] = true;
                }
                Change::Unclient { user, client } => {
                    self.replaced.insert((user.clone(), client.clone()));
                }
                _ => {}
            }
            looked += 1;
            if looked % STEP_CHECK == 0 && out_of_time() {
                break;
            }
        }
        self.next == self.start
    }
}

/// Which of `changes` need not be written ([`Finder`]), found at once.
#[cfg(test)]
fn left_out(changes: &[Change]) -> Vec<bool> {
    let mut finder = Finder::new(0, changes.len());
    finder.look(changes, || false);
    finder.skip
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

    /// Found a part at a time, with the list growing (and moving) between parts, what is left
    /// out is what is found at once.
    #[test]
    fn what_is_left_out_found_in_parts_is_what_is_found_at_once() {
        let data: Arc<RawValue> = RawValue::from_string("1".into()).expect("json").into();
        let mut changes = Vec::new();
        for pos in 1..=2_000u64 {
            let user = format!("u{}", pos % 7);
            changes.push(message(&user, pos, &data));
            // Two in three messages removed, 10 messages (about 25 changes) later.
            if pos > 10 && pos % 3 != 0 {
                changes.push(Change::Unmessage {
                    user: UserId::from(format!("u{}", (pos - 10) % 7).as_str()),
                    pos: pos - 10,
                });
            }
            changes.push(cursor(
                &user,
                if pos % 2 == 0 { "tab-0001" } else { "tab-0002" },
                pos,
            ));
        }
        let at_once = left_out(&changes);
        assert!(at_once.iter().any(|&s| s) && at_once.iter().any(|&s| !s));

        let end = changes.len();
        let mut finder = Finder::new(0, end);
        let mut parts = 1;
        while !finder.look(&changes, || true) {
            parts += 1;
            // Grown past its capacity: moved elsewhere, which the finder holds nothing of.
            changes.shrink_to_fit();
            changes.push(cursor("u0", "tab-0001", 0));
        }
        assert!(parts > 10, "found in {parts} parts");
        assert_eq!(finder.skip, at_once);
    }

    /// Written in slices, with more changes recorded between them, a checkpoint leaves the file
    /// as one written at once does: the same records, shared payloads and positions. Messages
    /// and their removals fall on both sides of where it began, and of each later stretch;
    /// some remove messages an earlier checkpoint wrote.
    #[test]
    fn a_checkpoint_written_in_slices_writes_what_one_written_at_once_does() {
        let dir = super::super::test_folder("slices");
        let shared: Arc<RawValue> = RawValue::from_string(format!("\"{}\"", "s".repeat(300)))
            .expect("json")
            .into();
        let small: Arc<RawValue> = RawValue::from_string("1".into()).expect("json").into();
        let unmessage = |user: &str, pos| Change::Unmessage {
            user: UserId::from(user),
            pos,
        };
        // Written by both files' first checkpoint.
        let earlier: Vec<Change> = (1..=20)
            .map(|pos| message(&format!("u{}", pos % 4), pos, &shared))
            .collect();
        // Then: new messages (a fan-out's payload among them), removals of earlier and new
        // ones, cursors moved, a client gone.
        let mut changes = Vec::new();
        for pos in 21..=140u64 {
            let user = format!("u{}", pos % 4);
            let data = if pos % 3 == 0 { &shared } else { &small };
            changes.push(message(&user, pos, data));
            if pos % 2 == 0 {
                changes.push(unmessage(&user, pos - 9));
            }
            if pos % 5 == 0 {
                changes.push(cursor(&user, "tab-0001", pos));
            }
            if pos == 100 {
                changes.push(Change::Unclient {
                    user: UserId::from("u0"),
                    client: ClientId::new("tab-0001").expect("an id"),
                });
            }
        }
        let open = |name: &str| {
            let (db, loaded) = super::super::load::open(&dir.join(name)).expect("a new file");
            let mut payloads = PayloadIds::starting_at(loaded.next_payload);
            let last_pos = write(&db, &earlier, &mut payloads, 0, 1).expect("written");
            (db, payloads, last_pos)
        };

        let (at_once, mut at_once_ids, last_pos) = open("at-once.redb");
        let at_once_pos =
            write(&at_once, &changes, &mut at_once_ids, last_pos, 2).expect("written");

        let (sliced, mut sliced_ids, last_pos) = open("sliced.redb");
        let mut checkpoint = Checkpoint::begin(&sliced, &sliced_ids, last_pos).expect("begun");
        // No time at all: a few changes per step, the list growing between them.
        let (mut steps, mut unfinished) = (0, 0);
        for end in (37..changes.len()).step_by(23).chain([changes.len()]) {
            loop {
                steps += 1;
                let done = checkpoint
                    .step(&changes[..end], &mut sliced_ids, Some(Duration::ZERO))
                    .expect("a step");
                if done {
                    break;
                }
                unfinished += 1;
            }
        }
        assert!(
            steps > 8 && unfinished > 0,
            "{steps} steps, {unfinished} cut short: not sliced"
        );
        let sliced_pos = checkpoint.commit(&mut sliced_ids, 2).expect("committed");

        let read = |db: &Database| {
            let loaded = super::super::load::read_all(db).expect("read back");
            (
                format!("{:?}", loaded.restored.changes),
                loaded.next_payload,
                loaded.log_seq,
            )
        };
        assert_eq!(sliced_pos, at_once_pos);
        assert_eq!(read(&sliced), read(&at_once));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
