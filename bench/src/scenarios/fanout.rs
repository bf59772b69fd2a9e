//! `fanout`: K waiting polls, each its own user and connection, then one confirmed emit to
//! everyone, then one volatile emit. How long storing takes, how long until every poll has
//! answered, and how many lag/resync warnings the server logged on the way.

use std::time::Duration;

use anyhow::{Context, Result};
use http::Method;
use serde::Deserialize;

use super::{Opts, Servers, Target, stats, wait_polls, wait_stats};
use crate::fleet::{Fleet, Kind};
use crate::http::call_json;
use crate::proc::realtime_ns;
use crate::report::{self, Table};

/// What a fan-out found.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub polls: usize,
    /// Server time until `Sending::stored()` resolved, µs: the process's first fan-out.
    pub stored_us: u64,
    /// The same for a second fan-out to the same polls (the per-user structures exist).
    pub stored_again_us: u64,
    /// From the emit request to the last poll's answer parsed, µs.
    pub all_answered_us: u64,
    /// Polls that answered with the confirmed message.
    pub confirmed_received: usize,
    /// From the emit request until the server's emit resolved delivered, µs (0: it did not).
    pub all_confirmed_us: u64,
    /// Polls that answered with the volatile message.
    pub volatile_received: usize,
    pub volatile_us: u64,
    pub warn_events: u64,
    pub peak_rss: u64,
}

#[derive(Deserialize)]
struct TickAnswer {
    seq: u64,
    stored_us: u64,
}

/// Measures one fan-out to `k` polls on `target` (simpleio on memory or on durable).
pub async fn measure(opts: Opts, target: Target, k: usize) -> Result<Outcome> {
    let servers = Servers::start(target, opts)?;
    let addr = servers.addr();
    let fleet = Fleet::start(Kind::Simpleio, addr, k, 5);
    let result = async {
        let wait = Duration::from_secs(30 + k as u64 / 100);
        fleet.wait_connected(wait).await?;
        wait_polls(addr, k as u64, wait).await?;
        let mut out = Outcome {
            polls: k,
            ..Outcome::default()
        };

        let t0 = realtime_ns();
        let started = tokio::time::Instant::now();
        let tick: TickAnswer = call_json(addr, Method::POST, "/bench/tick?mode=confirmed").await?;
        out.stored_us = tick.stored_us;
        fleet.wait_seen(tick.seq, wait).await;
        out.confirmed_received = fleet.progress.seen_by(tick.seq);
        out.all_answered_us = fleet.progress.last_seen_ns(tick.seq).saturating_sub(t0) / 1000;
        if wait_stats(addr, wait, "the emit's confirmation", |s| s.delivered >= 1)
            .await
            .is_ok()
        {
            out.all_confirmed_us = started.elapsed().as_micros() as u64;
        }

        // A second fan-out, once every client is back to a waiting poll: the first one also
        // paid for making each user's structures.
        wait_polls(addr, k as u64, wait).await?;
        let tick: TickAnswer = call_json(addr, Method::POST, "/bench/tick?mode=confirmed").await?;
        out.stored_again_us = tick.stored_us;
        fleet.wait_seen(tick.seq, wait).await;

        // Every client is back to a waiting poll before the volatile message.
        wait_polls(addr, k as u64, wait).await?;
        let t1 = realtime_ns();
        let tick: TickAnswer = call_json(addr, Method::POST, "/bench/tick?mode=volatile").await?;
        fleet.wait_seen(tick.seq, Duration::from_secs(5)).await;
        out.volatile_received = fleet.progress.seen_by(tick.seq);
        out.volatile_us = fleet.progress.last_seen_ns(tick.seq).saturating_sub(t1) / 1000;
        out.warn_events = stats(addr).await?.warn_events;
        out.peak_rss = servers.peak_rss()?;
        Ok::<_, anyhow::Error>(out)
    }
    .await;
    fleet.stop().await;
    result.with_context(|| format!("fan-out to {k}; server log: {}", servers.server.log_tail()))
}

/// The `fanout` scenario: on memory, then on durable storage.
pub async fn run(opts: Opts, k: usize) -> Result<Vec<Table>> {
    eprintln!("  fanout to {k} waiting polls (memory) ...");
    let memory = measure(opts, Target::Simpleio, k).await?;
    eprintln!("  fanout to {k} waiting polls (durable) ...");
    let durable = measure(opts, Target::SimpleioDurable, k).await?;
    let mut table = Table::new(
        format!(
            "fanout: one emit to {} waiting polls (simpleio)",
            report::count(k as u64)
        ),
        &["figure", "memory", "durable"],
    );
    type Figure = fn(&Outcome) -> String;
    let rows: [(&str, Figure); 9] = [
        (
            "confirmed: stored (server, `Sending::stored()`), the process's first fan-out",
            |o| report::ms(o.stored_us as f64),
        ),
        (
            "confirmed: stored, a second fan-out to the same polls",
            |o| report::ms(o.stored_again_us as f64),
        ),
        ("confirmed: every poll answered (load generator)", |o| {
            report::ms(o.all_answered_us as f64)
        }),
        ("confirmed: received / polls", |o| {
            format!("{} / {}", o.confirmed_received, o.polls)
        }),
        ("confirmed: emit resolved delivered (all confirmed)", |o| {
            if o.all_confirmed_us > 0 {
                report::ms(o.all_confirmed_us as f64)
            } else {
                "did not".into()
            }
        }),
        ("volatile: received / polls", |o| {
            format!("{} / {}", o.volatile_received, o.polls)
        }),
        ("volatile: last poll answered", |o| {
            report::ms(o.volatile_us as f64)
        }),
        ("lag/resync WARN events", |o| o.warn_events.to_string()),
        ("server peak RSS", |o| report::mib(o.peak_rss as f64)),
    ];
    for (name, figure) in rows {
        table.row(vec![name.to_owned(), figure(&memory), figure(&durable)]);
    }
    Ok(vec![table])
}
