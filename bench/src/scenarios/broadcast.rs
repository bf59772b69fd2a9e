//! `broadcast` and `redis`: N polling clients, the server broadcasting to all of them on a
//! timer; server CPU per delivered message, peak RSS, latency, losses and duplicates.
//!
//! One measurement, on fresh server processes:
//!
//! 1. N clients connect and handshake (simpleio: until N polls wait on the server);
//! 2. one warm-up tick (seq 0), until every client has it;
//! 3. CPU is read, then the server broadcasts `rate × secs` ticks (seq 1…) by itself;
//! 4. once it is done, until every client has the last tick (or a few seconds), CPU is read
//!    again: CPU per message = CPU used in between / ticks received by the clients in between.

use std::time::Duration;

use anyhow::{Context, Result};
use http::Method;

use super::{Opts, Servers, Target, stats, wait_polls, wait_stats};
use crate::fleet::{Fleet, Kind};
use crate::http::call_json;
use crate::report::{self, Table, median, percentile};
use crate::servers::Mode;

/// One measurement's settings.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub target: Target,
    pub mode: Mode,
    pub clients: usize,
    pub rate: f64,
    pub secs: f64,
}

impl Case {
    /// `simpleio confirmed`, `simpleio volatile`, `socketioxide`, `simpleio+redis confirmed`,
    /// `simpleio+durable confirmed`.
    pub fn label(&self) -> String {
        match self.target {
            Target::Simpleio => format!("simpleio {}", self.mode.as_str()),
            Target::SimpleioRedis => format!("simpleio+redis {}", self.mode.as_str()),
            Target::SimpleioPostgres => format!("simpleio+postgres {}", self.mode.as_str()),
            Target::SimpleioRedisCluster { .. } => {
                format!("simpleio+redis-cluster {}", self.mode.as_str())
            }
            Target::SimpleioDurable => format!("simpleio+durable {}", self.mode.as_str()),
            Target::Socketioxide => "socketioxide polling".to_owned(),
            Target::HyperHold => "hyper-hold".to_owned(),
            Target::HyperPoll => "hyper-poll (floor)".to_owned(),
        }
    }
}

/// What one measurement found.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Server CPU, and the external store's (redis-server's, PostgreSQL's), during the send
    /// window, in µs.
    pub server_cpu_us: u64,
    pub store_cpu_us: u64,
    /// Ticks received by clients in the window (each client, each tick once).
    pub received: u64,
    /// Ticks the clients should have received: clients × ticks sent.
    pub expected: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub client_errors: u64,
    pub first_error: Option<String>,
    pub peak_rss: u64,
    pub p50_us: u32,
    pub p99_us: u32,
    /// Broadcasts the server made (warm-up included).
    pub sent: u64,
    /// Confirmed broadcasts resolved delivered / not delivered (warm-up included).
    pub delivered: u64,
    pub not_delivered: u64,
    pub warn_events: u64,
    /// The send window's length (from the first CPU reading to the second), in seconds.
    pub window_secs: f64,
    /// On `DurableStorage`: commits (fsyncs) during the send window, and the file's size at
    /// the end.
    pub commits: Option<u64>,
    pub file_bytes: Option<u64>,
}

impl Outcome {
    /// (server + Redis) CPU µs per message received.
    pub fn cpu_per_msg(&self) -> f64 {
        if self.received == 0 {
            return f64::NAN;
        }
        (self.server_cpu_us + self.store_cpu_us) as f64 / self.received as f64
    }
}

