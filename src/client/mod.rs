//! The Rust client: receive a user's messages and send your own, over the protocol of
//! `docs/spec.md`, with reconnection, deduplication and retries done for you.
//!
//! # Example
//!
//! ```no_run
//! use serde_json::json;
//! use simpleio::client::{Client, Event};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (client, mut events) = Client::builder("http://127.0.0.1:3000/simpleio")
//!     .header("cookie", "user=ann") // the credentials the server's identity function reads
//!     .connect()?;                  // spawns the receiving and sending tasks
//!
//! // Resolves with the handler's reply; fails on an error acknowledgement.
//! let reply = client.emit("chat", &json!({"text": "hi"})).await?;
//! println!("the server replied {reply}");
//!
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Message(m) => println!("{}: {}", m.event, m.data),
//!         Event::Disconnected(why) => eprintln!("reconnecting: {why}"),
//!         _ => {}
//!     }
//! }
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! # Namespaces
//!
//! A server may offer namespaces besides the default `/` (spec §4a; on the server,
//! [`Builder::namespace`](crate::Builder::namespace)): independent channels with their own
//! events, handler and authorization, all over the client's one polling connection.
//!
//! - **Receiving**: list the namespaces on the builder with
//!   [`ClientBuilder::namespaces`]. The list is exact and replaces the default (`/` alone):
//!   include `/` to keep receiving the default namespace. Each [`Message`] names its
//!   [`namespace`](Message::namespace) (`/` for the default).
//! - **Sending**: [`Client::of`] gives a handle whose [`emit`](Client::emit) goes to that
//!   namespace's handler; [`Client::emit`] itself sends into `/`.
//! - **Refusals**: a namespace the server does not have (`400 unknown_namespace`) or that the
//!   user may not use (the server's rejection, typically `403`) fails the whole request.
//!   Polling reports it as [`Event::Disconnected`] with the server's status and code, and keeps
//!   retrying at the longest backoff; sending fails the message ([`EmitError::Rejected`]) or,
//!   for a `401`/`403`, retries it at the longest backoff until the retry window passes.
//!
//! ```no_run
//! use serde_json::json;
//! use simpleio::client::{Client, Event};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (client, mut events) = Client::builder("http://127.0.0.1:3000/simpleio")
//!     .header("cookie", "user=ann")
//!     .namespaces(["/", "/chat"]) // the default namespace and /chat, not /news
//!     .connect()?;
//!
//! let chat = client.of("/chat");
//! chat.emit("say", &json!({"text": "hi"})).await?; // to the /chat handler
//!
//! while let Some(event) = events.recv().await {
//!     if let Event::Message(m) = event {
//!         match m.namespace.as_str() {
//!             "/chat" => println!("chat: {} {}", m.event, m.data),
//!             _ => println!("{}: {}", m.event, m.data),
//!         }
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Binary data
//!
//! Bytes travel inside JSON as `{"$bytes": "<base64>"}` (spec §4b). You never base64 by
//! hand: put a [`Binary`] (re-exported here from the crate root) anywhere in the data you
//! [`emit`](Client::emit), and ask for one anywhere in the type you read with
//! [`Message::json`]; serde does the rest. For a reply, or data you keep as a
//! [`serde_json::Value`], [`as_binary`] takes the bytes out of one such object.
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use simpleio::client::{Binary, Client, Event, as_binary};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Avatar {
//!     user: String,
//!     png: Binary,
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (client, mut events) = Client::builder("http://127.0.0.1:3000/simpleio")
//!     .header("cookie", "user=ann")
//!     .connect()?;
//!
//! // Sent as {"user": "ann", "png": {"$bytes": "iVBORw0KGgo="}}.
//! let png = Binary::from(std::fs::read("ann.png")?);
//! let reply = client.emit("avatar", &Avatar { user: "ann".into(), png }).await?;
//! if let Some(thumbnail) = as_binary(&reply["thumbnail"]) {
//!     println!("the server made a {}-byte thumbnail", thumbnail.len());
//! }
//!
//! while let Some(event) = events.recv().await {
//!     if let Event::Message(m) = event
//!         && m.event == "avatar"
//!     {
//!         let avatar: Avatar = m.json()?; // the bytes, decoded
//!         println!("{} has a new {}-byte avatar", avatar.user, avatar.png.len());
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # What it does for you
//!
//! - **Receiving** is one long poll after another. Each message is handed to [`Events`] once,
//!   in order, and confirmed to the server only after that (so the server's `emit` resolves
//!   only once your application has it). Duplicates after a reconnect are dropped by their
//!   position. If the server's storage lost its data, the client starts over with the new
//!   positions and tells you ([`Event::Resynced`]).
//! - **Sending**: [`Client::emit`] puts the message in an outbox; one `POST` at a time carries
//!   everything queued, up to the batch limit, so messages reach the server's handler in the
//!   order you emitted them. A failed `POST` is resent with the same message ids, so the
//!   handler sees each message once.
//! - **Failures** (the server down or restarting, `5xx`, timeouts) are retried with exponential
//!   backoff and jitter; a refused sign-in (`401`, `403`) at the longest backoff, so the client
//!   resumes once the credentials are valid again. Requests the server refuses as malformed
//!   fail the messages concerned ([`EmitError::Rejected`]).
//! - **Logs** go through `tracing`, in a `simpleio_client` span naming the client id.
//!
//! Everything is bounded: the events buffer (a slow reader pauses polling), the outbox (a full
//! one makes `emit` wait), the response size.
//!
//! # Layout
//!
//! `builder` the settings (the subscribed namespaces among them) and `connect`; `receive` the
//! polling loop; `send` the outbox and its
//! `POST` loop; `backoff` the delays between retries; `event` what the application receives;
//! `wire` the protocol's bodies; `error` what can go wrong.

#![cfg_attr(docsrs, doc(cfg(feature = "client")))]

mod backoff;
mod builder;
mod error;
mod event;
mod receive;
mod send;
mod wire;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use builder::ClientBuilder;
pub use error::{ConnectError, ConnectionError, EmitError};
pub use event::{Event, Events, Message, MessageKind};

pub use crate::binary::{BYTES_KEY, Binary};

use builder::Config;
use send::Outgoing;

use crate::protocol::check_namespace;
use crate::storage::DEFAULT_NAMESPACE;

/// A running client: a cheap handle to send with ([`emit`](Self::emit)) and to stop it
/// ([`close`](Self::close)). Clones share one client (one client id, one outbox).
///
/// Dropping every clone stops the client as [`close`](Self::close) does.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (client, _events) = simpleio::client::Client::builder("http://127.0.0.1:3000/simpleio")
///     .header("cookie", "user=ann")
///     .connect()?;
/// let reply = client.emit("add", &[1, 2]).await?;
/// assert_eq!(reply, 3);
/// client.close().await;
/// # Ok(()) }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// Where [`emit`](Self::emit) sends: `/` unless made by [`of`](Self::of).
    namespace: Arc<str>,
}

