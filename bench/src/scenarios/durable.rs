//! `durable`: `DurableStorage` beside `MemoryStorage`, `RedisStorage` and `PostgresStorage`, in
//! the same run (Redis and PostgreSQL each a fresh server of the benchmark's own, pinned to the
//! server core; skipped if not installed).
//!
//! 1. The `broadcast` measurement (confirmed, N = 200, 10/s): CPU per delivered message (with
//!    redis-server's or PostgreSQL's), peak RSS, latency, losses, duplicates; on durable also
//!    commits (each one fsync) per second of the send window and the file's size at the end.
//! 2. Confirmed direct messages as fast as they go: N users (`--dm-users`, 200 by default),
//!    user `u{i}` sending to
//!    `u{(i+1) % N}` through the server's own send path (`on_behalf_of(..).to_user(..).emit`,
//!    [`crate::servers::dm`]), a window of W unconfirmed messages per sender, every recipient a
//!    polling client of the load generator that confirms what it got with its next poll.
//!    Confirmed messages per second (resolved delivered / time from the start to the last
//!    confirmation), CPU per message, and on durable commits per second and messages per
//!    commit. The ratio durable / memory is the figure to watch. The storages take turns run
//!    by run (memory, durable, redis, postgres, memory, …), so that a change in the machine's
//!    load falls on all of them. The load generator's own CPU is reported beside the server's:
//!    near 100% of its core, it, not the server, sets the pace.
//! 3. With `--seconds S`: the same direct-message load on durable, then on PostgreSQL, for S
//!    seconds each, the file's size (the tables' on PostgreSQL, `pg_total_relation_size`) and
//!    commits, throughput, RSS sampled every 10 s: it should level off, as delivered messages
//!    free their pages (or rows, once autovacuum has run).

use std::time::Duration;

use anyhow::{Context, Result};
use http::Method;
use tokio::time::Instant;

use super::broadcast::{self, Case, Medians};
use super::{Opts, Servers, Target, stats, wait_polls};
use crate::child;
use crate::fleet::{Fleet, Kind};
use crate::http::call_json;
use crate::report::{self, Table, median, percentile};
use crate::servers::Mode;
use crate::servers::dm::DmStats;

/// Clients of the broadcast measurement, and users of the direct-message one by default.
pub const USERS: usize = 200;
/// Unconfirmed direct messages per sender at most: enough that a poll answers several at once
/// and the next emit never waits for the previous message's confirmation.
pub const WINDOW: usize = 32;
/// How often the long run samples the file.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// One direct-message measurement's settings.
#[derive(Debug, Clone, Copy)]
pub struct DmCase {
    pub target: Target,
    pub users: usize,
    pub window: usize,
    pub secs: f64,
    /// What a sender awaits before its next message.
    pub send: crate::servers::dm::Send,
}

/// One sample of a long run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Since the load started, s.
    pub at_secs: f64,
    /// The durable file's size, or PostgreSQL's tables' (`pg_total_relation_size`, summed).
    pub store_bytes: u64,
    /// Cumulative, since the load started.
    pub commits: u64,
    pub delivered: u64,
    pub rss: u64,
}

/// What one direct-message measurement found.
#[derive(Debug, Clone, Default)]
pub struct DmOutcome {
    pub sent: u64,
    pub delivered: u64,
    pub not_delivered: u64,
    pub send_errors: u64,
    pub first_error: Option<String>,
    /// From the start until the last confirmation (server clock), s.
    pub elapsed_secs: f64,
    /// CPU of the server and of redis-server or PostgreSQL over the same span (driver's
    /// readings), µs.
    pub server_cpu_us: u64,
    pub store_cpu_us: u64,
    /// CPU of this process, the load generator, over the same span, µs.
    pub loadgen_cpu_us: u64,
    /// How long the server's threads waited, runnable, for a CPU over the same span, µs.
    pub server_wait_us: u64,
    /// Messages the clients received (each once), duplicates and out-of-order ones among them.
    pub received: u64,
    /// Polls the clients got answered.
    pub answers: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub client_errors: u64,
    /// WARN events the server logged during the load (a hub that fell behind the storage's
    /// signals, each a re-read of everything waiting).
    pub warn_events: u64,
    pub peak_rss: u64,
    pub p50_us: u32,
    pub p99_us: u32,
    /// Emit to `stored()`, at the server.
    pub stored_p50_us: u32,
    pub stored_p99_us: u32,
    /// On durable: commits during the load, the file's size at the end.
    pub commits: Option<u64>,
    pub file_bytes: Option<u64>,
    /// On PostgreSQL: each table's size and rows at the end, largest first.
    pub tables: Vec<child::TableSize>,
    pub samples: Vec<Sample>,
}

