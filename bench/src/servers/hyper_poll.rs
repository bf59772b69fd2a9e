//! `server hyper-poll`: the floor under any long-polling server on this HTTP stack. It answers
//! simpleio's poll (`GET /simpleio?cursor=C`, the answer of docs/spec.md §3) with the least
//! work that can: one list of the latest ticks, shared by everyone and kept as ready JSON, and
//! one `watch` channel that wakes every waiting poll. No users, no storage, no confirmations:
//! at most once, like socketioxide, and cheaper than any real server can be, so the simpleio
//! load generator can drive it unchanged and its CPU per message is what HTTP costs.
//!
//! Served like the others (`axum::serve`), the poll route in front of the control router, as
//! simpleio's layer wraps the application's router.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Result;
use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, header};
use tokio::sync::watch;
use tower::{Service, ServiceExt};

use super::{BoxFuture, Broadcast, Control, Mode, Tick};

/// How many ticks are kept: a client that fell further behind gets the latest ones only (no
/// client in a measurement does, as each tick reaches every poll well within a second).
const KEPT: usize = 64;

/// How long a poll waits for a tick before it answers empty, as simpleio's default.
const HOLD: Duration = Duration::from_secs(25);

/// Runs the server until the process is stopped.
pub async fn run(port: u16) -> Result<()> {
    super::init_tracing();
    let (latest, _) = watch::channel(0);
    let feed = Arc::new(Feed {
        ticks: Mutex::new(VecDeque::with_capacity(KEPT)),
        latest,
        waiting: AtomicU64::new(0),
    });
    let control = super::control_routes(Arc::new(Sender { feed: feed.clone() }));
    super::serve(
        port,
        super::Http::Axum,
        Front {
            feed,
            inner: control,
        },
    )
    .await
}

/// The shared feed: the latest ticks as `(position, message JSON)`, and the latest position.
struct Feed {
    ticks: Mutex<VecDeque<(u64, Bytes)>>,
    latest: watch::Sender<u64>,
    waiting: AtomicU64,
}

impl Feed {
    /// The answer for a client at `cursor`: every kept tick after it.
    fn answer(&self, cursor: u64) -> Bytes {
        let ticks = self.ticks.lock().unwrap_or_else(|p| p.into_inner());
        let last = ticks.back().map_or(cursor, |(pos, _)| *pos.max(&cursor));
        let mut body = Vec::with_capacity(96 + 80 * ticks.len().min(4));
        body.extend_from_slice(b"{\"epoch\":\"floor\",\"cursor\":");
        body.extend_from_slice(last.to_string().as_bytes());
        body.extend_from_slice(b",\"messages\":[");
        let mut first = true;
        for (_, json) in ticks.iter().filter(|(pos, _)| *pos > cursor) {
            if !first {
                body.push(b',');
            }
            first = false;
            body.extend_from_slice(json);
        }
        body.extend_from_slice(b"],\"volatile\":[]}");
        Bytes::from(body)
    }
}

/// The poll route in front of the control routes.
#[derive(Clone)]
struct Front {
    feed: Arc<Feed>,
    inner: axum::Router,
}

impl Service<Request<Body>> for Front {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if req.uri().path() != "/simpleio" {
            let inner = self.inner.clone();
            return Box::pin(async move { inner.oneshot(req).await });
        }
        let cursor = req.uri().query().and_then(cursor_of);
        let feed = self.feed.clone();
        Box::pin(async move { Ok(poll(feed, cursor).await) })
    }
}

/// The `cursor` parameter of a query, if any.
fn cursor_of(query: &str) -> Option<u64> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("cursor="))
        .and_then(|v| v.parse().ok())
}

async fn poll(feed: Arc<Feed>, cursor: Option<u64>) -> Response<Body> {
    let mut latest = feed.latest.subscribe();
    let now = *latest.borrow_and_update();
    // A handshake starts at the latest tick; a client behind it gets what it missed at once.
    let cursor = match cursor {
        None => return json(feed.answer(now)),
        Some(cursor) if now > cursor => return json(feed.answer(cursor)),
        Some(cursor) => cursor,
    };
    feed.waiting.fetch_add(1, Ordering::Relaxed);
    let _ = tokio::time::timeout(HOLD, latest.changed()).await;
    feed.waiting.fetch_sub(1, Ordering::Relaxed);
    json(feed.answer(cursor))
}

fn json(body: Bytes) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

struct Sender {
    feed: Arc<Feed>,
}

impl Broadcast for Sender {
    fn broadcast(&self, mode: Mode, tick: Tick, _control: Arc<Control>) -> BoxFuture {
        let feed = self.feed.clone();
        Box::pin(async move {
            anyhow::ensure!(
                mode == Mode::Confirmed,
                "hyper-poll has one kind of broadcast"
            );
            let pos = tick.seq + 1;
            let data = serde_json::to_string(&tick)?;
            let json = format!(r#"{{"pos":{pos},"event":"tick","data":{data}}}"#);
            {
                let mut ticks = feed.ticks.lock().unwrap_or_else(|p| p.into_inner());
                if ticks.len() == KEPT {
                    ticks.pop_front();
                }
                ticks.push_back((pos, Bytes::from(json)));
            }
            feed.latest.send_replace(pos);
            Ok(())
        })
    }

    fn waiting_polls(&self) -> u64 {
        self.feed.waiting.load(Ordering::Relaxed)
    }
}
