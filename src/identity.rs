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
    // Boxed: rejections are rare, and a large error variant would bloat every `Result` that
    // carries one.
    inner: Box<RejectionInner>,
}

struct RejectionInner {
    response: Response<Full<Bytes>>,
    /// The code and message, when the rejection was made from them; a message refused in a
    /// `POST` is acknowledged with them.
    body: Option<ErrorBody>,
}

impl Rejection {
    /// A rejection with `status` and the protocol's JSON error body, `{"error": {"code", "message"}}`.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        let body = ErrorBody {
            code: code.to_owned(),
            message: message.into(),
        };
        Rejection {
            inner: Box::new(RejectionInner {
                response: error_response(status, &body),
                body: Some(body),
            }),
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
        Rejection {
            inner: Box::new(RejectionInner {
                response,
                body: None,
            }),
        }
    }

    /// The response's status.
    pub fn status(&self) -> StatusCode {
        self.inner.response.status()
    }

    /// The rejection as the error of one message's acknowledgement.
    pub(crate) fn ack_error(&self) -> ErrorBody {
        self.inner.body.clone().unwrap_or_else(|| ErrorBody {
            code: "rejected".to_owned(),
            message: format!("refused by the server ({})", self.status()),
        })
    }

    pub(crate) fn into_response(self) -> Response<Full<Bytes>> {
        self.inner.response
    }
}

impl fmt::Debug for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejection")
            .field("status", &self.status())
            .finish()
    }
}

impl From<Response<Full<Bytes>>> for Rejection {
    fn from(response: Response<Full<Bytes>>) -> Self {
        Rejection::from_response(response)
    }
}

/// The default identity function: rejects everything with `401`, so that a layer built without
/// `.identity(...)` fails closed instead of mixing users.
pub(crate) fn reject_all(_: &Parts) -> std::future::Ready<Result<UserId, Rejection>> {
    std::future::ready(Err(Rejection::unauthorized(
        "no identity function is configured on this server (SimpleIoLayer::builder().identity(...))",
    )))
}
