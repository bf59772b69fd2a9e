//! Who is asking: the application's identity function, and its rejections.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::request::Parts;
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::id::UserId;
use crate::protocol::{ErrorBody, error_response};

/// The boxed future an identity function returns.
pub type IdentityFuture = Pin<Box<dyn Future<Output = Result<UserId, Rejection>> + Send>>;

/// Names the user a request belongs to, from its parts (headers, cookies, extensions).
///
/// Implemented for every `Fn(&Parts) -> impl Future<Output = Result<UserId, Rejection>>`, so an
/// identity function is usually a closure that takes what it needs from the parts and then does
/// its async work:
///
/// ```
/// use http::request::Parts;
/// use simpleio::{Rejection, UserId};
///
/// let identity = |parts: &Parts| {
///     let token = parts
///         .headers
///         .get("authorization")
///         .and_then(|v| v.to_str().ok())
///         .map(str::to_owned);
///     async move {
///         match token.as_deref() {
///             Some("Bearer ann-secret") => Ok(UserId::from("ann")),
///             _ => Err(Rejection::unauthorized("sign in first")),
///         }
///     }
/// };
/// # let (_layer, _io) = simpleio::SimpleIoLayer::builder().identity(identity).build();
/// ```
///
/// This is the only place a user id comes from: nothing in a request's query or body can name
/// another user.
pub trait Identify: Send + Sync + 'static {
    /// Resolves the request's user, or rejects the request.
    fn identify(&self, parts: &Parts) -> IdentityFuture;
}

impl<F, Fut> Identify for F
where
    F: Fn(&Parts) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<UserId, Rejection>> + Send + 'static,
{
    fn identify(&self, parts: &Parts) -> IdentityFuture {
        Box::pin(self(parts))
    }
}

/// The identity function's refusal: the HTTP response the client gets instead.
///
/// ```
/// use simpleio::Rejection;
/// let r = Rejection::unauthorized("sign in first");
/// assert_eq!(r.status(), http::StatusCode::UNAUTHORIZED);
/// ```
pub struct Rejection {
    response: Response<Full<Bytes>>,
}

impl Rejection {
    /// A rejection with `status` and the protocol's JSON error body, `{"error": {"code", "message"}}`.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Rejection {
            response: error_response(
                status,
                &ErrorBody {
                    code: code.to_owned(),
                    message: message.into(),
                },
            ),
        }
    }

    /// `401 Unauthorized`, code `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// `403 Forbidden`, code `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// Any response of the application's choosing.
    pub fn from_response(response: Response<Full<Bytes>>) -> Self {
        Rejection { response }
    }

    /// The response's status.
    pub fn status(&self) -> StatusCode {
        self.response.status()
    }

    pub(crate) fn into_response(self) -> Response<Full<Bytes>> {
        self.response
    }
}

impl fmt::Debug for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejection")
            .field("status", &self.response.status())
            .finish()
    }
}

impl From<Response<Full<Bytes>>> for Rejection {
    fn from(response: Response<Full<Bytes>>) -> Self {
        Rejection { response }
    }
}

/// The default identity function: rejects everything with `401`, so that a layer built without
/// `.identity(...)` fails closed instead of mixing users.
pub(crate) fn reject_all(_: &Parts) -> std::future::Ready<Result<UserId, Rejection>> {
    std::future::ready(Err(Rejection::unauthorized(
        "no identity function is configured on this server (SimpleIoLayer::builder().identity(...))",
    )))
}
