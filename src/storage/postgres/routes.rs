//! Signals go to the nodes that need them: each storage handle is a node with a random id and a
//! channel of its own (`SCHEMA:n:NODE`), and the `interest` table says which nodes need the
//! signals of which users.
//!
//! A node notes a user when it has a poll of theirs (a fetch) or waits for something of
//! theirs (an append's confirmations and replies, a claim's completion, a delivery or replies
//! check), for `INTEREST_TTL` from then; it rewrites the row only when less than half of that
//! is left, so a busy user costs a write per half-minute per node, not one per operation. A
//! signal about users goes, in the transaction of the operation that caused it, to the
//! channels of the other nodes interested in them (an `Appended` to each with just its users)
//! and to the node's own channel: so a node receives what follows the users it serves, not
//! what follows the number of nodes. What every node needs (resyncs, volatile messages) goes
//! on `SCHEMA:signals`.
//!
//! A node that missed its interest (a write rolled back, a row swept early) misses wakeups for
//! at most the recheck interval: the timer stays the safety net.

use std::sync::{Mutex, PoisonError};

use tokio_postgres::Row;

use super::error::col;
use super::signals::Outbox;
use super::sql::{INTERESTED_NODES, NOTE_INTEREST};
use super::tx::{Statement, Tx};
use crate::hash::{HashMap, HashSet};
use crate::storage::{Millis, Signal, StorageError};

/// How long a node's interest in a user lasts after it last noted it.
pub(super) const INTEREST_TTL: Millis = 60_000;

/// The most users a node remembers having noted; past it, it forgets them all and notes again.
const NOTED_MOST: usize = 100_000;

/// One node's channels and what it noted.
#[derive(Debug)]
pub(super) struct Routes {
    /// `SCHEMA:signals`: what every node needs.
    pub(super) all: String,
    /// `SCHEMA:n:`, before a node's id.
    prefix: String,
    /// This node's id.
    pub(super) node: String,
    /// `prefix + node`: this node's channel.
    pub(super) own: String,
    /// Users whose interest row this node wrote, and until when it lasts.
    noted: Mutex<HashMap<String, Millis>>,
}

impl Routes {
    pub(super) fn new(schema: &str, node: String) -> Routes {
        let prefix = format!("{schema}:n:");
        Routes {
            all: format!("{schema}:signals"),
            own: format!("{prefix}{node}"),
            prefix,
            node,
            noted: Mutex::new(HashMap::default()),
        }
    }

    /// Of `users`, those whose interest row this node must write (it is not fresh), to note
    /// with [`note_statement`](Self::note_statement) and [`remember`](Self::remember) once
    /// the transaction committed.
    pub(super) fn stale(&self, users: &[&str], now: Millis) -> Vec<String> {
        let noted = self.noted.lock().unwrap_or_else(PoisonError::into_inner);
        users
            .iter()
            .filter(|u| {
                noted
                    .get(**u)
                    .is_none_or(|until| *until < now + INTEREST_TTL / 2)
            })
            .map(|u| (*u).to_owned())
            .collect()
    }

    /// Until when interest noted at `now` lasts, as [`NOTE_INTEREST`] takes it.
    pub(super) fn interest_until(now: Millis) -> i64 {
        (now + INTEREST_TTL) as i64
    }

