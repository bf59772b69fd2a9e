//! The `durable` scenario's direct-message load, on the simpleio server only: every user sends
//! direct messages to the next one as fast as the server stores and their recipient confirms
//! them.
//!
//! | route | what it does |
//! |---|---|
//! | `POST /bench/dm/start?users=N&window=W&secs=S[&send=ordered]` | for `S` seconds, user `u{i}` sends to `u{(i+1) % N}`, `W` messages unconfirmed at most per sender; answers at once |
//! | `GET /bench/dm/stats` | counters ([`DmStats`]), live while it runs |
//!
//! Each sender's messages are `io.on_behalf_of(from).to_user(to).emit("tick", ..)`, the path a
//! handler relaying a user's message takes: stored one after another (so that its recipient
//! gets them in order, numbered 1, 2, …), each confirmation awaited in a task of its own that
//! frees its slot of the window. With `send=ordered` a sender awaits `ordered()` instead of
//! `stored()` before its next message: in order still, without a write between two. Every user receives from exactly one sender, so a sequence
//! number seen twice by a client is a duplicate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use simpleio::SimpleIo;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::Tick;
use crate::proc::realtime_ns;

/// The answer of `GET /bench/dm/stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DmStats {
    /// Messages stored (`stored()` resolved).
    pub sent: u64,
    /// Stored messages their recipient confirmed.
    pub delivered: u64,
    /// Stored messages that resolved otherwise (expired, lost).
    pub not_delivered: u64,
    /// Emits that failed before anything was stored (queue full, storage errors).
    pub send_errors: u64,
    pub first_error: Option<String>,
    /// Whether the load is still going (sending, or waiting for the last confirmations).
    pub running: bool,
    /// From the start until the last confirmation, µs; 0 while it runs.
    pub elapsed_us: u64,
    /// How long an emit took until `stored()` resolved, µs: median and 99th percentile (within
    /// 6%), once the load has ended (0 while it runs).
    #[serde(default)]
    pub stored_p50_us: u32,
    #[serde(default)]
    pub stored_p99_us: u32,
}

#[derive(Default)]
struct Counters {
    started: AtomicBool,
    running: AtomicBool,
    sent: AtomicU64,
    delivered: AtomicU64,
    not_delivered: AtomicU64,
    send_errors: AtomicU64,
    elapsed_us: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
    /// Every emit's time to `stored()`: a histogram of fixed size, not a list that a long run
    /// would grow by 4 bytes a message (and the server's RSS with it).
    stored: Histogram,
}

/// Latencies in µs, counted in buckets: 16 for each power of two, so a quantile read from it is
/// within 1/16 (6%) of the true value.
struct Histogram {
    buckets: Vec<AtomicU64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..64 * 16).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Histogram {
    fn bucket(us: u64) -> usize {
        if us < 16 {
            return us as usize;
        }
        let log = 63 - us.leading_zeros() as usize;
        // The 4 bits below the highest one pick the bucket within its power of two.
        (log - 3) * 16 + ((us >> (log - 4)) & 15) as usize
    }

    /// The smallest value of bucket `i`.
    fn low(i: usize) -> u64 {
        if i < 16 {
            return i as u64;
        }
        let log = i / 16 + 3;
        (1 << log) | (((i % 16) as u64) << (log - 4))
    }

    fn record(&self, us: u64) {
        self.buckets[Self::bucket(us).min(self.buckets.len() - 1)].fetch_add(1, Ordering::Relaxed);
    }

    /// The `q` quantile (0..=1), as the low end of its bucket; 0 if empty.
    fn quantile(&self, q: f64) -> u32 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64 * q) as u64).min(total - 1);
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen > rank {
                return u32::try_from(Self::low(i)).unwrap_or(u32::MAX);
            }
        }
        0
    }
}

#[derive(Clone)]
struct DmCtl {
    io: SimpleIo,
    counters: Arc<Counters>,
}

#[derive(Deserialize)]
struct StartQuery {
    users: usize,
    window: usize,
    secs: f64,
    /// `stored` (the default) or `ordered`: what a sender awaits before its next message.
    #[serde(default)]
    send: Send,
}

/// What a sender awaits before it emits its next message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Send {
    /// `Sending::stored()`: each message written before the next is emitted.
    #[default]
    Stored,
    /// `Sending::ordered()`: each message in its place before the next is emitted.
    Ordered,
}

impl Send {
    /// Its name in the start route's query.
    pub fn as_str(self) -> &'static str {
        match self {
            Send::Stored => "stored",
            Send::Ordered => "ordered",
        }
    }
}

/// The routes, to merge into the simpleio server's router.
pub fn routes(io: SimpleIo) -> Router {
    let ctl = DmCtl {
        io,
        counters: Arc::default(),
    };
    Router::new()
        .route("/bench/dm/start", post(start))
        .route("/bench/dm/stats", get(stats))
        .with_state(ctl)
}