struct Inner {
    config: Arc<Config>,
    /// The last message id's number; ids are `{client_id}-{counter}`, unique for the client.
    counter: AtomicU64,
    /// The longest event name until the server's handshake tells its own.
    max_event_len: usize,
    /// The server's, once told (0 before), shared with the receive loop.
    server_max_event_len: Arc<std::sync::atomic::AtomicUsize>,
    outbox: mpsc::Sender<Outgoing>,
    /// `true` tells both loops to stop. Dropping it (the last handle went away) does too.
    stop: watch::Sender<bool>,
    /// The two loops, awaited by `close` so that it returns once they stopped.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Inner {
    /// Puts a message in the outbox and waits for its outcome.
    async fn enqueue(
        &self,
        ns: Option<Arc<str>>,
        event: String,
        data: Box<RawValue>,
        reply_to: Option<u64>,
    ) -> Result<Value, EmitError> {
        if *self.stop.borrow() {
            return Err(EmitError::Closed);
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let (reply, replied) = oneshot::channel();
        let message = Outgoing {
            id: format!("{}-{n}", self.config.client_id),
            ns,
            event,
            data,
            reply_to,
            reply,
            first_try: None,
            sent_as: None,
        };
        self.outbox
            .send(message)
            .await
            .map_err(|_| EmitError::Closed)?;
        replied.await.unwrap_or(Err(EmitError::Closed))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.config.url.as_str())
            .field("id", &self.inner.config.client_id)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts configuring a client of the simpleio route at `url` (the full URL of the route,
    /// such as `http://127.0.0.1:3000/simpleio`).
    ///
    /// ```
    /// let builder = simpleio::client::Client::builder("http://127.0.0.1:3000/simpleio");
    /// # let _ = builder;
    /// ```
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url)
    }

