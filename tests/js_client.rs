//! The JavaScript client (`client/`) against a real server: this file starts an axum app with
//! the layer on loopback and runs the client's Node tests, then the end-to-end chat in headless
//! Chromium, against it.
//!
//! The server side of the tests' contract (see `client/test/helpers.mjs`):
//! - identity: the `x-user` header, else the `user` query parameter, else the `user` cookie
//!   (test-only, like the chat example's: anyone can be anyone);
//! - handler events `echo`, `fail`, `count`, `slow`, `send`, `chat`, `ask`, `where`, `whoami`, `bytes`
//!   (`tests/support/client_app.rs`, `ask` waiting 2 s), with a 200 ms `pending_wait`;
//! - namespaces (spec §4a): `/chat`, whose handler is the same [`handle`] (so its `send` and
//!   `where` act in `/chat`); `/news`, without a handler (filled by `send` with `ns`); `/admin`,
//!   whose authorization refuses everyone with `403 forbidden`;
//! - `/` is `examples/chat.html`;
//! - a stand-in for a proxy or a `TimeoutLayer` shorter than the hold: a request whose query has
//!   `cut=<ms>&status=<code>` gets that status, with an empty body, if not answered within `ms`
//!   (see [`cut_after`]);
//! - CORS (`tower_http::cors::CorsLayer`) for one other origin, with credentials: a second
//!   server on its own port (`SIMPLEIO_PAGE`) serves a blank page at `/`, so a browser test can
//!   use the route from another origin with cookie identity;
//! - a control server on its own port: `POST /stop` stops the HTTP server and drops every open
//!   connection (held polls included), `POST /start` serves again on the same port with a new
//!   layer over the same storage, as a restarted node would.
//!
//! Under `CI=true` these tests always run: a missing Node or Chromium fails them. Elsewhere they
//! skip, loudly, when a tool is missing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod support;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{Next, from_fn};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use http::request::Parts;
use http::{HeaderValue, Method, StatusCode, header};
use serde::Deserialize;
use serde_json::Value;
use simpleio::{
    Incoming, MemoryStorage, Namespace, Rejection, Reply, SimpleIoLayer, Storage, UserId,
};
use support::client_app;
use support::server::serve_app;
use tokio::net::TcpListener;
use tower::{BoxError, service_fn};
use tower_http::cors::CorsLayer;

const CHROMIUM: &str = "/usr/bin/chromium";

fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("client")
}

/// Whether the tests must run (CI) or may skip when a tool is missing.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skips (outside CI) or fails (in CI) for a missing tool. Returns whether to go on.
fn require(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    assert!(!in_ci(), "{what} is required under CI=true");
    eprintln!("\n!!! SKIPPED: {what} is missing; the JavaScript client was NOT tested !!!\n");
    false
}

