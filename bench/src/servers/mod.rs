//! The servers under test, each a child process of the driver, and what they share: the tick
//! payload and the control routes that make a server broadcast *internally* on a timer.
//!
//! Control routes (beside each server's own routes):
//!
//! | route | what it does |
//! |---|---|
//! | `POST /bench/tick?mode=confirmed\|volatile` | one broadcast now; answers `{"seq", "stored_us"}` once it is stored (confirmed) or handed over |
//! | `POST /bench/start?rate=10&secs=20&mode=...` | `rate × secs` broadcasts, one per tick, in the background |
//! | `GET /bench/stats` | counters ([`Stats`]) |
//! | `POST /bench/exit` | exits the process (so that `valgrind` writes its output) |
//!
//! The simpleio server also has the `room` scenario's routes under `/bench/room/` ([`room`]) and
//! the `durable` scenario's direct-message load under `/bench/dm/` ([`dm`]).
//!
//! Each server prints `listening PORT` as its first line on stdout once it accepts connections.

pub mod dm;
pub mod hyper_hold;
pub mod hyper_poll;
pub mod room;
pub mod simpleio;
pub mod socketioxide;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::proc::realtime_ns;

/// The data of every broadcast: its sequence number and when it was sent (ns, CLOCK_REALTIME).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Tick {
    pub seq: u64,
    pub ts: u64,
}

/// How a broadcast is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Stored and confirmed (simpleio's `emit`); socketioxide's only kind.
    #[default]
    Confirmed,
    /// Only to polls waiting now (simpleio's `volatile().emit`).
    Volatile,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Confirmed => "confirmed",
            Mode::Volatile => "volatile",
        }
    }
}

/// The counters a server reports at `GET /bench/stats`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Stats {
    /// Broadcasts started.
    pub sent: u64,
    /// Broadcasts that failed before anything was handed to clients.
    pub send_errors: u64,
    /// Confirmed broadcasts that every recipient confirmed.
    pub delivered: u64,
    /// Confirmed broadcasts that some recipient did not confirm (expired, queue full, lost).
    pub not_delivered: u64,
    /// Time the latest broadcast took to be stored (confirmed) or handed over, in µs.
    pub last_stored_us: u64,
    /// The longest such time.
    pub max_stored_us: u64,
    /// Whether a `/bench/start` run is still going.
    pub ticking: bool,
    /// WARN events from simpleio's own code (lag, resyncs) since the start.
    pub warn_events: u64,
    /// Polls waiting now (simpleio and hyper-hold; 0 for socketioxide).
    pub waiting_polls: u64,
    /// On `DurableStorage`: transactions (each one fsync) committed since it was opened.
    #[serde(default)]
    pub commits: Option<u64>,
    /// On `DurableStorage`: the size of its file now, in bytes.
    #[serde(default)]
    pub file_bytes: Option<u64>,
}

/// Something that can broadcast one tick to every connected client.
pub trait Broadcast: Send + Sync + 'static {
    /// Sends `tick`; resolves once it is stored (confirmed) or handed over (volatile). Counting
    /// the confirmation's outcome is the implementation's business (it spawns a task for it,
    /// so that ticks are not held up by slow confirmations).
    fn broadcast(&self, mode: Mode, tick: Tick, control: Arc<Control>) -> BoxFuture;

    /// Polls waiting now, if the server knows.
    fn waiting_polls(&self) -> u64 {
        0
    }

    /// On a durable storage: its commits so far and its file's size now.
    fn durable(&self) -> Option<(u64, u64)> {
        None
    }
}

pub type BoxFuture = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// The counters behind [`Stats`].
#[derive(Debug, Default)]
pub struct Control {
    next_seq: AtomicU64,
    pub sent: AtomicU64,
    pub send_errors: AtomicU64,
    pub delivered: AtomicU64,
    pub not_delivered: AtomicU64,
    last_stored_us: AtomicU64,
    max_stored_us: AtomicU64,
    ticking: AtomicBool,
}

impl Control {
    fn record_stored(&self, took: Duration) {
        let us = took.as_micros() as u64;
        self.last_stored_us.store(us, Ordering::Relaxed);
        self.max_stored_us.fetch_max(us, Ordering::Relaxed);
    }
}

/// The count of WARN events from `simpleio` targets, kept by [`WarnCounter`].
pub static WARN_EVENTS: AtomicU64 = AtomicU64::new(0);

/// A `tracing` layer counting WARN (and worse) events from simpleio itself, such as a hub that
/// "fell behind the storage's signals": each one is a lag/resync the benchmark reports.
#[derive(Debug)]
pub struct WarnCounter;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for WarnCounter {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let meta = event.metadata();
        if *meta.level() <= tracing::Level::WARN && meta.target().starts_with("simpleio") {
            WARN_EVENTS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Logs warnings to stderr (the driver sends it to a log file) and counts simpleio's.
pub fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, filter::LevelFilter};
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .with_filter(LevelFilter::WARN);
    // Both layers only at WARN: a layer that took every level would make each request's
    // (disabled) debug span live, a cost no application at `info` pays.
    tracing_subscriber::registry()
        .with(WarnCounter.with_filter(LevelFilter::WARN))
        .with(fmt)
        .init();
}

#[derive(Clone)]
struct Ctl {
    control: Arc<Control>,
    sender: Arc<dyn Broadcast>,
}

#[derive(Deserialize)]
struct TickQuery {
    #[serde(default)]
    mode: Mode,
}

#[derive(Deserialize)]
struct StartQuery {
    rate: f64,
    secs: f64,
    #[serde(default)]
    mode: Mode,
}

