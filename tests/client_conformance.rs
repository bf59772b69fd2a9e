//! The client conformance suite (`docs/client-conformance.md`): every client, through its
//! adapter, against a real server on loopback, in the cases of the spec (`docs/spec.md`, v1.1)
//! that clients get wrong: lost responses, an epoch change, `pending` acks, `413` splits, `401`,
//! `429` with `Retry-After`, a take-over.
//!
//! The server is the simpleio layer behind a **fault layer** that each scenario scripts: it
//! refuses requests before the layer sees them (a `429` with `Retry-After`, as a busy node
//! would), lets the layer answer and then drops the connection instead of the answer (a lost
//! response), hands a request to the layer in the background and drops its connection at once
//! (a response lost while the handler still runs), hides a key of the handshake's `limits` (a
//! server that does not give it), and logs every exchange, which the scenarios check timings
//! against.
//!
//! The adapters: the JavaScript client is a real `node` process running
//! `client/test/conformance-driver.mjs`; the Java (Android) client a `java` process running
//! `clients/android/`'s `ConformanceDriver`, compiled under the cargo target dir; the Rust
//! client runs `examples/conformance_client`'s driver in-process, over pipes, on a runtime and
//! thread of its own. All speak the same JSON lines.
//!
//! One test per client and scenario (`js::…`, `rust::…`, `java::…`). A scenario a client does
//! not pass yet is `#[ignore]`d for that client alone, saying why: `-- --ignored` runs those. Under
//! `CI=true` the JavaScript cases fail without Node and the Java ones without a JDK and
//! Android's org.json; elsewhere they skip, loudly.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use simpleio::{
    Builder, Incoming, MemoryStorage, Rejection, Reply, SimpleIo, SimpleIoBody, SimpleIoLayer,
    UserId,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tower::util::BoxCloneService;
use tower::{BoxError, Layer, ServiceExt, service_fn};

#[cfg(feature = "client")]
#[path = "../examples/conformance_client/driver.rs"]
mod rust_driver;

#[path = "support/java.rs"]
mod java_build;

/// The user every adapter signs in as (`x-user`).
const USER: &str = "ann";
/// The layer's route (its default).
const ROUTE: &str = "/simpleio";
/// The backoff the adapters are given: short, so that retries are quick and the difference from
/// a `Retry-After: 1`, or from the longest backoff of a slow retry, is plain.
const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(400);
/// A generous bound for "this happens": far above what it takes, so a failure means it did not.
const SOON: Duration = Duration::from_secs(10);
/// How long to watch for what must not come (a duplicate, a late extra request).
const QUIET: Duration = Duration::from_millis(300);
/// Timers may fire a little early, and the log's clock is read a little apart from the client's.
const SLACK: Duration = Duration::from_millis(25);

// --- the server: the layer behind the fault layer --------------------------------------------------

/// The simpleio layer over a service that answers 404 to everything else.
type Route = BoxCloneService<Request<Full<Bytes>>, Response<SimpleIoBody<Full<Bytes>>>, Infallible>;

/// What the fault layer does to a request.
#[derive(Debug, Clone, Copy)]
enum Action {
    /// Answer in front of the layer, which never sees the request: this status, the spec's
    /// JSON error body with this code, and `Retry-After` if given.
    Refuse {
        status: u16,
        code: &'static str,
        retry_after: Option<u64>,
    },
    /// Let the layer answer, then drop the connection instead of sending the answer. With
    /// `only_with_messages`, only an answer carrying stored messages counts (and is dropped).
    LoseAnswer { only_with_messages: bool },
    /// Hand the request to the layer in the background and drop the connection at once: the
    /// client sees a lost response while the server still handles the request.
    Detach,
}

/// A fault for the next `times` requests of `method`.
#[derive(Debug, Clone, Copy)]
struct Fault {
    method: &'static str,
    times: usize,
    action: Action,
}

/// One request and its outcome, as the fault layer saw it.
#[derive(Debug, Clone)]
struct Exchange {
    method: Method,
    /// The client id: the `client` query parameter of a GET, the `client` field of a POST.
    client: Option<String>,
    arrived: Instant,
    /// When the answer left, or the connection was dropped instead.
    answered: Instant,
    /// `None` if the client got no answer.
    status: Option<u16>,
    /// The messages a POST carried.
    sent: usize,
    /// The answer's JSON body (`null` if none).
    answer: Value,
    /// What the fault layer did, if anything.
    fault: Option<&'static str>,
}

impl Exchange {
    fn is(&self, method: &Method, status: u16) -> bool {
        self.method == *method && self.status == Some(status)
    }

    /// The POST answer's acks that are `pending`, with their `retry_after_ms`.
    fn pending_acks(&self) -> Vec<u64> {
        self.answer["acks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["pending"] == true)
            .map(|a| a["retry_after_ms"].as_u64().unwrap_or(250))
            .collect()
    }
}

#[derive(Default)]
struct Faults {
    plan: Mutex<Vec<Fault>>,
    /// Keys removed from the handshake's `limits`.
    hidden_limits: Mutex<Vec<&'static str>>,
    /// Every request as it arrived: (method, client id, when).
    arrivals: Mutex<Vec<(Method, Option<String>, Instant)>>,
    /// Every exchange, in the order they ended.
    log: Mutex<Vec<Exchange>>,
}

impl Faults {
    fn add(&self, fault: Fault) {
        lock(&self.plan).push(fault);
    }

