//! The scenarios `run` measures, and what they share: starting the servers, reading their
//! stats, and the pinning plan (servers on core 0, the load generator on core 1).

pub mod broadcast;
pub mod callgrind;
pub mod cluster;
pub mod durable;
pub mod fanout;
pub mod history;
pub mod idle;
pub mod room;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use http::Method;

use crate::child::{self, Child};
use crate::http::call_json;
use crate::report::Table;
use crate::servers::Stats;

/// Every scenario's name, in the order `--scenario all` runs them.
pub const ALL: &[&str] = &[
    "broadcast",
    "history",
    "fanout",
    "idle",
    "room",
    "redis",
    "durable",
    "cluster",
    "callgrind",
];

/// How a run is set up.
#[derive(Debug, Clone, Copy)]
pub struct Opts {
    /// Shorter runs and fewer sizes: indicative figures in a few minutes.
    pub quick: bool,
    /// Repetitions of each broadcast measurement (medians are quoted).
    pub runs: usize,
    /// The core the servers (and Redis) run on.
    pub server_core: usize,
    /// `--seconds`: the length of the `durable` scenario's long runs (none without it).
    pub seconds: Option<u64>,
    /// `--dm-users`: the users of the `durable` scenario's direct messages.
    pub dm_users: usize,
    /// `--dm-send`: what each sender of the direct messages awaits before its next message.
    pub dm_send: crate::servers::dm::Send,
    /// `--long-on`: which storages the long runs are on (`durable`, `postgres`, or both).
    pub long_durable: bool,
    pub long_postgres: bool,
    /// `--storages`: whether the `durable` scenario also measures Redis and PostgreSQL (memory
    /// and durable it always does: the ratio between them is its figure).
    pub with_redis: bool,
    pub with_postgres: bool,
}

/// Runs scenario `name`.
pub async fn run(name: &str, opts: Opts) -> Result<Vec<Table>> {
    match name {
        "broadcast" => broadcast::broadcast(opts).await,
        "redis" => broadcast::redis(opts).await,
        "durable" => durable::run(opts).await,
        "cluster" => cluster::run(opts).await,
        "history" => history::run(opts).await,
        "fanout" => fanout::run(opts, 10_000).await,
        "idle" => idle::run(opts, 10_000).await,
        "room" => room::run(opts).await,
        "callgrind" => callgrind::run(opts, 50, if opts.quick { 30 } else { 100 }).await,
        other => anyhow::bail!("no scenario {other:?}; try one of {ALL:?} or `all`"),
    }
}

/// Which server a measurement runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// simpleio on `MemoryStorage`.
    Simpleio,
    /// simpleio on `RedisStorage`, with a fresh `redis-server` beside it.
    SimpleioRedis,
    /// simpleio on `RedisClusterStorage`, on a fresh cluster of three masters, each with one
    /// replica if `replicas`, with writes acknowledged by it (`replica_acks(1, ..)`) if `acks`.
    SimpleioRedisCluster { replicas: bool, acks: bool },
    /// simpleio on `DurableStorage`, its file in a fresh folder removed afterwards.
    SimpleioDurable,
    /// simpleio on `PostgresStorage`, on a fresh PostgreSQL of its own
    /// ([`child::postgres`]).
    SimpleioPostgres,
    /// socketioxide, polling transport.
    Socketioxide,
    /// The bare hyper server that holds every request.
    HyperHold,
    /// The bare hyper long-polling server: the floor of CPU per delivered message.
    HyperPoll,
}

/// The processes of one measurement: the server, and the Redis servers or the PostgreSQL it
/// uses. Stopped on drop, then the durable storage's folder is removed (fields drop in order).
pub struct Servers {
    pub server: Child,
    pub redis: Vec<Child>,
    pub postgres: Option<child::Postgres>,
    /// Held for its drop only: the folder goes once the server is stopped.
    pub _data: Option<DataDir>,
}

/// A fresh folder for one server's storage file, removed on drop.
pub struct DataDir {
    pub dir: PathBuf,
}

