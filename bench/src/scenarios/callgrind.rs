//! `callgrind`: instructions per delivered message, for catching regressions — a repeatable
//! count, not a speed. The simpleio server runs under `valgrind --tool=callgrind`; N clients
//! connect, one warm-up tick runs, the counters are zeroed (`callgrind_control -z`), then T
//! confirmed broadcasts go out in lockstep: each one only once every client is back to a
//! waiting poll, so every poll answers exactly one message and the work does not depend on
//! timing. The server then exits and callgrind writes its totals.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use http::Method;
use serde::Deserialize;

use super::{Opts, Servers, wait_polls, wait_stats};
use crate::child;
use crate::fleet::{Fleet, Kind};
use crate::http::{call, call_json};
use crate::report::{self, Table};

/// What a callgrind run found.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub instructions: u64,
    pub delivered_messages: u64,
    /// Whether the counters were zeroed after the warm-up (else start-up is included).
    pub zeroed: bool,
}

impl Outcome {
    pub fn per_message(&self) -> f64 {
        self.instructions as f64 / self.delivered_messages.max(1) as f64
    }
}

#[derive(Deserialize)]
struct TickAnswer {
    seq: u64,
}

/// Which server runs under callgrind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// simpleio, confirmed broadcasts.
    Simpleio,
    /// simpleio with a Prometheus recorder installed: what its metrics cost.
    SimpleioMetrics,
    /// socketioxide, its broadcasts (at most once).
    Socketioxide,
    /// The bare hyper long-polling floor (`server hyper-poll`).
    HyperPoll,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Simpleio => "simpleio",
            Server::SimpleioMetrics => "simpleio-metrics",
            Server::Socketioxide => "socketioxide",
            Server::HyperPoll => "hyper-poll",
        }
    }

    /// The `server` command's arguments.
    fn args(self) -> Vec<String> {
        match self {
            Server::Simpleio => vec!["simpleio".to_owned()],
            Server::SimpleioMetrics => vec!["simpleio".to_owned(), "--metrics".to_owned()],
            Server::Socketioxide => vec!["socketioxide".to_owned()],
            Server::HyperPoll => vec!["hyper-poll".to_owned()],
        }
    }
}

/// Runs `ticks` lockstep simpleio broadcasts to `clients` clients under callgrind.
pub async fn measure(opts: Opts, clients: usize, ticks: u64) -> Result<Outcome> {
    measure_server(opts, Server::Simpleio, clients, ticks).await
}

/// Runs `ticks` lockstep broadcasts of `which` to `clients` clients under callgrind.
pub async fn measure_server(
    opts: Opts,
    which: Server,
    clients: usize,
    ticks: u64,
) -> Result<Outcome> {
    if !child::have("valgrind") {
        bail!("valgrind is not installed (apt-get install valgrind)");
    }
    let out_file = child::work_dir()?.join(format!("{}-callgrind.out", which.name()));
    let _ = std::fs::remove_file(&out_file);
    let wrapper = vec![
        "valgrind".to_owned(),
        "--tool=callgrind".to_owned(),
        format!("--callgrind-out-file={}", out_file.display()),
    ];
    let server = child::server(
        &format!("{}-callgrind", which.name()),
        &which.args(),
        opts.server_core,
        &wrapper,
    )?;
    let servers = Servers {
        server,
        redis: Vec::new(),
        postgres: None,
        _data: None,
    };
    let addr = servers.addr();
    /// Under valgrind a poll's round trip takes a few milliseconds; this is ample.
    const SETTLE: Duration = Duration::from_millis(250);
    let kind = match which {
        Server::Simpleio | Server::SimpleioMetrics | Server::HyperPoll => Kind::Simpleio,
        Server::Socketioxide => Kind::Eio,
    };
    // Servers that count their waiting polls, and those that confirm deliveries.
    let polls = which != Server::Socketioxide;
    let simpleio = matches!(which, Server::Simpleio | Server::SimpleioMetrics);
    let fleet = Fleet::start(kind, addr, clients, ticks as usize + 1);
    // Everything is ~50× slower under valgrind.
    let wait = Duration::from_secs(120);
    let result = async {
        fleet.wait_connected(wait).await?;
        if polls {
            wait_polls(addr, clients as u64, wait).await?;
        } else {
            tokio::time::sleep(SETTLE * 4).await;
        }
        let warm: TickAnswer = call_json(addr, Method::POST, "/bench/tick?mode=confirmed").await?;
        anyhow::ensure!(
            fleet.wait_seen(warm.seq, wait).await,
            "warm-up tick not received"
        );
        if simpleio {
            wait_stats(addr, wait, "the warm-up's confirmation", |s| {
                s.delivered >= 1
            })
            .await?;
            wait_polls(addr, clients as u64, wait).await?;
        } else if polls {
            wait_polls(addr, clients as u64, wait).await?;
        } else {
            tokio::time::sleep(SETTLE * 4).await;
        }
        let zeroed = zero(servers.server.pid());
        for _ in 0..ticks {
            let t: TickAnswer = call_json(addr, Method::POST, "/bench/tick?mode=confirmed").await?;
            anyhow::ensure!(
                fleet.wait_seen(t.seq, wait).await,
                "tick {} not received",
                t.seq
            );
            // Let every client's next poll arrive and wait. A pause, not a stats loop: polling
            // the stats route would add instructions that depend on how long the tick took.
            tokio::time::sleep(SETTLE).await;
        }
        if simpleio {
            let s = wait_stats(addr, wait, "every confirmation", |s| {
                s.delivered + s.not_delivered > ticks
            })
            .await?;
            anyhow::ensure!(
                s.not_delivered == 0,
                "{} broadcasts not delivered",
                s.not_delivered
            );
        }
        Ok::<_, anyhow::Error>(zeroed)
    }
    .await;
    fleet.stop().await;
    let zeroed = result.with_context(|| format!("callgrind run: {}", servers.server.log_tail()))?;
    call(addr, Method::POST, "/bench/exit").await?;
    let Servers { server, .. } = servers;
    server.wait_exit(Duration::from_secs(120))?;
    let instructions = totals(&out_file)?;
    Ok(Outcome {
        instructions,
        delivered_messages: ticks * clients as u64,
        zeroed,
    })
}

