//! `idle`: memory per waiting poll. K clients each hold one poll on its own connection;
//! (RSS with every poll waiting − RSS before) / K, for simpleio and for `hyper-hold` (bare hyper
//! holding each request: the floor of one waiting request on this HTTP stack). The difference
//! is simpleio's own part.

use std::time::Duration;

use anyhow::{Context, Result};

use super::{Opts, Servers, Target, wait_polls};
use crate::fleet::{Fleet, Kind};
use crate::report::{self, Table};

/// Bytes of RSS per waiting poll on `target`.
pub async fn per_poll(opts: Opts, target: Target, k: usize) -> Result<f64> {
    let servers = Servers::start(target, opts)?;
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

/// The `idle` scenario.
pub async fn run(opts: Opts, k: usize) -> Result<Vec<Table>> {
    eprintln!("  idle: {k} waiting polls on simpleio ...");
    let simpleio = per_poll(opts, Target::Simpleio, k).await?;
    eprintln!("  idle: {k} held requests on hyper-hold ...");
    let floor = per_poll(opts, Target::HyperHold, k).await?;
    let mut table = Table::new(
        format!(
            "idle: memory per waiting poll, K = {}",
            report::count(k as u64)
        ),
        &["server", "RSS per waiting poll"],
    );
    table.row(vec!["simpleio (memory)".into(), report::kib(simpleio)]);
    table.row(vec!["hyper-hold (floor)".into(), report::kib(floor)]);
    table.row(vec![
        "simpleio's own part".into(),
        report::kib(simpleio - floor),
    ]);
    table.note(
        "(RSS with all K polls waiting − RSS before the clients connected) / K. Each poll is \
         its own user, client and TCP connection; simpleio's handshake ran before each poll.",
    );
    Ok(vec![table])
}
