//! Login sessions with tower-sessions: the identity function reads the user from the session
//! that a login route wrote.
//!
//! ```text
//! cargo run --example sessions
//! ```
//!
//! Then, from a terminal (`-c`/`-b` keep the session cookie):
//!
//! ```text
//! curl -c jar -H 'content-type: application/json' -d '{"name":"ann"}' 127.0.0.1:3000/login
//! curl -b jar '127.0.0.1:3000/simpleio?client=cli1'        # ann's handshake
//! curl -b jar -H 'content-type: application/json' \
//!      -d '{"client":"cli1","messages":[{"id":"m1","event":"hello"}]}' 127.0.0.1:3000/simpleio
//! curl '127.0.0.1:3000/simpleio?client=cli1'               # no session: 401
//! ```
//!
//! **Layer order.** The session layer must wrap the simpleio layer (in axum the later
//! `.layer(..)` is the outer one): it loads the session before the request reaches simpleio, and
//! saves it after. Inside, the identity function would find no session in the request's
//! extensions; it then answers `500 no_session` saying so, rather than treating every user as
//! signed out.
//!
//! The session is read once per request, so its store's latency adds to every poll: keep it in
//! memory or Redis, and let a held poll (25 s) renew it (tower-sessions saves only when the
//! session changed, so a poll costs a read).

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::routing::post;
use http::StatusCode;
use http::request::Parts;
use serde::Deserialize;
use serde_json::json;
use simpleio::{Incoming, Rejection, Reply, SimpleIo, SimpleIoLayer, UserId};
use tower::{BoxError, service_fn};
use tower_sessions::{MemoryStore, Session, SessionManagerLayer};

/// The session key holding the signed-in user's name.
const USER_KEY: &str = "user";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let (app, _io) = app();
    let addr = SocketAddr::from(([127, 0, 0, 1], 3000));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("listening on http://{addr}: POST /login, then /simpleio");
    axum::serve(listener, app).await?;
    Ok(())
}

/// The app: `/login`, `/logout` and simpleio, with the session layer around all of them.
pub fn app() -> (Router, SimpleIo) {
    let (layer, io) = SimpleIoLayer::builder()
        .identity(identity)
        .handler(service_fn(|msg: Incoming| async move {
            Ok::<_, BoxError>(Reply::json(&json!({"hello": msg.user.as_str()}))?)
        }))
        .build();
    let sessions = SessionManagerLayer::new(MemoryStore::default())
        // Plain HTTP on loopback here; behind TLS keep the default (`Secure`).
        .with_secure(false);
    let app = Router::new()
        .route("/login", post(login))
        .route("/logout", post(logout))
        .layer(layer)
        // Outermost: the session is loaded before simpleio runs the identity function.
        .layer(sessions);
    (app, io)
}

/// The user is whoever the session says; no session layer around simpleio is a setup error.
pub fn identity(
    parts: &Parts,
) -> impl Future<Output = Result<UserId, Rejection>> + Send + 'static + use<> {
    let session = parts.extensions.get::<Session>().cloned();
    async move {
        let Some(session) = session else {
            return Err(Rejection::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no_session",
                "no session in the request: the session layer must wrap the simpleio layer",
            ));
        };
        match session.get::<String>(USER_KEY).await {
            Ok(Some(user)) => Ok(UserId::from(user)),
            Ok(None) => Err(Rejection::unauthorized("sign in first")),
            Err(e) => {
                tracing::error!(cause = %e, "the session store failed");
                Err(Rejection::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "session_unavailable",
                    "the session could not be read; try again",
                ))
            }
        }
    }
}

#[derive(Deserialize)]
struct Login {
    name: String,
}

/// Demo only: anyone may sign in as anyone. A real app checks a password or a token here.
async fn login(session: Session, Json(login): Json<Login>) -> StatusCode {
    if login.name.is_empty() || login.name.len() > 64 {
        return StatusCode::BAD_REQUEST;
    }
    // A new session id on sign-in, so an id planted before it is worth nothing after.
    if session.cycle_id().await.is_err() || session.insert(USER_KEY, login.name).await.is_err() {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    StatusCode::NO_CONTENT
}

async fn logout(session: Session) -> StatusCode {
    match session.flush().await {
        Ok(()) => StatusCode::NO_CONTENT,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}