/// Zeroes the counters of the callgrind process `pid`; tells whether that worked.
fn zero(pid: u32) -> bool {
    let ok = Command::new("callgrind_control")
        .arg("-z")
        .arg(pid.to_string())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("  note: `callgrind_control -z` failed; the count includes start-up");
    }
    ok
}

/// The total instruction count (`summary:` or `totals:` line) of a callgrind output file.
fn totals(path: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading callgrind output {}", path.display()))?;
    for line in text.lines() {
        if let Some(rest) = line
            .strip_prefix("summary:")
            .or_else(|| line.strip_prefix("totals:"))
        {
            let first = rest
                .split_whitespace()
                .next()
                .context("empty totals line")?;
            return first.parse().context("non-numeric totals");
        }
    }
    bail!("no `summary:`/`totals:` line in {}", path.display())
}

/// The `callgrind` scenario: simpleio, simpleio with a metrics recorder, socketioxide, then the
/// bare hyper floor, on the same lockstep.
pub async fn run(opts: Opts, clients: usize, ticks: u64) -> Result<Vec<Table>> {
    let mut table = Table::new(
        format!("callgrind: {clients} clients × {ticks} broadcasts, lockstep"),
        &[
            "server",
            "instructions",
            "delivered messages",
            "instructions / message",
        ],
    );
    let mut zeroed = true;
    let mut per_message = Vec::new();
    for which in [
        Server::Simpleio,
        Server::SimpleioMetrics,
        Server::Socketioxide,
        Server::HyperPoll,
    ] {
        eprintln!(
            "  callgrind: {} with {clients} clients × {ticks} lockstep broadcasts ...",
            which.name()
        );
        let o = measure_server(opts, which, clients, ticks).await?;
        zeroed &= o.zeroed;
        per_message.push(o.per_message());
        table.row(vec![
            which.name().to_owned(),
            report::count(o.instructions),
            report::count(o.delivered_messages),
            report::count(o.per_message() as u64),
        ]);
    }
    table.note(format!(
        "With a metrics recorder (Prometheus, installed before the layer is built): {:+.2}% \
         instructions per message.",
        (per_message[1] / per_message[0] - 1.0) * 100.0
    ));
    table.note(format!(
        "For regressions: a repeatable count (compare builds on the same scenario), not a speed; \
         user-space instructions only (the kernel's share of a request is not counted). {}",
        if zeroed {
            "Counters zeroed after connect and warm-up; includes the driver's tick requests and \
             the shutdown."
        } else {
            "Includes start-up (callgrind_control -z failed)."
        }
    ));
    Ok(vec![table])
}
