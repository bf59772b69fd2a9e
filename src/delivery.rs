//! Waiting for recipients to confirm a sent message, and how that ends.

use std::fmt;

use tokio::time::{Duration, Instant, sleep_until};

use crate::hub::{Expectation, Status};
use crate::shared::Shared;
use crate::storage::{
    DeliveryState, DeliveryTarget, Epoch, FANOUT_CHUNK, Member, Millis, StorageError, now_millis,
};

/// A message was confirmed by every recipient: for a user, by one of their clients; for a
/// single client, by that client.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivered {
    /// The recipients, each of which confirmed it.
    pub recipients: Vec<Member>,
}

/// Why a message did not reach one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// No client of the recipient confirmed it before its TTL.
    Expired,
    /// The recipient's queue was full of unconfirmed messages; it was not stored.
    QueueFull,
    /// The storage lost its data (its epoch changed) before the recipient confirmed it.
    Lost,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Failure::Expired => "not confirmed before it expired",
            Failure::QueueFull => "their queue is full",
            Failure::Lost => "the storage lost its data",
        })
    }
}

/// Who a message reached and who it did not, when it did not reach everyone.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Undelivered {
    /// Recipients that confirmed it.
    pub delivered: Vec<Member>,
    /// Recipients that did not, each with the reason.
    pub failed: Vec<(Member, Failure)>,
}

impl fmt::Display for Undelivered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not delivered to ")?;
        for (i, (user, why)) in self.failed.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{:?} ({why})", user.to_string())?;
        }
        if !self.delivered.is_empty() {
            write!(f, "; delivered to {} other(s)", self.delivered.len())?;
        }
        Ok(())
    }
}

/// Sending a message failed, or it was not confirmed by every recipient.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The data could not be serialized to JSON.
    #[error("the message data cannot be serialized to JSON: {0}")]
    Serialize(#[source] serde_json::Error),
    /// The event name is empty or too long.
    #[error("the event name must be 1 to {max} bytes")]
    InvalidEvent {
        /// The longest event name accepted.
        max: usize,
    },
    /// The payload is larger than the builder's
    /// [`max_message_bytes`](crate::Builder::max_message_bytes).
    #[error("the message data is {size} bytes of JSON, more than the limit of {max}")]
    TooLarge {
        /// The payload's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The payload nests arrays and objects deeper than the builder's
    /// [`max_data_depth`](crate::Builder::max_data_depth), so some clients could not read it.
    #[error("the message data nests deeper than {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// The storage failed; the message may or may not have been stored.
    #[error("{0}")]
    Storage(#[source] StorageError),
    /// From [`Sending::stored`](crate::Sending::stored): the message could not be stored for
    /// these recipients, whose queue (or this sender's share of it) is full. It was stored for
    /// the others, and will reach them; nothing tells whether it did, since the confirmation
    /// future is not returned.
    #[error("not stored for {} recipient(s) whose queue is full (stored for {stored})", failed.len())]
    QueueFull {
        /// The recipients it was not stored for.
        failed: Vec<Member>,
        /// How many recipients it was stored for.
        stored: usize,
    },
    /// Some recipients did not confirm the message; see who and why.
    #[error("{0}")]
    NotDelivered(Undelivered),
}

/// Waits until every tracked message is delivered, or fails at `expires_at`.
///
/// Confirmations settle messages through the hub as they come, so the storage is asked only
/// when signals may have been lost (a `Resync`), on the safety-net recheck timer, and once at
/// the deadline for whatever is still pending.
pub(crate) async fn wait(
    shared: &Shared,
    expectation: Expectation,
    not_stored: Vec<(Member, Failure)>,
    expires_at: Millis,
) -> Result<Delivered, SendError> {
    let started = Instant::now();
    let deadline = started + Duration::from_millis(expires_at.saturating_sub(now_millis()));
    let tracker = expectation.tracker().clone();
    let mut recheck_at = Instant::now() + shared.config.recheck;
    loop {
        let (pending, recheck) = {
            let mut state = tracker.state();
            (state.pending, std::mem::take(&mut state.recheck))
        };
        if pending == 0 {
            break;
        }
        if recheck && !check(shared, &expectation, false).await {
            recheck_at = Instant::now() + RETRY_AFTER_ERROR;
        }
        tokio::select! {
            () = tracker.notified() => {}
            () = sleep_until(recheck_at) => {
                let ok = check(shared, &expectation, false).await;
                let after = if ok { shared.config.recheck } else { RETRY_AFTER_ERROR };
                recheck_at = Instant::now() + after;
            }
            () = sleep_until(deadline) => {
                if !check(shared, &expectation, true).await {
                    return Err(SendError::Storage(StorageError::Unavailable(
                        "could not learn whether the message was delivered".to_owned(),
                    )));
                }
                break;
            }
        }
    }

    let statuses = tracker.state().statuses.clone();
    let mut delivered = Vec::new();
    let mut failed = not_stored;
    let took = started.elapsed();
    crate::observe::settled(&shared.observe, expectation.targets(), &statuses, took);
    for ((_, target), status) in expectation.targets().iter().zip(statuses) {
        let member = member_of(target);
        match status {
            Status::Delivered => delivered.push(member),
            Status::Lost => failed.push((member, Failure::Lost)),
            Status::Expired | Status::Pending => failed.push((member, Failure::Expired)),
        }
    }
    if failed.is_empty() {
        Ok(Delivered {
            recipients: delivered,
        })
    } else {
        Err(SendError::NotDelivered(Undelivered { delivered, failed }))
    }
}

/// How soon a storage check that failed is tried again.
const RETRY_AFTER_ERROR: Duration = Duration::from_millis(200);

/// Asks the storage about every message still pending, in chunks, and settles what it knows.
/// On the `last` check, a message still pending has expired. Returns false if the storage
/// failed (what it did answer is kept).
async fn check(shared: &Shared, expectation: &Expectation, last: bool) -> bool {
    let tracker = expectation.tracker();
    let statuses = tracker.state().statuses.clone();
    let pending: Vec<(usize, &(Epoch, DeliveryTarget))> = expectation
        .targets()
        .iter()
        .enumerate()
        .zip(statuses)
        .filter(|(_, status)| *status == Status::Pending)
        .map(|(indexed, _)| indexed)
        .collect();
    for chunk in pending.chunk_by(|(_, (a, _)), (_, (b, _))| a == b) {
        let epoch = &chunk[0].1.0;
        for part in chunk.chunks(FANOUT_CHUNK) {
            let targets: Vec<DeliveryTarget> = part.iter().map(|(_, (_, t))| t.clone()).collect();
            let states = match shared.storage.delivery(epoch, &targets).await {
                Ok(states) => states,
                Err(e) => {
                    tracing::warn!(error = %e, "could not check delivery; will retry");
                    return false;
                }
            };
            let mut settled = Vec::new();
            for ((index, _), state) in part.iter().zip(states) {
                let status = match state {
                    DeliveryState::Delivered => Status::Delivered,
                    DeliveryState::Pending if !last => continue,
                    DeliveryState::Pending | DeliveryState::Expired => Status::Expired,
                    DeliveryState::Lost => Status::Lost,
                };
                tracker.settle(*index, status);
                settled.push(*index);
            }
            expectation.untrack(settled);
        }
    }
    true
}

pub(crate) fn member_of(target: &DeliveryTarget) -> Member {
    match &target.client {
        None => Member::User(target.user.clone()),
        Some(client) => Member::Client(target.user.clone(), client.clone()),
    }
}
