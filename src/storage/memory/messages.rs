//! One user's messages in position order, in a ring buffer.
//!
//! A log is appended at its end (positions only grow within a user's log) and emptied from its
//! front (trimming delivered messages, expiry, eviction of the oldest), so a deque sorted by
//! position does each in O(1), and finds a position by binary search. It costs one allocation
//! sized to what the log holds: a user with one message holds room for a few, not a B-tree
//! leaf of eleven (1.2 KB, which a `BTreeMap` keeps even once emptied), and a fan-out to
//! thousands of users touches that much less fresh memory.

use std::collections::VecDeque;
use std::ops::Bound;

use super::super::Position;
use super::log::Entry;

/// How much room an emptied log keeps: a user who gets a message now and then reuses it, and a
/// log that once held a backlog gives the rest back.
const KEEP_WHEN_EMPTY: usize = 4;

#[derive(Debug, Default)]
pub(super) struct Messages {
    /// Sorted by `message.pos`, each position once.
    entries: VecDeque<Entry>,
}

impl Messages {
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The highest position held.
    pub(super) fn newest(&self) -> Option<Position> {
        self.entries.back().map(|e| e.message.pos)
    }

    fn find(&self, pos: Position) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&pos, |e| e.message.pos)
    }

    pub(super) fn get(&self, pos: &Position) -> Option<&Entry> {
        self.find(*pos).ok().map(|i| &self.entries[i])
    }

    /// Adds `entry`, replacing one at the same position. At the end unless restored out of
    /// order.
    pub(super) fn insert(&mut self, entry: Entry) -> Option<Entry> {
        let pos = entry.message.pos;
        if self.entries.capacity() == 0 {
            // Room for one: a fan-out's recipient usually holds just this message until it is
            // confirmed, and the deque's own first step would be room for four.
            self.entries.reserve_exact(1);
        }
        if self
            .entries
            .back()
            .is_none_or(|last| last.message.pos < pos)
        {
            self.entries.push_back(entry);
            return None;
        }
        match self.find(pos) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i], entry)),
            Err(i) => {
                self.entries.insert(i, entry);
                None
            }
        }
    }

    /// Removes the entry at `pos`. Near the front (the usual case) this moves nothing but the
    /// entries before it.
    pub(super) fn remove(&mut self, pos: &Position) -> Option<Entry> {
        let i = self.find(*pos).ok()?;
        let entry = self.entries.remove(i);
        if self.entries.is_empty() && self.entries.capacity() > KEEP_WHEN_EMPTY {
            self.entries = VecDeque::new();
        }
        entry
    }

    /// Removes the entries at `positions` (ascending, each present), for a trim: one pass over
    /// the span they lie in, then one move of the shorter side of the deque to close the gap.
    /// Removing them one by one would move the entries before each (or after it) each time: a
    /// backlog of undelivered messages left in front of delivered ones (a namespace no client
    /// reads) would be moved once per delivered message behind it.
    pub(super) fn remove_sorted<T>(&mut self, items: &[T], pos_of: impl Fn(&T) -> Position) {
        let (Some(first), Some(last)) = (items.first().map(&pos_of), items.last().map(&pos_of))
        else {
            return;
        };
        let start = self.entries.partition_point(|e| e.message.pos < first);
        let end = self.entries.partition_point(|e| e.message.pos <= last);
        // Keep what lies in the span but is not removed, packed at its start.
        let mut doomed = items.iter().map(&pos_of).peekable();
        let mut kept = start;
        for i in start..end {
            let pos = self.entries[i].message.pos;
            while doomed.next_if(|&p| p < pos).is_some() {}
            if doomed.next_if_eq(&pos).is_none() {
                self.entries.swap(kept, i);
                kept += 1;
            }
        }
        // `VecDeque::drain` closes the gap by moving the shorter side.
        self.entries.drain(kept..end);
        if self.entries.is_empty() && self.entries.capacity() > KEEP_WHEN_EMPTY {
            self.entries = VecDeque::new();
        }
    }

    /// The entries from the oldest.
    pub(super) fn values(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// The entries within `range` of positions, in order.
    pub(super) fn range(
        &self,
        range: (Bound<Position>, Bound<Position>),
    ) -> impl Iterator<Item = &Entry> {
        let start = match range.0 {
            Bound::Unbounded => 0,
            Bound::Included(p) => self.entries.partition_point(|e| e.message.pos < p),
            Bound::Excluded(p) => self.entries.partition_point(|e| e.message.pos <= p),
        };
        let end = match range.1 {
            Bound::Unbounded => self.entries.len(),
            Bound::Included(p) => self.entries.partition_point(|e| e.message.pos <= p),
            Bound::Excluded(p) => self.entries.partition_point(|e| e.message.pos < p),
        };
        self.entries.range(start..end.max(start))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::StoredMessage;

    fn entry(pos: Position) -> Entry {
        Entry {
            client: None,
            sender: None,
            message: StoredMessage {
                pos,
                ns: Arc::from("/"),
                event: Arc::from("e"),
                data: Arc::from(serde_json::value::to_raw_value(&pos).expect("json")),
                ack: false,
            },
            expires_at: 0,
        }
    }

    fn positions<'a>(entries: impl Iterator<Item = &'a Entry>) -> Vec<Position> {
        entries.map(|e| e.message.pos).collect()
    }

    #[test]
    fn entries_stay_in_position_order_however_they_come() {
        let mut messages = Messages::default();
        for pos in [5, 9, 2, 7, 12] {
            assert!(messages.insert(entry(pos)).is_none());
        }
        assert!(
            messages.insert(entry(7)).is_some(),
            "a position is held once"
        );
        assert_eq!(positions(messages.values()), [2, 5, 7, 9, 12]);
        assert_eq!(messages.get(&9).map(|e| e.message.pos), Some(9));
        assert!(messages.get(&8).is_none());
        let range = (Bound::Excluded(5), Bound::Included(9));
        assert_eq!(positions(messages.range(range)), [7, 9]);
        let after = (Bound::Excluded(12), Bound::Unbounded);
        assert_eq!(positions(messages.range(after)), Vec::<Position>::new());
        assert_eq!(messages.remove(&7).map(|e| e.message.pos), Some(7));
        assert!(messages.remove(&7).is_none());
        assert_eq!(positions(messages.values()), [2, 5, 9, 12]);
        assert_eq!(messages.len(), 4);
    }

    #[test]
    fn an_emptied_backlog_gives_its_room_back() {
        let mut messages = Messages::default();
        for pos in 1..=100 {
            messages.insert(entry(pos));
        }
        for pos in 1..=100 {
            messages.remove(&pos);
        }
        assert!(messages.is_empty());
        assert_eq!(messages.entries.capacity(), 0);
        messages.insert(entry(101));
        messages.remove(&101);
        assert!(
            messages.entries.capacity() > 0,
            "a small log keeps its room"
        );
    }

    /// Removing a sorted set of positions at once leaves exactly the others, in order, whether
    /// they lie at the front, behind a kept backlog, or spread among kept entries.
    #[test]
    fn removing_sorted_positions_keeps_the_rest_in_order() {
        let cases: &[(&[Position], &[Position])] = &[
            (&[1, 2, 3], &[4, 5, 6, 7, 8, 9, 10]),
            (&[8, 9, 10], &[1, 2, 3, 4, 5, 6, 7]),
            (&[2, 4, 6, 8], &[1, 3, 5, 7, 9, 10]),
            (&[5], &[1, 2, 3, 4, 6, 7, 8, 9, 10]),
            (&[], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
            (&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], &[]),
        ];
        for &(removed, left) in cases {
            let mut messages = Messages::default();
            // Some of it wrapped around the deque's end, as a ring buffer in use is.
            for pos in 1..=4 {
                messages.insert(entry(pos));
            }
            for pos in 1..=4 {
                messages.remove(&pos);
            }
            for pos in 1..=10 {
                messages.insert(entry(pos));
            }
            messages.remove_sorted(removed, |&p| p);
            assert_eq!(positions(messages.values()), left, "removing {removed:?}");
        }
    }
}