impl DmOutcome {
    /// Confirmed messages per second.
    pub fn rate(&self) -> f64 {
        self.delivered as f64 / self.elapsed_secs.max(1e-9)
    }

    /// (server + Redis or PostgreSQL) CPU µs per confirmed message.
    pub fn cpu_per_msg(&self) -> f64 {
        if self.delivered == 0 {
            return f64::NAN;
        }
        (self.server_cpu_us + self.store_cpu_us) as f64 / self.delivered as f64
    }

    /// The store's (Redis's, PostgreSQL's) CPU µs per confirmed message.
    pub fn store_cpu_per_msg(&self) -> f64 {
        if self.delivered == 0 {
            return f64::NAN;
        }
        self.store_cpu_us as f64 / self.delivered as f64
    }

    /// The share of its core the server used, from the start to the last confirmation.
    pub fn server_core(&self) -> f64 {
        self.server_cpu_us as f64 / (self.elapsed_secs * 1e6).max(1.0)
    }

    /// How long the server's threads waited for a CPU, as a share of the same time (over 100%
    /// when several waited at once).
    pub fn server_wait(&self) -> f64 {
        self.server_wait_us as f64 / (self.elapsed_secs * 1e6).max(1.0)
    }

    /// The share of its core the load generator used over the same time.
    pub fn loadgen_core(&self) -> f64 {
        self.loadgen_cpu_us as f64 / (self.elapsed_secs * 1e6).max(1.0)
    }

    /// The tables' total size on PostgreSQL.
    pub fn tables_bytes(&self) -> Option<u64> {
        (!self.tables.is_empty()).then(|| self.tables.iter().map(|t| t.bytes).sum())
    }

    /// Messages per answered poll: what each answer's HTTP cost is shared by.
    pub fn per_poll(&self) -> f64 {
        self.received as f64 / self.answers.max(1) as f64
    }

    /// Stored messages a client never received.
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }
}

/// Runs one direct-message measurement; with `sample`, samples the file every [`SAMPLE_EVERY`].
pub async fn measure_dm(case: DmCase, opts: Opts, sample: bool) -> Result<DmOutcome> {
    let servers = Servers::start(case.target, opts)?;
    let addr = servers.addr();
    // Direct messages are numbered per sender, not fleet-wide: nothing to track per number.
    let fleet = Fleet::start(Kind::Simpleio, addr, case.users, 1);
    let result = drive_dm(case, &servers, &fleet, sample).await;
    let all = fleet.stop().await;
    let mut out = result.with_context(|| {
        format!(
            "direct messages on {:?}; server log: {}",
            case.target,
            servers.server.log_tail()
        )
    })?;
    let mut latencies: Vec<u32> = Vec::new();
    for c in &all {
        out.received += c.received;
        out.answers += c.answers;
        out.duplicates += c.duplicates;
        out.out_of_order += c.out_of_order;
        out.client_errors += c.errors;
        latencies.extend_from_slice(&c.latencies_us);
    }
    latencies.sort_unstable();
    out.p50_us = percentile(&latencies, 50.0);
    out.p99_us = percentile(&latencies, 99.0);
    Ok(out)
}

async fn dm_stats(addr: std::net::SocketAddr) -> Result<DmStats> {
    call_json(addr, Method::GET, "/bench/dm/stats").await
}

/// PostgreSQL's tables' sizes, on a blocking thread (`psql`): the load generator's one
/// thread must not stop answering polls for it. Empty on the other storages.
async fn table_sizes(servers: &Servers) -> Result<Vec<child::TableSize>> {
    let Some(port) = servers.postgres.as_ref().map(|pg| pg.port) else {
        return Ok(Vec::new());
    };
    tokio::task::spawn_blocking(move || child::postgres_table_sizes(port, PG_SCHEMA))
        .await
        .context("the thread reading the tables' sizes")?
}

/// The schema `PostgresStorage` makes by default, which the server uses.
const PG_SCHEMA: &str = "simpleio";

/// What a sample reports as the store's size: the durable file's, or PostgreSQL's tables'.
async fn store_bytes(servers: &Servers, s: &crate::servers::Stats) -> Result<u64> {
    if servers.postgres.is_some() {
        Ok(table_sizes(servers).await?.iter().map(|t| t.bytes).sum())
    } else {
        Ok(s.file_bytes.unwrap_or(0))
    }
}

