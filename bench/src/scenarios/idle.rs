//! `idle`: memory per waiting poll. K clients each hold one poll on its own connection;
//! (RSS with every poll waiting − RSS before) / K, for simpleio and for `hyper-hold` (bare hyper
//! holding each request: the floor of one waiting request on this HTTP stack). The difference
//! is simpleio's own part.
//!
//! Both servers are served alike (`--http`, [`crate::servers::Http`]), each way in turn, and
//! both clients ask one request before the one that waits (simpleio's handshake, the floor's
//! `/hello`), so that the floor's connections have answered as much as simpleio's. The
//! allocator is the executable's (`--features mimalloc|jemalloc`, [`crate::ALLOCATOR`]).

use std::time::Duration;

use anyhow::{Context, Result};

use super::{Opts, Servers, Target, wait_polls};
use crate::fleet::{Fleet, Kind};
use crate::report::{self, Table};
use crate::servers::Http;

/// Bytes of RSS per waiting poll on `target`, served as `http` says.
pub async fn per_poll(opts: Opts, target: Target, http: Http, k: usize) -> Result<f64> {
    let extra = ["--http".to_owned(), http.as_str().to_owned()];
    let servers = Servers::start_with(target, opts, &extra)?;
    let addr = servers.addr();
    // Let start-up allocations settle before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = servers.rss()?;
    let kind = match target {
        Target::HyperHold => Kind::Hold,
        _ => Kind::Simpleio,
    };
    let fleet = Fleet::start(kind, addr, k, 1);
    let result = async {
        // Well inside simpleio's 25 s hold, so no poll has been answered and re-sent.
        let wait = Duration::from_secs(20);
        fleet.wait_connected(wait).await?;
        wait_polls(addr, k as u64, wait).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = servers.rss()?;
        Ok::<_, anyhow::Error>(after.saturating_sub(before) as f64 / k as f64)
    }
    .await;
    fleet.stop().await;
    result.with_context(|| format!("idle polls on {target:?}: {}", servers.server.log_tail()))
}

/// The `idle` scenario: `opts.runs` rounds, each measuring simpleio then the floor, served
/// one way then the other; medians quoted, each round's differences in a note.
pub async fn run(opts: Opts, k: usize) -> Result<Vec<Table>> {
    let ways = [Http::Axum, Http::Http1];
    // [way][round] → (simpleio, floor)
    let mut found: Vec<Vec<(f64, f64)>> = vec![Vec::new(); ways.len()];
    for round in 0..opts.runs {
        for (w, &http) in ways.iter().enumerate() {
            let name = http.as_str();
            eprintln!(
                "  idle {}/{}: {k} waiting polls on simpleio ({name}) ...",
                round + 1,
                opts.runs
            );
            let simpleio = per_poll(opts, Target::Simpleio, http, k).await?;
            eprintln!(
                "  idle {}/{}: {k} held requests on hyper-hold ({name}) ...",
                round + 1,
                opts.runs
            );
            let floor = per_poll(opts, Target::HyperHold, http, k).await?;
            found[w].push((simpleio, floor));
        }
    }
    let mut table = Table::new(
        format!(
            "idle: memory per waiting poll, K = {}, allocator {}",
            report::count(k as u64),
            crate::ALLOCATOR,
        ),
        &[
            "served by",
            "simpleio",
            "hyper-hold (floor)",
            "simpleio's own part",
        ],
    );
    let mut rounds = Vec::new();
    for (w, http) in ways.iter().enumerate() {
        let simpleio: Vec<f64> = found[w].iter().map(|r| r.0).collect();
        let floor: Vec<f64> = found[w].iter().map(|r| r.1).collect();
        let own: Vec<f64> = found[w].iter().map(|r| r.0 - r.1).collect();
        table.row(vec![
            http.as_str().into(),
            report::kib(report::median(&simpleio)),
            report::kib(report::median(&floor)),
            report::kib(report::median(&own)),
        ]);
        let each: Vec<String> = own.iter().map(|v| report::kib(*v)).collect();
        rounds.push(format!("{}: {}", http.as_str(), each.join(", ")));
    }
    table.note(format!(
        "(RSS with all K polls waiting − RSS before the clients connected) / K, median of {} \
         rounds (simpleio's own part, each round: {}). Each poll is its own user, client and \
         TCP connection; each client asked one request before the one that waits (simpleio's \
         handshake, the floor's /hello of as many bytes). axum: `axum::serve`; http1: hyper's \
         HTTP/1 builder alone.",
        opts.runs,
        rounds.join("; "),
    ));
    Ok(vec![table])
}