    /// Takes one use of the first fault for `method` whose action `fits`.
    fn take(&self, method: &Method, fits: impl Fn(&Action) -> bool) -> Option<Action> {
        let mut plan = lock(&self.plan);
        let i = plan
            .iter()
            .position(|f| f.method == method.as_str() && f.times > 0 && fits(&f.action))?;
        plan[i].times -= 1;
        Some(plan[i].action)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A real server on loopback: the fault layer, the simpleio layer, a handler that records.
struct Server {
    addr: SocketAddr,
    io: SimpleIo,
    storage: MemoryStorage,
    faults: Arc<Faults>,
    /// Every message the handler saw, as `(event, data)`, in order.
    seen: Arc<Mutex<Vec<(String, Value)>>>,
    /// While true, the identity function refuses every request with `401 unauthorized`.
    signed_out: Arc<AtomicBool>,
    /// Holds every `hold` message in the handler until it is set.
    gate: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Starts a server whose layer is `configure`d from the suite's defaults: identity from
    /// `x-user`, a 3 s hold, a 300 ms pending wait, a 1 s handler lease.
    async fn start(configure: impl FnOnce(Builder) -> Builder) -> Server {
        let storage = MemoryStorage::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let signed_out = Arc::new(AtomicBool::new(false));
        let (gate, gate_open) = watch::channel(false);
        let identity = {
            let signed_out = signed_out.clone();
            move |parts: &Parts| {
                let user = parts
                    .headers
                    .get("x-user")
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| !v.is_empty())
                    .map(UserId::from);
                let refused = signed_out.load(Ordering::SeqCst);
                std::future::ready(match user {
                    Some(user) if !refused => Ok(user),
                    _ => Err(Rejection::unauthorized("signed out")),
                })
            }
        };
        let handler = {
            let seen = seen.clone();
            service_fn(move |msg: Incoming| {
                let seen = seen.clone();
                let mut gate = gate_open.clone();
                async move {
                    let data: Value = msg.json()?;
                    lock(&seen).push((msg.event.clone(), data.clone()));
                    if msg.event == "hold" {
                        let _ = gate.wait_for(|open| *open).await;
                    }
                    Ok::<_, BoxError>(Reply::json(&json!({ "echo": data }))?)
                }
            })
        };
        let builder = SimpleIoLayer::builder()
            .storage(storage.clone())
            .hold_time(Duration::from_secs(3))
            .pending_wait(Duration::from_millis(300))
            .handler_lease(Duration::from_secs(1))
            .handler(handler);
        let (layer, io) = configure(builder).identity(identity).build();
        let route: Route =
            BoxCloneService::new(layer.layer(service_fn(|_: Request<Full<Bytes>>| async {
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = StatusCode::NOT_FOUND;
                Ok::<_, Infallible>(response)
            })));
        let faults = Arc::new(Faults::default());
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(serve(listener, route, faults.clone()));
        Server {
            addr,
            io,
            storage,
            faults,
            seen,
            signed_out,
            gate,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}{ROUTE}", self.addr)
    }

    /// Stores `data` as a `msg` message to the user.
    async fn send(&self, data: Value) {
        drop(self.send_confirmed(data).await);
    }

    /// Stores `data` as a `msg` message to the user; the returned task resolves once a client
    /// confirmed it (or the message failed).
    async fn send_confirmed(
        &self,
        data: Value,
    ) -> JoinHandle<Result<simpleio::Delivered, simpleio::SendError>> {
        let confirmation = self
            .io
            .to_user(USER)
            .emit("msg", &data)
            .stored()
            .await
            .expect("the message is stored");
        tokio::spawn(confirmation)
    }

    /// The data of every message `event` the handler saw, in order.
    fn seen(&self, event: &str) -> Vec<Value> {
        lock(&self.seen)
            .iter()
            .filter(|(e, _)| e == event)
            .map(|(_, d)| d.clone())
            .collect()
    }

    /// Every exchange so far, in the order the requests arrived.
    fn log(&self) -> Vec<Exchange> {
        let mut log = lock(&self.faults.log).clone();
        log.sort_by_key(|e| e.arrived);
        log
    }

    /// How many requests of `method` with client id `client` arrived since `since`.
    fn arrivals(&self, method: &Method, client: &str, since: Instant) -> usize {
        lock(&self.faults.arrivals)
            .iter()
            .filter(|(m, c, at)| m == method && c.as_deref() == Some(client) && *at >= since)
            .count()
    }

    /// Waits until `condition` holds.
    async fn until(&self, what: &str, condition: impl Fn(&Server) -> bool) {
        let deadline = Instant::now() + SOON;
        while !condition(self) {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Serves until aborted; connections are tasks of a JoinSet this loop owns, so aborting drops
/// them too.
async fn serve(listener: TcpListener, route: Route, faults: Arc<Faults>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (route, faults) = (route.clone(), faults.clone());
                let service = hyper::service::service_fn(move |req| {
                    through_faults(route.clone(), faults.clone(), req)
                });
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The fault layer. An `Err` makes hyper drop the connection without an answer.
async fn through_faults(
    route: Route,
    faults: Arc<Faults>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, BoxError> {
    let arrived = Instant::now();
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let method = parts.method.clone();
    let sent_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let client = parts
        .uri
        .query()
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .and_then(|q| {
            q.into_iter()
                .find_map(|(k, v)| (k == "client").then_some(v))
        })
        .or_else(|| sent_json["client"].as_str().map(str::to_owned));
    lock(&faults.arrivals).push((method.clone(), client.clone(), arrived));
    let on_route = parts.uri.path() == ROUTE;
    let mut exchange = Exchange {
        method: method.clone(),
        client,
        arrived,
        answered: arrived,
        status: None,
        sent: sent_json["messages"].as_array().map_or(0, Vec::len),
        answer: Value::Null,
        fault: None,
    };
    let request = Request::from_parts(parts, Full::new(body));
    let log = |mut exchange: Exchange| {
        exchange.answered = Instant::now();
        lock(&faults.log).push(exchange);
    };

    let before = on_route
        .then(|| faults.take(&method, |a| !matches!(a, Action::LoseAnswer { .. })))
        .flatten();
    match before {
        Some(Action::Refuse {
            status,
            code,
            retry_after,
        }) => {
            let answer = json!({"error": {"code": code, "message": "refused by the fault layer"}});
            let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
            *response.status_mut() = StatusCode::from_u16(status)?;
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, "application/json".parse()?);
            if let Some(seconds) = retry_after {
                headers.insert(header::RETRY_AFTER, seconds.into());
            }
            exchange.status = Some(status);
            exchange.answer = answer;
            exchange.fault = Some("refused");
            log(exchange);
            return Ok(response);
        }
        Some(Action::Detach) => {
            tokio::spawn(route.oneshot(request));
            exchange.fault = Some("detached");
            log(exchange);
            return Err("the fault layer dropped the connection".into());
        }
        _ => {}
    }

    let Ok(response) = route.oneshot(request).await;
    let (mut parts, body) = response.into_parts();
    let mut bytes = body.collect().await?.to_bytes();
    let mut answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if on_route {
        let with_messages = answer["messages"].as_array().is_some_and(|m| !m.is_empty());
        let lost = faults.take(&method, |a| match a {
            Action::LoseAnswer { only_with_messages } => with_messages || !only_with_messages,
            _ => false,
        });
        if lost.is_some() {
            exchange.answer = answer;
            exchange.fault = Some("lost");
            log(exchange);
            return Err("the fault layer lost the answer".into());
        }
        let hidden = lock(&faults.hidden_limits).clone();
        if let Some(limits) = answer.get_mut("limits").and_then(Value::as_object_mut) {
            let before = limits.len();
            limits.retain(|key, _| !hidden.contains(&key.as_str()));
            if limits.len() != before {
                bytes = Bytes::from(answer.to_string());
                parts.headers.remove(header::CONTENT_LENGTH);
                exchange.fault = Some("hid limits");
            }
        }
    }
    exchange.status = Some(parts.status.as_u16());
    exchange.answer = answer;
    log(exchange);
    Ok(Response::from_parts(parts, Full::new(bytes)))
}

/// For each exchange of `method` that `is_cause` picks, the gap from its answer to the arrival
/// of the same client's next request of that method (if one came and ended).
fn gaps_after<'a>(
    log: &'a [Exchange],
    method: &Method,
    is_cause: impl Fn(&Exchange) -> bool,
) -> Vec<(&'a Exchange, Duration)> {
    log.iter()
        .filter(|e| e.method == *method && is_cause(e))
        .filter_map(|cause| {
            log.iter()
                .find(|e| {
                    e.method == *method && e.client == cause.client && e.arrived >= cause.answered
                })
                .map(|next| (cause, next.arrived - cause.answered))
        })
        .collect()
}

/// The gaps alone.
fn gaps(pairs: Vec<(&Exchange, Duration)>) -> Vec<Duration> {
    pairs.into_iter().map(|(_, gap)| gap).collect()
}

// --- the adapters ------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// `client/test/conformance-driver.mjs` under Node.
    Js,
    /// `examples/conformance_client`'s driver, in-process.
    #[cfg(feature = "client")]
    Rust,
    /// `clients/android/`'s `ConformanceDriver` under `java`.
    Java,
}

/// A running adapter: its commands' input, and the events it wrote.
struct Adapter {
    name: &'static str,
    input: Box<dyn AsyncWrite + Unpin + Send>,
    events: mpsc::UnboundedReceiver<Value>,
    /// Every event received so far, in order.
    history: Vec<Value>,
    /// The Node or Java process, killed when dropped.
    _process: Option<tokio::process::Child>,
}

/// The environment of the driver protocol.
fn adapter_vars(url: &str) -> HashMap<String, String> {
    [
        ("SIMPLEIO_URL", url.to_owned()),
        ("SIMPLEIO_USER", USER.to_owned()),
        ("SIMPLEIO_EVENTS", "msg".to_owned()),
        (
            "SIMPLEIO_BACKOFF_BASE_MS",
            BACKOFF_BASE.as_millis().to_string(),
        ),
        (
            "SIMPLEIO_BACKOFF_MAX_MS",
            BACKOFF_MAX.as_millis().to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Forwards the adapter's event lines to a channel (and to the test's output, for failures).
fn read_events(
    name: &'static str,
    output: impl AsyncRead + Unpin + Send + 'static,
) -> mpsc::UnboundedReceiver<Value> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(output).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("{name} > {line}");
            match serde_json::from_str::<Value>(&line) {
                Ok(event) => {
                    let _ = tx.send(event);
                }
                Err(e) => eprintln!("{name}: not a JSON line ({e}): {line}"),
            }
        }
    });
    rx
}

impl Adapter {
    async fn start(kind: Kind, url: &str) -> Adapter {
        let vars = adapter_vars(url);
        match kind {
            Kind::Js => {
                let script = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("client/test/conformance-driver.mjs");
                let mut child = tokio::process::Command::new("node")
                    .arg(script)
                    .envs(&vars)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .expect("start node");
                let stderr = child.stderr.take().expect("stderr");
                tokio::spawn(async move {
                    let mut lines = BufReader::new(stderr).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        eprintln!("js ! {line}");
                    }
                });
                Adapter {
                    name: "js",
                    input: Box::new(child.stdin.take().expect("stdin")),
                    events: read_events("js", child.stdout.take().expect("stdout")),
                    history: Vec::new(),
                    _process: Some(child),
                }
            }
            Kind::Java => {
                let classes = Path::new(env!("CARGO_TARGET_TMPDIR")).join("conformance-java");
                let mut child = tokio::process::Command::new("java")
                    .args(["-cp", &java_build::classpath(&classes)])
                    .arg("io.simpleio.client.ConformanceDriver")
                    .envs(&vars)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .expect("start java");
                let stderr = child.stderr.take().expect("stderr");
                tokio::spawn(async move {
                    let mut lines = BufReader::new(stderr).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        eprintln!("java ! {line}");
                    }
                });
                Adapter {
                    name: "java",
                    input: Box::new(child.stdin.take().expect("stdin")),
                    events: read_events("java", child.stdout.take().expect("stdout")),
                    history: Vec::new(),
                    _process: Some(child),
                }
            }
            #[cfg(feature = "client")]
            Kind::Rust => {
                let settings = rust_driver::Settings::from_vars(|name| vars.get(name).cloned())
                    .expect("the settings");
                let (input, commands) = tokio::io::duplex(1 << 16);
                let (output, events) = tokio::io::duplex(1 << 16);
                // A thread and runtime of its own, as the example's process has.
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a runtime");
                    let outcome = runtime.block_on(rust_driver::drive(
                        settings,
                        BufReader::new(commands),
                        output,
                    ));
                    if let Err(e) = outcome {
                        eprintln!("rust ! {e}");
                    }
                });
                Adapter {
                    name: "rust",
                    input: Box::new(input),
                    events: read_events("rust", events),
                    history: Vec::new(),
                    _process: None,
                }
            }
        }
    }

    /// Writes `commands` in one write, so the adapter reads them together.
    async fn send(&mut self, commands: &[Value]) {
        let mut text = String::new();
        for command in commands {
            text.push_str(&command.to_string());
            text.push('\n');
        }
        self.input
            .write_all(text.as_bytes())
            .await
            .expect("the adapter reads commands");
        self.input.flush().await.expect("flush");
    }

    /// The next event that satisfies `want`, skipping (and keeping) the others.
    async fn next(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("{}: timed out waiting for {what}", self.name))
                .unwrap_or_else(|| panic!("{}: the adapter ended before {what}", self.name));
            self.history.push(event.clone());
            if want(&event) {
                return event;
            }
        }
    }

    /// Keeps what arrives for `how_long`.
    async fn collect_for(&mut self, how_long: Duration) {
        let deadline = tokio::time::Instant::now() + how_long;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            self.history.push(event);
        }
    }

    async fn connected(&mut self) {
        self.next("connected", |e| e["type"] == "connected").await;
    }

    /// The client id the adapter reported, if it did.
    fn reported_id(&self) -> Option<String> {
        self.history
            .iter()
            .find(|e| e["type"] == "client_id")
            .and_then(|e| e["id"].as_str())
            .map(str::to_owned)
    }

    /// The data of every `msg` message received so far, in order.
    fn messages(&self) -> Vec<Value> {
        self.history
            .iter()
            .filter(|e| e["type"] == "message" && e["event"] == "msg")
            .map(|e| e["data"].clone())
            .collect()
    }

    /// Waits until `n` `msg` messages have arrived in all, then watches a while for extra ones.
    async fn messages_after(&mut self, n: usize) -> Vec<Value> {
        while self.messages().len() < n {
            let what = format!("message {} of {n}", self.messages().len() + 1);
            self.next(&what, |e| e["type"] == "message").await;
        }
        self.collect_for(QUIET).await;
        self.messages()
    }

    /// Waits for the outcome (`ack` or `ack_error`) of each emit tagged in `tags`.
    async fn outcomes(&mut self, tags: &[&str]) -> HashMap<String, Value> {
        let mut outcomes = HashMap::new();
        for event in &self.history {
            if let Some(tag) = event["tag"].as_str().filter(|t| tags.contains(t)) {
                outcomes.insert(tag.to_owned(), event.clone());
            }
        }
        while outcomes.len() < tags.len() {
            let missing: Vec<_> = tags
                .iter()
                .filter(|t| !outcomes.contains_key(**t))
                .collect();
            let event = self
                .next(&format!("the outcome of the emits {missing:?}"), |e| {
                    e["tag"].as_str().is_some_and(|t| tags.contains(&t))
                })
                .await;
            outcomes.insert(event["tag"].as_str().unwrap_or_default().to_owned(), event);
        }
        outcomes
    }

    /// Waits for the emit `tag`'s outcome, which must be an ack; returns its reply.
    async fn reply(&mut self, tag: &str) -> Value {
        let outcome = self.outcomes(&[tag]).await.remove(tag).unwrap_or_default();
        assert_eq!(
            outcome["type"], "ack",
            "{}: the emit {tag} failed: {outcome}",
            self.name
        );
        outcome["reply"].clone()
    }
}

