//! `simpleio-bench`: simpleio measured against socketioxide (Socket.IO over Engine.IO
//! long-polling) and a bare hyper floor, on one machine. See `bench/README.md`.
//!
//! ```text
//! simpleio-bench run [--scenario NAME|all] [--runs N] [--quick] [--markdown FILE] [--seconds S [--long-on durable,postgres]] [--dm-users N] [--dm-send stored|ordered] [--storages memory,durable[,redis][,postgres]]
//! simpleio-bench smoke
//! simpleio-bench server simpleio [--storage memory|durable:PATH|redis://HOST:PORT/|redis-cluster://HOST:PORT,..?acks=N|postgres://..] [--port P] [--metrics] [--http axum|http1]
//! simpleio-bench server socketioxide [--port P]
//! simpleio-bench server hyper-hold [--port P] [--hold SECS] [--http axum|http1]
//! simpleio-bench server hyper-poll [--port P]
//! ```
//!
//! `run` and `smoke` start every server as a child process of this executable, pinned to
//! core 0 with `taskset -c 0`, and run the load generator — raw hyper HTTP/1.1 connections, one
//! per virtual client, speaking simpleio's protocol or Engine.IO v4 — in this process, pinned to
//! core 1. Scenarios: `broadcast`, `history`, `fanout`, `idle`, `room`, `redis`, `durable`, `cluster`,
//! `callgrind`
//! ([`scenarios`]).

mod child;
mod eio_client;
mod fleet;
mod hold_client;
mod http;
mod proc;
mod report;
mod scenarios;
mod servers;
mod simpleio_client;
mod smoke;

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result, bail};

// The allocator of every process this executable runs (driver and servers alike), chosen at
// build time: `--features mimalloc` or `--features jemalloc` (mimalloc if both, so that
// `--all-features` builds); the system's (glibc) otherwise.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The name of the allocator this executable was built with, for the reports.
pub const ALLOCATOR: &str = if cfg!(feature = "mimalloc") {
    "mimalloc"
} else if cfg!(feature = "jemalloc") {
    "jemalloc"
} else {
    "system (glibc)"
};