async fn drive_dm(
    case: DmCase,
    servers: &Servers,
    fleet: &Fleet,
    sample: bool,
) -> Result<DmOutcome> {
    let addr = servers.addr();
    fleet
        .wait_connected(Duration::from_secs(30 + case.users as u64 / 100))
        .await?;
    wait_polls(addr, case.users as u64, Duration::from_secs(10)).await?;
    let before = stats(addr).await?;
    let (commits0, warnings0) = (before.commits, before.warn_events);
    let (cpu0, store0) = servers.cpu_us()?;
    let loadgen0 = crate::proc::cpu_us(std::process::id())?;
    let wait0 = crate::proc::runqueue_wait_us(servers.server.pid())?;
    let started = Instant::now();
    let _: serde_json::Value = call_json(
        addr,
        Method::POST,
        &format!(
            "/bench/dm/start?users={}&window={}&secs={}&send={}",
            case.users,
            case.window,
            case.secs,
            case.send.as_str()
        ),
    )
    .await?;
    let timeout = Duration::from_secs_f64(case.secs * 3.0 + 60.0);
    let mut samples = Vec::new();
    let mut next_sample = started + SAMPLE_EVERY;
    let dm = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let dm = dm_stats(addr).await?;
        if !dm.running {
            break dm;
        }
        if sample && Instant::now() >= next_sample {
            next_sample += SAMPLE_EVERY;
            let s = stats(addr).await?;
            samples.push(Sample {
                at_secs: started.elapsed().as_secs_f64(),
                store_bytes: store_bytes(servers, &s).await?,
                commits: s.commits.zip(commits0).map_or(0, |(b, a)| b - a),
                delivered: dm.delivered,
                rss: servers.rss()?,
            });
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "the direct messages did not end within {timeout:?}: {dm:?}"
        );
    };
    let (cpu1, store1) = servers.cpu_us()?;
    let loadgen1 = crate::proc::cpu_us(std::process::id())?;
    let wait1 = crate::proc::runqueue_wait_us(servers.server.pid())?;
    let s = stats(addr).await?;
    let commits = s.commits.zip(commits0).map(|(b, a)| b - a);
    let tables = table_sizes(servers).await?;
    if sample {
        samples.push(Sample {
            at_secs: started.elapsed().as_secs_f64(),
            store_bytes: if tables.is_empty() {
                s.file_bytes.unwrap_or(0)
            } else {
                tables.iter().map(|t| t.bytes).sum()
            },
            commits: commits.unwrap_or(0),
            delivered: dm.delivered,
            rss: servers.rss()?,
        });
    }
    Ok(DmOutcome {
        sent: dm.sent,
        delivered: dm.delivered,
        not_delivered: dm.not_delivered,
        send_errors: dm.send_errors,
        first_error: dm.first_error,
        elapsed_secs: dm.elapsed_us as f64 / 1e6,
        server_cpu_us: cpu1 - cpu0,
        store_cpu_us: store1 - store0,
        loadgen_cpu_us: loadgen1 - loadgen0,
        server_wait_us: wait1.saturating_sub(wait0),
        peak_rss: servers.peak_rss()?,
        stored_p50_us: dm.stored_p50_us,
        stored_p99_us: dm.stored_p99_us,
        commits,
        file_bytes: s.file_bytes,
        warn_events: s.warn_events.saturating_sub(warnings0),
        tables,
        samples,
        ..DmOutcome::default()
    })
}

pub fn storage_name(target: Target) -> &'static str {
    match target {
        Target::Simpleio => "memory",
        Target::SimpleioDurable => "durable",
        Target::SimpleioRedis => "redis",
        Target::SimpleioPostgres => "postgres",
        Target::SimpleioRedisCluster {
            replicas: false, ..
        } => "redis cluster, 3 masters",
        Target::SimpleioRedisCluster {
            replicas: true,
            acks: false,
        } => "redis cluster, 3 masters + 3 replicas",
        Target::SimpleioRedisCluster {
            replicas: true,
            acks: true,
        } => "redis cluster, 3 + 3, replica acks",
        Target::Socketioxide | Target::HyperHold | Target::HyperPoll => "–",
    }
}

