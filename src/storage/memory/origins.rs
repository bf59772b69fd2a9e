//! One shard's origins: which sends each user's log has stored, by the name their sender gave
//! them ([`NewMessage::origin`](crate::storage::NewMessage::origin)), so that a send repeated
//! by a handler run again after a crash is stored once. Kept until the message's expiry, even
//! once it was delivered and trimmed, bounded per user, and swept by time.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::super::{Millis, Position};
use super::journal::{Change, Changes};
use crate::hash::HashMap;
use crate::id::UserId;

#[derive(Debug, Default)]
pub(super) struct Origins {
    stored: HashMap<(UserId, Arc<str>), (Position, Millis)>,
    /// Every origin by the time it is forgotten.
    expiries: BTreeSet<(Millis, UserId, Arc<str>)>,
    /// How many each user has.
    counts: HashMap<UserId, usize>,
    /// What changed, for a journaled storage.
    pub(super) changes: Changes,
}

impl Origins {
    /// The position a send named `origin` was stored at in `user`'s log, if remembered.
    pub(super) fn find(&self, user: &UserId, origin: &Arc<str>, now: Millis) -> Option<Position> {
        self.stored
            .get(&(user.clone(), origin.clone()))
            .filter(|(_, until)| *until > now)
            .map(|(pos, _)| *pos)
    }

    /// Remembers that the send named `origin` was stored at `pos`, until `until`, unless the
    /// user has `most` remembered already: then the send is simply not remembered, so a user
    /// sent to without end costs a bounded amount, and only a crash's repeat could come twice.
    pub(super) fn remember(
        &mut self,
        user: &UserId,
        origin: &Arc<str>,
        pos: Position,
        until: Millis,
        most: usize,
    ) {
        if self.counts.get(user).is_some_and(|count| *count >= most) {
            return;
        }
        self.changes.push(|| Change::Origin {
            user: user.clone(),
            origin: origin.clone(),
            pos,
            until,
        });
        self.restore(user.clone(), origin.clone(), pos, until);
    }

    /// Puts one back that a durable storage kept (and, from `remember`, adds one).
    pub(super) fn restore(&mut self, user: UserId, origin: Arc<str>, pos: Position, until: Millis) {
        self.expiries.insert((until, user.clone(), origin.clone()));
        match self
            .stored
            .insert((user.clone(), origin.clone()), (pos, until))
        {
            // One that lapsed but was not swept yet, named again: it is replaced, not added.
            Some((_, old)) => {
                self.expiries.remove(&(old, user, origin));
            }
            None => *self.counts.entry(user).or_default() += 1,
        }
    }

    /// Forgets up to `most` origins whose time passed by `now`.
    pub(super) fn sweep(&mut self, now: Millis, most: usize) {
        for _ in 0..most {
            match self.expiries.first() {
                Some((until, _, _)) if *until <= now => {}
                _ => break,
            }
            let Some((_, user, origin)) = self.expiries.pop_first() else {
                break;
            };
            self.changes.push(|| Change::Unorigin {
                user: user.clone(),
                origin: origin.clone(),
            });
            self.stored.remove(&(user.clone(), origin));
            if let Some(count) = self.counts.get_mut(&user) {
                *count -= 1;
                if *count == 0 {
                    self.counts.remove(&user);
                }
            }
        }
    }
}
