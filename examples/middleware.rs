//! Authorization with Tower: per event, with a layer on the handler service; per namespace,
//! with `Namespace::authorize`. Plus a timeout and a concurrency limit, composed with
//! `ServiceBuilder` like any Tower middleware.
//!
//! ```text
//! cargo run --example middleware
//! ```
//!
//! Then, from another terminal (the `x-user` header is this demo's identity):
//!
//! ```text
//! # ann may chat, but not ban: the `ban` never reaches the handler.
//! curl -s -H 'x-user: ann' -H 'content-type: application/json' http://127.0.0.1:3000/simpleio \
//!   -d '{"client":"c1","messages":[{"id":"c1-1","event":"ban","data":"bob"}]}'
//! {"acks":[{"id":"c1-1","error":{"code":"forbidden","message":"only a moderator may send \"ban\""}}]}
//!
//! # mia is a moderator.
//! curl -s -H 'x-user: mia' -H 'content-type: application/json' http://127.0.0.1:3000/simpleio \
//!   -d '{"client":"c1","messages":[{"id":"c1-1","event":"ban","data":"bob"}]}'
//! {"acks":[{"id":"c1-1","reply":{"banned":"bob","by":"mia"}}]}
//!
//! # The /admin namespace is for admins (root): anyone else's messages there are refused...
//! curl -s -H 'x-user: mia' -H 'content-type: application/json' http://127.0.0.1:3000/simpleio \
//!   -d '{"client":"c1","messages":[{"id":"c1-2","ns":"/admin","event":"stats"}]}'
//! {"acks":[{"id":"c1-2","error":{"code":"forbidden","message":"the /admin namespace is for admins"}}]}
//!
//! # ...and so is a poll that asks for it: 403, for the whole request.
//! curl -s -H 'x-user: mia' 'http://127.0.0.1:3000/simpleio?client=c1&ns=/,/admin'
//! {"error":{"code":"forbidden","message":"the /admin namespace is for admins"}}
//! ```
//!
//! Per event or per namespace? A layer sees every message and can decide on its event, its data
//! and its user, and answers with an error acknowledgement for that one message. A namespace's
//! `authorize` sees the HTTP request (headers, cookies) and the user: it refuses each message
//! sent to the namespace, and the whole receiving `GET` that asks for it, so a user it refuses
//! never reads the namespace's messages.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use http::request::Parts;
use serde_json::json;
use simpleio::{
    Builder, HandlerError, Incoming, Namespace, Rejection, Reply, SimpleIoLayer, UserId,
};
use tower::limit::ConcurrencyLimit;
use tower::timeout::Timeout;
use tower::{BoxError, Layer, Service, ServiceBuilder, service_fn};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let (layer, _io) = builder().identity(demo_identity).build();
    let app = Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    tracing::info!("listening on http://127.0.0.1:3000/simpleio");
    axum::serve(listener, app).await?;
    Ok(())
}

/// The roles of each user. Demo data: a real application reads its database, or the claims of
/// the token its identity function verified.
pub fn roles(user: &UserId) -> &'static [&'static str] {
    match user.as_str() {
        "mia" => &["moderator"],
        "root" => &["moderator", "admin"],
        _ => &[],
    }
}

/// The layer: only users with `role` may send `event`; the others get a `forbidden` error
/// acknowledgement and the message never reaches the service inside.
#[derive(Debug, Clone, Copy)]
pub struct RequireRoleLayer {
    event: &'static str,
    role: &'static str,
}

impl RequireRoleLayer {
    /// Only users with `role` may send `event`.
    pub fn new(event: &'static str, role: &'static str) -> Self {
        RequireRoleLayer { event, role }
    }
}

impl<S> Layer<S> for RequireRoleLayer {
    type Service = RequireRole<S>;

    fn layer(&self, inner: S) -> RequireRole<S> {
        RequireRole { inner, rule: *self }
    }
}

/// The service [`RequireRoleLayer`] makes.
#[derive(Debug, Clone)]
pub struct RequireRole<S> {
    inner: S,
    rule: RequireRoleLayer,
}

impl<S> Service<Incoming> for RequireRole<S>
where
    S: Service<Incoming>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, msg: Incoming) -> Self::Future {
        let RequireRoleLayer { event, role } = self.rule;
        if msg.event == event && !roles(&msg.user).contains(&role) {
            // A `HandlerError` shows its code and message to the client, in the ack.
            let refusal =
                HandlerError::new("forbidden", format!("only a {role} may send {event:?}"));
            return Box::pin(async move { Err(refusal.into()) });
        }
        let answer = self.inner.call(msg);
        Box::pin(async move { answer.await.map_err(Into::into) })
    }
}

/// A handler service with its layers. The first added is the outermost: a message waits for a
/// slot (at most 64 at once on this node), then has `timeout` (an error ack past it), then
/// meets the role check.
pub fn protect<S>(handler: S, timeout: Duration) -> ConcurrencyLimit<Timeout<RequireRole<S>>> {
    ServiceBuilder::new()
        .concurrency_limit(64)
        .timeout(timeout)
        .layer(RequireRoleLayer::new("ban", "moderator"))
        .service(handler)
}

/// The simpleio configuration of this example, without its identity function: `/` with the
/// protected handler, and `/admin` for admins only.
pub fn builder() -> Builder {
    SimpleIoLayer::builder()
        .handler(protect(service_fn(handle), Duration::from_secs(10)))
        .namespace(
            Namespace::new("/admin")
                .authorize(admins_only)
                .handler(service_fn(admin)),
        )
}

/// The per-namespace check: runs on every request that names `/admin`.
pub fn admins_only(_: &Parts, user: &UserId) -> std::future::Ready<Result<(), Rejection>> {
    std::future::ready(if roles(user).contains(&"admin") {
        Ok(())
    } else {
        Err(Rejection::forbidden("the /admin namespace is for admins"))
    })
}

/// The application's handler for `/`, which never checks roles itself.
pub async fn handle(msg: Incoming) -> Result<Reply, BoxError> {
    match msg.event.as_str() {
        "ban" => {
            let target: String = msg.json()?;
            // ... the application bans `target` here ...
            Ok(Reply::json(
                &json!({"banned": target, "by": msg.user.as_str()}),
            )?)
        }
        "chat" => {
            let text: String = msg.json()?;
            let line = json!({"from": msg.user.as_str(), "text": text});
            // Stored for everyone else before the ack; confirmations are not awaited.
            drop(msg.broadcast().emit("chat", &line).stored().await?);
            Ok(Reply::none())
        }
        other => Err(HandlerError::new("unknown_event", format!("no event {other:?}")).into()),
    }
}

/// The handler for `/admin`: only admins' messages ever get here.
pub async fn admin(msg: Incoming) -> Result<Reply, BoxError> {
    let online = msg.io.online_users().await?.len();
    Ok(Reply::json(&json!({"event": msg.event, "online": online}))?)
}

/// Demo only: the `x-user` header names the user.
fn demo_identity(parts: &Parts) -> std::future::Ready<Result<UserId, Rejection>> {
    let user = parts
        .headers
        .get("x-user")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(UserId::from);
    std::future::ready(user.ok_or_else(|| Rejection::unauthorized("send an x-user header")))
}