const USAGE: &str = "usage:
  simpleio-bench run [--scenario NAME|all] [--runs N] [--quick] [--markdown FILE] [--seconds S [--long-on durable,postgres]] [--dm-users N] [--dm-send stored|ordered] [--storages memory,durable[,redis][,postgres]]
  simpleio-bench smoke
  simpleio-bench server simpleio [--storage memory|durable:PATH|redis://HOST:PORT/|redis-cluster://HOST:PORT,..?acks=N|postgres://..] [--port P] [--metrics] [--http axum|http1]
  simpleio-bench server socketioxide [--port P]
  simpleio-bench server hyper-hold [--port P] [--hold SECS] [--http axum|http1]
  simpleio-bench server hyper-poll [--port P]
scenarios: broadcast, history, fanout, idle, room, redis, durable, cluster, callgrind
--seconds S: the durable scenario's long runs on DurableStorage and PostgresStorage, S seconds
  each (none without it); --long-on durable or postgres for one of them only
--dm-users N: the durable scenario's direct messages between N users (default 200)
--dm-send ordered: each sender awaits `ordered()`, not `stored()`, before its next message
--storages: the durable scenario's storages (all four by default; memory and durable always)";

fn main() {
    if let Err(e) = real_main() {
        eprintln!("simpleio-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        bail!("{USAGE}");
    };
    let mut flags = Flags::new(&args[1..]);
    // 10,000 connections need 10,000 descriptors, in the servers and the load generator alike.
    proc::raise_nofile_limit()?;
    match command.as_str() {
        "server" => server(&mut flags),
        "run" => {
            let quick = flags.switch("--quick");
            // Quick figures are indicative anyway: one run each unless asked for more.
            let default_runs = if quick { 1 } else { 3 };
            let runs = flags
                .value("--runs")?
                .map_or(Ok(default_runs), |v| v.parse())
                .context("--runs")?;
            let scenario = flags.value("--scenario")?.unwrap_or_else(|| "all".into());
            let markdown = flags.value("--markdown")?;
            let seconds = flags
                .value("--seconds")?
                .map(|v| v.parse::<u64>())
                .transpose()
                .context("--seconds")?;
            let dm_users = flags
                .value("--dm-users")?
                .map_or(Ok(scenarios::durable::USERS), |v| v.parse::<usize>())
                .context("--dm-users")?;
            anyhow::ensure!(dm_users >= 2, "--dm-users: 2 at least");
            let dm_send = match flags.value("--dm-send")?.as_deref() {
                None | Some("stored") => servers::dm::Send::Stored,
                Some("ordered") => servers::dm::Send::Ordered,
                Some(other) => bail!("--dm-send: stored or ordered, not {other:?}"),
            };
            let long_on_explicit = flags.has("--long-on");
            let long_on = flags.list("--long-on", &["durable", "postgres"])?;
            let storages = flags.list("--storages", &["memory", "durable", "redis", "postgres"])?;
            anyhow::ensure!(
                storages.contains(&"memory") && storages.contains(&"durable"),
                "--storages: memory and durable always run (their ratio is the figure)"
            );
            anyhow::ensure!(
                !(long_on_explicit
                    && long_on.contains(&"postgres")
                    && !storages.contains(&"postgres")),
                "--long-on postgres, but --storages leaves PostgreSQL out"
            );
            flags.done()?;
            let mut opts = load_generator(quick, runs)?;
            opts.with_redis = storages.contains(&"redis");
            opts.with_postgres = storages.contains(&"postgres");
            opts.seconds = seconds;
            opts.dm_users = dm_users;
            opts.dm_send = dm_send;
            opts.long_durable = long_on.contains(&"durable");
            opts.long_postgres = long_on.contains(&"postgres");
            runtime_current()?.block_on(run(opts, &scenario, markdown))
        }
        "smoke" => {
            flags.done()?;
            let opts = load_generator(true, 1)?;
            runtime_current()?.block_on(smoke::run(opts))
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}

/// Pins this process (the load generator) to core 1 and the servers to core 0; on a machine
/// with one core both share it, and the figures say little.
fn load_generator(quick: bool, runs: usize) -> Result<scenarios::Opts> {
    let cores = proc::online_cores();
    let (server_core, loadgen_core) = if cores >= 2 { (0, 1) } else { (0, 0) };
    if cores < 2 {
        eprintln!("note: one core only: servers and load generator share it");
    }
    proc::pin_current_thread(loadgen_core)?;
    Ok(scenarios::Opts {
        quick,
        runs: runs.max(1),
        server_core,
        seconds: None,
        dm_users: scenarios::durable::USERS,
        dm_send: servers::dm::Send::Stored,
        long_durable: true,
        long_postgres: true,
        with_redis: true,
        with_postgres: true,
    })
}

async fn run(opts: scenarios::Opts, scenario: &str, markdown: Option<String>) -> Result<()> {
    let names: Vec<&str> = if scenario == "all" {
        scenarios::ALL.to_vec()
    } else {
        scenario.split(',').collect()
    };
    let mut md = String::new();
    for name in names {
        eprintln!(
            "scenario {name}{}:",
            if opts.quick { " (quick)" } else { "" }
        );
        let tables = scenarios::run(name, opts).await?;
        for t in tables {
            let text = t.markdown();
            println!("{text}");
            md += &text;
            md.push('\n');
        }
        std::io::stdout().flush()?;
    }
    if let Some(path) = markdown {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {path}"))?;
        f.write_all(md.as_bytes())
            .with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}

fn server(flags: &mut Flags) -> Result<()> {
    let kind = flags.positional().context("server needs a kind")?;
    let port: u16 = flags
        .value("--port")?
        .map_or(Ok(0), |v| v.parse())
        .context("--port")?;
    match kind.as_str() {
        "simpleio" => {
            let storage = flags.value("--storage")?.unwrap_or_else(|| "memory".into());
            let metrics = flags.switch("--metrics");
            let http = servers::Http::parse(flags.value("--http")?.as_deref())?;
            flags.done()?;
            runtime_multi()?.block_on(servers::simpleio::run(port, &storage, metrics, http))
        }
        "socketioxide" => {
            flags.done()?;
            runtime_multi()?.block_on(servers::socketioxide::run(port))
        }
        "hyper-hold" => {
            let hold: u64 = flags
                .value("--hold")?
                .map_or(Ok(25), |v| v.parse())
                .context("--hold")?;
            let http = servers::Http::parse(flags.value("--http")?.as_deref())?;
            flags.done()?;
            runtime_multi()?.block_on(servers::hyper_hold::run(
                port,
                Duration::from_secs(hold),
                http,
            ))
        }
        "hyper-poll" => {
            flags.done()?;
            runtime_multi()?.block_on(servers::hyper_poll::run(port))
        }
        other => bail!("no server {other:?}: simpleio, socketioxide, hyper-hold or hyper-poll"),
    }
}

/// The servers' runtime: tokio's default, one worker per core it may run on (one, pinned).
fn runtime_multi() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// The load generator's runtime: one thread, on its core (and the thread that started the
/// children, which `PR_SET_PDEATHSIG` ties them to).
fn runtime_current() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// A tiny flag parser: `--name value`, `--switch`, and positionals, each taken once.
struct Flags {
    args: Vec<Option<String>>,
}

impl Flags {
    fn new(args: &[String]) -> Flags {
        Flags {
            args: args.iter().cloned().map(Some).collect(),
        }
    }

    fn switch(&mut self, name: &str) -> bool {
        match self.args.iter_mut().find(|a| a.as_deref() == Some(name)) {
            Some(a) => {
                *a = None;
                true
            }
            None => false,
        }
    }

    fn value(&mut self, name: &str) -> Result<Option<String>> {
        let Some(i) = self.args.iter().position(|a| a.as_deref() == Some(name)) else {
            return Ok(None);
        };
        self.args[i] = None;
        let v = self
            .args
            .get_mut(i + 1)
            .and_then(Option::take)
            .with_context(|| format!("{name} needs a value"))?;
        Ok(Some(v))
    }

    /// Whether flag `name` is given (with a value or not), without taking it.
    fn has(&self, name: &str) -> bool {
        self.args.iter().any(|a| a.as_deref() == Some(name))
    }

    /// A comma-separated list of names from `allowed`, `allowed` itself if the flag is absent.
    fn list(&mut self, name: &str, allowed: &[&'static str]) -> Result<Vec<&'static str>> {
        let Some(given) = self.value(name)? else {
            return Ok(allowed.to_vec());
        };
        given
            .split(',')
            .map(|item| {
                allowed
                    .iter()
                    .find(|a| **a == item)
                    .copied()
                    .with_context(|| format!("{name}: {}, not {item:?}", allowed.join(", ")))
            })
            .collect()
    }

    fn positional(&mut self) -> Option<String> {
        self.args
            .iter_mut()
            .find(|a| a.as_deref().is_some_and(|s| !s.starts_with("--")))
            .and_then(Option::take)
    }

    fn done(&self) -> Result<()> {
        let rest: Vec<&str> = self.args.iter().flatten().map(String::as_str).collect();
        if !rest.is_empty() {
            bail!("unexpected arguments {rest:?}\n{USAGE}");
        }
        Ok(())
    }
}
