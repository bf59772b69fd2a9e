//! Who is asking: the application's identity function, and its rejections.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::request::Parts;
use http::{Extensions, Response, StatusCode};
use http_body_util::Full;

use crate::id::UserId;
use crate::protocol::{ErrorBody, error_response};

/// A boxed future an identity function may return, when naming its future's type is easier than
/// writing `impl Future` (for `T`, a [`UserId`] or an [`Identity`]).
///
/// ```
/// use http::request::Parts;
/// use simpleio::{IdentityFuture, UserId};
///
/// fn identity(_parts: &Parts) -> IdentityFuture {
///     Box::pin(async { Ok(UserId::from("ann")) })
/// }
/// # let (_layer, _io) = simpleio::SimpleIoLayer::builder().identity(identity).build();
/// ```
pub type IdentityFuture<T = UserId> = Pin<Box<dyn Future<Output = Result<T, Rejection>> + Send>>;

/// The future [`Identify::identify`] returns: it may borrow the request's parts.
pub type IdentifyFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Identity, Rejection>> + Send + 'a>>;

/// Names the user a request belongs to, from its parts (headers, cookies, extensions), and
/// optionally what else is known about them (see [`Identity`]).
///
/// Implemented for every function or closure over `&Parts` returning a future of
/// `Result<UserId, Rejection>` or `Result<Identity, Rejection>` (see [`IdentityFn`]). A named
/// `async fn` works as it is, its future borrowing the parts:
///
/// ```
/// use http::request::Parts;
/// use simpleio::{Rejection, SimpleIoLayer, UserId};
///
/// async fn identity(parts: &Parts) -> Result<UserId, Rejection> {
///     let token = parts.headers.get("authorization").and_then(|v| v.to_str().ok());
///     match token {
///         Some("Bearer ann-secret") => Ok(UserId::from("ann")),
///         _ => Err(Rejection::unauthorized("sign in first")),
///     }
/// }
///
/// let (layer, io) = SimpleIoLayer::builder().identity(identity).build();
/// # let _ = (layer, io);
/// ```
///
/// So does a closure that takes what it needs from the parts and then does its async work:
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
///
/// A type of your own (a token verifier holding its keys, say) implements the trait directly:
///
/// ```
/// use http::request::Parts;
/// use simpleio::{Identify, IdentifyFuture, Identity, Rejection};
///
/// struct ApiKeys(Vec<(String, String)>);
///
/// impl Identify for ApiKeys {
///     fn identify<'a>(&'a self, parts: &'a Parts) -> IdentifyFuture<'a> {
///         Box::pin(async move {
///             let key = parts.headers.get("x-api-key").and_then(|v| v.to_str().ok());
///             self.0
///                 .iter()
///                 .find(|(k, _)| Some(k.as_str()) == key)
///                 .map(|(_, user)| Identity::new(user.as_str()))
///                 .ok_or_else(|| Rejection::unauthorized("unknown API key"))
///         })
///     }
/// }
/// # let keys = ApiKeys(vec![("k1".into(), "ann".into())]);
/// # let (_layer, _io) = simpleio::SimpleIoLayer::builder().identity(keys).build();
/// ```
pub trait Identify: Send + Sync + 'static {
    /// Resolves the request's user (and what else it knows of them), or rejects the request.
    fn identify<'a>(&'a self, parts: &'a Parts) -> IdentifyFuture<'a>;
}

/// A function usable as an identity function, for each lifetime `'a` of the parts it is given:
/// `Fn(&'a Parts) -> impl Future<Output = Result<impl Into<Identity>, Rejection>> + 'a`.
///
/// It exists so that a future may borrow the parts, as a named `async fn`'s does: a plain
/// `Fn(&Parts) -> Fut` bound would ask one future type for every lifetime. Implemented for
/// every such function; you never implement it yourself, only pass functions to
/// [`Builder::identity`](crate::Builder::identity).
///
/// ```
/// use http::request::Parts;
/// use simpleio::{IdentityFn, Rejection, UserId};
///
/// async fn identity(_parts: &Parts) -> Result<UserId, Rejection> {
///     Ok(UserId::from("ann"))
/// }
///
/// fn assert_identity_fn<F: for<'a> IdentityFn<'a>>(_: &F) {}
/// assert_identity_fn(&identity);
/// ```
pub trait IdentityFn<'a>: Send + Sync + 'static {
    /// What the function names: a [`UserId`] or an [`Identity`].
    type Output: Into<Identity>;
    /// Its future.
    type Future: Future<Output = Result<Self::Output, Rejection>> + Send + 'a;

    /// Calls the function.
    fn call(&self, parts: &'a Parts) -> Self::Future;
}

impl<'a, F, Fut, I> IdentityFn<'a> for F
where
    F: Fn(&'a Parts) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<I, Rejection>> + Send + 'a,
    I: Into<Identity>,
{
    type Output = I;
    type Future = Fut;

    fn call(&self, parts: &'a Parts) -> Fut {
        self(parts)
    }
}

impl<F> Identify for F
where
    F: for<'a> IdentityFn<'a>,
{
    fn identify<'a>(&'a self, parts: &'a Parts) -> IdentifyFuture<'a> {
        let future = IdentityFn::call(self, parts);
        Box::pin(async move { future.await.map(Into::into) })
    }
}

/// Who a request belongs to: the user, and what the identity function learnt about them on the
/// way (roles, the session, a token's claims), as typed extensions.
///
/// An identity function returns one when handlers or namespace authorization need more than
/// the user id; a [`UserId`] converts into one with no extensions. Extensions are added to the
/// request's own (`Parts::extensions`, where [`Authorize`](crate::Authorize) reads them) and
/// reach each of its messages' handlers ([`Incoming::extensions`](crate::Incoming), the
/// [`Extension`](crate::events::Extension) extractor).
///
/// ```
/// use http::request::Parts;
/// use simpleio::{Identity, Rejection, SimpleIoLayer};
///
/// #[derive(Clone, Debug, PartialEq)]
/// struct Roles(Vec<String>);
///
/// async fn who(parts: &Parts) -> Result<Identity, Rejection> {
///     let user = parts.headers.get("x-user").and_then(|v| v.to_str().ok());
///     match user {
///         Some("mia") => Ok(Identity::new("mia").with_extension(Roles(vec!["moderator".into()]))),
///         Some(other) => Ok(Identity::new(other)),
///         None => Err(Rejection::unauthorized("sign in first")),
///     }
/// }
///
/// let (layer, io) = SimpleIoLayer::builder().identity(who).build();
/// # let _ = (layer, io);
///
/// let mia = Identity::new("mia").with_extension(Roles(vec!["moderator".into()]));
/// assert_eq!(mia.user().as_str(), "mia");
/// assert_eq!(mia.extensions().get::<Roles>(), Some(&Roles(vec!["moderator".into()])));
/// ```
#[derive(Debug, Clone)]
pub struct Identity {
    user: UserId,
    extensions: Extensions,
}

impl Identity {
    /// The identity of `user`, with no extensions yet.
    pub fn new(user: impl Into<UserId>) -> Self {
        Identity {
            user: user.into(),
            extensions: Extensions::new(),
        }
    }

    /// Adds `value`, found by its type (one value per type; a second replaces the first).
    pub fn with_extension<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.extensions.insert(value);
        self
    }

    /// The user.
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// The extensions.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// The extensions, to add or remove some.
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }

    /// The user and the extensions.
    pub fn into_parts(self) -> (UserId, Extensions) {
        (self.user, self.extensions)
    }
}

impl From<UserId> for Identity {
    fn from(user: UserId) -> Self {
        Identity::new(user)
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