fn emit(tag: &str, event: &str, data: Value) -> Value {
    json!({"cmd": "emit", "tag": tag, "event": event, "data": data})
}

/// A server and one adapter on it.
struct Case {
    server: Server,
    client: Adapter,
}

impl Case {
    async fn start(kind: Kind, configure: impl FnOnce(Builder) -> Builder) -> Case {
        Case::start_with(kind, configure, |_| {}).await
    }

    /// As [`start`](Self::start), with `prepare` run on the server before the adapter starts.
    async fn start_with(
        kind: Kind,
        configure: impl FnOnce(Builder) -> Builder,
        prepare: impl FnOnce(&Server),
    ) -> Case {
        let server = Server::start(configure).await;
        prepare(&server);
        let client = Adapter::start(kind, &server.url()).await;
        Case { server, client }
    }

    /// The client is connected and its poll is held by the server.
    async fn settled(&mut self) {
        self.client.connected().await;
        self.server
            .until("the client's poll is held", |s| s.io.waiting_polls() == 1)
            .await;
    }
}

// --- the scenarios -----------------------------------------------------------------------------------

/// §3: "A response you never got is simply asked for again with the same cursor … nothing is
/// lost"; step 3 drops the duplicates. Two answers carrying messages are lost: every message
/// still arrives once, in order, and each is confirmed to its sender.
async fn lost_get_response(kind: Kind) {
    let mut case = Case::start(kind, |b| b).await;
    case.settled().await;
    case.server.faults.add(Fault {
        method: "GET",
        times: 2,
        action: Action::LoseAnswer {
            only_with_messages: true,
        },
    });
    let mut confirmations = Vec::new();
    for n in 0..3 {
        confirmations.push(case.server.send_confirmed(json!(n)).await);
    }
    case.client
        .next("a message", |e| e["type"] == "message")
        .await;
    for n in 3..5 {
        confirmations.push(case.server.send_confirmed(json!(n)).await);
    }
    let got = case.client.messages_after(5).await;
    assert_eq!(
        got,
        (0..5).map(|n| json!(n)).collect::<Vec<_>>(),
        "each message once, in order"
    );
    let lost = case
        .server
        .log()
        .iter()
        .filter(|e| e.fault == Some("lost"))
        .count();
    assert_eq!(lost, 2, "two answers with messages were lost");
    for confirmation in confirmations {
        let delivered = tokio::time::timeout(SOON, confirmation).await;
        assert!(
            matches!(delivered, Ok(Ok(Ok(_)))),
            "each message is confirmed to its sender: {delivered:?}"
        );
    }
}

