//! `history`: a long confirmed broadcast (N = 200, 10/s for 120 s) on one simpleio process, CPU
//! per delivered message in 10 s windows. Confirmed messages pile up in storage history; a
//! server whose cost per message grows with what it has sent shows it here. Target: the last
//! window within 10% of the first.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use http::Method;

use super::{Opts, Servers, Target, stats, wait_polls};
use crate::fleet::{Fleet, Kind};
use crate::http::call_json;
use crate::report::{self, Table};

/// One window's figures.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub cpu_us: u64,
    pub received: u64,
}

impl Window {
    pub fn cpu_per_msg(&self) -> f64 {
        self.cpu_us as f64 / self.received.max(1) as f64
    }
}

/// Measures `windows` windows of `window` each, with `clients` clients at 10 broadcasts/s.
pub async fn measure(
    opts: Opts,
    clients: usize,
    windows: usize,
    window: Duration,
) -> Result<Vec<Window>> {
    let servers = Servers::start(Target::Simpleio, opts)?;
    let addr = servers.addr();
    let secs = window.as_secs_f64() * windows as f64;
    let rate = 10.0;
    let fleet = Fleet::start(Kind::Simpleio, addr, clients, (rate * secs) as usize + 2);
    let result = async {
        fleet.wait_connected(Duration::from_secs(60)).await?;
        wait_polls(addr, clients as u64, Duration::from_secs(10)).await?;
        let _: serde_json::Value =
            call_json(addr, Method::POST, "/bench/tick?mode=confirmed").await?;
        fleet.wait_seen(0, Duration::from_secs(10)).await;
        let _: serde_json::Value = call_json(
            addr,
            Method::POST,
            &format!("/bench/start?rate={rate}&secs={secs}&mode=confirmed"),
        )
        .await?;
        let mut out = Vec::new();
        let mut cpu = servers.cpu_us()?.0;
        let mut received = fleet.progress.received.load(Ordering::Relaxed);
        let mut next = tokio::time::Instant::now();
        for _ in 0..windows {
            next += window;
            tokio::time::sleep_until(next).await;
            let c = servers.cpu_us()?.0;
            let r = fleet.progress.received.load(Ordering::Relaxed);
            out.push(Window {
                cpu_us: c - cpu,
                received: r - received,
            });
            (cpu, received) = (c, r);
        }
        let s = stats(addr).await?;
        anyhow::ensure!(s.send_errors == 0, "{} broadcasts failed", s.send_errors);
        Ok::<_, anyhow::Error>(out)
    }
    .await;
    fleet.stop().await;
    result
}

/// The `history` scenario.
pub async fn run(opts: Opts) -> Result<Vec<Table>> {
    let (windows, window) = if opts.quick { (3, 10) } else { (12, 10) };
    eprintln!("  history: {windows} windows of {window} s ...");
    let w = measure(opts, 200, windows, Duration::from_secs(window)).await?;
    let mut table = Table::new(
        format!(
            "history: simpleio confirmed, N = 200, 10 broadcasts/s for {} s, {window} s windows",
            windows as u64 * window
        ),
        &["window", "CPU", "received", "CPU/msg"],
    );
    for (i, win) in w.iter().enumerate() {
        table.row(vec![
            format!("{}", i + 1),
            report::ms(win.cpu_us as f64),
            report::count(win.received),
            report::us(win.cpu_per_msg()),
        ]);
    }
    if let (Some(first), Some(last)) = (w.first(), w.last()) {
        let change = last.cpu_per_msg() / first.cpu_per_msg() - 1.0;
        table.note(format!(
            "Last window vs first: {:+.1}% ({}; target within 10%). The first window starts \
             right after the warm-up tick, so it carries the start-up's last allocations.",
            change * 100.0,
            if change.abs() <= 0.10 {
                "within"
            } else {
                "OUTSIDE"
            }
        ));
    }
    Ok(vec![table])
}
