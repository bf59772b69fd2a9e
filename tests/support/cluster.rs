//! Several chat processes (`examples/chat.rs`) on one Redis, and a balancer in front of them, for
//! tests of the no-sticky-sessions promise.
//!
//! ```ignore
//! #[path = "support/cluster.rs"]
//! mod cluster;
//! let node = cluster::Node::start("a", &redis_url, &[("SIMPLEIO_HOLD_MS", "2000")]);
//! let balancer = cluster::Balancer::start(vec![node.addr()]).await;
//! ```
//!
//! * [`Node`] runs the chat example's binary (built by `cargo test` next to the test binary)
//!   under a small `sh` wrapper whose standard input is a pipe from the test process: when the
//!   pipe closes — the `Node` was dropped, or the test process ended in any way — the wrapper
//!   stops the node. [`Node::kill`] sends SIGKILL, as a crash would.
//! * [`Balancer`] is an HTTP reverse proxy that balances **every request** on its own, as
//!   HAProxy's `balance roundrobin` does. Requests carrying an [`BALANCE_KEY`] header rotate per
//!   key: each request of a key goes to the backend after the one its previous request went to,
//!   so no two consecutive requests of one client ever reach the same node — the opposite of
//!   sticky sessions. It records which node answered each request (from the node's
//!   `x-simpleio-node` header) so tests can prove it. A backend that refuses connections is
//!   skipped for the next one (HAProxy's `option redispatch`); a request that broke on the way
//!   gets `502`, as from any proxy.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The header naming the node that answered (set by the chat example).
pub const NODE_HEADER: &str = "x-simpleio-node";

/// The header a test client sets so the balancer rotates its requests over the nodes.
pub const BALANCE_KEY: &str = "x-balance-key";

/// How long a node may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The wrapper: runs the node in the background, waits for a line (or the end) on its standard
/// input, then stops it (`kill` → SIGKILL, anything else → SIGTERM) and reaps it.
const WRAPPER: &str = r#""$@" </dev/null >>"$SIMPLEIO_NODE_LOG" 2>&1 &
r=$!
read -r how
if [ "$how" = kill ]; then kill -9 "$r"; else kill "$r"; fi
wait "$r"
exit 0"#;

/// The chat example's binary, next to the test binary: `target/<profile>/examples/chat`.
///
/// Built (once per test process) with the features of the suite's own build, since a
/// `cargo run --example chat` in between would have left a binary without Redis there.
pub fn chat_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_chat_binary).clone()
}

fn build_chat_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/cluster-HASH -> target/<profile>/examples/chat
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps");
    let target_dir = profile_dir.parent().expect("target/<profile> has a parent");
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--quiet", "--all-features", "--example", "chat"])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo to build the chat example");
    assert!(status.success(), "building the chat example failed");
    let chat = profile_dir.join("examples").join("chat");
    assert!(
        chat.is_file(),
        "the chat example's binary is missing at {}",
        chat.display()
    );
    chat
}

/// One chat process on a free port of 127.0.0.1, stopped when dropped.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    addr: SocketAddr,
    log: PathBuf,
    wrapper: Option<Child>,
}