/// The control routes, to merge into a server's router.
pub fn control_routes(sender: Arc<dyn Broadcast>) -> Router {
    let ctl = Ctl {
        control: Arc::default(),
        sender,
    };
    Router::new()
        .route("/bench/tick", post(tick_now))
        .route("/bench/start", post(start))
        .route("/bench/stats", get(stats))
        .route("/bench/exit", post(exit))
        .with_state(ctl)
}

async fn send_one(ctl: &Ctl, mode: Mode) -> Result<(u64, u64)> {
    let seq = ctl.control.next_seq.fetch_add(1, Ordering::Relaxed);
    let tick = Tick {
        seq,
        ts: realtime_ns(),
    };
    ctl.control.sent.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let result = ctl.sender.broadcast(mode, tick, ctl.control.clone()).await;
    let took = started.elapsed();
    match result {
        Ok(()) => {
            ctl.control.record_stored(took);
            Ok((seq, took.as_micros() as u64))
        }
        Err(e) => {
            ctl.control.send_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "bench", error = %e, seq, "a broadcast failed");
            Err(e)
        }
    }
}

async fn tick_now(State(ctl): State<Ctl>, Query(q): Query<TickQuery>) -> Response {
    match send_one(&ctl, q.mode).await {
        Ok((seq, stored_us)) => {
            axum::Json(serde_json::json!({ "seq": seq, "stored_us": stored_us })).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")).into_response(),
    }
}

async fn start(State(ctl): State<Ctl>, Query(q): Query<StartQuery>) -> Response {
    if !(q.rate > 0.0 && q.secs > 0.0) {
        return (StatusCode::BAD_REQUEST, "rate and secs must be > 0").into_response();
    }
    if ctl.control.ticking.swap(true, Ordering::SeqCst) {
        return (StatusCode::CONFLICT, "already ticking").into_response();
    }
    let ticks = (q.rate * q.secs).round() as u64;
    let period = Duration::from_secs_f64(1.0 / q.rate);
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(period);
        // A broadcast slower than the period delays the next one rather than bunching them up:
        // the rate is a ceiling, and the driver reads the real count from `sent`.
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for _ in 0..ticks {
            interval.tick().await;
            // Sent one after another, so that every client gets them in sequence order; the
            // confirmations are awaited in spawned tasks (see `Broadcast`).
            let _ = send_one(&ctl, q.mode).await;
        }
        ctl.control.ticking.store(false, Ordering::SeqCst);
    });
    axum::Json(serde_json::json!({ "ticks": ticks })).into_response()
}

async fn stats(State(ctl): State<Ctl>) -> axum::Json<Stats> {
    let c = &ctl.control;
    let durable = ctl.sender.durable();
    axum::Json(Stats {
        sent: c.sent.load(Ordering::Relaxed),
        send_errors: c.send_errors.load(Ordering::Relaxed),
        delivered: c.delivered.load(Ordering::Relaxed),
        not_delivered: c.not_delivered.load(Ordering::Relaxed),
        last_stored_us: c.last_stored_us.load(Ordering::Relaxed),
        max_stored_us: c.max_stored_us.load(Ordering::Relaxed),
        ticking: c.ticking.load(Ordering::SeqCst),
        warn_events: WARN_EVENTS.load(Ordering::Relaxed),
        waiting_polls: ctl.sender.waiting_polls(),
        commits: durable.map(|(commits, _)| commits),
        file_bytes: durable.map(|(_, bytes)| bytes),
    })
}

async fn exit() -> &'static str {
    tokio::spawn(async {
        // Let the response go out first.
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::process::exit(0);
    });
    "bye"
}

/// Binds 127.0.0.1:`port` (0: a free one) and announces the port on stdout for the driver.
pub async fn bind(port: u16) -> Result<tokio::net::TcpListener> {
    use std::io::Write;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    let port = listener.local_addr()?.port();
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening {port}")?;
    out.flush()?;
    Ok(listener)
}

/// How a server speaks HTTP: the same for simpleio and the floor, so that what their memory
/// per connection differs by is simpleio's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Http {
    /// `axum::serve`: hyper-util's automatic HTTP/1 + HTTP/2 builder (it reads the first bytes
    /// to tell the version), with upgrades, as most axum applications are served.
    #[default]
    Axum,
    /// hyper's HTTP/1 connection builder alone: no version detection, no upgrades.
    Http1,
}

impl Http {
    /// Parses `--http axum|http1`.
    pub fn parse(value: Option<&str>) -> Result<Http> {
        match value {
            None | Some("axum") => Ok(Http::Axum),
            Some("http1") => Ok(Http::Http1),
            Some(other) => anyhow::bail!("--http is `axum` or `http1`, not {other:?}"),
        }
    }

    /// The flag that selects it.
    pub fn as_str(self) -> &'static str {
        match self {
            Http::Axum => "axum",
            Http::Http1 => "http1",
        }
    }
}

/// Serves `app` on 127.0.0.1:`port` the way `http` says.
pub async fn serve<S>(port: u16, http: Http, app: S) -> Result<()>
where
    S: tower::Service<
            http::Request<axum::body::Body>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    let listener = bind(port).await?;
    match http {
        Http::Axum => axum::serve(listener, axum::ServiceExt::into_make_service(app))
            .await
            .context("serving"),
        Http::Http1 => loop {
            let (stream, _) = listener.accept().await.context("accepting")?;
            let service = hyper_util::service::TowerToHyperService::new(
                tower::ServiceExt::map_request(app.clone(), |req: http::Request<_>| {
                    req.map(axum::body::Body::new)
                }),
            );
            tokio::spawn(async move {
                // A client that goes away mid-request is its business, not an error here.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        },
    }
}