    /// This client's id: random, sent with every request. (If another instance ever polls
    /// with it, the client takes a new one, spec §3 step 6; this stays the first.)
    ///
    /// ```no_run
    /// # fn demo(client: simpleio::client::Client) {
    /// println!("I am client {}", client.id());
    /// # }
    /// ```
    pub fn id(&self) -> &str {
        &self.inner.config.client_id
    }

    /// The same client, sending into namespace `ns` (spec §4a): its [`emit`](Self::emit)
    /// reaches the handler of that namespace on the server, which sees it in
    /// [`Incoming::namespace`](crate::Incoming::namespace). The mirror of the server's
    /// [`SimpleIo::of`](crate::SimpleIo::of).
    ///
    /// It shares everything else with `self`: the client id, the outbox (messages of every
    /// namespace reach the server in the order they were emitted), [`close`](Self::close).
    /// Sending into a namespace does not need a subscription to it
    /// ([`ClientBuilder::namespaces`]); the server checks that it exists
    /// ([`EmitError::Rejected`] with code `unknown_namespace` otherwise) and that the user may
    /// use it (a refusal, typically `403`, is retried at the longest backoff as the spec says,
    /// then [`EmitError::Unacknowledged`] after the retry window).
    ///
    /// ```no_run
    /// # async fn demo(client: simpleio::client::Client) -> Result<(), simpleio::client::EmitError> {
    /// let chat = client.of("/chat");
    /// chat.emit("say", &serde_json::json!({"text": "hi"})).await?;
    /// client.emit("status", &"online").await?; // still in `/`
    /// assert_eq!(chat.namespace(), "/chat");
    /// # Ok(()) }
    /// ```
    pub fn of(&self, ns: impl Into<Arc<str>>) -> Client {
        Client {
            inner: self.inner.clone(),
            namespace: ns.into(),
        }
    }

