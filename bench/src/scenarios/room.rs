//! `room`: one emit to a K-member room must not hold up anyone else. K users (`u0`..) join
//! room `big` (none of them polls: their messages are stored for later), then one honest
//! client — its own user, not in the room, one connection — sends handshake `GET`s (answered at
//! once) back to back while the server stores `io.to_room("big").emit(..)`. Its latency before
//! the emit is the baseline; during the emit it is what the emit costs everyone else.
//!
//! One measurement, on fresh server processes (and a fresh `redis-server` for Redis):
//!
//! 1. `POST /bench/room/join?k=K` (64 joins in flight), timed by the server;
//! 2. the honest client starts; after its first answer, a baseline window;
//! 3. `POST /bench/room/emit`, then `GET /bench/room/emit` until `stored()` resolved;
//! 4. a short tail, then the client stops. Requests are sorted by the server's clock (same
//!    machine, CLOCK_REALTIME): *during* = in flight at any moment between the emit's start
//!    and `stored()`; *before* = answered before the emit started.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use http::Method;
use tokio::sync::watch;

use super::{Opts, Servers, Target, stats};
use crate::fleet::{RETRY_PAUSE, client_id};
use crate::http::{Conn, call_json};
use crate::proc::realtime_ns;
use crate::report::{self, Table, percentile};
use crate::servers::room::{Emitted, Joined};

/// The target: no request of the honest client waits longer than this during the emit.
pub const TARGET_MAX_US: u32 = 50_000;

/// Joins in flight while filling the room.
const JOIN_CONCURRENCY: usize = 64;

/// How long the honest client polls after the emit was stored.
const TAIL: Duration = Duration::from_millis(200);

/// What one room emit found.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub members: usize,
    /// Server time to join every member, µs.
    pub join_us: u64,
    /// Server time until `Sending::stored()` resolved, µs.
    pub stored_us: u64,
    /// The honest client's requests answered before the emit, and their max latency (µs).
    pub before: usize,
    pub before_max_us: u32,
    /// The honest client's latencies (µs) of the requests in flight during the emit, sorted.
    pub during_us: Vec<u32>,
    /// How long after `stored()` resolved the last request in flight during the emit was
    /// answered, µs: work the emit left on the server's thread past `stored()`.
    pub overrun_us: u64,
    /// The max latency in the tail after `stored()` (the confirmation dropped, and so on).
    pub after_max_us: u32,
    /// The honest client's failed requests, and the first failure.
    pub errors: u64,
    pub first_error: Option<String>,
    pub warn_events: u64,
}

impl Outcome {
    pub fn during_max_us(&self) -> u32 {
        self.during_us.last().copied().unwrap_or(0)
    }
}

/// One request of the honest client: when it was sent (ns, CLOCK_REALTIME) and its latency.
#[derive(Debug, Clone, Copy)]
struct Sample {
    sent_ns: u64,
    latency_us: u32,
}

impl Sample {
    fn answered_ns(&self) -> u64 {
        self.sent_ns + u64::from(self.latency_us) * 1000
    }
}

#[derive(Debug, Default)]
struct Honest {
    samples: Vec<Sample>,
    errors: u64,
    first_error: Option<String>,
}

/// Measures one emit to a room of `k` members on `target` (simpleio, memory or Redis).
pub async fn measure(opts: Opts, target: Target, k: usize, baseline: Duration) -> Result<Outcome> {
    let servers = Servers::start(target, opts)?;
    let addr = servers.addr();
    let result = drive(addr, k, baseline).await;
    result.with_context(|| {
        format!(
            "room emit to {k} members ({target:?}); server log: {}",
            servers.server.log_tail()
        )
    })
}

async fn drive(addr: SocketAddr, k: usize, baseline: Duration) -> Result<Outcome> {
    let join_time = Duration::from_secs(60 + k as u64 / 500);
    let joined: Joined = tokio::time::timeout(
        join_time,
        call_json(
            addr,
            Method::POST,
            &format!("/bench/room/join?k={k}&concurrency={JOIN_CONCURRENCY}"),
        ),
    )
    .await
    .with_context(|| format!("{k} joins took longer than {join_time:?}"))?
    .context("filling the room")?;

    let (stop, stop_rx) = watch::channel(false);
    let (answered, mut answered_rx) = watch::channel(0usize);
    let client = tokio::spawn(honest_client(addr, stop_rx, answered));
    // The first answer is the client's own warm-up (connection, first handshake).
    answered_rx
        .wait_for(|&n| n >= 1)
        .await
        .context("the honest client stopped before its first answer")?;
    let first_ns = realtime_ns();
    tokio::time::sleep(baseline).await;

    let emitted: Result<Emitted> = async {
        let _: serde_json::Value = call_json(addr, Method::POST, "/bench/room/emit").await?;
        let store_time = Duration::from_secs(60 + k as u64 / 500);
        let emitted: Emitted =
            tokio::time::timeout(store_time, call_json(addr, Method::GET, "/bench/room/emit"))
                .await
                .with_context(|| format!("the emit was not stored within {store_time:?}"))??;
        if let Some(e) = &emitted.error {
            bail!("the room emit failed: {e}");
        }
        tokio::time::sleep(TAIL).await;
        Ok(emitted)
    }
    .await;
    let _ = stop.send(true);
    let honest = tokio::time::timeout(Duration::from_secs(30), client)
        .await
        .context("the honest client did not stop within 30 s")?
        .context("the honest client's task failed")?;
    let emitted = emitted?;

    let mut out = Outcome {
        members: joined.joined,
        join_us: joined.took_us,
        stored_us: emitted.stored_us,
        errors: honest.errors,
        first_error: honest.first_error,
        warn_events: stats(addr).await?.warn_events,
        ..Outcome::default()
    };
    for s in honest.samples.iter().skip(1) {
        if s.answered_ns() < emitted.started_ns {
            if s.sent_ns >= first_ns {
                out.before += 1;
                out.before_max_us = out.before_max_us.max(s.latency_us);
            }
        } else if s.sent_ns <= emitted.ended_ns {
            out.during_us.push(s.latency_us);
            let overrun = s.answered_ns().saturating_sub(emitted.ended_ns) / 1000;
            out.overrun_us = out.overrun_us.max(overrun);
        } else {
            out.after_max_us = out.after_max_us.max(s.latency_us);
        }
    }
    out.during_us.sort_unstable();
    Ok(out)
}

