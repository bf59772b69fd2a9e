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
use crate::storage::{NewMessage, Signal, Storage, millis_after};

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

#[derive(Debug, Clone)]
enum Recipients {
    Users(Vec<UserId>),
    Client(UserId, ClientId),
    Everyone,
}

impl SimpleIo {
    /// Messages to one user: every client of theirs receives them.
    pub fn to(&self, user: impl Into<UserId>) -> Emitter {
        self.emitter(Recipients::Users(vec![user.into()]))
    }

    /// Messages to several users (duplicates are ignored).
    pub fn recipients<U: Into<UserId>>(&self, users: impl IntoIterator<Item = U>) -> Emitter {
        let mut list: Vec<UserId> = Vec::new();
        for user in users {
            let user = user.into();
            if !list.contains(&user) {
                list.push(user);
            }
        }
        self.emitter(Recipients::Users(list))
    }

    /// Messages to one client of a user (say, the tab that asked for something).
    pub fn to_client(&self, user: impl Into<UserId>, client: ClientId) -> Emitter {
        self.emitter(Recipients::Client(user.into(), client))
    }

    /// Messages to every user with a live client (one that polled within the presence TTL),
    /// looked up when the message is sent.
    pub fn everyone(&self) -> Emitter {
        self.emitter(Recipients::Everyone)
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
    /// Adds a recipient user.
    pub fn to(mut self, user: impl Into<UserId>) -> Self {
        let user = user.into();
        match &mut self.recipients {
            Recipients::Users(list) => {
                if !list.contains(&user) {
                    list.push(user);
                }
            }
            Recipients::Client(..) | Recipients::Everyone => {
                self.recipients = Recipients::Users(vec![user]);
            }
        }
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
    pub fn emit<T: Serialize + ?Sized>(self, event: impl Into<String>, data: &T) -> Sending {
        let event: String = event.into();
        let data = serde_json::value::to_raw_value(data);
        Sending {
            inner: Box::pin(async move {
                let data: Arc<RawValue> = Arc::from(data.map_err(SendError::Serialize)?);
                check_event(&event, &self.io)?;
                self.send(event.into(), data).await
            }),
        }
    }

    async fn send(self, event: Arc<str>, data: Arc<RawValue>) -> Result<Delivered, SendError> {
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
        delivery::wait(shared, users, client, appended, expires_at).await
    }

    async fn resolve(&self) -> Result<(Vec<UserId>, Option<ClientId>), SendError> {
        Ok(match &self.recipients {
            Recipients::Users(users) => (users.clone(), None),
            Recipients::Client(user, client) => (vec![user.clone()], Some(client.clone())),
            Recipients::Everyone => (
                self.io
                    .shared
                    .storage
                    .live_users()
                    .await
                    .map_err(SendError::Storage)?,
                None,
            ),
        })
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

/// The future of [`Emitter::emit`]: resolves when every recipient confirmed, or fails.
#[must_use = "the message is not sent unless the future is awaited or spawned"]
pub struct Sending {
    inner: Pin<Box<dyn Future<Output = Result<Delivered, SendError>> + Send>>,
}

impl fmt::Debug for Sending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sending").finish_non_exhaustive()
    }
}

impl Future for Sending {
    type Output = Result<Delivered, SendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

// `tokio::spawn(io.to(user).emit(..))` must work.
const _: fn() = || {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<Sending>();
};