/// The `durable` scenario.
pub async fn run(opts: Opts) -> Result<Vec<Table>> {
    let (secs, dm_secs) = if opts.quick { (5.0, 5.0) } else { (20.0, 10.0) };
    let mut targets = vec![Target::Simpleio, Target::SimpleioDurable];
    if !opts.with_redis {
        eprintln!("  note: --storages without redis: no Redis column");
    } else if child::have("redis-server") {
        targets.push(Target::SimpleioRedis);
    } else {
        eprintln!("  note: redis-server is not installed: no Redis column");
    }
    if !opts.with_postgres {
        eprintln!("  note: --storages without postgres: no PostgreSQL column");
    } else if child::postgres_bin().is_some() {
        targets.push(Target::SimpleioPostgres);
    } else {
        eprintln!("  note: PostgreSQL is not installed (/usr/lib/postgresql/*/bin): no column");
    }
    let mut tables = Vec::new();

    let cases: Vec<Case> = targets
        .iter()
        .map(|&target| Case {
            target,
            mode: Mode::Confirmed,
            clients: USERS,
            rate: 10.0,
            secs,
        })
        .collect();
    let results = broadcast::run_cases(&cases, opts).await?;
    tables.push(broadcast_table(&results, secs, opts));

    let users = opts.dm_users;
    let mut dm: Vec<(DmCase, Vec<DmOutcome>)> = targets
        .iter()
        .map(|&target| {
            let case = DmCase {
                target,
                users,
                window: WINDOW,
                secs: dm_secs,
                send: opts.dm_send,
            };
            (case, Vec::new())
        })
        .collect();
    // Run by run, each storage in turn: the machine's load moves over minutes, and should
    // fall on all of them alike.
    for run in 1..=opts.runs {
        for (case, runs) in &mut dm {
            eprintln!(
                "  direct messages on {}, {} users, run {run}/{} ...",
                storage_name(case.target),
                case.users,
                opts.runs
            );
            let o = measure_dm(*case, opts, false).await?;
            eprintln!(
                "    {:.0} msg/s confirmed, {:.2} µs/msg (store {:.2}), server core {:.0}% \
                 (waited for a CPU {:.0}%), load generator core {:.0}%, {:.1} msgs per poll, sent {} delivered {} received {}, dup {}, \
                 {} warnings, p50 {} µs, p99 {} µs{}{}{}",
                o.rate(),
                o.cpu_per_msg(),
                o.store_cpu_per_msg(),
                o.server_core() * 100.0,
                o.server_wait() * 100.0,
                o.loadgen_core() * 100.0,
                o.per_poll(),
                o.sent,
                o.delivered,
                o.received,
                o.duplicates,
                o.warn_events,
                o.p50_us,
                o.p99_us,
                o.commits
                    .map(|c| format!(", {:.0} commits/s", c as f64 / o.elapsed_secs))
                    .unwrap_or_default(),
                o.tables_bytes()
                    .map(|b| format!(", tables {} KiB", b / 1024))
                    .unwrap_or_default(),
                o.first_error
                    .as_ref()
                    .map(|e| format!(", {} send errors (first: {e})", o.send_errors))
                    .unwrap_or_default()
            );
            runs.push(o);
        }
    }
    tables.extend(dm_tables(&dm, opts));

    if let Some(seconds) = opts.seconds {
        for target in targets.iter().copied().filter(|t| match t {
            Target::SimpleioDurable => opts.long_durable,
            Target::SimpleioPostgres => opts.long_postgres,
            _ => false,
        }) {
            let case = DmCase {
                target,
                users,
                window: WINDOW,
                secs: seconds as f64,
                send: opts.dm_send,
            };
            eprintln!(
                "  long run: direct messages on {} for {seconds} s ...",
                storage_name(target)
            );
            let o = measure_dm(case, opts, true).await?;
            tables.push(long_run_table(case, &o, seconds));
        }
    }
    Ok(tables)
}

/// Whether the target's store is a server of its own, whose CPU is counted with the server's.
fn has_store_process(target: Target) -> bool {
    matches!(target, Target::SimpleioRedis | Target::SimpleioPostgres)
}