/// §4: "If a POST fails without a response … send the same messages again with the same ids";
/// the server hands back the first outcome. The answer to a handled POST is lost: the emit
/// resolves with the handler's reply, and the handler ran once.
async fn lost_post_response(kind: Kind) {
    let mut case = Case::start(kind, |b| b).await;
    case.client.connected().await;
    case.server.faults.add(Fault {
        method: "POST",
        times: 1,
        action: Action::LoseAnswer {
            only_with_messages: false,
        },
    });
    case.client.send(&[emit("a", "once", json!("hello"))]).await;
    assert_eq!(case.client.reply("a").await, json!({"echo": "hello"}));
    assert_eq!(
        case.server.seen("once"),
        [json!("hello")],
        "the handler ran once"
    );
    let posts: Vec<_> = case
        .server
        .log()
        .into_iter()
        .filter(|e| e.method == Method::POST)
        .collect();
    assert_eq!(
        posts.first().and_then(|e| e.fault),
        Some("lost"),
        "the first answer was lost"
    );
    assert!(posts.len() >= 2, "the POST was sent again");
}

/// §3 step 2, §3a: the storage loses its data (a new epoch) while the client polls. The client
/// takes the new epoch and cursor and goes on: what was sent after the reset arrives, once.
async fn epoch_change(kind: Kind) {
    let mut case = Case::start(kind, |b| b).await;
    case.settled().await;
    case.server.send(json!(0)).await;
    case.client.messages_after(1).await;
    case.server
        .until("the client's poll is held again", |s| {
            s.io.waiting_polls() == 1
        })
        .await;

    case.server.storage.reset();
    case.server.send(json!(1)).await;
    case.client.messages_after(2).await;
    case.server
        .until("the client polls in the new epoch", |s| {
            s.io.waiting_polls() == 1
        })
        .await;
    case.server.send(json!(2)).await;
    let got = case.client.messages_after(3).await;
    assert_eq!(
        got,
        [json!(0), json!(1), json!(2)],
        "each message once, across the reset"
    );

    // Sending goes on too (§4: a POST's new epoch changes nothing on the client's side).
    case.client
        .send(&[emit("a", "after", json!("reset"))])
        .await;
    assert_eq!(case.client.reply("a").await, json!({"echo": "reset"}));
}