    /// The statement that notes this node's interest in `stale` users until `until`.
    pub(super) fn note_statement<'a>(
        &'a self,
        stale: &'a Vec<String>,
        until: &'a i64,
    ) -> Statement<'a> {
        (NOTE_INTEREST, vec![stale, &self.node, until])
    }

    /// Notes this node's interest in `users` within `tx`, for those whose row is not fresh;
    /// returns them, to [`remember`](Self::remember) once `tx` committed.
    pub(super) async fn note(
        &self,
        tx: &Tx<'_>,
        users: &[&str],
        now: Millis,
    ) -> Result<Vec<String>, StorageError> {
        let stale = self.stale(users, now);
        if !stale.is_empty() {
            let until = Self::interest_until(now);
            tx.pipeline(&[self.note_statement(&stale, &until)]).await?;
        }
        Ok(stale)
    }

    /// Forgets which interest rows this node wrote: they are gone (the tables were made anew).
    pub(super) fn forget_noted(&self) {
        self.noted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Records that the interest rows of `users` were written at `now`.
    pub(super) fn remember(&self, users: Vec<String>, now: Millis) {
        if users.is_empty() {
            return;
        }
        let mut noted = self.noted.lock().unwrap_or_else(PoisonError::into_inner);
        if noted.len() + users.len() > NOTED_MOST {
            noted.clear();
        }
        for user in users {
            noted.insert(user, now + INTEREST_TTL);
        }
    }

    /// The other nodes interested in `users` now, each with the ones it needs (rows of
    /// [`INTERESTED_NODES`]), for [`address`](Self::address).
    pub(super) async fn interested(
        &self,
        tx: &Tx<'_>,
        users: &[&str],
        now: Millis,
    ) -> Result<Vec<Row>, StorageError> {
        let now = now as i64;
        tx.rows(INTERESTED_NODES, &[&users, &now, &self.node]).await
    }

    /// The users a signal is about; `None` for what every node needs.
    pub(super) fn users_of(signal: &Signal) -> Option<Vec<&str>> {
        match signal {
            Signal::Appended { users } => Some(users.iter().map(|u| u.as_str()).collect()),
            Signal::Confirmed { user, .. }
            | Signal::Completed { user }
            | Signal::PollStarted { user, .. }
            | Signal::Replied { user, .. } => Some(vec![user.as_str()]),
            Signal::Volatile { .. } | Signal::Resync => None,
        }
    }

    /// Adds `signal` to `outbox` for the nodes that need it: every node for what every node
    /// needs; otherwise this node and the `others` ([`interested`](Self::interested) in its
    /// users), an `Appended` to each with just its users.
    pub(super) fn address(
        &self,
        signal: &Signal,
        others: &[Row],
        outbox: &mut Outbox,
    ) -> Result<(), StorageError> {
        if Self::users_of(signal).is_none() {
            return outbox.push(self.all.clone(), signal);
        }
        // The users an `Appended` is about, by name, for each node's subset.
        let woken: HashSet<&str> = match signal {
            Signal::Appended { users } if !others.is_empty() => {
                users.iter().map(|u| u.as_str()).collect()
            }
            _ => HashSet::default(),
        };
        for row in others {
            let node: String = col(row, 0)?;
            let channel = format!("{}{node}", self.prefix);
            match signal {
                Signal::Appended { .. } => {
                    // Of the users it needs, those the signal is about (the rows may have been
                    // read for more users than woke).
                    let theirs: Vec<String> = col(row, 1)?;
                    let subset: Vec<_> = theirs
                        .into_iter()
                        .filter(|u| woken.contains(u.as_str()))
                        .map(Into::into)
                        .collect();
                    if !subset.is_empty() {
                        let subset = Signal::Appended {
                            users: subset.into(),
                        };
                        outbox.push(channel, &subset)?;
                    }
                }
                _ => outbox.push(channel, signal)?,
            }
        }
        outbox.push(self.own.clone(), signal)
    }

    /// Publishes `signal` when `tx` commits, to the nodes that need it: a round trip to find
    /// them, one to notify them all.
    pub(super) async fn send(
        &self,
        tx: &Tx<'_>,
        signal: &Signal,
        now: Millis,
    ) -> Result<(), StorageError> {
        let others = match Self::users_of(signal) {
            Some(users) => self.interested(tx, &users, now).await?,
            None => Vec::new(),
        };
        let mut outbox = Outbox::new(now);
        self.address(signal, &others, &mut outbox)?;
        outbox.send(tx).await
    }
}