/// Runs one measurement.
pub async fn measure(case: Case, opts: Opts) -> Result<Outcome> {
    let servers = Servers::start(case.target, opts)?;
    let addr = servers.addr();
    let ticks = (case.rate * case.secs).round() as u64;
    let kind = match case.target {
        Target::Socketioxide => Kind::Eio,
        _ => Kind::Simpleio,
    };
    let fleet = Fleet::start(kind, addr, case.clients, ticks as usize + 1);
    let connect_time = Duration::from_secs(30 + case.clients as u64 / 100);
    let result = drive(case, &servers, &fleet, ticks, connect_time).await;
    let all = fleet.stop().await;
    let mut out = result.with_context(|| {
        format!(
            "{} with {} clients; server log: {}",
            case.label(),
            case.clients,
            servers.server.log_tail()
        )
    })?;
    let mut latencies: Vec<u32> = Vec::new();
    for c in &all {
        out.received += c.received;
        out.lost += c.missing(1..=out.sent.saturating_sub(1));
        out.duplicates += c.duplicates;
        out.out_of_order += c.out_of_order;
        out.client_errors += c.errors;
        if out.first_error.is_none() {
            out.first_error.clone_from(&c.first_error);
        }
        latencies.extend_from_slice(&c.latencies_us);
    }
    out.expected = case.clients as u64 * out.sent.saturating_sub(1);
    latencies.sort_unstable();
    out.p50_us = percentile(&latencies, 50.0);
    out.p99_us = percentile(&latencies, 99.0);
    Ok(out)
}

async fn drive(
    case: Case,
    servers: &Servers,
    fleet: &Fleet,
    ticks: u64,
    connect_time: Duration,
) -> Result<Outcome> {
    let addr = servers.addr();
    fleet.wait_connected(connect_time).await?;
    if kind_polls(case.target) {
        wait_polls(addr, case.clients as u64, Duration::from_secs(10)).await?;
    }
    let mode = case.mode.as_str();
    // The warm-up tick: every connection and code path has run once before measuring.
    let _: serde_json::Value =
        call_json(addr, Method::POST, &format!("/bench/tick?mode={mode}")).await?;
    if !fleet.wait_seen(0, Duration::from_secs(10)).await {
        eprintln!(
            "  note: only {} of {} clients got the warm-up tick",
            fleet.progress.seen_by(0),
            fleet.len()
        );
    }
    let commits0 = stats(addr).await?.commits;
    let (cpu0, store0) = servers.cpu_us()?;
    let window_start = tokio::time::Instant::now();
    let _: serde_json::Value = call_json(
        addr,
        Method::POST,
        &format!(
            "/bench/start?rate={}&secs={}&mode={mode}",
            case.rate, case.secs
        ),
    )
    .await?;
    let window = Duration::from_secs_f64(case.secs * 3.0 + 30.0);
    let s = wait_stats(addr, window, "the broadcasts to end", |s| !s.ticking).await?;
    // Until every client has the last tick; volatile ticks may be missed, so not for long.
    let drain = match case.mode {
        Mode::Confirmed => Duration::from_secs(10),
        Mode::Volatile => Duration::from_secs(2),
    };
    fleet.wait_seen(s.sent.saturating_sub(1), drain).await;
    let (cpu1, store1) = servers.cpu_us()?;
    let window_secs = window_start.elapsed().as_secs_f64();
    let commits1 = stats(addr).await?.commits;
    let peak_rss = servers.peak_rss()?;
    if case.mode == Mode::Confirmed && confirms(case.target) {
        // The last confirmations arrive with the clients' next polls.
        let _ = wait_stats(addr, Duration::from_secs(5), "confirmations", |s| {
            s.delivered + s.not_delivered >= s.sent
        })
        .await;
    }
    let s = stats(addr).await?;
    anyhow::ensure!(
        s.sent == ticks + 1,
        "the server sent {} broadcasts, not {}",
        s.sent,
        ticks + 1
    );
    Ok(Outcome {
        server_cpu_us: cpu1 - cpu0,
        store_cpu_us: store1 - store0,
        peak_rss,
        sent: s.sent,
        delivered: s.delivered,
        not_delivered: s.not_delivered,
        warn_events: s.warn_events,
        window_secs,
        commits: commits1.zip(commits0).map(|(b, a)| b - a),
        file_bytes: s.file_bytes,
        ..Outcome::default()
    })
}

/// Whether the server counts its waiting polls (so the driver can wait for all of them).
fn kind_polls(target: Target) -> bool {
    matches!(
        target,
        Target::Simpleio
            | Target::SimpleioRedis
            | Target::SimpleioRedisCluster { .. }
            | Target::SimpleioDurable
            | Target::SimpleioPostgres
            | Target::HyperPoll
    )
}