    /// The namespace [`emit`](Self::emit) sends into: `/` unless this handle was made by
    /// [`of`](Self::of).
    ///
    /// ```no_run
    /// # fn demo(client: simpleio::client::Client) {
    /// assert_eq!(client.namespace(), "/");
    /// assert_eq!(client.of("/news").namespace(), "/news");
    /// # }
    /// ```
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Sends `event` with `data` to the server's handler (of this handle's
    /// [`namespace`](Self::namespace)); the returned future resolves with its reply (the
    /// acknowledgement's `reply`, `null` if none).
    ///
    /// Bytes go as [`Binary`] anywhere in `data` (see the [module
    /// docs](self#binary-data)).
    ///
    /// `data` is serialized at once; the future owns everything it needs, so it can be spawned.
    /// Once polled, the message is in the outbox and is sent, and resent after failures with the
    /// same id, until the server acknowledges it or the retry window passes; dropping the future
    /// after that does not unsend it. Messages reach the handler in the order their futures were
    /// first polled (for `emit(..).await` one after another, the order of the calls).
    ///
    /// # Errors
    ///
    /// [`EmitError::Ack`] if the handler failed (final); [`EmitError::Rejected`] if the server
    /// refused the message as invalid or too large; [`EmitError::Unacknowledged`] if the server
    /// could not be reached within the retry window, [`EmitError::StillPending`] if it was
    /// still handling the message then; [`EmitError::Closed`] if the client was
    /// closed first; [`EmitError::InvalidEvent`], [`EmitError::InvalidNamespace`] or
    /// [`EmitError::Serialize`] before sending.
    ///
    /// ```no_run
    /// # async fn demo(client: simpleio::client::Client) -> Result<(), simpleio::client::EmitError> {
    /// #[derive(serde::Serialize)]
    /// struct Chat<'a> { text: &'a str }
    ///
    /// let reply = client.emit("chat", &Chat { text: "hello" }).await?;
    /// println!("acknowledged with {reply}");
    ///
    /// // In the background:
    /// let pending = tokio::spawn(client.emit("chat", &Chat { text: "bye" }));
    /// # let _ = pending; Ok(()) }
    /// ```
    pub fn emit<T: Serialize + ?Sized>(&self, event: impl Into<String>, data: &T) -> Emitting {
        let event = event.into();
        let max = match self
            .inner
            .server_max_event_len
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => self.inner.max_event_len,
            told => told,
        };
        let prepared = if event.is_empty() || event.len() > max {
            Err(EmitError::InvalidEvent { max })
        } else if let Err(reason) = check_namespace(&self.namespace) {
            Err(EmitError::InvalidNamespace {
                namespace: self.namespace.to_string(),
                reason,
            })
        } else {
            serde_json::value::to_raw_value(data)
                .map(|data| (event, data))
                .map_err(EmitError::Serialize)
        };
        // The wire leaves the default namespace out.
        let ns = (&*self.namespace != DEFAULT_NAMESPACE).then(|| self.namespace.clone());
        let inner = self.inner.clone();
        Emitting {
            future: Box::pin(async move {
                let (event, data) = prepared?;
                inner.enqueue(ns, event, data, None).await
            }),
        }
    }

    /// Sends `data` as this client's reply to `message`, one whose sender waits for replies
    /// ([`Message::asks_reply`](Message::asks_reply)): the value the server's
    /// [`emit_with_ack`](crate::Emitter::emit_with_ack) gets from this client. Queued and
    /// retried like any message; resolves once the server recorded it. Reply once per message:
    /// a second reply is acknowledged and ignored.
    ///
    /// # Errors
    ///
    /// [`EmitError::Ack`] with the code `not_asked` at once if the message asked for no reply,
    /// `unknown_message` if the server knows no such message for this client (it expired, say),
    /// `reply_too_large` past the server's limit; otherwise as [`emit`](Self::emit).
    ///
    /// ```no_run
    /// # async fn demo(client: simpleio::client::Client, mut events: simpleio::client::Events) {
    /// use simpleio::client::Event;
    /// while let Some(Event::Message(m)) = events.recv().await {
    ///     if m.event == "confirm" && m.asks_reply {
    ///         let _ = client.reply(&m, &true).await;
    ///     }
    /// }
    /// # }
    /// ```
    pub fn reply<T: Serialize + ?Sized>(&self, message: &Message, data: &T) -> Emitting {
        let prepared = match (message.kind, message.asks_reply) {
            (MessageKind::Stored { pos }, true) => serde_json::value::to_raw_value(data)
                .map(|data| (pos, data))
                .map_err(EmitError::Serialize),
            _ => Err(EmitError::Ack {
                code: "not_asked".to_owned(),
                message: "the message asked for no reply".to_owned(),
            }),
        };
        let inner = self.inner.clone();
        Emitting {
            future: Box::pin(async move {
                let (pos, data) = prepared?;
                inner.enqueue(None, String::new(), data, Some(pos)).await
            }),
        }
    }

    /// Stops the client and returns once both of its loops stopped: the waiting poll is
    /// abandoned (nothing more is confirmed), and every message not yet acknowledged fails
    /// with [`EmitError::Closed`]. [`Events`] ends after the events already in it.
    ///
    /// Calling it again, or from another clone, returns at once.
    ///
    /// ```no_run
    /// # async fn demo(client: simpleio::client::Client) {
    /// client.close().await;
    /// assert!(client.is_closed());
    /// # }
    /// ```
    pub async fn close(&self) {
        self.inner.stop.send_replace(true);
        let tasks = std::mem::take(&mut *self.inner.tasks.lock().await);
        for task in tasks {
            if let Err(e) = task.await
                && e.is_panic()
            {
                tracing::error!(client = %self.id(), "a client task panicked: {e}");
            }
        }
    }

    /// Whether [`close`](Self::close) was called.
    ///
    /// ```no_run
    /// # fn demo(client: simpleio::client::Client) {
    /// if client.is_closed() { return; }
    /// # }
    /// ```
    pub fn is_closed(&self) -> bool {
        *self.inner.stop.borrow()
    }
}

