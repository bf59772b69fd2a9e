//! The admin page (feature `admin`): what an operator opens first. Served by the layer at the
//! path given to [`Builder::admin`](crate::Builder::admin), only to requests the application's
//! authorization lets in; without a call to `admin`, there is no page at all.
//!
//! * `GET {path}` is the page (`page.html`, no external resources): live clients and users,
//!   rooms and their members, messages pending confirmation per user with their age, recent
//!   expirations, and charts of rates and latencies, updated every second.
//! * `GET {path}/snapshot` is what the page reads: JSON, in two parts. `node` is this node's
//!   own (its tallies since it started, the messages its senders wait for, what they saw
//!   expire); `storage` is read from the storage, so every node over one storage shows the
//!   same.

mod snapshot;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;

use crate::identity::Identify;
use crate::shared::Shared;

/// The admin page's route and who may see it.
pub(crate) struct Admin {
    pub(crate) path: String,
    pub(crate) authorize: Box<dyn Identify>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The page, with its script and styles inline (a page of the operator's own origin only).
const PAGE: &str = include_str!("page.html");

type RouteFuture = std::pin::Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;

/// Whether `path` is the admin route's: `Some(true)` for its snapshot, `Some(false)` for the
/// page.
pub(crate) fn matches(shared: &Shared, path: &str) -> Option<bool> {
    let admin = shared.admin.as_ref()?;
    match path.strip_prefix(admin.path.as_str())? {
        "" => Some(false),
        "/snapshot" => Some(true),
        _ => None,
    }
}

/// Answers a request [`matches`] found for the admin route: authorization first, always.
pub(crate) fn serve<B>(shared: Arc<Shared>, req: Request<B>, snapshot: bool) -> RouteFuture {
    let (parts, _body) = req.into_parts();
    Box::pin(async move {
        let Some(admin) = &shared.admin else {
            return crate::protocol::ProtocolError::MethodNotAllowed.into_response();
        };
        let operator = match admin.authorize.identify(&parts).await {
            Ok(identity) => identity.into_parts().0,
            Err(rejection) => {
                tracing::debug!(status = %rejection.status(), "refused a request for the admin page");
                return rejection.into_response();
            }
        };
        if parts.method != Method::GET {
            return crate::protocol::ProtocolError::MethodNotAllowed.into_response();
        }
        tracing::debug!(?operator, snapshot, "admin page");
        if snapshot {
            snapshot::respond(&shared).await
        } else {
            page()
        }
    })
}

fn page() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Its own inline script and styles only, and it may not be framed by another page.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    *response.status_mut() = StatusCode::OK;
    response
}
