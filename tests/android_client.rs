//! The Java (Android) client (`clients/android/`) against a real server: this file starts an
//! axum app with the layer on loopback, compiles the client and its tests with `javac` under the
//! cargo target dir, and runs them with the tests' own runner (`TestRunner`) in `java`.
//!
//! The server side of the tests' contract (see `clients/android/src/test/java/.../Support.java`):
//! - identity: the `x-user` header (test-only: anyone can be anyone);
//! - handler events `echo`, `fail`, `count`, `slow`, `send`, `where`, `bytes`, `ask` (see
//!   `tests/support/client_app.rs`, `ask` waiting 5 s), with a 200 ms `pending_wait`;
//! - namespaces: `/chat`, whose handler is the same [`handle`]; `/news`, without a handler;
//!   `/admin`, whose authorization refuses everyone with `403 forbidden`;
//! - a control server on its own port: `POST /stop` stops the HTTP server and drops every open
//!   connection (held polls included), `POST /start` serves again on the same port with a new
//!   layer over the same storage, as a restarted node would.
//!
//! The Java tests make their own faults (offline, lost answers) with a TCP proxy of theirs in
//! front of this server. Under `CI=true` these tests always run: a missing JDK or Android's
//! org.json fails them. Elsewhere they skip, loudly.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod support;

#[path = "support/java.rs"]
mod java;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use simpleio::{
    Incoming, MemoryStorage, Namespace, Rejection, Reply, SimpleIoLayer, Storage, UserId,
};
use support::client_app;
use support::server::{header_identity, serve_app};
use tokio::net::TcpListener;
use tower::{BoxError, service_fn};

// --- the application under test -----------------------------------------------------------------

/// What survives a restart: the storage, and the handler's own state.
struct World {
    storage: Arc<dyn Storage>,
    /// `count` calls per (user, key): proves a retried POST reached the handler once.
    counts: client_app::Counts,
}

async fn handle(world: Arc<World>, msg: Incoming) -> Result<Reply, BoxError> {
    client_app::handle(&world.counts, Duration::from_secs(5), msg).await
}

fn app(world: &Arc<World>) -> Router {
    let for_handler = world.clone();
    let for_chat = world.clone();
    let (layer, _io) = SimpleIoLayer::builder()
        .shared_storage(world.storage.clone())
        .identity(header_identity)
        // Short, so a retry racing a slow handler is told `pending` within a test's patience.
        .pending_wait(Duration::from_millis(200))
        .handler(service_fn(move |msg| handle(for_handler.clone(), msg)))
        .namespace(
            Namespace::new("/chat").handler(service_fn(move |msg| handle(for_chat.clone(), msg))),
        )
        .namespace(Namespace::new("/news"))
        .namespace(Namespace::new("/admin").authorize(
            |_: &http::request::Parts, _: &UserId| async {
                Err(Rejection::forbidden("admins only"))
            },
        ))
        .build();
    Router::new().layer(layer)
}

// --- a server that can be stopped and started again on the same port ----------------------------

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
        let task = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    async fn start(&self) {
        self.stop().await;
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
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(serve(listener, app(&self.world)));
    }
}

/// Starts the app on 127.0.0.1 (port 0) and its control server; returns (route URL, control
/// URL, node).
async fn start_server() -> (String, String, Arc<Node>) {
    let world = Arc::new(World {
        storage: Arc::new(MemoryStorage::new()),
        counts: Mutex::default(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
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
    let control_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let control_addr = control_listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(control_listener, control).await });
    (
        format!("http://{addr}/simpleio"),
        format!("http://{control_addr}"),
        node,
    )
}

/// Runs the Java test classes `classes` against a fresh server; fails if any Java test fails,
/// with the runner's report in the output.
async fn java_tests(classes: &[&str]) {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("android-client");
    let classpath = java::classpath(&out);
    let (url, control, node) = start_server().await;
    let classes: Vec<String> = classes.iter().map(|c| c.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("java")
            .args(["-cp", &classpath, "io.simpleio.client.TestRunner"])
            .args(&classes)
            .env("SIMPLEIO_URL", &url)
            .env("SIMPLEIO_CONTROL", &control)
            .output()
            .expect("run java")
    })
    .await
    .expect("the java run");
    node.stop().await;
    let report = String::from_utf8_lossy(&output.stdout);
    println!("{report}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "Java tests failed: {}",
        report
            .lines()
            .filter(|l| l.starts_with("not ok") || l.starts_with("# tests"))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_android_client_passes_its_tests_against_the_layer() {
    if java::available() {
        java_tests(&["ClientTests"]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_android_client_writes_replies_and_bytes_as_the_wire_format_says() {
    if java::available() {
        java_tests(&["WireTests"]).await;
    }
}

/// Server -> client acks with data (spec §4c): the server's `emit_with_ack` resolves with the
/// reply of the client's listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_android_client_answers_the_servers_questions_with_its_listeners_replies() {
    if java::available() {
        java_tests(&["AckTests"]).await;
    }
}
