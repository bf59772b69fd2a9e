//! Server → client acknowledgements with data: a message that asks each receiving client's
//! application for a reply ([`Emitter::emit_with_ack`](crate::Emitter::emit_with_ack)), and the
//! wait for those replies.
//!
//! The message is stored and delivered like any other. Replies are recorded in storage
//! ([`Storage::reply`](crate::storage::Storage::reply)), whichever node the client posts them
//! to, and reach the waiting sender as a signal; the storage is read again only when signals
//! may have been lost, on the safety-net timer, and once at the end.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tokio::time::{Duration, Instant, sleep_until};

use crate::delivery::SendError;
use crate::hash::{HashMap, HashSet};
use crate::hub::{Arrived, ReplyWatch};
use crate::id::{ClientId, UserId};
use crate::shared::Shared;
use crate::storage::{
    DeliveryState, DeliveryTarget, Epoch, FANOUT_CHUNK, Member, RecordedReply, ReplyLimits,
    StorageError,
};

/// The most bytes of replies a storage keeps for one user, over all of their messages that
/// asked for replies (each reply is at most the builder's
/// [`max_reply_bytes`](crate::Builder::max_reply_bytes)).
pub const MAX_REPLY_BYTES_PER_USER: usize = 1024 * 1024;

/// The bounds on replies that a server hands its storage.
pub(crate) fn reply_limits(shared: &Shared) -> ReplyLimits {
    ReplyLimits {
        per_message: shared.config.max_clients_per_user,
        bytes_per_user: MAX_REPLY_BYTES_PER_USER,
    }
}

/// One client's reply to a message sent with
/// [`emit_with_ack`](crate::Emitter::emit_with_ack): what its application's handler returned.
///
/// ```
/// # fn demo(reply: &simpleio::AckReply) -> Result<(), serde_json::Error> {
/// #[derive(serde::Deserialize)]
/// struct Read { at: u64 }
/// let read: Read = reply.parse()?;
/// println!("{} read it at {}", reply.client(), read.at);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct AckReply {
    user: UserId,
    client: ClientId,
    data: Arc<RawValue>,
}

impl AckReply {
    /// The user of the client that replied.
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// The client that replied.
    pub fn client(&self) -> &ClientId {
        &self.client
    }

    /// The reply as it came, JSON text (`null` for a handler that returned nothing).
    pub fn data(&self) -> &RawValue {
        &self.data
    }

    /// The reply, deserialized into `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.get())
    }
}

/// Every recipient client replied: their replies, in the order they came.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Replies {
    /// One per replying client.
    pub replies: Vec<AckReply>,
}

impl Replies {
    /// Every reply deserialized into `T`, in order.
    ///
    /// ```no_run
    /// # async fn demo(io: simpleio::SimpleIo) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// let replies = io.to_user("ann").timeout(Duration::from_secs(5)).emit_with_ack("ask", &"ok?").await?;
    /// let answers: Vec<bool> = replies.parse()?;
    /// # let _ = answers; Ok(()) }
    /// ```
    pub fn parse<T: DeserializeOwned>(&self) -> Result<Vec<T>, serde_json::Error> {
        self.replies.iter().map(AckReply::parse).collect()
    }
}

/// Why a recipient did not reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NoReply {
    /// The message was delivered (confirmed), but no reply came in time: the client's
    /// application has no handler for the event, or it is an older client, or it is slow.
    NotAnswered,
    /// No client of the recipient confirmed the message yet (offline, say); it stays stored
    /// until its TTL, but the wait is over.
    NotDelivered,
    /// The message expired before any client of the recipient confirmed it.
    Expired,
    /// The recipient's queue (or the sender's share of it) was full: it was not stored.
    QueueFull,
    /// The storage lost its data (its epoch changed) meanwhile.
    Lost,
}

impl fmt::Display for NoReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NoReply::NotAnswered => "delivered, no reply in time",
            NoReply::NotDelivered => "not delivered in time",
            NoReply::Expired => "not confirmed before it expired",
            NoReply::QueueFull => "their queue is full",
            NoReply::Lost => "the storage lost its data",
        })
    }
}

