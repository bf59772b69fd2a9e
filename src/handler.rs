//! What the application's handler receives and returns for each client message.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tower::BoxError;
use tower::util::BoxCloneSyncService;

use crate::id::{ClientId, MessageId, UserId};
use crate::io::{DataError, Emitter, SimpleIo};
use crate::storage::{Member, StorageError};

/// The handler as the layer stores it: any `Service<Incoming>` with its response turned into a
/// [`Reply`] and its error boxed.
pub(crate) type BoxHandler = BoxCloneSyncService<Incoming, Reply, BoxError>;

/// One message from a client, as the handler service receives it.
///
/// `user` comes from the identity function, never from the request; `client` and `id` are the
/// client's own and only scope its messages within that user.
///
/// ```
/// use simpleio::{Incoming, Reply};
/// use tower::service_fn;
///
/// #[derive(serde::Deserialize)]
/// struct Add(i64, i64);
///
/// let handler = service_fn(|msg: Incoming| async move {
///     match msg.event.as_str() {
///         "add" => {
///             let Add(a, b) = msg.json()?;
///             Ok::<_, tower::BoxError>(Reply::json(&(a + b))?)
///         }
///         _ => Ok(Reply::none()),
///     }
/// });
/// # let (_layer, _io) = simpleio::SimpleIoLayer::builder().handler(handler).build();
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct Incoming {
    /// The sending user, as the identity function named them.
    pub user: UserId,
    /// The sending client of that user.
    pub client: ClientId,
    /// The client's id for this message; a retry with the same id is not handled again.
    pub id: MessageId,
    /// The namespace the message was sent in (`/` by default).
    pub namespace: Arc<str>,
    /// The event name.
    pub event: String,
    /// The payload as JSON text (`null` if the client sent none). See [`Incoming::json`].
    pub data: Box<RawValue>,
    /// A handle for sending from the handler (to others, broadcasts), in the message's
    /// namespace.
    pub io: SimpleIo,
    /// The request's extensions (those put there by layers outside simpleio, such as a session
    /// layer's), with the [`Identity`](crate::Identity)'s extensions added over them: roles,
    /// the session, a token's claims. See the [`Extension`](crate::events::Extension)
    /// extractor.
    pub extensions: http::Extensions,
}

impl Incoming {
    /// The payload, deserialized.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.get())
    }

    /// The sending client as a room member or data owner.
    pub fn sender(&self) -> Member {
        Member::Client(self.user.clone(), self.client.clone())
    }

    /// Messages to every live user but this client (the user's other tabs included):
    /// Socket.IO's `socket.broadcast.emit`.
    pub fn broadcast(&self) -> Emitter {
        self.io.everyone().except(self.sender())
    }

    /// Messages to every member of `room` but this client: Socket.IO's `socket.to(room).emit`.
    pub fn broadcast_to(&self, room: impl Into<Arc<str>>) -> Emitter {
        self.io.to_room(room).except(self.sender())
    }

    /// Puts this client in `room` for as long as it is live.
    pub async fn join(&self, room: &str) -> Result<(), StorageError> {
        self.io.join(self.sender(), room).await
    }

    /// Takes this client out of `room`.
    pub async fn leave(&self, room: &str) -> Result<(), StorageError> {
        self.io.leave(self.sender(), room).await
    }

    /// Attaches data to this client, for as long as it is live (Socket.IO's `socket.set`).
    pub async fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), DataError> {
        self.io.set_data(self.sender(), key, value).await
    }

    /// This client's data under `key` (Socket.IO's `socket.get`).
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, DataError> {
        self.io.data(self.sender(), key).await
    }
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("user", &self.user)
            .field("client", &self.client)
            .field("id", &self.id)
            .field("namespace", &self.namespace)
            .field("event", &self.event)
            .field("data", &self.data.get())
            .field("extensions", &self.extensions)
            .finish()
    }
}

/// The handler's answer to a client message: the data of its acknowledgement.
///
/// ```
/// use simpleio::Reply;
/// let none = Reply::none();
/// let some = Reply::json(&serde_json::json!({"stored": true})).unwrap();
/// let from_value: Reply = serde_json::json!([1, 2]).into();
/// # let _ = (none, some, from_value);
/// ```
#[derive(Debug, Clone)]
pub struct Reply(Option<Box<RawValue>>);

impl Reply {
    /// An acknowledgement without data (`"reply": null` on the wire).
    pub fn none() -> Self {
        Reply(None)
    }

    /// An acknowledgement carrying `value`.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(|v| Reply(Some(v)))
    }

    pub(crate) fn into_raw(self) -> Box<RawValue> {
        self.0.unwrap_or_else(null)
    }
}

impl From<()> for Reply {
    fn from(_: ()) -> Self {
        Reply::none()
    }
}

impl From<serde_json::Value> for Reply {
    fn from(value: serde_json::Value) -> Self {
        // A `Value` always serializes.
        Reply::json(&value).unwrap_or_else(|_| Reply::none())
    }
}

impl From<Box<RawValue>> for Reply {
    fn from(raw: Box<RawValue>) -> Self {
        Reply(Some(raw))
    }
}

/// The JSON `null`.
pub(crate) fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).unwrap_or_else(|_| unreachable!("null is JSON"))
}

/// An error the handler returns to show the client a chosen code and message.
///
/// Any other handler error reaches the client as code `handler_error` with a generic message,
/// so internal details stay in the server's logs.
///
/// ```
/// use simpleio::{HandlerError, Incoming, Reply};
/// use tower::service_fn;
///
/// let handler = service_fn(|msg: Incoming| async move {
///     if msg.event != "chat" {
///         return Err(HandlerError::new("unknown_event", format!("no event {:?}", msg.event)));
///     }
///     Ok(Reply::none())
/// });
/// # let (_layer, _io) = simpleio::SimpleIoLayer::builder().handler(handler).build();
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct HandlerError {
    /// Stable, for programs; an ack carries at most 64 bytes of it.
    pub code: String,
    /// For people; an ack carries at most 1,024 bytes of it (cut, ending in `…`), as it is
    /// kept for the dedup window and may quote what the client sent.
    pub message: String,
}

impl HandlerError {
    /// An error with this code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        HandlerError {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// The default handler: refuses every message, saying no handler is configured.
pub(crate) fn no_handler() -> BoxHandler {
    BoxCloneSyncService::new(tower::service_fn(|msg: Incoming| async move {
        tracing::warn!(event = ?msg.event, "a client message arrived but no handler is configured");
        Err::<Reply, BoxError>(Box::new(HandlerError::new(
            "no_handler",
            "this server does not accept messages",
        )))
    }))
}