/// Whether the server confirms deliveries (simpleio's confirmed broadcasts).
fn confirms(target: Target) -> bool {
    matches!(
        target,
        Target::Simpleio
            | Target::SimpleioRedis
            | Target::SimpleioRedisCluster { .. }
            | Target::SimpleioDurable
            | Target::SimpleioPostgres
    )
}

/// The `broadcast` scenario: simpleio confirmed, simpleio volatile, socketioxide, at each N.
pub async fn broadcast(opts: Opts) -> Result<Vec<Table>> {
    let (sizes, secs): (&[usize], f64) = if opts.quick {
        (&[200, 1000, 5000], 5.0)
    } else {
        (&[200, 1000, 5000], 20.0)
    };
    let targets = [
        (Target::Simpleio, Mode::Confirmed),
        (Target::Simpleio, Mode::Volatile),
        (Target::Socketioxide, Mode::Confirmed),
        (Target::HyperPoll, Mode::Confirmed),
    ];
    let mut cases = Vec::new();
    for &n in sizes {
        for (target, mode) in targets {
            cases.push(Case {
                target,
                mode,
                clients: n,
                rate: 10.0,
                secs,
            });
        }
    }
    let results = run_cases(&cases, opts).await?;
    let mut table = results_table(
        &format!("broadcast: 10 broadcasts/s for {secs} s to N polling clients"),
        &results,
        opts,
    );
    let mut ratios = Table::new(
        "broadcast: simpleio (and the bare hyper floor) / socketioxide",
        &["N", "mode", "CPU/msg", "peak RSS", "p50", "p99"],
    );
    for &n in sizes {
        let sio = results
            .iter()
            .find(|(c, _)| c.clients == n && c.target == Target::Socketioxide);
        for (case, m) in results.iter().filter(|(c, _)| {
            c.clients == n && matches!(c.target, Target::Simpleio | Target::HyperPoll)
        }) {
            let Some((_, s)) = sio else { continue };
            ratios.row(vec![
                n.to_string(),
                match case.target {
                    Target::HyperPoll => "hyper-poll (floor)".to_owned(),
                    _ => case.mode.as_str().to_owned(),
                },
                report::ratio(m.cpu_per_msg, s.cpu_per_msg),
                report::ratio(m.peak_rss, s.peak_rss),
                report::ratio(m.p50_us, s.p50_us),
                report::ratio(m.p99_us, s.p99_us),
            ]);
        }
    }
    table.note(
        "CPU/msg: server CPU (utime+stime, all threads) during the send window / ticks received \
         by clients. Latency: the tick's send timestamp (server) → its answer parsed by the load \
         generator. Lost: ticks a client never saw; for volatile, ticks sent while a client was \
         between polls (by design). Delivered: confirmed broadcasts every recipient confirmed. \
         hyper-poll: bare hyper answering simpleio's poll from one shared list of ticks, no \
         users, no storage, no confirmation — the floor of one request per delivered message.",
    );
    Ok(vec![table, ratios])
}

/// The `redis` scenario: simpleio confirmed on `RedisStorage`, CPU = node + redis-server.
pub async fn redis(opts: Opts) -> Result<Vec<Table>> {
    let (sizes, secs): (&[usize], f64) = if opts.quick {
        (&[200, 1000], 5.0)
    } else {
        (&[200, 1000], 20.0)
    };
    let cases: Vec<Case> = sizes
        .iter()
        .map(|&n| Case {
            target: Target::SimpleioRedis,
            mode: Mode::Confirmed,
            clients: n,
            rate: 10.0,
            secs,
        })
        .collect();
    let results = run_cases(&cases, opts).await?;
    let mut table = results_table(
        &format!("redis: 10 confirmed broadcasts/s for {secs} s on RedisStorage"),
        &results,
        opts,
    );
    table.note(
        "CPU/msg = (simpleio process + redis-server) CPU / ticks received; both pinned to the \
         server core. The `redis CPU` column is redis-server's share.",
    );
    Ok(vec![table])
}