/// §4 "When an ack is pending" (a), §7: the answer to a POST is lost while the handler still
/// runs; the resend is `pending` with `retry_after_ms`. The client sends it again no sooner than
/// that, with the same id, and the emit resolves with the reply once the handler finishes:
/// the handler ran once.
async fn pending(kind: Kind) {
    let mut case = Case::start(kind, |b| b).await;
    case.client.connected().await;
    case.server.faults.add(Fault {
        method: "POST",
        times: 1,
        action: Action::Detach,
    });
    case.client.send(&[emit("a", "hold", json!("slow"))]).await;
    case.server
        .until("a resend was answered pending", |s| {
            s.log().iter().any(|e| !e.pending_acks().is_empty())
        })
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    case.server.gate.send_replace(true);

    assert_eq!(case.client.reply("a").await, json!({"echo": "slow"}));
    assert_eq!(
        case.server.seen("hold"),
        [json!("slow")],
        "the handler ran once"
    );
    let log = case.server.log();
    let resends = gaps_after(&log, &Method::POST, |e| !e.pending_acks().is_empty());
    assert!(!resends.is_empty(), "a pending message was sent again");
    for (exchange, gap) in resends {
        let asked = Duration::from_millis(exchange.pending_acks().into_iter().max().unwrap_or(250));
        assert!(
            gap + SLACK >= asked,
            "a pending message is sent again after retry_after_ms ({asked:?}), not after {gap:?}"
        );
    }
}