fn have_node() -> bool {
    Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether every devDependency of client/package.json is in client/node_modules: one added
/// since the last `npm ci` (TypeScript, terser) would otherwise fail the tests obscurely.
fn client_deps_installed() -> bool {
    let Ok(text) = std::fs::read_to_string(client_dir().join("package.json")) else {
        return false;
    };
    let Ok(package) = serde_json::from_str::<Value>(&text) else {
        return false;
    };
    let modules = client_dir().join("node_modules");
    package["devDependencies"]
        .as_object()
        .is_some_and(|deps| deps.keys().all(|name| modules.join(name).exists()))
}

/// `npm ci` in client/ once per test process, if a dependency is missing.
fn install_client_deps() {
    static ONCE: Mutex<bool> = Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    if *done || client_deps_installed() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(client_dir())
        .status()
        .expect("run npm ci");
    assert!(status.success(), "npm ci failed in client/");
    *done = true;
}

// --- the application under test -----------------------------------------------------------------

/// What survives a restart: the storage, and the handler's own state.
struct World {
    storage: Arc<dyn Storage>,
    /// `count` calls per (user, key): proves a retried POST reached the handler once.
    counts: client_app::Counts,
    /// The origin of the page server, the one other origin CORS lets in with credentials.
    page_origin: HeaderValue,
}

fn identity(parts: &Parts) -> std::future::Ready<Result<UserId, Rejection>> {
    let header = parts.headers.get("x-user").and_then(|v| v.to_str().ok());
    let query = || {
        serde_urlencoded::from_str::<Vec<(String, String)>>(parts.uri.query()?)
            .ok()?
            .into_iter()
            .find_map(|(k, v)| (k == "user").then_some(v))
    };
    // A cross-origin `fetch` sends cookies only with `credentials: "include"`.
    let cookie = || {
        let cookies = parts.headers.get(header::COOKIE)?.to_str().ok()?;
        cookies
            .split(';')
            .find_map(|c| c.trim().strip_prefix("user="))
            .map(str::to_owned)
    };
    let user = header
        .map(str::to_owned)
        .or_else(query)
        .or_else(cookie)
        .filter(|u| !u.is_empty());
    std::future::ready(
        user.map(UserId::from)
            .ok_or_else(|| Rejection::unauthorized("send an x-user header")),
    )
}

async fn handle(world: Arc<World>, msg: Incoming) -> Result<Reply, BoxError> {
    client_app::handle(&world.counts, Duration::from_secs(2), msg).await
}

#[derive(Deserialize)]
struct Cut {
    cut: Option<u64>,
    status: Option<u16>,
}

/// What a proxy with a shorter timeout than the layer's hold does to a held poll (a `504`), or
/// tower-http's `TimeoutLayer` (a `408`, empty body): the test asks for it in the route's query
/// (`?cut=1200&status=504`), which the JavaScript client keeps in every request.
async fn cut_after(request: Request, next: Next) -> Response {
    let cut = request
        .uri()
        .query()
        .and_then(|q| serde_urlencoded::from_str::<Cut>(q).ok());
    let Some(Cut {
        cut: Some(ms),
        status: Some(status),
    }) = cut
    else {
        return next.run(request).await;
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::GATEWAY_TIMEOUT);
    match tokio::time::timeout(Duration::from_millis(ms), next.run(request)).await {
        Ok(response) => response,
        Err(_) => status.into_response(),
    }
}

fn app(world: &Arc<World>) -> Router {
    let for_handler = world.clone();
    let for_chat = world.clone();
    let (layer, _io) = SimpleIoLayer::builder()
        .shared_storage(world.storage.clone())
        .identity(identity)
        // Short, so a retry racing a slow handler is told `pending` within a test's patience.
        .pending_wait(Duration::from_millis(200))
        .handler(service_fn(move |msg| handle(for_handler.clone(), msg)))
        .namespace(
            Namespace::new("/chat").handler(service_fn(move |msg| handle(for_chat.clone(), msg))),
        )
        .namespace(Namespace::new("/news"))
        .namespace(
            Namespace::new("/admin").authorize(|_: &Parts, _: &UserId| async {
                Err(Rejection::forbidden("admins only"))
            }),
        )
        .build();
    // Outermost, so it answers preflights (a JSON POST needs one) before the layer sees them.
    let cors = CorsLayer::new()
        .allow_origin(world.page_origin.clone())
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::CONTENT_TYPE]);
    Router::new()
        .route(
            "/",
            get(|| async { Html(include_str!("../examples/chat.html")) }),
        )
        .layer(layer)
        .layer(from_fn(cut_after))
        .layer(cors)
}

/// The page server: another origin (another port), serving a blank page the browser test fills.
async fn start_page_server() -> String {
    let page = Router::new().route(
        "/",
        get(|| async { Html("<!doctype html><title>another origin</title>") }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, page).await });
    format!("http://{addr}")
}

// --- a server that can be stopped and started again on the same port ----------------------------

/// Serves `app` until the task is aborted, which drops every open connection too.
fn serve(listener: TcpListener, app: Router) -> tokio::task::JoinHandle<()> {
    tokio::spawn(serve_app(listener, app, std::future::pending()))
}

struct Node {
    world: Arc<World>,
    addr: SocketAddr,
    running: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Node {
    async fn stop(&self) {
        let task = self.running.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    async fn start(&self) {
        self.stop().await;
        // Re-binding the port just freed: SO_REUSEADDR (tokio sets it) lets it through despite
        // connections in TIME_WAIT; retry briefly all the same.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(e) if tries < 50 => {
                    tries += 1;
                    eprintln!("re-binding {}: {e}; retrying", self.addr);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("could not re-bind {}: {e}", self.addr),
            }
        };
        *self.running.lock().unwrap() = Some(serve(listener, app(&self.world)));
    }
}

