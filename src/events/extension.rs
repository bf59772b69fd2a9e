//! [`Extension`]: what the identity function (or a layer outside simpleio) learnt about the
//! sender.

use std::any::type_name;
use std::future::{Future, ready};

use super::FromIncoming;
use crate::handler::Incoming;

/// A value of type `T` from the message's extensions ([`Incoming::extensions`]): one the
/// identity function added with [`Identity::with_extension`](crate::Identity::with_extension)
/// (roles, a token's claims, the session), or one a layer outside simpleio put in the request.
///
/// Without one the handler does not run: the client gets the error acknowledgement
/// `handler_error` and the server logs [`MissingExtension`], since the server, not the client,
/// is at fault. Take an `Option<Extension<T>>` for a value only some users have.
///
/// ```
/// use simpleio::events::{Events, Extension};
/// use simpleio::{HandlerError, Identity, Rejection, SimpleIoLayer};
///
/// #[derive(Clone)]
/// struct Roles(Vec<&'static str>);
///
/// async fn identity(parts: &http::request::Parts) -> Result<Identity, Rejection> {
///     match parts.headers.get("x-user").and_then(|v| v.to_str().ok()) {
///         Some("mia") => Ok(Identity::new("mia").with_extension(Roles(vec!["moderator"]))),
///         Some(user) => Ok(Identity::new(user).with_extension(Roles(vec![]))),
///         None => Err(Rejection::unauthorized("sign in first")),
///     }
/// }
///
/// async fn ban(Extension(roles): Extension<Roles>) -> Result<(), HandlerError> {
///     if !roles.0.contains(&"moderator") {
///         return Err(HandlerError::new("forbidden", "only moderators may ban"));
///     }
///     Ok(())
/// }
///
/// let (layer, io) = SimpleIoLayer::builder()
///     .identity(identity)
///     .handler(Events::new().on("ban", ban))
///     .build();
/// # let _ = (layer, io);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Extension<T>(pub T);

impl<S, T> FromIncoming<S> for Extension<T>
where
    S: Sync,
    T: Clone + Send + Sync + 'static,
{
    type Rejection = MissingExtension;

    fn from_incoming(
        msg: &Incoming,
        _: &S,
    ) -> impl Future<Output = Result<Self, MissingExtension>> + Send {
        ready(
            msg.extensions
                .get::<T>()
                .cloned()
                .map(Extension)
                .ok_or(MissingExtension {
                    type_name: type_name::<T>(),
                }),
        )
    }
}

/// [`Extension<T>`] found no `T` in the message's extensions.
///
/// ```
/// use simpleio::events::MissingExtension;
/// # let error: Option<MissingExtension> = None;
/// if let Some(e) = error {
///     eprintln!("{e}");
/// }
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "no extension of type `{type_name}` on this message: add it in the identity function \
     (`Identity::with_extension`) or in a layer outside simpleio"
)]
pub struct MissingExtension {
    type_name: &'static str,
}

impl MissingExtension {
    /// The missing type's name.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }
}