/// The server of the `413` scenarios: at most 2 messages per POST.
fn two_per_post(builder: Builder) -> Builder {
    builder.max_messages_per_request(2)
}

/// ... and a handshake that does not say so (as a server that does not give `max_messages`):
/// a client that sizes its POSTs by the limits meets the `413` all the same.
fn hide_max_messages(server: &Server) {
    lock(&server.faults.hidden_limits).push("max_messages");
}

/// Emits `seq` messages `range` together and waits for them all to be acknowledged.
async fn burst(client: &mut Adapter, range: std::ops::Range<u64>) {
    let tags: Vec<String> = range.clone().map(|n| format!("s{n}")).collect();
    let commands: Vec<Value> = range
        .clone()
        .map(|n| emit(&format!("s{n}"), "seq", json!(n)))
        .collect();
    client.send(&commands).await;
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    let outcomes = client.outcomes(&tags).await;
    for n in range {
        let outcome = &outcomes[&format!("s{n}")];
        assert_eq!(outcome["type"], "ack", "emit {n}: {outcome}");
        assert_eq!(outcome["reply"], json!({ "echo": n }), "emit {n}'s reply");
    }
}

/// §5 split: 5 messages emitted together meet `413 too_many_messages`. The client splits the
/// batch, first half first: every emit is acknowledged, and the handler sees each once, in order.
async fn split_413(kind: Kind) {
    let mut case = Case::start_with(kind, two_per_post, hide_max_messages).await;
    case.client.connected().await;
    burst(&mut case.client, 0..5).await;
    assert_eq!(
        case.server.seen("seq"),
        (0..5).map(|n| json!(n)).collect::<Vec<_>>()
    );
    assert!(
        case.server.log().iter().any(|e| e.is(&Method::POST, 413)),
        "the server refused a batch as too large (else this tested nothing)"
    );
}

/// §5: "after too_many_messages, also lower your max_messages to the new size". After a first
/// burst met the `413`, a second burst of 5 meets none.
async fn split_413_lowers_max_messages(kind: Kind) {
    let mut case = Case::start_with(kind, two_per_post, hide_max_messages).await;
    case.client.connected().await;
    burst(&mut case.client, 0..5).await;
    assert!(case.server.log().iter().any(|e| e.is(&Method::POST, 413)));
    let second = Instant::now();
    burst(&mut case.client, 5..10).await;
    assert_eq!(
        case.server.seen("seq"),
        (0..10).map(|n| json!(n)).collect::<Vec<_>>()
    );
    let refused: Vec<usize> = case
        .server
        .log()
        .iter()
        .filter(|e| e.arrived >= second && e.is(&Method::POST, 413))
        .map(|e| e.sent)
        .collect();
    assert!(
        refused.is_empty(),
        "POSTs of {refused:?} messages were refused again after a too_many_messages"
    );
}