/// Starts the app on 127.0.0.1 (port 0), its control server and the page server; returns
/// (route URL, control URL, page origin, node).
async fn start_server() -> (String, String, String, Arc<Node>) {
    let page = start_page_server().await;
    let world = Arc::new(World {
        storage: Arc::new(MemoryStorage::new()),
        counts: Mutex::default(),
        page_origin: HeaderValue::from_str(&page).unwrap(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let node = Arc::new(Node {
        running: Mutex::new(Some(serve(listener, app(&world)))),
        world,
        addr,
    });
    let control = Router::new()
        .route(
            "/stop",
            post(|State(node): State<Arc<Node>>| async move { node.stop().await }),
        )
        .route(
            "/start",
            post(|State(node): State<Arc<Node>>| async move { node.start().await }),
        )
        .with_state(node.clone());
    let control_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control_addr = control_listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(control_listener, control).await });
    (
        format!("http://{addr}/simpleio"),
        format!("http://{control_addr}"),
        page,
        node,
    )
}

/// Runs `node --test` on `files` (relative to client/) against a fresh server; fails the Rust
/// test if any JavaScript test fails, with the runner's report in the output.
async fn node_test(files: &[&str]) {
    install_client_deps();
    let (url, control, page, node) = start_server().await;
    let files: Vec<String> = files.iter().map(|f| f.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            // A hung test fails alone instead of stalling the run.
            .args(["--test", "--test-timeout=60000"])
            .args(&files)
            .current_dir(client_dir())
            .env("SIMPLEIO_URL", &url)
            .env("SIMPLEIO_CONTROL", &control)
            .env("SIMPLEIO_PAGE", &page)
            .output()
            .expect("run node --test")
    })
    .await
    .unwrap();
    node.stop().await;
    let report = String::from_utf8_lossy(&output.stdout);
    println!("{report}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "JavaScript tests failed: {}",
        report
            .lines()
            .filter(|l| l.starts_with("not ok") || l.starts_with("# fail"))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

/// Runs `npm run --silent <script>` in client/ and fails with its output if it fails.
fn npm_run(script: &str) {
    install_client_deps();
    let out = Command::new("npm")
        .args(["run", "--silent", script])
        .current_dir(client_dir())
        .output()
        .unwrap_or_else(|e| panic!("run npm run {script}: {e}"));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(out.status.success(), "npm run {script} failed:\n{report}");
}

/// The bundles the layer serves are the committed `dist/`: they must be what the sources build
/// to, and stay within their size budget (2,432 B min+gzip each). The check prints the sizes.
#[test]
fn the_committed_bundle_is_a_fresh_build_within_its_size_budget() {
    if !require("node", have_node()) {
        return;
    }
    npm_run("check");
}

/// `tsc --strict --noEmit` over `client/test/types/typing.ts`: typed event maps accept what
/// they should, and each `@ts-expect-error` line (an unknown event, wrong data, a wrong reply
/// type…) must be an error. TypeScript is a devDependency, so `npm ci` installs it.
#[test]
fn the_typings_pass_tsc_strict_and_reject_each_negative_case() {
    if !require("node", have_node()) {
        return;
    }
    npm_run("typecheck");
}

/// The npm package as `npm pack --dry-run` would publish it (`client/test/package.test.mjs`).
#[test]
fn the_npm_package_is_publishable_with_its_bundles_and_types() {
    if !require("node", have_node()) {
        return;
    }
    install_client_deps();
    let out = Command::new("node")
        .args(["--test", "test/package.test.mjs"])
        .current_dir(client_dir())
        .output()
        .expect("run node --test");
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the package tests failed:\n{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_js_client_passes_its_tests_against_the_layer() {
    if !require("node", have_node()) {
        return;
    }
    node_test(&[
        "test/protocol.test.mjs",
        "test/api.test.mjs",
        "test/server.test.mjs",
        "test/features.test.mjs",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_chat_through_a_server_restart_in_chromium() {
    if !require("node", have_node()) || !require(CHROMIUM, Path::new(CHROMIUM).exists()) {
        return;
    }
    node_test(&["test/browser/chat.test.mjs"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_imports_the_served_es_module_and_connects_in_chromium() {
    if !require("node", have_node()) || !require(CHROMIUM, Path::new(CHROMIUM).exists()) {
        return;
    }
    node_test(&["test/browser/module.test.mjs"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_tab_polls_with_its_own_client_id_in_chromium() {
    if !require("node", have_node()) || !require(CHROMIUM, Path::new(CHROMIUM).exists()) {
        return;
    }
    node_test(&["test/browser/tabs.test.mjs"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_origin_uses_cookie_identity_through_cors_in_chromium() {
    if !require("node", have_node()) || !require(CHROMIUM, Path::new(CHROMIUM).exists()) {
        return;
    }
    node_test(&["test/browser/cross-origin.test.mjs"]).await;
}
