//! Cross-origin use: a page served from one origin talks to simpleio on another, with a cookie
//! for identity. tower-http's `CorsLayer` wraps the simpleio layer.
//!
//! ```text
//! cargo run --example cors
//! ```
//!
//! Then open <http://127.0.0.1:3000/login?user=ann> and, in another browser (or a private
//! window), <http://127.0.0.1:3000/login?user=bob>. The page comes from port 3000; its client
//! polls and posts to the API on port 3001 (`PAGE_PORT` and `API_PORT` change them). Use
//! `127.0.0.1` as written: the API allows exactly that origin, and `localhost` is another one.
//!
//! What makes it work:
//!
//! * **Layer order.** `CorsLayer` is the outermost layer, so it answers the browser's preflight
//!   (`OPTIONS`) itself and adds its headers to every response of the simpleio route, the
//!   errors included (a page can read a `401` only if it carries them).
//! * **Credentials.** The API allows one origin (never `*`, which browsers refuse with
//!   credentials), `GET` and `POST`, the `content-type` header (the `POST`s are JSON, which is
//!   what makes browsers preflight them), and credentials; the client sends
//!   `credentials: "include"`.
//! * **The cookie.** The page's `/login` sets `user=NAME; SameSite=Lax; HttpOnly`. Cookies are
//!   per host, not per port, and two origins of one site (`app.example.com` and
//!   `api.example.com`, or two ports here) are *same-site*, so the browser sends a `Lax` cookie
//!   with the API's requests. A truly cross-site API needs `SameSite=None; Secure` (HTTPS), and
//!   some browsers block such third-party cookies: prefer a subdomain of the page's site.
//!
//! **Identity here is demo-only**: the cookie names the user and anyone can set it. A real
//! application verifies a session or a signed token in the identity function.

use std::future::IntoFuture;
use std::net::SocketAddr;

use axum::Router;
use axum::response::{Html, IntoResponse, Redirect};
use axum::routing::get;
use http::request::Parts;
use http::{HeaderValue, Method, header};
use serde::Deserialize;
use serde_json::json;
use simpleio::{Incoming, Rejection, Reply, SimpleIo, SimpleIoLayer, UserId};
use tower::{BoxError, service_fn};
use tower_http::cors::{AllowOrigin, CorsLayer};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let page_port: u16 = port("PAGE_PORT", 3000)?;
    let api_port: u16 = port("API_PORT", 3001)?;
    let page_origin = format!("http://127.0.0.1:{page_port}");
    let api_origin = format!("http://127.0.0.1:{api_port}");

    let (api, _io) = api(HeaderValue::try_from(page_origin.as_str())?);
    let api_listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], api_port)));
    let page_listener =
        tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], page_port)));
    let (api_listener, page_listener) = (api_listener.await?, page_listener.await?);
    tracing::info!("the page: {page_origin}/login?user=ann; the API: {api_origin}/simpleio");
    tokio::try_join!(
        axum::serve(api_listener, api).into_future(),
        axum::serve(page_listener, page(&api_origin)).into_future(),
    )?;
    Ok(())
}

fn port(name: &str, default: u16) -> Result<u16, BoxError> {
    match std::env::var(name) {
        Ok(v) => Ok(v
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a port"))?),
        Err(_) => Ok(default),
    }
}

/// The API: simpleio, with CORS for `page_origin` around it (outermost).
///
/// Events: `chat` `{"text"}` reaches every online user as `chat` `{from, text}` (acknowledged
/// once stored); `whoami` replies with the user the cookie named.
pub fn api(page_origin: HeaderValue) -> (Router, SimpleIo) {
    let (simpleio, io) = SimpleIoLayer::builder()
        .identity(cookie_identity)
        .handler(service_fn(handle))
        .build();
    let cors = CorsLayer::new()
        // A list, even of one: the header then names the origin only when it is the request's,
        // and other origins get none.
        .allow_origin(AllowOrigin::list([page_origin]))
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::CONTENT_TYPE]);
    let app = Router::new()
        .route(
            "/",
            get(|| async { "the simpleio API; the page is on the other port" }),
        )
        .layer(simpleio)
        // Added last, so outermost: preflights never reach simpleio, and every answer of the
        // route (errors too) carries the CORS headers.
        .layer(cors);
    (app, io)
}

/// The page's own server: `/login?user=NAME` sets the cookie, `/` is the chat page.
pub fn page(api_origin: &str) -> Router {
    let html = PAGE.replace("{API}", api_origin);
    Router::new()
        .route("/", get(move || async move { Html(html) }))
        .route("/login", get(login))
}

#[derive(Deserialize)]
struct Login {
    user: String,
}

async fn login(axum::extract::Query(login): axum::extract::Query<Login>) -> impl IntoResponse {
    let name: String = login
        .user
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(32)
        .collect();
    let cookie = format!("user={name}; Path=/; SameSite=Lax; HttpOnly");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/"))
}

/// Demo only: the `user` cookie names the user.
pub fn cookie_identity(parts: &Parts) -> std::future::Ready<Result<UserId, Rejection>> {
    let user = parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, v)| *k == "user" && !v.is_empty())
        .map(|(_, v)| UserId::from(v));
    std::future::ready(user.ok_or_else(|| Rejection::unauthorized("sign in: /login?user=NAME")))
}

#[derive(Deserialize)]
struct Chat {
    text: String,
}

async fn handle(msg: Incoming) -> Result<Reply, BoxError> {
    match msg.event.as_str() {
        "chat" => {
            let Chat { text } = msg.json()?;
            let line = json!({"from": msg.user.as_str(), "text": text});
            // Acknowledged once stored for everyone; confirmations are not awaited.
            drop(msg.io.everyone().emit("chat", &line).stored().await?);
            Ok(Reply::json(&json!({"ok": true}))?)
        }
        "whoami" => Ok(Reply::json(&msg.user.as_str())?),
        _ => Ok(Reply::none()),
    }
}

const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>simpleio across origins</title>
<p>This page is on one origin; its messages go to the API at <code>{API}</code>, with your
cookie. Sign in as someone else with <a href="/login?user=bob">/login?user=bob</a>.</p>
<form id="say"><input id="text" autocomplete="off" placeholder="say something"> <button>send</button></form>
<ul id="log"></ul>
<script src="{API}/simpleio/simpleio.js"></script>
<script>
  const log = (line) => {
    const li = document.createElement("li");
    li.textContent = line;
    document.getElementById("log").append(li);
  };
  // Cross-origin: name the API, and send the cookie along.
  const io = simpleio.connect("{API}/simpleio", { credentials: "include" });
  io.on("connect", () => io.emit("whoami").then((me) => log(`connected as ${me}`)));
  io.on("error", (e) => log(`error ${e.status} ${e.code}: ${e.message}`));
  io.on("chat", (m) => log(`${m.from}: ${m.text}`));
  document.getElementById("say").onsubmit = (event) => {
    event.preventDefault();
    const input = document.getElementById("text");
    io.emit("chat", { text: input.value }).catch((e) => log(`not sent: ${e.code}`));
    input.value = "";
  };
</script>
"#;
