//! Extractors: what a handler's arguments are made from, one message at a time.

use std::convert::Infallible;
use std::future::{Future, ready};

use tower::BoxError;

use crate::handler::Incoming;
use crate::id::{ClientId, MessageId, UserId};
use crate::io::SimpleIo;

/// Makes a handler argument from a client message and the router's state.
///
/// Every argument of a handler implements it; when one fails, the handler does not run and the
/// rejection becomes the message's acknowledgement: a
/// [`HandlerError`](crate::HandlerError) shows its code and message to the client (as
/// [`Data`](super::Data)'s `invalid_data` does), any other error shows `handler_error` and is
/// logged. Implement it for your own types to share how they are made:
///
/// ```
/// use simpleio::events::{Events, FromIncoming};
/// use simpleio::{HandlerError, Incoming};
///
/// /// The sender, refused unless they signed up with a verified email.
/// struct Verified(String);
///
/// impl<S: Sync> FromIncoming<S> for Verified {
///     type Rejection = HandlerError;
///
///     async fn from_incoming(msg: &Incoming, _state: &S) -> Result<Self, HandlerError> {
///         match msg.user.as_str() {
///             "ann" => Ok(Verified("ann@example.com".to_owned())),
///             _ => Err(HandlerError::new("unverified", "verify your email first")),
///         }
///     }
/// }
///
/// async fn invite(Verified(email): Verified) -> String {
///     format!("invited from {email}")
/// }
/// let events: Events = Events::new().on("invite", invite);
/// # let _ = events;
/// ```
pub trait FromIncoming<S>: Sized {
    /// Why the argument could not be made.
    type Rejection: Into<BoxError>;

    /// Makes the argument.
    fn from_incoming(
        msg: &Incoming,
        state: &S,
    ) -> impl Future<Output = Result<Self, Self::Rejection>> + Send;
}

/// The sending user, as the identity function named them.
impl<S: Sync> FromIncoming<S> for UserId {
    type Rejection = Infallible;

    fn from_incoming(
        msg: &Incoming,
        _: &S,
    ) -> impl Future<Output = Result<Self, Infallible>> + Send {
        ready(Ok(msg.user.clone()))
    }
}

/// The sending client (tab, device) of that user.
impl<S: Sync> FromIncoming<S> for ClientId {
    type Rejection = Infallible;

    fn from_incoming(
        msg: &Incoming,
        _: &S,
    ) -> impl Future<Output = Result<Self, Infallible>> + Send {
        ready(Ok(msg.client.clone()))
    }
}

/// The client's id for the message: unique per user and client, so an idempotency key for
/// effects that must not repeat.
impl<S: Sync> FromIncoming<S> for MessageId {
    type Rejection = Infallible;

    fn from_incoming(
        msg: &Incoming,
        _: &S,
    ) -> impl Future<Output = Result<Self, Infallible>> + Send {
        ready(Ok(msg.id.clone()))
    }
}

/// A sending handle in the message's namespace, on behalf of its user (as [`Incoming::io`]).
impl<S: Sync> FromIncoming<S> for SimpleIo {
    type Rejection = Infallible;

    fn from_incoming(
        msg: &Incoming,
        _: &S,
    ) -> impl Future<Output = Result<Self, Infallible>> + Send {
        ready(Ok(msg.io.clone()))
    }
}

/// The whole message, for what no other extractor gives (its namespace, `broadcast`, `join`).
impl<S: Sync> FromIncoming<S> for Incoming {
    type Rejection = Infallible;

    fn from_incoming(
        msg: &Incoming,
        _: &S,
    ) -> impl Future<Output = Result<Self, Infallible>> + Send {
        ready(Ok(msg.clone()))
    }
}

/// The argument if it can be made, else `None`: for what only some requests carry.
///
/// ```
/// use simpleio::events::{Events, Extension};
///
/// #[derive(Clone)]
/// struct Admin;
///
/// async fn status(admin: Option<Extension<Admin>>) -> String {
///     if admin.is_some() { "all systems go (admin view)".into() } else { "ok".into() }
/// }
/// let events: Events = Events::new().on("status", status);
/// # let _ = events;
/// ```
impl<S: Sync, T: FromIncoming<S>> FromIncoming<S> for Option<T> {
    type Rejection = Infallible;

    async fn from_incoming(msg: &Incoming, state: &S) -> Result<Self, Infallible> {
        Ok(T::from_incoming(msg, state).await.ok())
    }
}

/// The message's event name, for a [fallback](super::Events::fallback) serving several.
///
/// ```
/// use simpleio::events::{Event, Events};
///
/// async fn unknown(Event(name): Event) -> Result<(), simpleio::HandlerError> {
///     Err(simpleio::HandlerError::new("unknown_event", format!("no event {name:?} here")))
/// }
/// let events: Events = Events::new().fallback(unknown);
/// # let _ = events;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event(pub String);

impl<S: Sync> FromIncoming<S> for Event {
    type Rejection = Infallible;

    fn from_incoming(
        msg: &Incoming,
        _: &S,
    ) -> impl Future<Output = Result<Self, Infallible>> + Send {
        ready(Ok(Event(msg.event.clone())))
    }
}