fn broadcast_table(results: &[(Case, Medians)], secs: f64, opts: Opts) -> Table {
    let mut table = Table::new(
        format!(
            "durable: 10 confirmed broadcasts/s for {secs} s to {USERS} polling clients \
             (median of {} run(s))",
            opts.runs
        ),
        &[
            "storage",
            "CPU/msg",
            "store CPU",
            "peak RSS",
            "p50",
            "p99",
            "lost",
            "dup",
            "delivered / sent",
            "fsyncs/s",
            "file size",
        ],
    );
    for (case, m) in results {
        let durable = case.target == Target::SimpleioDurable;
        table.row(vec![
            storage_name(case.target).to_owned(),
            report::us(m.cpu_per_msg),
            if has_store_process(case.target) {
                format!("{:.0}%", m.store_cpu_share * 100.0)
            } else {
                "–".into()
            },
            report::mib(m.peak_rss),
            report::ms(m.p50_us),
            report::ms(m.p99_us),
            report::count(m.lost as u64),
            report::count(m.duplicates as u64),
            format!("{} / {}", m.delivered, m.sent),
            if durable {
                format!("{:.1}", m.commits_per_s)
            } else {
                "–".into()
            },
            if durable {
                report::kib(m.file_bytes)
            } else {
                "–".into()
            },
        ]);
    }
    table.note(
        "CPU/msg: server CPU (+ redis-server's or every PostgreSQL process's, whose share is \
         shown as store CPU) during the send window / ticks received. fsyncs/s: \
         DurableStorage's committed transactions (one fsync each) per second of the send \
         window. File size: the redb file at the end.",
    );
    table
}

fn dm_tables(dm: &[(DmCase, Vec<DmOutcome>)], opts: Opts) -> Vec<Table> {
    let users = dm.first().map_or(USERS, |(c, _)| c.users);
    let mut table = Table::new(
        format!(
            "durable: confirmed direct messages, {users} users each sending to the next, \
             {WINDOW} unconfirmed per sender (median of {} run(s), taken in turns)",
            opts.runs
        ),
        &[
            "storage",
            "confirmed msg/s",
            "CPU/msg",
            "store CPU/msg",
            "server core",
            "server waits",
            "load gen. core",
            "msgs per poll",
            "peak RSS",
            "p50",
            "p99",
            "lost",
            "dup",
            "warnings (all runs)",
            "delivered / sent",
            "send errors",
            "fsyncs/s",
            "msgs per fsync",
            "file / tables size",
        ],
    );
    let mut rates = Vec::new();
    for (case, runs) in dm {
        let m = |f: &dyn Fn(&DmOutcome) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        let durable = case.target == Target::SimpleioDurable;
        let postgres = case.target == Target::SimpleioPostgres;
        let rate = m(&|o| o.rate());
        rates.push((
            case.target,
            rate,
            runs.iter().map(DmOutcome::rate).collect::<Vec<_>>(),
        ));
        let commits_per_s = m(&|o| {
            o.commits
                .map_or(f64::NAN, |c| c as f64 / o.elapsed_secs.max(1e-9))
        });
        let per_commit = m(&|o| {
            o.commits
                .map_or(f64::NAN, |c| o.delivered as f64 / c.max(1) as f64)
        });
        table.row(vec![
            storage_name(case.target).to_owned(),
            report::count(rate as u64),
            report::us(m(&|o| o.cpu_per_msg())),
            if has_store_process(case.target) {
                report::us(m(&|o| o.store_cpu_per_msg()))
            } else {
                "–".into()
            },
            format!("{:.0}%", 100.0 * m(&|o| o.server_core())),
            format!("{:.0}%", 100.0 * m(&|o| o.server_wait())),
            format!("{:.0}%", 100.0 * m(&|o| o.loadgen_core())),
            format!("{:.1}", m(&|o| o.per_poll())),
            report::mib(m(&|o| o.peak_rss as f64)),
            report::ms(m(&|o| o.p50_us as f64)),
            report::ms(m(&|o| o.p99_us as f64)),
            report::count(m(&|o| o.lost() as f64) as u64),
            report::count(m(&|o| o.duplicates as f64) as u64),
            report::count(runs.iter().map(|o| o.warn_events).sum()),
            format!(
                "{} / {}",
                report::count(m(&|o| o.delivered as f64) as u64),
                report::count(m(&|o| o.sent as f64) as u64)
            ),
            report::count(m(&|o| o.send_errors as f64) as u64),
            if durable {
                format!("{commits_per_s:.0}")
            } else {
                "–".into()
            },
            if durable {
                format!("{per_commit:.1}")
            } else {
                "–".into()
            },
            if durable {
                report::kib(m(&|o| o.file_bytes.map_or(f64::NAN, |b| b as f64)))
            } else if postgres {
                report::kib(m(&|o| o.tables_bytes().map_or(f64::NAN, |b| b as f64)))
            } else {
                "–".into()
            },
        ]);
    }
    table.note(
        "Each sender stores its messages one after another (`on_behalf_of(from).to_user(to).emit`, \
         `stored()` awaited) and awaits each confirmation in a task of its own; a recipient \
         confirms with its next poll. Confirmed msg/s: messages resolved delivered / time from \
         the start to the last confirmation. CPU/msg: server (+ redis-server's or every \
         PostgreSQL process's) CPU over that time / confirmed messages; store CPU/msg is the \
         store's part. Server core, load gen. core: the CPU of the server process and of the \
         load generator (this process, one thread) over that time, as a share of one core; \
         server waits: how long its threads waited, runnable, for a CPU (`schedstat`), as a \
         share of that time: high, the server was short of CPU whatever its share. Msgs per \
         poll: messages received / polls answered, what each answer's HTTP cost is shared by. \
         Latency: emit → the recipient's poll answer parsed. Lost: stored messages no client \
         received. Warnings: WARN events the server logged, summed over the runs; each is \
         most likely a hub that fell behind the storage's signals, after which every waiting \
         poll and send re-reads the storage. File / tables size: the redb file and its log, \
         or PostgreSQL's tables (`pg_total_relation_size`, summed), at the end.",
    );
    let memory = rates
        .iter()
        .find(|(t, _, _)| *t == Target::Simpleio)
        .map(|(_, r, _)| *r);
    let mut ratios = Table::new(
        format!("durable: confirmed direct messages per second against memory, {users} users"),
        &["storage", "confirmed msg/s", "each run", "× memory"],
    );
    for (target, rate, each) in &rates {
        ratios.row(vec![
            storage_name(*target).to_owned(),
            report::count(*rate as u64),
            each.iter()
                .map(|r| report::count(*r as u64))
                .collect::<Vec<_>>()
                .join(" · "),
            memory.map_or("–".into(), |mem| report::ratio(*rate, mem)),
        ]);
    }
    ratios.note("Target: durable ≥ ×0.50 memory. × memory: the medians' ratio.");
    vec![table, ratios]
}

