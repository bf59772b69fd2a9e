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

use super::error::col;
use super::signals::notify;
use super::sql::{INTERESTED_NODES, NOTE_INTEREST};
use super::tx::Tx;
use crate::hash::HashMap;
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

    /// Notes this node's interest in `users` within `tx`, for those whose row is not fresh;
    /// returns them, to [`remember`](Self::remember) once `tx` committed.
    pub(super) async fn note(
        &self,
        tx: &Tx<'_>,
        users: &[&str],
        now: Millis,
    ) -> Result<Vec<String>, StorageError> {
        let stale: Vec<String> = {
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
        };
        if !stale.is_empty() {
            let until = (now + INTEREST_TTL) as i64;
            tx.exec(NOTE_INTEREST, &[&stale, &self.node, &until])
                .await?;
        }
        Ok(stale)
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

    /// Publishes `signal` when `tx` commits, to the nodes that need it.
    pub(super) async fn send(
        &self,
        tx: &Tx<'_>,
        signal: &Signal,
        now: Millis,
    ) -> Result<(), StorageError> {
        let users: Vec<&str> = match signal {
            Signal::Appended { users } => users.iter().map(|u| u.as_str()).collect(),
            Signal::Confirmed { user, .. }
            | Signal::Completed { user }
            | Signal::PollStarted { user, .. }
            | Signal::Replied { user, .. } => vec![user.as_str()],
            Signal::Volatile { .. } | Signal::Resync => {
                return notify(tx, &self.all, signal).await;
            }
        };
        let now = now as i64;
        let others = tx
            .rows(INTERESTED_NODES, &[&users, &now, &self.node])
            .await?;
        for row in &others {
            let node: String = col(row, 0)?;
            let channel = format!("{}{node}", self.prefix);
            match signal {
                Signal::Appended { .. } => {
                    let theirs: Vec<String> = col(row, 1)?;
                    let subset = Signal::Appended {
                        users: theirs.into_iter().map(Into::into).collect(),
                    };
                    notify(tx, &channel, &subset).await?;
                }
                _ => notify(tx, &channel, signal).await?,
            }
        }
        notify(tx, &self.own, signal).await
    }
}
