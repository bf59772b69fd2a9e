//! A shard's messages by expiry, so that the sweep finds the expired ones without a scan.
//!
//! Positions are unique within a shard, so expiry then position is a key that orders without
//! looking at the user. Nearly every message appended has the latest expiry and the highest
//! position of its shard (most sends use one TTL), so the index is mostly a run in key order:
//! appended at its end in O(1), found by binary search, emptied from its front by the sweep.
//! A B-tree of every message made each append search down the tree, comparing its key with
//! every key of each node on the way (a fifth of an append's instructions in a fan-out).
//!
//! A message removed before it expires (delivered and trimmed, or evicted) leaves a hole in the
//! run, so that no removal moves the rest; holes at the front go at once, and the run is packed
//! once they are as many as its messages, so it holds at most about twice what it indexes. The
//! few messages that expire before the end of the run (a shorter TTL than the messages before
//! them, or a restore out of order) go to a B-tree beside it.

use std::collections::{BTreeMap, VecDeque};

use super::super::{Millis, Position};
use crate::id::UserId;

/// Holes tolerated before packing is considered at all: packing a short run often is waste.
const MIN_HOLES: usize = 64;

/// Room a run keeps however little it holds (8 KiB): a shard that gets a message now and then
/// does not reallocate each time.
const MIN_ROOM: usize = 256;

#[derive(Debug, Default)]
pub(super) struct Expiries {
    /// Ascending by `(expiry, position)`; `None` is a hole. Its front is never a hole.
    run: VecDeque<(Millis, Position, Option<UserId>)>,
    holes: usize,
    /// Messages whose key is below the end of `run` when they came.
    others: BTreeMap<(Millis, Position), UserId>,
}

impl Expiries {
    pub(super) fn insert(&mut self, expires_at: Millis, pos: Position, user: UserId) {
        let after_run = self
            .run
            .back()
            .is_none_or(|&(e, p, _)| (e, p) < (expires_at, pos));
        if after_run {
            self.run.push_back((expires_at, pos, Some(user)));
        } else {
            self.others.insert((expires_at, pos), user);
        }
    }

    pub(super) fn remove(&mut self, expires_at: Millis, pos: Position) {
        let key = (expires_at, pos);
        match self.run.binary_search_by(|&(e, p, _)| (e, p).cmp(&key)) {
            Ok(at) => {
                if self.run[at].2.take().is_some() {
                    self.holes += 1;
                    self.drop_front_holes();
                    if self.holes > MIN_HOLES && self.holes * 2 > self.run.len() {
                        self.run.retain(|(_, _, user)| user.is_some());
                        self.holes = 0;
                    }
                    self.shrink_if_sparse();
                }
            }
            Err(_) => {
                self.others.remove(&key);
            }
        }
    }

    /// The earliest expiry held.
    pub(super) fn first_expiry(&self) -> Option<Millis> {
        let run = self.run.front().map(|&(e, _, _)| e);
        let others = self.others.first_key_value().map(|(&(e, _), _)| e);
        match (run, others) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes the message that expires first (of those, the lowest position): its position
    /// and user.
    pub(super) fn pop_first(&mut self) -> Option<(Position, UserId)> {
        let run = self.run.front().map(|&(e, p, _)| (e, p));
        let others = self.others.first_key_value().map(|(&key, _)| key);
        let from_run = match (run, others) {
            (None, None) => return None,
            (Some(a), Some(b)) => a < b,
            (a, _) => a.is_some(),
        };
        if from_run {
            let (_, pos, user) = self.run.pop_front()?;
            self.drop_front_holes();
            self.shrink_if_sparse();
            // The front is never a hole.
            user.map(|user| (pos, user))
        } else {
            let ((_, pos), user) = self.others.pop_first()?;
            Some((pos, user))
        }
    }

    fn drop_front_holes(&mut self) {
        while self.run.front().is_some_and(|(_, _, user)| user.is_none()) {
            self.run.pop_front();
            self.holes -= 1;
        }
    }

    /// Gives back the room of a run that held far more than it holds now (a large fan-out,
    /// delivered), keeping twice what it holds: growing again to the same size costs one more
    /// reallocation, so the work stays proportional to what was removed.
    fn shrink_if_sparse(&mut self) {
        let keep = self.run.len().max(MIN_ROOM);
        if self.run.capacity() > 4 * keep {
            self.run.shrink_to(2 * keep);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.run.len() - self.holes + self.others.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(e: &mut Expiries) -> Vec<Position> {
        std::iter::from_fn(|| e.pop_first())
            .map(|(p, _)| p)
            .collect()
    }

    #[test]
    fn messages_come_out_by_expiry_then_position_whatever_the_order_they_came_in() {
        let mut e = Expiries::default();
        e.insert(20, 1, UserId::from("a"));
        e.insert(30, 2, UserId::from("b"));
        e.insert(10, 3, UserId::from("c")); // a shorter TTL
        e.insert(30, 4, UserId::from("d"));
        e.insert(25, 5, UserId::from("e"));
        e.remove(30, 2);
        e.remove(25, 5);
        e.remove(99, 9); // not held
        assert_eq!(e.len(), 3);
        assert_eq!(e.first_expiry(), Some(10));
        assert_eq!(e.pop_first(), Some((3, UserId::from("c"))));
        assert_eq!(e.first_expiry(), Some(20));
        assert_eq!(drain(&mut e), [1, 4]);
        assert_eq!(e.first_expiry(), None);
    }

    #[test]
    fn removed_messages_leave_no_more_holes_than_messages() {
        let mut e = Expiries::default();
        let n = 10_000;
        for pos in 0..n {
            e.insert(1_000 + pos / 10, pos, UserId::from("u"));
        }
        // Every other one removed, from the middle: a message delivered while older ones wait.
        for pos in (1..n).step_by(2) {
            e.remove(1_000 + pos / 10, pos);
            assert!(e.holes <= MIN_HOLES.max(e.run.len() - e.holes) + 1);
        }
        assert_eq!(e.len(), (n / 2) as usize);
        assert!(e.run.len() <= 2 * e.len() + MIN_HOLES);
        let left = drain(&mut e);
        assert_eq!(left, (0..n).step_by(2).collect::<Vec<_>>());
        assert_eq!(e.holes, 0);
    }

    #[test]
    fn a_run_emptied_after_a_burst_gives_its_room_back() {
        let mut e = Expiries::default();
        for pos in 0..100_000 {
            e.insert(1_000, pos, UserId::from("u"));
        }
        for pos in 0..100_000 {
            e.remove(1_000, pos);
        }
        assert_eq!(e.len(), 0);
        assert!(e.run.capacity() <= 4 * MIN_ROOM, "{}", e.run.capacity());
        for pos in 0..1_000 {
            e.insert(2_000, pos, UserId::from("u"));
        }
        assert_eq!(drain(&mut e).len(), 1_000);
        assert!(e.run.capacity() <= 4 * MIN_ROOM, "{}", e.run.capacity());
    }

    #[test]
    fn removing_the_oldest_empties_the_front_at_once() {
        let mut e = Expiries::default();
        for pos in 0..5 {
            e.insert(100, pos, UserId::from("u"));
        }
        e.remove(100, 1);
        e.remove(100, 0);
        assert_eq!(e.run.len(), 3, "the holes at the front went with it");
        assert_eq!(e.first_expiry(), Some(100));
        assert_eq!(drain(&mut e), [2, 3, 4]);
    }
}
