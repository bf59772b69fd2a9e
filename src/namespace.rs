//! Namespaces: independent channels over one polling connection, each with its own handler,
//! events and authorization (Socket.IO's `io.of('/chat')`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::request::Parts;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceExt};

use crate::handler::{BoxHandler, Incoming, Reply};
use crate::id::UserId;
use crate::identity::Rejection;
use crate::protocol::ProtocolError;
use crate::shared::Shared;

/// The boxed future an authorization function returns.
pub type AuthorizeFuture = Pin<Box<dyn Future<Output = Result<(), Rejection>> + Send>>;

/// Decides whether a user may use a namespace: receive its messages and send to its handler.
///
/// Implemented for every `Fn(&Parts, &UserId) -> impl Future<Output = Result<(), Rejection>>`.
/// It runs on every request that names the namespace, after the identity function; a rejection
/// becomes that request's response.
///
/// What the identity function learnt about the user (an [`Identity`](crate::Identity)'s
/// extensions: roles, a token's claims) is in the parts' extensions by then:
///
/// ```
/// use http::request::Parts;
/// use simpleio::{Identity, Namespace, Rejection, SimpleIoLayer, UserId};
///
/// #[derive(Clone)]
/// struct Admin;
///
/// async fn identity(parts: &Parts) -> Result<Identity, Rejection> {
///     match parts.headers.get("x-user").and_then(|v| v.to_str().ok()) {
///         Some("root") => Ok(Identity::new("root").with_extension(Admin)),
///         Some(user) => Ok(Identity::new(user)),
///         None => Err(Rejection::unauthorized("sign in first")),
///     }
/// }
///
/// let admins_only = |parts: &Parts, _user: &UserId| {
///     let allowed = parts.extensions.get::<Admin>().is_some();
///     async move { if allowed { Ok(()) } else { Err(Rejection::forbidden("admins only")) } }
/// };
/// let (layer, io) = SimpleIoLayer::builder()
///     .identity(identity)
///     .namespace(Namespace::new("/admin").authorize(admins_only))
///     .build();
/// # let _ = (layer, io);
/// ```
pub trait Authorize: Send + Sync + 'static {
    /// Allows the request, or rejects it.
    fn authorize(&self, parts: &Parts, user: &UserId) -> AuthorizeFuture;
}

impl<F, Fut> Authorize for F
where
    F: Fn(&Parts, &UserId) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Rejection>> + Send + 'static,
{
    fn authorize(&self, parts: &Parts, user: &UserId) -> AuthorizeFuture {
        Box::pin(self(parts, user))
    }
}

/// A namespace other than the default `/`, added with
/// [`Builder::namespace`](crate::Builder::namespace).
///
/// Clients subscribe to the namespaces they want; messages sent through
/// [`SimpleIo::of`](crate::SimpleIo::of) reach only clients subscribed to that namespace, and
/// client messages in it go to its own handler.
///
/// ```
/// use simpleio::{Incoming, Namespace, Rejection, Reply, SimpleIoLayer, UserId};
/// use tower::service_fn;
///
/// let admin = Namespace::new("/admin")
///     .authorize(|_parts: &http::request::Parts, user: &UserId| {
///         let allowed = user.as_str() == "root";
///         async move {
///             if allowed { Ok(()) } else { Err(Rejection::forbidden("admins only")) }
///         }
///     })
///     .handler(service_fn(|msg: Incoming| async move {
///         Ok::<_, tower::BoxError>(Reply::json(&format!("admin got {}", msg.event))?)
///     }));
/// let (layer, io) = SimpleIoLayer::builder().namespace(admin).build();
/// # let _ = (layer, io);
/// ```
pub struct Namespace {
    pub(crate) name: Arc<str>,
    pub(crate) handler: Option<BoxHandler>,
    pub(crate) authorize: Option<Arc<dyn Authorize>>,
}

impl Namespace {
    /// A namespace named `name`: `/` and up to 63 visible ASCII characters other than `,`
    /// (checked by [`Builder::build`](crate::Builder::build)).
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Namespace {
            name: name.into(),
            handler: None,
            authorize: None,
        }
    }

    /// The service handling client messages in this namespace (see
    /// [`Builder::handler`](crate::Builder::handler)): usually an [`Events`](crate::Events)
    /// router of its own. Without one, they are refused with an error acknowledgement.
    pub fn handler<S, R>(mut self, handler: S) -> Self
    where
        S: Service<Incoming, Response = R> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        R: Into<Reply> + 'static,
    {
        self.handler = Some(box_handler(handler));
        self
    }

    /// Who may use this namespace (see [`Authorize`]). Without it, every identified user may.
    pub fn authorize(mut self, authorize: impl Authorize) -> Self {
        self.authorize = Some(Arc::new(authorize));
        self
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Namespace")
            .field("name", &self.name)
            .field("handler", &self.handler.is_some())
            .field("authorize", &self.authorize.is_some())
            .finish()
    }
}

pub(crate) fn box_handler<S, R>(handler: S) -> BoxHandler
where
    S: Service<Incoming, Response = R> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    R: Into<Reply> + 'static,
{
    BoxCloneSyncService::new(handler.map_response(Into::into).map_err(Into::into))
}

/// A namespace as the layer keeps it.
#[derive(Clone)]
pub(crate) struct NamespaceEntry {
    pub(crate) handler: BoxHandler,
    pub(crate) authorize: Option<Arc<dyn Authorize>>,
}

impl fmt::Debug for NamespaceEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamespaceEntry")
            .field("authorize", &self.authorize.is_some())
            .finish_non_exhaustive()
    }
}

/// Checks that `ns` exists (else the request is a client's bug), then whether `user` may use it.
pub(crate) async fn authorize(
    shared: &Shared,
    parts: &Parts,
    user: &UserId,
    ns: &Arc<str>,
) -> Result<Result<(), Rejection>, ProtocolError> {
    let entry = shared
        .namespaces
        .get(ns)
        .ok_or_else(|| ProtocolError::UnknownNamespace(ns.to_string()))?;
    Ok(match &entry.authorize {
        Some(authorize) => authorize.authorize(parts, user).await,
        None => Ok(()),
    })
}

/// Checks that each of `namespaces` exists and that `user` may use it; the first refusal is the
/// request's answer.
pub(crate) async fn authorize_all(
    shared: &Shared,
    parts: &Parts,
    user: &UserId,
    namespaces: &[Arc<str>],
) -> Result<(), ProtocolError> {
    for ns in namespaces {
        authorize(shared, parts, user, ns)
            .await?
            .map_err(ProtocolError::Rejected)?;
    }
    Ok(())
}