impl Node {
    /// Starts the chat example on `redis_url` (none if empty) with the extra environment `env`,
    /// named `name` (its `x-simpleio-node` header), and waits until it listens.
    pub fn start(name: &str, redis_url: &str, env: &[(&str, &str)]) -> Node {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let log = std::env::temp_dir().join(format!(
            "simpleio-node-{}-{}-{name}.log",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&log);
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(WRAPPER)
            .arg("node-wrapper")
            .arg(chat_binary())
            .env("SIMPLEIO_NODE_LOG", &log)
            .env("PORT", "0")
            .env("SIMPLEIO_NODE", name)
            .env("RUST_LOG", "warn,chat=info")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // No Redis URL: the node keeps its data where `SIMPLEIO_DATA` says (a durable file, or
        // memory).
        if redis_url.is_empty() {
            command.env_remove("REDIS_URL");
        } else {
            command.env("REDIS_URL", redis_url);
        }
        for (k, v) in env {
            command.env(k, v);
        }
        let wrapper = command.spawn().expect("run sh to start a chat node");
        let mut node = Node {
            name: name.to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            wrapper: Some(wrapper),
        };
        node.addr = node.wait_listening();
        node
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its simpleio route.
    pub fn url(&self) -> String {
        format!("http://{}/simpleio", self.addr)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills it with SIGKILL, as a crash would, and waits until it is gone.
    pub fn kill(&mut self) {
        self.halt("kill");
    }

    /// Stops it with SIGTERM and waits until it is gone.
    pub fn stop(&mut self) {
        self.halt("term");
    }

    fn halt(&mut self, how: &str) {
        let Some(mut wrapper) = self.wrapper.take() else {
            return;
        };
        if let Some(mut stdin) = wrapper.stdin.take() {
            let _ = writeln!(stdin, "{how}");
        }
        let _ = wrapper.wait();
    }

    /// Reads the port the node logged ("listening on http://127.0.0.1:PORT/").
    fn wait_listening(&mut self) -> SocketAddr {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = self.log();
            if let Some(rest) = log.split("listening on http://").nth(1)
                && let Some(addr) = rest.split('/').next()
                && let Ok(addr) = addr.parse()
            {
                return addr;
            }
            let exited = self
                .wrapper
                .as_mut()
                .is_none_or(|w| w.try_wait().ok().flatten().is_some());
            if exited || log.contains("Error:") || Instant::now() > deadline {
                self.halt("kill");
                panic!(
                    "chat node {} did not start listening within {START_TIMEOUT:?}; its log:\n{log}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The node's side of a failure, next to the test's.
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!(
                "--- last lines of node {} ({}):\n{}",
                self.name,
                self.log.display(),
                tail.join("\n")
            );
        }
        self.halt("kill");
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// One request as the balancer routed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// The backend it was sent to.
    pub backend: usize,
    /// The node that answered (its `x-simpleio-node` header), or `None` if none did.
    pub node: Option<String>,
}

struct State {
    backends: Vec<SocketAddr>,
    http: HttpClient<HttpConnector, Full<Bytes>>,
    /// For requests without a key.
    next: AtomicUsize,
    /// Per key: the backend of its last request, and every hop in order.
    keys: Mutex<HashMap<String, (usize, Vec<Hop>)>>,
    served: Vec<AtomicUsize>,
}

/// A per-request round-robin HTTP balancer on a free port of 127.0.0.1; stops when dropped.
pub struct Balancer {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Balancer {
    /// Starts balancing over `backends`.
    pub async fn start(backends: Vec<SocketAddr>) -> Balancer {
        assert!(!backends.is_empty(), "a balancer needs backends");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        connector.set_nodelay(true);
        let state = Arc::new(State {
            served: backends.iter().map(|_| AtomicUsize::new(0)).collect(),
            backends,
            http: HttpClient::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            next: AtomicUsize::new(0),
            keys: Mutex::new(HashMap::new()),
        });
        let task = tokio::spawn(accept(listener, state.clone()));
        Balancer { addr, state, task }
    }

    /// The simpleio route through the balancer.
    pub fn url(&self) -> String {
        format!("http://{}/simpleio", self.addr)
    }

    /// The balancer's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every hop of the requests with balance key `key`, in the order they came.
    pub fn hops(&self, key: &str) -> Vec<Hop> {
        let keys = self.state.keys.lock().expect("lock");
        keys.get(key)
            .map(|(_, hops)| hops.clone())
            .unwrap_or_default()
    }

    /// How many requests each backend answered.
    pub fn served(&self) -> Vec<usize> {
        self.state
            .served
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }

    /// Checks that no two consecutive answered requests of `key` came from the same node, and
    /// returns how many answered requests there were.
    pub fn assert_alternates(&self, key: &str) -> usize {
        let answered: Vec<String> = self.hops(key).into_iter().filter_map(|h| h.node).collect();
        for pair in answered.windows(2) {
            assert_ne!(
                pair[0], pair[1],
                "two consecutive requests of {key} were answered by the same node: {answered:?}"
            );
        }
        answered.len()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| forward(state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Sends `req` to the next backend (the next one again if it refuses the connection).
async fn forward(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let key = req
        .headers()
        .get(BALANCE_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (parts, body) = req.into_parts();
    // Bodies here are small; holding one lets a refused request go to another backend.
    let body = body.collect().await?.to_bytes();
    let n = state.backends.len();
    // Chosen (and recorded) on arrival, so requests of one key in flight together (a waiting
    // poll and a send) still go to different nodes, in the order they came.
    let (first, slot) = match &key {
        Some(key) => {
            let mut keys = state.keys.lock().expect("lock");
            let entry = keys.entry(key.clone()).or_insert((n - 1, Vec::new()));
            let backend = (entry.0 + 1) % n;
            entry.0 = backend;
            entry.1.push(Hop {
                backend,
                node: None,
            });
            (backend, Some(entry.1.len() - 1))
        }
        None => (state.next.fetch_add(1, Ordering::Relaxed) % n, None),
    };
    let mut outcome = None;
    for attempt in 0..n {
        let backend = (first + attempt) % n;
        let mut upstream = Request::builder()
            .method(parts.method.clone())
            .uri(format!(
                "http://{}{}",
                state.backends[backend],
                parts.uri.path_and_query().map_or("/", |p| p.as_str())
            ))
            .body(Full::new(body.clone()))
            .expect("a valid request");
        *upstream.headers_mut() = parts.headers.clone();
        match state.http.request(upstream).await {
            Ok(res) => {
                outcome = Some((backend, Ok(res)));
                break;
            }
            // Never reached the node: safe to send elsewhere.
            Err(e) if e.is_connect() => outcome = Some((backend, Err(e.to_string()))),
            Err(e) => {
                outcome = Some((backend, Err(e.to_string())));
                break;
            }
        }
    }
    let (backend, result) = outcome.expect("at least one backend");
    let response = match result {
        Ok(res) => {
            let (parts, body) = res.into_parts();
            match body.collect().await {
                Ok(body) => Response::from_parts(parts, Full::new(body.to_bytes())),
                Err(e) => bad_gateway(&e.to_string()),
            }
        }
        Err(e) => bad_gateway(&e),
    };
    let node = response
        .headers()
        .get(NODE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if node.is_some() {
        state.served[backend].fetch_add(1, Ordering::Relaxed);
    }
    if let (Some(key), Some(slot)) = (key, slot) {
        let mut keys = state.keys.lock().expect("lock");
        if let Some((_, hops)) = keys.get_mut(&key) {
            hops[slot] = Hop { backend, node };
        }
    }
    Ok(response)
}

fn bad_gateway(why: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"error": {"code": "bad_gateway", "message": why}});
    Response::builder()
        .status(StatusCode::BAD_GATEWAY)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}