impl DataDir {
    fn new() -> Result<DataDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = child::work_dir()?.join(format!("durable-{}-{n}", std::process::id()));
        // A folder left by a killed run of the same pid must not hand its data to this one.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(DataDir { dir })
    }

    /// The storage file.
    pub fn file(&self) -> PathBuf {
        self.dir.join("simpleio.redb")
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Servers {
    /// Starts `target`'s processes, pinned to the server core.
    pub fn start(target: Target, opts: Opts) -> Result<Servers> {
        Self::start_with(target, opts, &[])
    }

    /// [`start`](Self::start), with more arguments for the server (such as `--http http1`).
    pub fn start_with(target: Target, opts: Opts, extra: &[String]) -> Result<Servers> {
        let core = opts.server_core;
        let mut data = None;
        let mut postgres = None;
        let (redis, args) = match target {
            Target::Simpleio => (Vec::new(), vec!["simpleio".into()]),
            Target::SimpleioDurable => {
                let dir = DataDir::new()?;
                let file = dir.file();
                let file = file
                    .to_str()
                    .context("the temp folder's path is not UTF-8")?;
                let args = vec![
                    "simpleio".into(),
                    "--storage".into(),
                    format!("durable:{file}"),
                ];
                data = Some(dir);
                (Vec::new(), args)
            }
            Target::SimpleioRedis => {
                let redis = child::redis(core)?;
                let url = format!("redis://{}/", redis.addr);
                (
                    vec![redis],
                    vec!["simpleio".into(), "--storage".into(), url],
                )
            }
            Target::SimpleioPostgres => {
                let pg = child::postgres(core)?;
                let args = vec!["simpleio".into(), "--storage".into(), pg.url()];
                postgres = Some(pg);
                (Vec::new(), args)
            }
            Target::SimpleioRedisCluster { replicas, acks } => {
                let nodes = child::redis_cluster(core, 3, usize::from(replicas))?;
                let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
                let url = format!(
                    "redis-cluster://{}?acks={}",
                    addrs.join(","),
                    u8::from(acks)
                );
                (nodes, vec!["simpleio".into(), "--storage".into(), url])
            }
            Target::Socketioxide => (Vec::new(), vec!["socketioxide".into()]),
            Target::HyperPoll => (Vec::new(), vec!["hyper-poll".into()]),
            // Longer than any idle measurement, so no request is answered during it.
            Target::HyperHold => (
                Vec::new(),
                vec!["hyper-hold".into(), "--hold".into(), "120".into()],
            ),
        };
        let mut args = args;
        args.extend_from_slice(extra);
        let server = child::server(&args[0], &args, core, &[])?;
        Ok(Servers {
            server,
            redis,
            postgres,
            _data: data,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// CPU time of the server and of its store's processes (every Redis server, or every
    /// PostgreSQL process), in µs: `(server, store)`.
    pub fn cpu_us(&self) -> Result<(u64, u64)> {
        let server = crate::proc::cpu_us(self.server.pid())?;
        let mut store = 0;
        for r in &self.redis {
            store += crate::proc::cpu_us(r.pid())?;
        }
        if let Some(pg) = &self.postgres {
            store += pg.cpu_us()?;
        }
        Ok((server, store))
    }

    /// The server's peak RSS, in bytes.
    pub fn peak_rss(&self) -> Result<u64> {
        crate::proc::peak_rss_bytes(self.server.pid())
    }

    /// The server's RSS now, in bytes.
    pub fn rss(&self) -> Result<u64> {
        crate::proc::rss_bytes(self.server.pid())
    }
}

/// The server's counters.
pub async fn stats(addr: SocketAddr) -> Result<Stats> {
    call_json(addr, Method::GET, "/bench/stats").await
}

/// Polls the server's counters every 50 ms until `done` holds; fails after `timeout`.
pub async fn wait_stats(
    addr: SocketAddr,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&Stats) -> bool,
) -> Result<Stats> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let s = stats(addr).await?;
        if done(&s) {
            return Ok(s);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}; stats: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `n` polls wait on the server (simpleio, hyper-hold).
pub async fn wait_polls(addr: SocketAddr, n: u64, timeout: Duration) -> Result<Stats> {
    wait_stats(addr, timeout, &format!("{n} waiting polls"), |s| {
        s.waiting_polls >= n
    })
    .await
    .with_context(|| format!("waiting for {n} polls to wait"))
}
