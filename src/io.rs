//! The [`SimpleIo`] handle: sending to users, clients and everyone, confirmed or volatile.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::delivery::{self, Delivered, SendError};
use crate::id::{ClientId, UserId};
use crate::shared::Shared;
use crate::storage::{Appended, Millis, NewMessage, Signal, Storage, millis_after};

/// The sending side of simpleio: cheap to clone, usable from anywhere (handlers, background
/// tasks, other routes). Returned by [`Builder::build`](crate::Builder::build) beside the layer.
///
/// ```no_run
/// # async fn demo(io: simpleio::SimpleIo) -> Result<(), simpleio::SendError> {
/// // Resolves once a client of "ann" confirmed the message.
/// io.to("ann").emit("news", &"the build is green").await?;
///
/// // Several users: resolves once each of them confirmed, or names who did not.
/// io.recipients(["ann", "bob"]).emit("chat", &serde_json::json!({"text": "hi"})).await?;
///
/// // Only clients waiting right now; nothing stored, nothing confirmed.
/// io.everyone().volatile().emit("typing", &"ann").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SimpleIo {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for SimpleIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimpleIo")
            .field("path", &self.shared.config.path)
            .field("storage", &self.shared.storage)
            .finish()
    }
}

/// Who an [`Emitter`] sends to.
#[derive(Debug, Clone, Default)]
struct Recipients {
    users: Vec<UserId>,
    /// Add every user with a live client, looked up at send time.
    everyone: bool,
    /// Only this client of the (single) user.
    client: Option<ClientId>,
}

impl Recipients {
    fn add(&mut self, user: UserId) {
        if !self.users.contains(&user) {
            self.users.push(user);
        }
    }
}

impl SimpleIo {
    /// Messages to one user: every client of theirs receives them.
    pub fn to(&self, user: impl Into<UserId>) -> Emitter {
        self.emitter(Recipients {
            users: vec![user.into()],
            ..Recipients::default()
        })
    }

    /// Messages to several users (duplicates are ignored).
    pub fn recipients<U: Into<UserId>>(&self, users: impl IntoIterator<Item = U>) -> Emitter {
        let mut recipients = Recipients::default();
        for user in users {
            recipients.add(user.into());
        }
        self.emitter(recipients)
    }

    /// Messages to one client of a user (say, the tab that asked for something).
    pub fn to_client(&self, user: impl Into<UserId>, client: ClientId) -> Emitter {
        self.emitter(Recipients {
            users: vec![user.into()],
            client: Some(client),
            ..Recipients::default()
        })
    }

    /// Messages to every user with a live client (one that polled within the presence TTL),
    /// looked up when the message is sent.
    pub fn everyone(&self) -> Emitter {
        self.emitter(Recipients {
            everyone: true,
            ..Recipients::default()
        })
    }

    /// How many polls are waiting on this node now.
    pub fn waiting_polls(&self) -> usize {
        self.shared.waiting.load(Ordering::Relaxed)
    }

    /// The storage this instance uses.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.shared.storage
    }

    fn emitter(&self, recipients: Recipients) -> Emitter {
        Emitter {
            io: self.clone(),
            recipients,
            ttl: self.shared.config.message_ttl,
        }
    }
}

/// A message about to be sent; made by [`SimpleIo::to`] and friends.
#[derive(Debug, Clone)]
#[must_use = "nothing is sent until `emit` is called and awaited"]
pub struct Emitter {
    io: SimpleIo,
    recipients: Recipients,
    ttl: Duration,
}

impl Emitter {
    /// Adds a recipient user (to [`SimpleIo::everyone`]: also this user, live or not). On an
    /// emitter made by [`SimpleIo::to_client`], it lifts the one-client restriction: every client
    /// of every recipient receives the message.
    pub fn to(mut self, user: impl Into<UserId>) -> Self {
        self.recipients.client = None;
        self.recipients.add(user.into());
        self
    }

    /// How long the message waits for a recipient to confirm it (default: the builder's
    /// [`message_ttl`](crate::Builder::message_ttl), 5 minutes). Past it, the message is dropped
    /// and [`emit`](Self::emit) fails naming who did not confirm.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sends to clients waiting right now only: nothing is stored or confirmed, and a recipient
    /// between two polls misses it. For presence, typing indicators, live positions.
    pub fn volatile(self) -> VolatileEmitter {
        VolatileEmitter { inner: self }
    }

    /// Stores the message for each recipient and resolves once a client of every recipient
    /// confirmed it ([`Delivered`]), or fails with [`SendError::NotDelivered`] naming those who
    /// did not confirm before the TTL. Dropping the future does not unsend the message.
    ///
    /// To acknowledge a client's message only once what it caused is safely stored, without
    /// waiting for anyone to confirm it, await [`Sending::stored`] first.
    pub fn emit<T: Serialize + ?Sized>(self, event: impl Into<String>, data: &T) -> Sending {
        let event: String = event.into();
        let data = serde_json::value::to_raw_value(data);
        Sending {
            stage: Stage::Storing(Box::pin(async move {
                let data: Arc<RawValue> = Arc::from(data.map_err(SendError::Serialize)?);
                check_event(&event, &self.io)?;
                self.store(event.into(), data).await
            })),
        }
    }

    async fn store(self, event: Arc<str>, data: Arc<RawValue>) -> Result<Stored, SendError> {
        let shared = &self.io.shared;
        let (users, client) = self.resolve().await?;
        let expires_at = millis_after(self.ttl);
        let messages = users
            .iter()
            .map(|user| NewMessage {
                user: user.clone(),
                client: client.clone(),
                event: event.clone(),
                data: data.clone(),
                expires_at,
            })
            .collect();
        let appended = shared
            .storage
            .append(messages, shared.config.max_queue)
            .await
            .map_err(SendError::Storage)?;
        Ok(Stored {
            io: self.io,
            users,
            client,
            appended,
            expires_at,
        })
    }