/// §6: "Size your requests by them": the handshake's `limits` say 2 messages per POST, so 5
/// emitted together go out in POSTs of at most 2, and none is refused.
async fn sizes_posts_by_limits(kind: Kind) {
    let mut case = Case::start(kind, two_per_post).await;
    case.client.connected().await;
    burst(&mut case.client, 0..5).await;
    assert_eq!(
        case.server.seen("seq"),
        (0..5).map(|n| json!(n)).collect::<Vec<_>>()
    );
    let sizes: Vec<usize> = case
        .server
        .log()
        .iter()
        .filter(|e| e.method == Method::POST)
        .map(|e| e.sent)
        .collect();
    assert!(
        sizes.iter().all(|&n| n <= 2),
        "POSTs of {sizes:?} messages, with max_messages 2"
    );
}

/// §6 and §9: a limit the handshake does not give takes its default. The `limits` lack
/// `max_messages` (the server's is the default, 100): 120 messages emitted together go out in
/// POSTs of at most 100, and none is refused.
async fn defaults_for_limits_not_given(kind: Kind) {
    let mut case = Case::start_with(kind, |b| b, hide_max_messages).await;
    case.client.connected().await;
    burst(&mut case.client, 0..120).await;
    assert_eq!(
        case.server.seen("seq"),
        (0..120).map(|n| json!(n)).collect::<Vec<_>>()
    );
    let sizes: Vec<usize> = case
        .server
        .log()
        .iter()
        .filter(|e| e.method == Method::POST)
        .map(|e| e.sent)
        .collect();
    assert!(
        sizes.iter().all(|&n| n <= 100),
        "POSTs of {sizes:?} messages, with the default max_messages of 100"
    );
}

/// §5 `401`: slow retry, both loops — report the error, retry after the longest backoff (never
/// sooner), and resume by itself once the user is signed in again: the emit made meanwhile
/// resolves, and messages arrive.
async fn unauthorized_401(kind: Kind) {
    let mut case =
        Case::start_with(kind, |b| b, |s| s.signed_out.store(true, Ordering::SeqCst)).await;
    case.client
        .send(&[emit("a", "echo", json!("signed in"))])
        .await;
    let error = case
        .client
        .next("the 401 reported", |e| {
            e["type"] == "error" && e["status"] == 401
        })
        .await;
    assert_eq!(error["code"], "unauthorized", "the error's code: {error}");
    case.server
        .until("3 polls and 2 sends were refused", |s| {
            let log = s.log();
            log.iter().filter(|e| e.is(&Method::GET, 401)).count() >= 3
                && log.iter().filter(|e| e.is(&Method::POST, 401)).count() >= 2
        })
        .await;
    case.server.signed_out.store(false, Ordering::SeqCst);
    case.client.connected().await;
    assert_eq!(case.client.reply("a").await, json!({"echo": "signed in"}));
    case.server.send(json!("welcome back")).await;
    assert_eq!(case.client.messages_after(1).await, [json!("welcome back")]);

    // The longest backoff is `max × random(0.5, 1.0)`: never below half the max.
    let log = case.server.log();
    for method in [Method::GET, Method::POST] {
        let gaps = gaps(gaps_after(&log, &method, |e| e.status == Some(401)));
        assert!(
            gaps.iter().all(|&gap| gap + SLACK >= BACKOFF_MAX / 2),
            "{method} after a 401 waits the longest backoff (at least {:?}): waited {gaps:?}",
            BACKOFF_MAX / 2
        );
    }
}

/// §5 `429` (wait): "retry, after the longer of the backoff and Retry-After seconds". Two
/// POSTs get `429 too_many_in_progress` with `Retry-After: 1`; the emit resolves once the
/// server accepts, each resend a second or more after the refusal, and the handler ran once.
async fn retry_after_429_post(kind: Kind) {
    let mut case = Case::start(kind, |b| b).await;
    case.client.connected().await;
    case.server.faults.add(Fault {
        method: "POST",
        times: 2,
        action: Action::Refuse {
            status: 429,
            code: "too_many_in_progress",
            retry_after: Some(1),
        },
    });
    case.client.send(&[emit("a", "echo", json!("later"))]).await;
    assert_eq!(case.client.reply("a").await, json!({"echo": "later"}));
    assert_eq!(
        case.server.seen("echo"),
        [json!("later")],
        "the handler ran once"
    );
    let log = case.server.log();
    let gaps = gaps(gaps_after(&log, &Method::POST, |e| e.status == Some(429)));
    assert_eq!(gaps.len(), 2, "two refusals, each followed by a resend");
    assert!(
        gaps.iter()
            .all(|&gap| gap + SLACK >= Duration::from_secs(1)),
        "a resend after Retry-After: 1 waits a second: waited {gaps:?}"
    );
}

/// The same for polls: the handshake gets `429 too_many_polls` with `Retry-After: 1` twice; the
/// client connects after, each retry a second or more after the refusal.
async fn retry_after_429_get(kind: Kind) {
    let mut case = Case::start_with(
        kind,
        |b| b,
        |s| {
            s.faults.add(Fault {
                method: "GET",
                times: 2,
                action: Action::Refuse {
                    status: 429,
                    code: "too_many_polls",
                    retry_after: Some(1),
                },
            });
        },
    )
    .await;
    case.client.connected().await;
    let log = case.server.log();
    let gaps = gaps(gaps_after(&log, &Method::GET, |e| e.status == Some(429)));
    assert_eq!(gaps.len(), 2, "two refusals, each followed by a retry");
    assert!(
        gaps.iter()
            .all(|&gap| gap + SLACK >= Duration::from_secs(1)),
        "a poll after Retry-After: 1 waits a second: waited {gaps:?}"
    );
}

