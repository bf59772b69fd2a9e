//! What a handler may return: anything that becomes the message's acknowledgement.

use serde::Serialize;
use serde_json::value::RawValue;
use tower::BoxError;

use crate::handler::Reply;

/// Turns a handler's return value into the message's acknowledgement: a [`Reply`] (its data),
/// or an error.
///
/// | the handler returns | the client's acknowledgement |
/// |---|---|
/// | `()`, [`Reply::none()`] | `"reply": null` |
/// | [`Json(value)`](Json), a `serde_json::Value`, a `String` | `"reply": value` |
/// | [`Reply`] | its data |
/// | `Ok(x)` | as `x` |
/// | `Err(`[`HandlerError`](crate::HandlerError)`)` | `"error"` with its code and message |
/// | `Err(any other error)` | `"error"` with code `handler_error`, the error logged |
///
/// ```
/// use serde::Serialize;
/// use simpleio::events::{Events, Json};
/// use simpleio::HandlerError;
///
/// #[derive(Serialize)]
/// struct Sum {
///     total: i64,
/// }
///
/// async fn add(simpleio::events::Data((a, b)): simpleio::events::Data<(i64, i64)>)
///     -> Result<Json<Sum>, HandlerError>
/// {
///     let total = a.checked_add(b).ok_or_else(|| HandlerError::new("overflow", "too big"))?;
///     Ok(Json(Sum { total }))
/// }
///
/// let events: Events = Events::new().on("add", add);
/// # let _ = events;
/// ```
pub trait IntoReply {
    /// The acknowledgement's data, or the error it reports.
    fn into_reply(self) -> Result<Reply, BoxError>;
}

impl IntoReply for Reply {
    fn into_reply(self) -> Result<Reply, BoxError> {
        Ok(self)
    }
}

impl IntoReply for () {
    fn into_reply(self) -> Result<Reply, BoxError> {
        Ok(Reply::none())
    }
}

impl IntoReply for serde_json::Value {
    fn into_reply(self) -> Result<Reply, BoxError> {
        Ok(Reply::from(self))
    }
}

impl IntoReply for Box<RawValue> {
    fn into_reply(self) -> Result<Reply, BoxError> {
        Ok(Reply::from(self))
    }
}

/// A JSON string.
impl IntoReply for String {
    fn into_reply(self) -> Result<Reply, BoxError> {
        Ok(Reply::json(&self)?)
    }
}

/// A JSON string.
impl IntoReply for &'static str {
    fn into_reply(self) -> Result<Reply, BoxError> {
        Ok(Reply::json(self)?)
    }
}

impl<T, E> IntoReply for Result<T, E>
where
    T: IntoReply,
    E: Into<BoxError>,
{
    fn into_reply(self) -> Result<Reply, BoxError> {
        self.map_err(Into::into)?.into_reply()
    }
}

/// A reply of any `serde::Serialize` value (see [`IntoReply`]). One that fails to serialize
/// (a map with non-string keys, say) is a `handler_error`, logged.
///
/// ```
/// use simpleio::events::{IntoReply, Json};
///
/// let reply = Json(vec![1, 2, 3]).into_reply().unwrap();
/// # let _ = reply;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoReply for Json<T> {
    fn into_reply(self) -> Result<Reply, BoxError> {
        Ok(Reply::json(&self.0)?)
    }
}