/// Handshake `GET`s (no cursor, so answered at once) one after another on one connection, as
/// user `honest`, until `stop`; counts its answers on `answered`.
async fn honest_client(
    addr: SocketAddr,
    stop: watch::Receiver<bool>,
    answered: watch::Sender<usize>,
) -> Honest {
    let mut out = Honest::default();
    let query = format!("/simpleio?client={}&user=honest", client_id());
    'reconnect: while !*stop.borrow() {
        let mut conn = match Conn::connect(addr).await {
            Ok(conn) => conn,
            Err(e) => {
                out.on_error(e);
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        // The stop is checked between requests, never during one: the last request in flight
        // during the emit is measured to its end.
        while !*stop.borrow() {
            let sent_ns = realtime_ns();
            let started = Instant::now();
            let result = conn.get(&query).await.and_then(|(status, body)| {
                if !status.is_success() {
                    bail!("GET answered {status}: {}", String::from_utf8_lossy(&body));
                }
                serde_json::from_slice::<serde_json::Value>(&body)
                    .context("parsing a handshake's answer")
            });
            let latency_us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
            match result {
                Ok(_) => {
                    out.samples.push(Sample {
                        sent_ns,
                        latency_us,
                    });
                    answered.send_modify(|n| *n += 1);
                }
                Err(e) => {
                    out.on_error(e);
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue 'reconnect;
                }
            }
        }
    }
    out
}

impl Honest {
    fn on_error(&mut self, e: anyhow::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{e:#}"));
        }
    }
}

/// The `room` scenario: K = 100,000 (quick: 20,000), memory and Redis, `--runs` times each.
pub async fn run(opts: Opts) -> Result<Vec<Table>> {
    let k = if opts.quick { 20_000 } else { 100_000 };
    let baseline = Duration::from_secs(if opts.quick { 1 } else { 2 });
    let mut table = Table::new(
        format!(
            "room: one emit to a {}-member room, one other client's requests meanwhile",
            report::count(k as u64)
        ),
        &[
            "storage",
            "join all (server)",
            "stored (server)",
            "requests during",
            "p50",
            "p99",
            "max",
            "max before (baseline)",
            "last answer after stored",
            "max after (200 ms)",
            format!("≤ {} ms", TARGET_MAX_US / 1000).as_str(),
        ],
    );
    table.note(
        "The honest client is its own user (not in the room) on one connection, sending \
         handshake GETs back to back; *during* counts every request in flight between the \
         emit's start and `Sending::stored()` resolving (server clock); *last answer after \
         stored* is how long after `stored()` the last of them was answered. Nobody in the \
         room polls, so the emit stores a message per member and delivers none.",
    );
    for (target, storage) in [
        (Target::Simpleio, "memory"),
        (Target::SimpleioRedis, "redis"),
    ] {
        for run in 0..opts.runs {
            eprintln!(
                "  room: {k} members on {storage}, run {} of {} ...",
                run + 1,
                opts.runs
            );
            let o = measure(opts, target, k, baseline).await?;
            let label = if opts.runs > 1 {
                format!("{storage} #{}", run + 1)
            } else {
                storage.to_owned()
            };
            let ms = |us: u32| report::ms(f64::from(us));
            let verdict = if o.during_us.is_empty() {
                "no request".to_owned()
            } else if o.during_max_us() <= TARGET_MAX_US {
                "yes".to_owned()
            } else {
                "**no**".to_owned()
            };
            table.row(vec![
                label,
                report::ms(o.join_us as f64),
                report::ms(o.stored_us as f64),
                o.during_us.len().to_string(),
                ms(percentile(&o.during_us, 50.0)),
                ms(percentile(&o.during_us, 99.0)),
                ms(o.during_max_us()),
                format!("{} ({} requests)", ms(o.before_max_us), o.before),
                report::ms(o.overrun_us as f64),
                ms(o.after_max_us),
                verdict,
            ]);
            if o.errors > 0 {
                table.note(format!(
                    "{storage}: the honest client had {} failed requests; first: {}",
                    o.errors,
                    o.first_error.as_deref().unwrap_or("?")
                ));
            }
            if o.warn_events > 0 {
                table.note(format!(
                    "{storage}: the server logged {} WARN events from simpleio",
                    o.warn_events
                ));
            }
        }
    }
    Ok(vec![table])
}
