//! Waiting a bounded time for a sent message's outcome, without giving the outcome up.

use std::time::Duration;

use crate::delivery::{Delivered, SendError};
use crate::io::Sending;

/// What [`Sending::wait`] found when it returned.
#[derive(Debug)]
#[must_use = "a pending message's outcome is in the `Sending` it gives back"]
pub enum Waited {
    /// Every recipient confirmed the message.
    Delivered(Delivered),
    /// The message was not delivered to every recipient (see [`SendError::NotDelivered`] for
    /// who it reached), or could not be sent at all.
    NotDelivered(SendError),
    /// The time ran out first. The message goes on as before: await the [`Sending`] (or
    /// [`wait`](Sending::wait) again, or spawn it) for its outcome, or keep its
    /// [`receipts`](Sending::receipts) to ask about it later from any node. If the time ran out
    /// before it was stored, the receipts are empty and storing goes on when it is polled again.
    Pending(Sending),
}

impl Waited {
    /// Whether every recipient confirmed the message.
    pub fn is_delivered(&self) -> bool {
        matches!(self, Waited::Delivered(_))
    }
}

impl Sending {
    /// Waits at most `within` for the message's outcome: [`Waited::Delivered`],
    /// [`Waited::NotDelivered`], or [`Waited::Pending`] with the message's future, its outcome
    /// still to come. Nothing is dropped when the time runs out, so nothing is half sent.
    ///
    /// This bounds the *wait*; [`Emitter::ttl`](crate::Emitter::ttl) bounds the message's life
    /// (how long it may stay unconfirmed before its sender is told it expired).
    ///
    /// ```no_run
    /// # async fn demo(io: simpleio::SimpleIo) {
    /// use std::time::Duration;
    /// use simpleio::Waited;
    ///
    /// match io.to_user("bob").emit("invoice", &42).wait(Duration::from_secs(3)).await {
    ///     Waited::Delivered(_) => tracing::info!("bob has it"),
    ///     Waited::NotDelivered(e) => tracing::warn!(error = %e, "bob did not get it"),
    ///     Waited::Pending(sending) => {
    ///         // Answer the request now; learn the outcome later.
    ///         tokio::spawn(async move {
    ///             if let Err(e) = sending.await {
    ///                 tracing::warn!(error = %e, "bob did not get it");
    ///             }
    ///         });
    ///     }
    /// }
    /// # }
    /// ```
    ///
    /// # What a dropped future has stored
    ///
    /// The future of [`Emitter::emit`](crate::Emitter::emit) does nothing until it is first
    /// polled: dropped before, it stored nothing. Dropped while storing (before
    /// [`stored`](Sending::stored) would resolve), the message is stored for some recipients
    /// or none: a send to one user or client is stored or not as a whole, a fan-out is stored in
    /// chunks of recipients, and the chunks stored already stay. Dropped once
    /// [`ordered`](Sending::ordered) but before it is written, it is written all the same (unless
    /// the write fails, which nobody is then told). Dropped once stored, the message
    /// is delivered as usual and only its outcome is given up; its receipts, kept, still tell it
    /// ([`SimpleIo::delivery`](crate::SimpleIo::delivery)). `wait` never drops it.
    pub async fn wait(mut self, within: Duration) -> Waited {
        match tokio::time::timeout(within, &mut self).await {
            Ok(Ok(delivered)) => Waited::Delivered(delivered),
            Ok(Err(error)) => Waited::NotDelivered(error),
            Err(_elapsed) => Waited::Pending(self),
        }
    }
}
