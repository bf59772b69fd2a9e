//! The tracked messages of one user in one namespace (or one client), in position order, with
//! room for one without an allocation.
//!
//! A fan-out tracks one message per recipient, and a recipient that confirms what it gets holds
//! one or two at a time: a deque for each was one allocation per recipient per fan-out (its
//! first push), a tenth of the instructions of storing one. A queue holds its first message in
//! place and makes a deque only for a second.

use std::collections::VecDeque;

use crate::storage::Position;

#[derive(Debug, Default)]
pub(super) enum Queue<T> {
    #[default]
    Empty,
    One((Position, T)),
    /// Sorted by position, each position once; dropped for [`Queue::Empty`] once emptied.
    Many(VecDeque<(Position, T)>),
}

impl<T> Queue<T> {
    pub(super) fn is_empty(&self) -> bool {
        match self {
            Queue::Empty => true,
            Queue::One(_) => false,
            Queue::Many(deque) => deque.is_empty(),
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Queue::Empty => 0,
            Queue::One(_) => 1,
            Queue::Many(deque) => deque.len(),
        }
    }

    /// The lowest position and its item.
    pub(super) fn front(&self) -> Option<&(Position, T)> {
        match self {
            Queue::Empty => None,
            Queue::One(item) => Some(item),
            Queue::Many(deque) => deque.front(),
        }
    }

    /// Every item, by position.
    pub(super) fn iter(&self) -> impl Iterator<Item = &(Position, T)> {
        let (one, many) = match self {
            Queue::Empty => (None, None),
            Queue::One(item) => (Some(item), None),
            Queue::Many(deque) => (None, Some(deque.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// Adds `item` at `pos`, unless the queue holds that position already (then it is dropped
    /// and this returns false). Usually at the back: messages are tracked as they are appended.
    pub(super) fn insert(&mut self, pos: Position, item: T) -> bool {
        match self {
            Queue::Empty => {
                *self = Queue::One((pos, item));
                true
            }
            Queue::One((held, _)) if *held == pos => false,
            Queue::One(_) => {
                let Queue::One(held) = std::mem::take(self) else {
                    unreachable!("matched above")
                };
                // The deque's own first step: room for four.
                let mut deque = VecDeque::with_capacity(4);
                if held.0 < pos {
                    deque.push_back(held);
                    deque.push_back((pos, item));
                } else {
                    deque.push_back((pos, item));
                    deque.push_back(held);
                }
                *self = Queue::Many(deque);
                true
            }
            Queue::Many(deque) => {
                let at = deque.partition_point(|(p, _)| *p < pos);
                if deque.get(at).is_some_and(|(p, _)| *p == pos) {
                    return false;
                }
                deque.insert(at, (pos, item));
                true
            }
        }
    }

    /// Removes the item at `pos` if `owned` says it is the one to remove; whether it did.
    pub(super) fn remove_if(&mut self, pos: Position, owned: impl FnOnce(&T) -> bool) -> bool {
        let removed = match self {
            Queue::Empty => false,
            Queue::One((held, item)) => *held == pos && owned(item),
            Queue::Many(deque) => {
                let at = deque.partition_point(|(p, _)| *p < pos);
                let found = deque
                    .get(at)
                    .is_some_and(|(p, item)| *p == pos && owned(item));
                if found {
                    deque.remove(at);
                }
                found
            }
        };
        if removed && matches!(self, Queue::One(_)) {
            *self = Queue::Empty;
        }
        self.drop_if_empty();
        removed
    }

    /// Takes the item with the lowest position.
    pub(super) fn pop_front(&mut self) -> Option<(Position, T)> {
        let item = match self {
            Queue::Empty => None,
            Queue::One(_) => match std::mem::take(self) {
                Queue::One(item) => Some(item),
                _ => unreachable!("matched above"),
            },
            Queue::Many(deque) => deque.pop_front(),
        };
        self.drop_if_empty();
        item
    }

    /// Puts back an item taken by [`pop_front`](Self::pop_front): its position is below every
    /// other's.
    pub(super) fn push_front(&mut self, pos: Position, item: T) {
        match self {
            Queue::Empty => *self = Queue::One((pos, item)),
            Queue::One(_) => {
                let Queue::One(held) = std::mem::take(self) else {
                    unreachable!("matched above")
                };
                let mut deque = VecDeque::with_capacity(4);
                deque.push_back((pos, item));
                deque.push_back(held);
                *self = Queue::Many(deque);
            }
            Queue::Many(deque) => deque.push_front((pos, item)),
        }
    }

    fn drop_if_empty(&mut self) {
        if matches!(self, Queue::Many(deque) if deque.is_empty()) {
            *self = Queue::Empty;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positions(q: &Queue<u32>) -> Vec<Position> {
        q.iter().map(|(p, _)| *p).collect()
    }

    #[test]
    fn items_stay_in_position_order_each_position_once() {
        let mut q = Queue::default();
        assert!(q.is_empty());
        assert!(q.insert(20, 0));
        assert!(matches!(q, Queue::One(_)), "the first needs no deque");
        assert!(
            !q.insert(20, 1),
            "a position already held is not taken twice"
        );
        assert!(q.insert(10, 2));
        assert!(q.insert(30, 3));
        assert!(q.insert(25, 4));
        assert!(!q.insert(25, 5));
        assert_eq!(positions(&q), [10, 20, 25, 30]);
        assert_eq!(q.len(), 4);
        assert_eq!(q.front().map(|(p, i)| (*p, *i)), Some((10, 2)));
    }

    #[test]
    fn removing_takes_only_the_owned_item_and_an_emptied_queue_holds_nothing() {
        let mut q = Queue::default();
        q.insert(10, 1u32);
        assert!(!q.remove_if(10, |i| *i == 2), "another owner's item stays");
        assert!(!q.remove_if(11, |_| true));
        assert!(q.remove_if(10, |i| *i == 1));
        assert!(matches!(q, Queue::Empty));
        q.insert(10, 1);
        q.insert(20, 2);
        assert!(q.remove_if(20, |_| true));
        assert!(q.remove_if(10, |_| true));
        assert!(matches!(q, Queue::Empty), "the deque is given back");
    }

    #[test]
    fn popped_items_come_in_order_and_can_be_put_back() {
        let mut q = Queue::default();
        for (p, i) in [(30, 3u32), (10, 1), (20, 2)] {
            q.insert(p, i);
        }
        assert_eq!(q.pop_front(), Some((10, 1)));
        q.push_front(10, 1);
        assert_eq!(positions(&q), [10, 20, 30]);
        let popped: Vec<_> = std::iter::from_fn(|| q.pop_front()).collect();
        assert_eq!(popped, [(10, 1), (20, 2), (30, 3)]);
        assert!(matches!(q, Queue::Empty));
        q.push_front(5, 5);
        q.push_front(4, 4);
        assert_eq!(positions(&q), [4, 5]);
        assert_eq!(q.pop_front(), Some((4, 4)));
        assert_eq!(q.pop_front(), Some((5, 5)));
        assert_eq!(q.pop_front(), None);
    }
}