fn long_run_table(case: DmCase, o: &DmOutcome, seconds: u64) -> Table {
    let postgres = case.target == Target::SimpleioPostgres;
    let mut table = Table::new(
        format!(
            "durable: {seconds} s of confirmed direct messages on {} ({} users, {WINDOW} \
             unconfirmed per sender), sampled every {} s",
            storage_name(case.target),
            case.users,
            SAMPLE_EVERY.as_secs()
        ),
        &[
            "t",
            if postgres { "tables size" } else { "file size" },
            "fsyncs/s",
            "confirmed msg/s",
            "confirmed so far",
            "RSS",
        ],
    );
    let mut prev = Sample::default();
    for s in &o.samples {
        let dt = (s.at_secs - prev.at_secs).max(1e-9);
        table.row(vec![
            format!("{:.0} s", s.at_secs),
            report::kib(s.store_bytes as f64),
            if postgres {
                "–".into()
            } else {
                format!("{:.0}", (s.commits - prev.commits) as f64 / dt)
            },
            report::count(((s.delivered - prev.delivered) as f64 / dt) as u64),
            report::count(s.delivered),
            report::mib(s.rss as f64),
        ]);
        prev = *s;
    }
    let tables = if o.tables.is_empty() {
        String::new()
    } else {
        format!(
            " Tables at the end (`pg_total_relation_size`; live and dead rows): {}.",
            o.tables
                .iter()
                .filter(|t| t.live + t.dead > 0)
                .map(|t| {
                    format!(
                        "{} {} ({} live, {} dead)",
                        t.name,
                        report::kib(t.bytes as f64),
                        report::count(t.live),
                        report::count(t.dead)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    table.note(format!(
        "Rates are over each sample's interval; the last row is taken after the final \
         confirmations. Sent {}, delivered {}, not delivered {}, send errors {}; clients \
         received {} ({} lost, {} duplicates). CPU/msg {} (store {}), server core {:.0}%, \
         load generator core {:.0}%.{tables}",
        report::count(o.sent),
        report::count(o.delivered),
        report::count(o.not_delivered),
        report::count(o.send_errors),
        report::count(o.received),
        report::count(o.lost()),
        report::count(o.duplicates),
        report::us(o.cpu_per_msg()),
        report::us(o.store_cpu_per_msg()),
        o.server_core() * 100.0,
        o.loadgen_core() * 100.0,
    ));
    table
}
