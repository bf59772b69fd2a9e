//! [`SimpleIoLayer`] and [`SimpleIoService`]: answer the simpleio route, pass everything else to
//! the inner service untouched.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower::{BoxError, Service};
use tower_layer::Layer;
use tracing::Instrument;

use crate::builder::Builder;
use crate::io::SimpleIo;
use crate::protocol::ProtocolError;
use crate::shared::Shared;
use crate::{inbound, poll};

/// The Tower layer: wraps any HTTP service and answers simpleio's route in front of it.
///
/// Made by [`SimpleIoLayer::builder`], together with the [`SimpleIo`] handle for sending.
/// Cloning is cheap: all clones share one configuration and storage.
///
/// ```
/// use axum::{Router, routing::get};
/// use simpleio::SimpleIoLayer;
///
/// let (layer, io) = SimpleIoLayer::builder()
///     .identity(|_: &http::request::Parts| async { Ok(simpleio::UserId::from("demo")) })
///     .build();
/// let app: Router = Router::new().route("/", get(|| async { "hello" })).layer(layer);
/// # let _ = (app, io);
/// ```
#[derive(Clone)]
pub struct SimpleIoLayer {
    pub(crate) shared: Arc<Shared>,
}

impl SimpleIoLayer {
    /// A [`Builder`] with every setting at its default.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A handle for sending through this layer (the same one `build` returned).
    pub fn io(&self) -> SimpleIo {
        SimpleIo::new(self.shared.clone())
    }
}

impl fmt::Debug for SimpleIoLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimpleIoLayer")
            .field("path", &self.shared.config.path)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for SimpleIoLayer {
    type Service = SimpleIoService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SimpleIoService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service made by [`SimpleIoLayer`]. Requests to the configured path are answered here;
/// all others go to `S` unchanged, and `S`'s error type is kept.
#[derive(Clone)]
pub struct SimpleIoService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for SimpleIoService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimpleIoService")
            .field("inner", &self.inner)
            .field("path", &self.shared.config.path)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SimpleIoService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<SimpleIoBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        #[cfg(feature = "admin")]
        if let Some(snapshot) = crate::admin::matches(&self.shared, req.uri().path()) {
            let future = crate::admin::serve(self.shared.clone(), req, snapshot);
            return ResponseFuture {
                kind: Kind::Route { future },
            };
        }
        let path = req.uri().path();
        if path != self.shared.config.path {
            // The browser client, public like any static file: no identity needed.
            // Under `/`, the script is `/simpleio.js`, not `//simpleio.js`.
            let route = self.shared.config.path.trim_end_matches('/');
            let bundle = path.strip_prefix(route).and_then(crate::script::bundle);
            let readable = req.method() == Method::GET || req.method() == Method::HEAD;
            if let Some(bundle) = bundle.filter(|_| readable) {
                let response = crate::script::serve(bundle, req.headers());
                return ResponseFuture {
                    kind: Kind::Route {
                        future: Box::pin(std::future::ready(response)),
                    },
                };
            }
            return ResponseFuture {
                kind: Kind::Inner {
                    future: self.inner.call(req),
                },
            };
        }
        let shared = self.shared.clone();
        let span = crate::observe::span::request(req.method());
        // The request's head goes in a box of its own, freed once read: a future keeps room
        // for what it was given for as long as it lives, and a poll lives for its hold.
        let (parts, body) = req.into_parts();
        ResponseFuture {
            kind: Kind::Route {
                future: Box::pin(route(shared, Box::new(parts), body).instrument(span)),
            },
        }
    }
}

/// Answers one request on the route: method, identity, then receive or send.
async fn route<B>(
    shared: Arc<Shared>,
    parts: Box<http::request::Parts>,
    body: B,
) -> Response<Full<Bytes>>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    crate::presence::ensure_started(&shared);
    if parts.method != Method::GET && parts.method != Method::POST {
        return ProtocolError::MethodNotAllowed.into_response();
    }
    let identity = match shared.identity.identify(&parts).await {
        Ok(identity) => identity,
        Err(rejection) => {
            tracing::debug!(status = %rejection.status(), "the identity function rejected a request");
            crate::observe::span::answered(rejection.status(), Some("rejected"));
            return rejection.into_response();
        }
    };
    let (user, extensions) = identity.into_parts();
    crate::observe::span::user(&user);
    // What the identity function learnt is the request's from here on: namespace authorization
    // reads it in the parts, handlers in each message's extensions.
    let mut parts = parts;
    parts.extensions.extend(extensions);
    let post = parts.method == Method::POST;
    let result = if !post {
        // A poll may wait for long: keep nothing of the request it no longer needs.
        drop(body);
        poll::respond(&shared, user, parts).await
    } else {
        let io = SimpleIo::new(shared.clone());
        // Boxed: a POST's state is larger than a poll's, and would otherwise size every
        // waiting poll's future too.
        Box::pin(inbound::respond(&shared, io, user, &parts, body)).await
    };
    shared.observe.answered(post, result.as_ref().err());
    let response = result.unwrap_or_else(|e| {
        crate::observe::span::answered(e.status(), Some(e.code()));
        match &e {
            ProtocolError::Storage(cause) => {
                tracing::warn!(%cause, "storage failed; answering 503")
            }
            other => tracing::debug!(error = ?other.to_string(), "refused a bad request"),
        }
        e.into_response()
    });
    crate::observe::span::answered(response.status(), None);
    response
}