    async fn resolve(&self) -> Result<(Vec<UserId>, Option<ClientId>), SendError> {
        let mut recipients = self.recipients.clone();
        if recipients.everyone {
            let live = self.io.shared.storage.live_users().await;
            for user in live.map_err(SendError::Storage)? {
                recipients.add(user);
            }
        }
        Ok((recipients.users, recipients.client))
    }
}

fn check_event(event: &str, io: &SimpleIo) -> Result<(), SendError> {
    let max = io.shared.config.max_event_len;
    if event.is_empty() || event.len() > max {
        return Err(SendError::InvalidEvent { max });
    }
    Ok(())
}

/// A volatile message about to be sent; see [`Emitter::volatile`].
#[derive(Debug, Clone)]
#[must_use = "nothing is sent until `emit` is called and awaited"]
pub struct VolatileEmitter {
    inner: Emitter,
}

impl VolatileEmitter {
    /// Hands the message to every recipient client waiting now, on every node. Resolves once it
    /// is published; there is no confirmation.
    pub async fn emit<T: Serialize + ?Sized>(
        self,
        event: impl Into<String>,
        data: &T,
    ) -> Result<(), SendError> {
        let event: String = event.into();
        check_event(&event, &self.inner.io)?;
        let data: Arc<RawValue> =
            Arc::from(serde_json::value::to_raw_value(data).map_err(SendError::Serialize)?);
        let event: Arc<str> = event.into();
        let (users, client) = self.inner.resolve().await?;
        for user in users {
            self.inner
                .io
                .shared
                .storage
                .publish(Signal::Volatile {
                    user,
                    client: client.clone(),
                    event: event.clone(),
                    data: data.clone(),
                })
                .await
                .map_err(SendError::Storage)?;
        }
        Ok(())
    }
}

/// A message appended for every recipient, not yet confirmed.
struct Stored {
    io: SimpleIo,
    users: Vec<UserId>,
    client: Option<ClientId>,
    appended: Appended,
    expires_at: Millis,
}

impl Stored {
    fn wait(self) -> BoxFuture<Result<Delivered, SendError>> {
        Box::pin(async move {
            let Stored {
                io,
                users,
                client,
                appended,
                expires_at,
            } = self;
            delivery::wait(&io.shared, users, client, appended, expires_at).await
        })
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The future of [`Emitter::emit`]: resolves when every recipient confirmed, or fails.
///
/// It first stores the message (one storage round trip), then waits for confirmations;
/// [`stored`](Self::stored) splits the two.
#[must_use = "the message is not sent unless the future is awaited or spawned"]
pub struct Sending {
    stage: Stage,
}

enum Stage {
    /// Appending to the storage.
    Storing(BoxFuture<Result<Stored, SendError>>),
    /// Stored; waiting for confirmations.
    Waiting(BoxFuture<Result<Delivered, SendError>>),
    /// Resolved.
    Done,
}

impl Sending {
    /// Waits until the message is stored for every recipient, and gives back the future of its
    /// confirmation (already stored: awaiting it only waits).
    ///
    /// A handler that sends on a client's behalf awaits this before it replies, so that the
    /// client's acknowledgement means "stored, and will be delivered or reported": a node that
    /// crashes after the reply has lost nothing. Spawn the returned future to learn the
    /// outcome without holding up the reply.
    ///
    /// # Errors
    ///
    /// As [`Emitter::emit`] before anything is stored: [`SendError::Serialize`],
    /// [`SendError::InvalidEvent`], [`SendError::Storage`]. A recipient whose queue is full
    /// is reported by the returned future, as [`Failure::QueueFull`](crate::Failure::QueueFull).
    ///
    /// ```no_run
    /// # async fn demo(io: simpleio::SimpleIo) -> Result<(), simpleio::SendError> {
    /// let confirmation = io.to("bob").emit("chat", &"hi bob").stored().await?;
    /// // Stored: safe to tell the sender so.
    /// tokio::spawn(async move {
    ///     if let Err(e) = confirmation.await {
    ///         tracing::info!(error = %e, "bob did not get it");
    ///     }
    /// });
    /// # Ok(()) }
    /// ```
    pub async fn stored(self) -> Result<Sending, SendError> {
        match self.stage {
            Stage::Storing(storing) => Ok(Sending {
                stage: Stage::Waiting(storing.await?.wait()),
            }),
            stage => Ok(Sending { stage }),
        }
    }
}

impl fmt::Debug for Sending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = match self.stage {
            Stage::Storing(_) => "storing",
            Stage::Waiting(_) => "waiting",
            Stage::Done => "done",
        };
        f.debug_struct("Sending")
            .field("stage", &stage)
            .finish_non_exhaustive()
    }
}

impl Future for Sending {
    type Output = Result<Delivered, SendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match &mut self.stage {
                Stage::Storing(storing) => match storing.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(stored)) => self.stage = Stage::Waiting(stored.wait()),
                    Poll::Ready(Err(e)) => {
                        self.stage = Stage::Done;
                        return Poll::Ready(Err(e));
                    }
                },
                Stage::Waiting(waiting) => {
                    let result = std::task::ready!(waiting.as_mut().poll(cx));
                    self.stage = Stage::Done;
                    return Poll::Ready(result);
                }
                Stage::Done => panic!("`Sending` polled after it resolved"),
            }
        }
    }
}

// `tokio::spawn(io.to(user).emit(..))` must work.
const _: fn() = || {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<Sending>();
};