/// §3 step 6: another instance polls with the client's id (a duplicated tab), and keeps doing
/// so. The client, told `taken_over`, takes a new id and polls on with its cursor: the two do
/// not end each other's polls (a few GETs with the old id in 2 s, not hundreds), and the client
/// keeps receiving, and sends under its new id.
async fn take_over(kind: Kind) {
    let mut case = Case::start(kind, |b| b.hold_time(Duration::from_secs(5))).await;
    case.settled().await;
    let Some(id) = case.client.reported_id() else {
        eprintln!(
            "\n!!! SKIPPED: the {} adapter does not report its client id !!!\n",
            case.client.name
        );
        return;
    };
    let started = Instant::now();
    let copy = tokio::spawn(poll_forever(case.server.url(), id.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let gets = case.server.arrivals(&Method::GET, &id, started);
    assert!(
        case.server
            .log()
            .iter()
            .any(|e| e.client.as_deref() == Some(&id) && e.answer["taken_over"] == true),
        "the client's poll was taken over (else this tested nothing)"
    );
    assert!(
        gets <= 6,
        "{gets} GETs with the client id {id} in 2 s: the two instances end each other's polls"
    );

    case.server.send(json!("still here")).await;
    let got = case.client.messages_after(1).await;
    assert_eq!(got, [json!("still here")], "the client keeps receiving");
    case.client
        .send(&[emit("a", "echo", json!("new id"))])
        .await;
    assert_eq!(case.client.reply("a").await, json!({"echo": "new id"}));
    copy.abort();
    let log = case.server.log();
    let polled_under = log
        .iter()
        .filter(|e| e.method == Method::GET && e.arrived > started)
        .filter_map(|e| e.client.clone())
        .find(|c| *c != id);
    assert!(polled_under.is_some(), "the client polls under a new id");
    let sent_under: Vec<_> = log
        .iter()
        .filter(|e| e.method == Method::POST)
        .filter_map(|e| e.client.clone())
        .collect();
    assert!(
        sent_under.iter().all(|c| *c != id),
        "a message first sent after the take-over goes out under the new id: {sent_under:?}"
    );
}

/// The other instance: polls with `id` without end, and keeps it even when told `taken_over`.
async fn poll_forever(url: String, id: String) {
    let http = reqwest::Client::new();
    let mut position: Option<(String, u64)> = None;
    loop {
        let mut request = http
            .get(&url)
            .header("x-user", USER)
            .query(&[("client", &id)])
            .timeout(SOON);
        if let Some((epoch, cursor)) = &position {
            request = request.query(&[("cursor", cursor.to_string()), ("epoch", epoch.clone())]);
        }
        let answer = match request.send().await {
            Ok(response) => response.json::<Value>().await.ok(),
            Err(_) => None,
        };
        match answer {
            Some(body) if body["epoch"].is_string() => {
                position = Some((
                    body["epoch"].as_str().unwrap_or_default().to_owned(),
                    body["cursor"].as_u64().unwrap_or(0),
                ));
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

// --- one test per client and scenario ----------------------------------------------------------------

/// Whether the tests must run (CI) or may skip when a tool is missing.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether `kind`'s adapter can run here; outside CI a missing Node skips, loudly.
fn available(kind: Kind) -> bool {
    match kind {
        Kind::Js => {
            let node = std::process::Command::new("node")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(node || !in_ci(), "node is required under CI=true");
            if !node {
                eprintln!(
                    "\n!!! SKIPPED: node is missing; the JavaScript client was NOT tested !!!\n"
                );
            }
            node
        }
        #[cfg(feature = "client")]
        Kind::Rust => true,
        Kind::Java => java_build::available(),
    }
}

macro_rules! cases {
    ($kind:expr; $($(#[$attr:meta])* $scenario:ident),* $(,)?) => {
        $(
            $(#[$attr])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                if super::available($kind) {
                    super::$scenario($kind).await;
                }
            }
        )*
    };
}

mod js {
    use super::Kind;

    cases!(Kind::Js;
        lost_get_response,
        lost_post_response,
        epoch_change,
        pending,
        split_413,
        split_413_lowers_max_messages,
        sizes_posts_by_limits,
        defaults_for_limits_not_given,
        unauthorized_401,
        retry_after_429_post,
        retry_after_429_get,
        take_over,
    );
}

#[cfg(feature = "client")]
mod rust {
    use super::Kind;

    cases!(Kind::Rust;
        lost_get_response,
        lost_post_response,
        epoch_change,
        pending,
        split_413,
        split_413_lowers_max_messages,
        sizes_posts_by_limits,
        defaults_for_limits_not_given,
        unauthorized_401,
        retry_after_429_post,
        retry_after_429_get,
        take_over,
    );
}

mod java {
    use super::Kind;

    cases!(Kind::Java;
        lost_get_response,
        lost_post_response,
        epoch_change,
        pending,
        split_413,
        split_413_lowers_max_messages,
        sizes_posts_by_limits,
        defaults_for_limits_not_given,
        unauthorized_401,
        retry_after_429_post,
        retry_after_429_get,
        take_over,
    );
}