/// The replies that came, and who did not reply, when not every recipient did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Unanswered {
    /// The replies that came, in order.
    pub replies: Vec<AckReply>,
    /// Who did not reply, and why: a client that was live when the message was sent, or a
    /// user with no live client then, none of whose clients replied.
    pub missing: Vec<(Member, NoReply)>,
}

impl fmt::Display for Unanswered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no reply from ")?;
        for (i, (member, why)) in self.missing.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{:?} ({why})", member.to_string())?;
        }
        write!(f, "; {} repl(ies) came", self.replies.len())
    }
}

/// An [`emit_with_ack`](crate::Emitter::emit_with_ack) that did not get every reply.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// The message was not sent: bad data or event, or the storage failed while storing it.
    /// (A full queue is not this: it is reported per recipient, [`NoReply::QueueFull`].)
    #[error("{0}")]
    Send(#[source] SendError),
    /// The wait ended (its timeout, or the message's TTL) before every recipient replied:
    /// the replies so far and who did not reply.
    #[error("{0}")]
    Timeout(Unanswered),
    /// The storage failed while the replies were read.
    #[error("{0}")]
    Storage(#[source] StorageError),
}

impl AckError {
    /// The replies that came before the wait ended, if it ended by [`AckError::Timeout`].
    pub fn replies(&self) -> &[AckReply] {
        match self {
            AckError::Timeout(u) => &u.replies,
            _ => &[],
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The future of [`Emitter::emit_with_ack`](crate::Emitter::emit_with_ack): stores the message,
/// then resolves once every recipient client replied, or when its wait ends.
#[must_use = "the message is not sent unless the future is awaited or spawned"]
pub struct AckSending {
    pub(crate) inner: BoxFuture<Result<Replies, AckError>>,
}

impl fmt::Debug for AckSending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckSending").finish_non_exhaustive()
    }
}

impl Future for AckSending {
    type Output = Result<Replies, AckError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

// `tokio::spawn(io.to_user(user).emit_with_ack(..))` must work.
const _: fn() = || {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<AckSending>();
};

/// What one stored message waits for.
struct Awaited {
    epoch: Epoch,
    target: DeliveryTarget,
    /// The clients whose replies complete it: the addressed client, or the user's live
    /// clients at send time (empty: any one client of the user completes it).
    expected: Vec<ClientId>,
    replied: HashSet<ClientId>,
}

impl Awaited {
    fn complete(&self) -> bool {
        if self.expected.is_empty() {
            !self.replied.is_empty()
        } else {
            self.expected.iter().all(|c| self.replied.contains(c))
        }
    }
}

/// Waits for the replies to the messages in `stored`, until `deadline`.
pub(crate) async fn wait(
    shared: &Shared,
    watch: ReplyWatch,
    stored: Vec<(Epoch, DeliveryTarget)>,
    not_stored: Vec<Member>,
    deadline: Instant,
) -> Result<Replies, AckError> {
    let mut awaited = Vec::with_capacity(stored.len());
    for (epoch, target) in stored {
        let expected = match &target.client {
            Some(c) => vec![c.clone()],
            None => shared
                .storage
                .live_clients(&target.user)
                .await
                .map_err(|e| AckError::Send(SendError::Storage(e)))?,
        };
        awaited.push(Awaited {
            epoch,
            target,
            expected,
            replied: HashSet::default(),
        });
    }
    let index: HashMap<(UserId, u64), usize> = awaited
        .iter()
        .enumerate()
        .map(|(i, a)| ((a.target.user.clone(), a.target.pos), i))
        .collect();
    let mut replies: Vec<AckReply> = Vec::new();
    let mut take =
        |awaited: &mut Vec<Awaited>, user: &UserId, pos: u64, epoch: &Epoch, r: RecordedReply| {
            let Some(&i) = index.get(&(user.clone(), pos)) else {
                return;
            };
            let a = &mut awaited[i];
            if a.epoch != *epoch || !a.replied.insert(r.client.clone()) {
                return;
            }
            replies.push(AckReply {
                user: user.clone(),
                client: r.client,
                data: r.data,
            });
        };
    let mut recheck_at = Instant::now() + shared.config.recheck;
    let mut read_again = false;
    loop {
        let taken = watch.take();
        for Arrived {
            epoch,
            user,
            pos,
            client,
            data,
        } in taken.replies
        {
            take(
                &mut awaited,
                &user,
                pos,
                &epoch,
                RecordedReply { client, data },
            );
        }
        if read_again || taken.read_again {
            read_again = false;
            if let Ok(found) = read(shared, &awaited).await {
                for (i, list) in found {
                    let (user, pos, epoch) = {
                        let a = &awaited[i];
                        (a.target.user.clone(), a.target.pos, a.epoch.clone())
                    };
                    for r in list {
                        take(&mut awaited, &user, pos, &epoch, r);
                    }
                }
            }
        }
        if awaited.iter().all(Awaited::complete) {
            break;
        }
        tokio::select! {
            () = watch.changed() => {}
            () = sleep_until(recheck_at) => {
                read_again = true;
                recheck_at = Instant::now() + shared.config.recheck;
            }
            () = sleep_until(deadline) => {
                // The last look: whatever was recorded by now counts.
                let found = read(shared, &awaited).await.map_err(AckError::Storage)?;
                for (i, list) in found {
                    let (user, pos, epoch) = {
                        let a = &awaited[i];
                        (a.target.user.clone(), a.target.pos, a.epoch.clone())
                    };
                    for r in list {
                        take(&mut awaited, &user, pos, &epoch, r);
                    }
                }
                break;
            }
        }
    }
    drop(watch);

    let mut missing: Vec<(Member, NoReply)> = not_stored
        .into_iter()
        .map(|m| (m, NoReply::QueueFull))
        .collect();
    let open: Vec<&Awaited> = awaited.iter().filter(|a| !a.complete()).collect();
    if open.is_empty() && missing.is_empty() {
        return Ok(Replies { replies });
    }
    // Why each did not reply: one delivery check per run of one epoch, in chunks.
    for same_epoch in open.chunk_by(|a, b| a.epoch == b.epoch) {
        for chunk in same_epoch.chunks(FANOUT_CHUNK) {
            let targets: Vec<DeliveryTarget> = chunk.iter().map(|a| a.target.clone()).collect();
            let states = shared
                .storage
                .delivery(&chunk[0].epoch, &targets)
                .await
                .map_err(AckError::Storage)?;
            for (a, state) in chunk.iter().zip(states) {
                let why = match state {
                    DeliveryState::Delivered => NoReply::NotAnswered,
                    DeliveryState::Pending => NoReply::NotDelivered,
                    DeliveryState::Expired => NoReply::Expired,
                    DeliveryState::Lost => NoReply::Lost,
                };
                let user = &a.target.user;
                if a.expected.is_empty() {
                    missing.push((Member::User(user.clone()), why));
                } else {
                    for c in a.expected.iter().filter(|c| !a.replied.contains(*c)) {
                        missing.push((Member::Client(user.clone(), c.clone()), why));
                    }
                }
            }
        }
    }
    Err(AckError::Timeout(Unanswered { replies, missing }))
}

/// The recorded replies of every message not complete yet, by index.
async fn read(
    shared: &Shared,
    awaited: &[Awaited],
) -> Result<Vec<(usize, Vec<RecordedReply>)>, StorageError> {
    let open: Vec<usize> = (0..awaited.len())
        .filter(|&i| !awaited[i].complete())
        .collect();
    let mut out = Vec::with_capacity(open.len());
    for same_epoch in open.chunk_by(|&a, &b| awaited[a].epoch == awaited[b].epoch) {
        for chunk in same_epoch.chunks(FANOUT_CHUNK) {
            let targets: Vec<DeliveryTarget> =
                chunk.iter().map(|&i| awaited[i].target.clone()).collect();
            let found = shared
                .storage
                .replies(&awaited[chunk[0]].epoch, &targets)
                .await?;
            out.extend(chunk.iter().copied().zip(found));
        }
    }
    Ok(out)
}

/// How long a wait lasts when the sender gives no timeout: as long as the message lives.
pub(crate) fn default_timeout(ttl: Duration) -> Duration {
    ttl
}