/// The medians over `--runs` of one case.
#[derive(Debug, Clone, Copy)]
pub struct Medians {
    pub cpu_per_msg: f64,
    pub store_cpu_share: f64,
    pub peak_rss: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub received: f64,
    pub expected: f64,
    pub lost: f64,
    pub duplicates: f64,
    pub out_of_order: f64,
    pub delivered: f64,
    pub sent: f64,
    pub warn_events: f64,
    /// On `DurableStorage`: commits (fsyncs) per second of the send window, and the file's size
    /// at the end; NaN elsewhere.
    pub commits_per_s: f64,
    pub file_bytes: f64,
}

pub(super) async fn run_cases(cases: &[Case], opts: Opts) -> Result<Vec<(Case, Medians)>> {
    let mut results = Vec::new();
    for case in cases {
        let mut runs = Vec::new();
        for run in 1..=opts.runs {
            eprintln!(
                "  {} N={} run {run}/{} ...",
                case.label(),
                case.clients,
                opts.runs
            );
            let o = measure(*case, opts).await?;
            eprintln!(
                "    {:.2} µs/msg, received {}/{}, lost {}, dup {}, p50 {} µs, p99 {} µs, \
                 peak RSS {}{}",
                o.cpu_per_msg(),
                o.received,
                o.expected,
                o.lost,
                o.duplicates,
                o.p50_us,
                o.p99_us,
                report::mib(o.peak_rss as f64),
                o.first_error
                    .as_ref()
                    .map(|e| format!(", {} client errors (first: {e})", o.client_errors))
                    .unwrap_or_default()
            );
            runs.push(o);
        }
        let m = |f: &dyn Fn(&Outcome) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        results.push((
            *case,
            Medians {
                cpu_per_msg: m(&|o| o.cpu_per_msg()),
                store_cpu_share: m(&|o| {
                    o.store_cpu_us as f64 / (o.server_cpu_us + o.store_cpu_us).max(1) as f64
                }),
                peak_rss: m(&|o| o.peak_rss as f64),
                p50_us: m(&|o| o.p50_us as f64),
                p99_us: m(&|o| o.p99_us as f64),
                received: m(&|o| o.received as f64),
                expected: m(&|o| o.expected as f64),
                lost: m(&|o| o.lost as f64),
                duplicates: m(&|o| o.duplicates as f64),
                out_of_order: m(&|o| o.out_of_order as f64),
                delivered: m(&|o| o.delivered as f64),
                sent: m(&|o| o.sent as f64),
                warn_events: m(&|o| o.warn_events as f64),
                commits_per_s: m(&|o| {
                    o.commits
                        .map_or(f64::NAN, |c| c as f64 / o.window_secs.max(1e-9))
                }),
                file_bytes: m(&|o| o.file_bytes.map_or(f64::NAN, |b| b as f64)),
            },
        ));
    }
    Ok(results)
}

fn results_table(title: &str, results: &[(Case, Medians)], opts: Opts) -> Table {
    let mut table = Table::new(
        format!("{title} (median of {} run(s))", opts.runs),
        &[
            "server",
            "N",
            "CPU/msg",
            "redis CPU",
            "peak RSS",
            "p50",
            "p99",
            "received / expected",
            "lost",
            "dup",
            "out of order",
            "delivered / sent",
            "warn events",
        ],
    );
    for (case, m) in results {
        let confirmed = case.mode == Mode::Confirmed && confirms(case.target);
        table.row(vec![
            case.label(),
            case.clients.to_string(),
            report::us(m.cpu_per_msg),
            if case.target == Target::SimpleioRedis {
                format!("{:.0}%", m.store_cpu_share * 100.0)
            } else {
                "–".into()
            },
            report::mib(m.peak_rss),
            report::ms(m.p50_us),
            report::ms(m.p99_us),
            format!(
                "{} / {}",
                report::count(m.received as u64),
                report::count(m.expected as u64)
            ),
            report::count(m.lost as u64),
            report::count(m.duplicates as u64),
            report::count(m.out_of_order as u64),
            if confirmed {
                format!("{} / {}", m.delivered, m.sent)
            } else {
                "–".into()
            },
            if matches!(case.target, Target::Socketioxide | Target::HyperPoll) {
                "–".into()
            } else {
                format!("{}", m.warn_events)
            },
        ]);
    }
    table
}