pin_project! {
    /// The future of [`SimpleIoService`]: the inner service's, or the route's own.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Inner { #[pin] future: F },
        Route { future: Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>> },
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<SimpleIoBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => future
                .poll(cx)
                .map(|r| r.map(|res| res.map(SimpleIoBody::inner))),
            KindProj::Route { future } => future
                .as_mut()
                .poll(cx)
                .map(|res| Ok(res.map(SimpleIoBody::route))),
        }
    }
}

pin_project! {
    /// The response body of [`SimpleIoService`]: the inner service's body untouched, or the
    /// route's own JSON.
    pub struct SimpleIoBody<B> {
        #[pin]
        kind: BodyKind<B>,
    }
}

pin_project! {
    #[project = BodyProj]
    enum BodyKind<B> {
        Inner { #[pin] body: B },
        Route { #[pin] body: Full<Bytes> },
    }
}

impl<B> SimpleIoBody<B> {
    fn inner(body: B) -> Self {
        SimpleIoBody {
            kind: BodyKind::Inner { body },
        }
    }

    fn route(body: Full<Bytes>) -> Self {
        SimpleIoBody {
            kind: BodyKind::Route { body },
        }
    }
}

impl<B> fmt::Debug for SimpleIoBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            BodyKind::Inner { .. } => f.write_str("SimpleIoBody::Inner"),
            BodyKind::Route { .. } => f.write_str("SimpleIoBody::Route"),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for SimpleIoBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            BodyProj::Inner { body } => body.poll_frame(cx),
            BodyProj::Route { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|r| r.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Inner { body } => body.is_end_stream(),
            BodyKind::Route { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Inner { body } => body.size_hint(),
            BodyKind::Route { body } => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waiting poll's own state is this future, boxed, plus its mailbox: it must stay small,
    /// since a server holds one per connected client.
    #[test]
    fn a_waiting_polls_state_is_small() {
        let (layer, _io) = crate::SimpleIoLayer::builder()
            .identity(|_: &http::request::Parts| async { Ok(crate::UserId::from("ann")) })
            .build();
        let service = tower_layer::Layer::layer(
            &layer,
            tower::service_fn(|_: Request<Full<Bytes>>| async {
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
            }),
        );
        let (parts, body) = Request::get("/simpleio?client=tab1")
            .body(Full::new(Bytes::new()))
            .expect("a valid request")
            .into_parts();
        let size = std::mem::size_of_val(&route(service.shared.clone(), Box::new(parts), body));
        eprintln!("the route's future is {size} bytes");
        assert!(size <= 1024, "the route's future is {size} bytes");
    }

    #[tokio::test]
    async fn under_the_root_path_the_script_is_at_slash_simpleio_js() {
        let (layer, _io) = crate::SimpleIoLayer::builder().path("/").build();
        let mut service = tower_layer::Layer::layer(
            &layer,
            tower::service_fn(|_: Request<Full<Bytes>>| async {
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
            }),
        );
        let request = Request::get("/simpleio.js")
            .body(Full::new(Bytes::new()))
            .expect("a valid request");
        let response = service.call(request).await.expect("infallible");
        assert_eq!(response.status(), http::StatusCode::OK);
        let kind = response.headers().get(http::header::CONTENT_TYPE);
        assert!(
            kind.and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("javascript")),
            "{kind:?}"
        );
    }

    #[test]
    fn the_service_and_its_future_are_send() {
        fn assert_send<T: Send>() {}
        type Inner = tower::util::BoxCloneSyncService<
            Request<Full<Bytes>>,
            Response<Full<Bytes>>,
            std::convert::Infallible,
        >;
        assert_send::<SimpleIoService<Inner>>();
        assert_send::<ResponseFuture<<Inner as Service<Request<Full<Bytes>>>>::Future>>();
    }
}