async fn start(State(ctl): State<DmCtl>, Query(q): Query<StartQuery>) -> Response {
    if q.users < 2 || q.window == 0 || q.secs.is_nan() || q.secs <= 0.0 {
        return (
            StatusCode::BAD_REQUEST,
            "users ≥ 2, window ≥ 1 and secs > 0, please",
        )
            .into_response();
    }
    // Once per process: the counters describe one run.
    if ctl.counters.started.swap(true, Ordering::SeqCst) {
        return (StatusCode::CONFLICT, "already started").into_response();
    }
    ctl.counters.running.store(true, Ordering::SeqCst);
    tokio::spawn(async move {
        let started = Instant::now();
        let deadline = started + Duration::from_secs_f64(q.secs);
        let mut senders = JoinSet::new();
        for i in 0..q.users {
            senders.spawn(sender(
                ctl.io.clone(),
                i,
                q.users,
                q.window,
                q.send,
                deadline,
                ctl.counters.clone(),
            ));
        }
        while senders.join_next().await.is_some() {}
        let c = &ctl.counters;
        c.elapsed_us
            .store(started.elapsed().as_micros() as u64, Ordering::SeqCst);
        c.running.store(false, Ordering::SeqCst);
    });
    axum::Json(serde_json::json!({ "started": true })).into_response()
}

async fn sender(
    io: SimpleIo,
    i: usize,
    users: usize,
    window: usize,
    send: Send,
    deadline: Instant,
    c: Arc<Counters>,
) {
    let to = format!("u{}", (i + 1) % users);
    let io = io.on_behalf_of(format!("u{i}"));
    let slots = Arc::new(Semaphore::new(window));
    let mut confirmations = JoinSet::new();
    let mut seq = 1;
    while Instant::now() < deadline {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let tick = Tick {
            seq,
            ts: realtime_ns(),
        };
        let emitted = Instant::now();
        let sending = io.to_user(to.as_str()).emit("tick", &tick);
        let placed = match send {
            Send::Stored => sending.stored().await,
            Send::Ordered => sending.ordered().await,
        };
        match placed {
            Ok(confirmation) => {
                seq += 1;
                let c = c.clone();
                confirmations.spawn(async move {
                    // Sent once stored: at once for `stored()`, after the write for `ordered()`.
                    let confirmation = match confirmation.stored().await {
                        Ok(confirmation) => confirmation,
                        Err(_) => {
                            c.not_delivered.fetch_add(1, Ordering::Relaxed);
                            drop(slot);
                            return;
                        }
                    };
                    c.stored.record(emitted.elapsed().as_micros() as u64);
                    c.sent.fetch_add(1, Ordering::Relaxed);
                    let counter = match confirmation.await {
                        Ok(_) => &c.delivered,
                        Err(_) => &c.not_delivered,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    drop(slot);
                });
                // A finished task stays in the set until joined: reaped here, or a long run
                // would hold one per message sent.
                while confirmations.try_join_next().is_some() {}
            }
            Err(e) => {
                c.send_errors.fetch_add(1, Ordering::Relaxed);
                c.first_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(|| format!("{e}"));
                // A refused emit (a full queue, a failing disk) would otherwise spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    while confirmations.join_next().await.is_some() {}
}

async fn stats(State(ctl): State<DmCtl>) -> axum::Json<DmStats> {
    let c = &ctl.counters;
    let running = c.running.load(Ordering::SeqCst);
    let (stored_p50_us, stored_p99_us) = if running {
        (0, 0)
    } else {
        (c.stored.quantile(0.50), c.stored.quantile(0.99))
    };
    axum::Json(DmStats {
        stored_p50_us,
        stored_p99_us,
        sent: c.sent.load(Ordering::Relaxed),
        delivered: c.delivered.load(Ordering::Relaxed),
        not_delivered: c.not_delivered.load(Ordering::Relaxed),
        send_errors: c.send_errors.load(Ordering::Relaxed),
        first_error: c
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        running,
        elapsed_us: c.elapsed_us.load(Ordering::SeqCst),
    })
}

#[cfg(test)]
mod tests {
    use super::Histogram;

    #[test]
    fn buckets_hold_their_values_and_quantiles_land_within_a_sixteenth() {
        for us in [
            0,
            1,
            15,
            16,
            17,
            31,
            32,
            1000,
            65_535,
            1 << 30,
            u64::from(u32::MAX),
        ] {
            let i = Histogram::bucket(us);
            assert!(Histogram::low(i) <= us, "{us} below its bucket {i}");
            assert!(us < Histogram::low(i + 1), "{us} above its bucket {i}");
        }
        let h = Histogram::default();
        for us in 1..=10_000 {
            h.record(us);
        }
        let p50 = f64::from(h.quantile(0.5));
        let p99 = f64::from(h.quantile(0.99));
        assert!((p50 - 5_000.0).abs() <= 5_000.0 / 16.0, "p50 {p50}");
        assert!((p99 - 9_900.0).abs() <= 9_900.0 / 16.0, "p99 {p99}");
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }
}
