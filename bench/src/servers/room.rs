//! The `room` scenario's control routes, on the simpleio server only: fill a room with K
//! users, then emit to it in the background and tell how long storing took.
//!
//! | route | what it does |
//! |---|---|
//! | `POST /bench/room/join?k=K&concurrency=C` | joins `u0`..`u{K-1}` (as `Member::User`) to room [`ROOM`], C joins in flight (default 64); answers [`Joined`] once all are in |
//! | `POST /bench/room/emit` | starts `io.to_room(ROOM).emit("news", ..).stored()` in a spawned task; answers `{"started_ns"}` at once |
//! | `GET /bench/room/emit` | waits until that emit is stored (or failed); answers [`Emitted`] |

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use simpleio::SimpleIo;
use tokio::sync::{Mutex, watch};

use crate::proc::realtime_ns;

/// The room every member joins.
pub const ROOM: &str = "big";

/// The answer of `POST /bench/room/join`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Joined {
    pub joined: usize,
    /// Server time for every join, µs.
    pub took_us: u64,
}

/// The answer of `GET /bench/room/emit`: the emit's timing on the server's clock.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Emitted {
    /// When the emit started and when `stored()` resolved (ns, CLOCK_REALTIME).
    pub started_ns: u64,
    pub ended_ns: u64,
    /// `stored()`'s own duration, µs (monotonic clock).
    pub stored_us: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

#[derive(Clone)]
struct RoomCtl {
    io: SimpleIo,
    /// The running or finished emit: `None` before one started, then its outcome once known.
    emit: Arc<Mutex<Option<watch::Receiver<Option<Emitted>>>>>,
}

#[derive(Deserialize)]
struct JoinQuery {
    k: usize,
    #[serde(default = "default_concurrency")]
    concurrency: usize,
}

fn default_concurrency() -> usize {
    64
}

/// The data of the room's message: a little text, as a chat line would be.
#[derive(Serialize)]
struct News<'a> {
    text: &'a str,
    ts: u64,
}

/// The routes, to merge into the simpleio server's router.
pub fn routes(io: SimpleIo) -> Router {
    let ctl = RoomCtl {
        io,
        emit: Arc::default(),
    };
    Router::new()
        .route("/bench/room/join", post(join))
        .route("/bench/room/emit", post(start_emit).get(emit_result))
        .with_state(ctl)
}

async fn join(State(ctl): State<RoomCtl>, Query(q): Query<JoinQuery>) -> Response {
    let started = Instant::now();
    // `concurrency` workers take the next user number until all K joined: at most that many
    // joins in flight (Redis: round trips overlap without flooding the connection).
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..q.concurrency.clamp(1, 1024) {
        let (io, next, k) = (ctl.io.clone(), next.clone(), q.k);
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= k {
                    return Ok(());
                }
                io.join(format!("u{i}"), ROOM)
                    .await
                    .map_err(|e| format!("joining u{i} to {ROOM}: {e}"))?;
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        let failed = match done {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(e) => format!("a join task failed: {e}"),
        };
        return (StatusCode::INTERNAL_SERVER_ERROR, failed).into_response();
    }
    axum::Json(Joined {
        joined: q.k,
        took_us: started.elapsed().as_micros() as u64,
    })
    .into_response()
}

async fn start_emit(State(ctl): State<RoomCtl>) -> Response {
    let mut slot = ctl.emit.lock().await;
    if slot.is_some() {
        return (StatusCode::CONFLICT, "the room emit already ran").into_response();
    }
    let (tx, rx) = watch::channel(None);
    *slot = Some(rx);
    let started_ns = realtime_ns();
    let io = ctl.io.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let news = News {
            text: "the build is green; the release goes out at noon",
            ts: started_ns,
        };
        let result = io.to_room(ROOM).emit("news", &news).stored().await;
        let stored_us = started.elapsed().as_micros() as u64;
        let ended_ns = realtime_ns();
        let error = result.as_ref().err().map(|e| format!("{e:#}"));
        if let Some(e) = &error {
            tracing::warn!(target: "bench", error = %e, "the room emit failed");
        }
        let _ = tx.send(Some(Emitted {
            started_ns,
            ended_ns,
            stored_us,
            error,
        }));
        // The confirmation (nobody in the room polls, so it would wait until the messages
        // expire) is dropped here, after the timing: an application that only needs "stored".
        drop(result);
    });
    axum::Json(serde_json::json!({ "started_ns": started_ns })).into_response()
}

async fn emit_result(State(ctl): State<RoomCtl>) -> Response {
    let Some(mut rx) = ctl.emit.lock().await.clone() else {
        return (StatusCode::NOT_FOUND, "no room emit started").into_response();
    };
    match rx.wait_for(Option::is_some).await {
        Ok(done) => axum::Json(done.clone().unwrap_or_default()).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the room emit's task ended without an outcome",
        )
            .into_response(),
    }
}
