//! Waiting for recipients to confirm a sent message, and how that ends.

use std::fmt;
use std::sync::Arc;

use tokio::time::{Duration, Instant, sleep, sleep_until};

use crate::shared::Shared;
use crate::storage::{
    AppendOutcome, Appended, DeliveryState, DeliveryTarget, Member, Millis, StorageError,
    now_millis,
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
    /// The storage failed; the message may or may not have been stored.
    #[error("{0}")]
    Storage(#[source] StorageError),
    /// Some recipients did not confirm the message; see who and why.
    #[error("{0}")]
    NotDelivered(Undelivered),
}

/// Waits until every appended message is delivered, or fails at `expires_at`.
pub(crate) async fn wait(
    shared: &Shared,
    recipients: Vec<Member>,
    namespace: Arc<str>,
    appended: Appended,
    expires_at: Millis,
) -> Result<Delivered, SendError> {
    let mut delivered = Vec::new();
    let mut failed = Vec::new();
    let mut pending = Vec::new();
    for (member, outcome) in recipients.into_iter().zip(appended.outcomes) {
        match outcome {
            AppendOutcome::Stored(pos) => pending.push(DeliveryTarget {
                user: member.user().clone(),
                client: match &member {
                    Member::User(_) => None,
                    Member::Client(_, client) => Some(client.clone()),
                },
                namespace: namespace.clone(),
                pos,
            }),
            AppendOutcome::QueueFull => failed.push((member, Failure::QueueFull)),
        }
    }

    let deadline = Instant::now() + Duration::from_millis(expires_at.saturating_sub(now_millis()));
    // Registered before the first check, so a confirmation in between is not missed.
    let confirmations = shared
        .hub
        .on_confirm(pending.iter().map(|t| t.user.clone()));
    let mut last_check = false;
    while !pending.is_empty() {
        match shared.storage.delivery(&appended.epoch, &pending).await {
            Ok(states) => {
                let mut still = Vec::new();
                for (target, state) in pending.into_iter().zip(states) {
                    match state {
                        DeliveryState::Delivered => delivered.push(member_of(target)),
                        DeliveryState::Pending if !last_check => still.push(target),
                        DeliveryState::Pending | DeliveryState::Expired => {
                            failed.push((member_of(target), Failure::Expired))
                        }
                        DeliveryState::Lost => failed.push((member_of(target), Failure::Lost)),
                    }
                }
                pending = still;
            }
            Err(e) if last_check => return Err(SendError::Storage(e)),
            Err(e) => {
                tracing::warn!(error = %e, "could not check delivery; will retry");
                sleep(Duration::from_millis(200)).await;
            }
        }
        if pending.is_empty() || last_check {
            break;
        }
        tokio::select! {
            () = confirmations.notified() => {}
            () = sleep(shared.config.recheck) => {}
            () = sleep_until(deadline) => last_check = true,
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

fn member_of(target: DeliveryTarget) -> Member {
    match target.client {
        None => Member::User(target.user),
        Some(client) => Member::Client(target.user, client),
    }
}