/// The future of [`Client::emit`]: resolves with the reply to the message, or why there is
/// none. Owns what it needs (`'static`, `Send`), so it can be spawned.
///
/// ```no_run
/// # async fn demo(client: simpleio::client::Client) {
/// let emitting: simpleio::client::Emitting = client.emit("ping", &());
/// let handle = tokio::spawn(emitting);
/// println!("{:?}", handle.await);
/// # }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
#[must_use = "the message is not sent unless the future is awaited or spawned"]
pub struct Emitting {
    future: Pin<Box<dyn Future<Output = Result<Value, EmitError>> + Send>>,
}

impl fmt::Debug for Emitting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emitting").finish_non_exhaustive()
    }
}

impl Future for Emitting {
    type Output = Result<Value, EmitError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.future.as_mut().poll(cx)
    }
}

/// The bytes in `value` if it is the protocol's bytes object, `{"$bytes": "<base64>"}` with
/// valid base64 (spec §4b); `None` for anything else.
///
/// For the places serde does not reach: an [`emit`](Client::emit) reply, or a
/// [`Message::data`] you read as a [`Value`]. Where you deserialize into your own type, a
/// [`Binary`] field does the same.
///
/// ```
/// use serde_json::json;
/// use simpleio::client::as_binary;
///
/// let reply = json!({"name": "a.bin", "content": {"$bytes": "AJ+Slg=="}});
/// let content = as_binary(&reply["content"]).expect("bytes");
/// assert_eq!(&content[..], &[0, 159, 146, 150]);
/// assert!(as_binary(&reply["name"]).is_none());
/// assert!(as_binary(&json!({"$bytes": "AA==", "other": 1})).is_none()); // ordinary JSON
/// ```
pub fn as_binary(value: &Value) -> Option<Binary> {
    Binary::deserialize(value).ok()
}

/// What both loops need to make requests: the HTTP client, the credentials, the settings.
#[derive(Clone)]
pub(crate) struct Transport {
    http: reqwest::Client,
    headers: HeaderMap,
    config: Arc<Config>,
    /// The most messages per `POST` the server's handshake allows (spec §6; `usize::MAX` until
    /// one said, lowered by a `413 too_many_messages`): the send loop keeps to it.
    server_max_messages: Arc<std::sync::atomic::AtomicUsize>,
    /// The longest event name the server's handshake allows (spec §6; 0 until one said):
    /// [`Client::emit`] checks names against it.
    server_max_event_len: Arc<std::sync::atomic::AtomicUsize>,
    /// The client id polls go out with: the configured one, until a poll is taken over by
    /// another instance with the same id (spec §3 step 6) and the receive loop takes a new one.
    current_id: Arc<std::sync::Mutex<Arc<str>>>,
}

impl Transport {
    fn current_id(&self) -> Arc<str> {
        self.current_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn replace_id(&self, id: Arc<str>) {
        *self.current_id.lock().unwrap_or_else(|p| p.into_inner()) = id;
    }
}

/// Resolves once the client is told to stop, or every handle to it is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender was dropped: no handle is left, which is a stop too.
    let _ = stop.wait_for(|&stop| stop).await;
}

// Handles are shared across tasks, and `tokio::spawn(client.emit(..))` must work.
const _: fn() = || {
    fn assert_send<T: Send + Sync + 'static>() {}
    assert_send::<Client>();
    assert_send::<Events>();
    fn assert_spawnable<T: Send + 'static>() {}
    assert_spawnable::<Emitting>();
};
