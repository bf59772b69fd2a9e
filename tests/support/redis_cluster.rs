//! A real Redis Cluster for tests: six `redis-server`s (three masters, three replicas) on free
//! ports, in their own temporary directories, joined by `redis-cli --cluster create`, gone with
//! the test process.
//!
//! Use it next to `support/redis.rs`:
//!
//! ```ignore
//! #[path = "support/redis.rs"]
//! mod redis_server;
//! #[path = "support/redis_cluster.rs"]
//! mod redis_cluster;
//! let Some(cluster) = redis_cluster::RedisCluster::shared() else { return }; // no Redis
//! ```
//!
//! As with one server: if `redis-server` is missing, this panics under `CI=true` and otherwise
//! warns loudly and returns `None`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::redis_server::{RedisServer, free_port, redis_installed};

/// Masters, each with one replica.
const MASTERS: usize = 3;

/// How long the cluster may take to agree on its state once created.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Six nodes, stopped when dropped (each [`RedisServer`] stops its own).
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// The nodes' cluster configuration files, outside their own directories (which go with
    /// their process), so that a killed node restarted rejoins as the same node.
    config_dir: std::path::PathBuf,
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.config_dir);
    }
}

impl RedisCluster {
    /// Starts and joins a cluster of three masters and three replicas; `None` if Redis is not
    /// installed (and this is not CI).
    pub fn start() -> Option<Self> {
        if !redis_installed() {
            return None;
        }
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let config_dir = std::env::temp_dir().join(format!(
            "simpleio-redis-cluster-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&config_dir).expect("a directory for the cluster's files");
        let mut nodes = Vec::with_capacity(MASTERS * 2);
        for _ in 0..MASTERS * 2 {
            // The cluster bus needs a port of its own: by default the node's plus 10000, which
            // may be taken or out of range, so it is picked free too.
            let node = RedisServer::start_with(|port| {
                [
                    "--cluster-enabled".to_owned(),
                    "yes".to_owned(),
                    "--cluster-config-file".to_owned(),
                    config_dir
                        .join(format!("nodes-{port}.conf"))
                        .display()
                        .to_string(),
                    "--cluster-port".to_owned(),
                    free_port().to_string(),
                    "--cluster-node-timeout".to_owned(),
                    "5000".to_owned(),
                    // A replica's first sync at once, not after the default 5 s: a replica
                    // that never synced does not take over from its master.
                    "--repl-diskless-sync-delay".to_owned(),
                    "0".to_owned(),
                ]
                .into()
            })?;
            nodes.push(node);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        let cluster = RedisCluster { nodes, config_dir };
        cluster.wait_ready();
        Some(cluster)
    }

    /// One cluster for the whole test binary, started on first use and stopped when the test
    /// process exits. Give each test its own key prefix.
    pub fn shared() -> Option<&'static Self> {
        static SHARED: OnceLock<Option<RedisCluster>> = OnceLock::new();
        SHARED.get_or_init(Self::start).as_ref()
    }

    /// `redis://` URLs of every node: any of them is enough to find the rest.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// Waits until the replica of the master on `port` has everything written to it so far
    /// (replication is asynchronous: a master killed before that loses the last writes).
    pub fn wait_replicated(&self, port: u16) {
        let field = |info: &str, name: &str| -> Option<u64> {
            info.split(['\n', ','])
                .find_map(|kv| kv.trim().strip_prefix(name))
                .and_then(|v| v.parse().ok())
        };
        let info = command(port, "INFO replication");
        let written = field(&info, "master_repl_offset:").expect("a master's offset");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let info = command(port, "INFO replication");
            if field(&info, "offset=").is_some_and(|acked| acked >= written) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the replica of {port} did not catch up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the node on `port` (SIGKILL, as a crash would); a master's replica takes over once
    /// the cluster's node timeout (5 s here) has passed.
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port() == port) {
            node.kill();
        }
    }

    /// The port of the replica of the master on `port`.
    pub fn replica_of(&self, port: u16) -> u16 {
        let info = command(port, "INFO replication");
        info.lines()
            .filter(|l| l.starts_with("slave"))
            .find_map(|l| {
                l.split(',')
                    .find_map(|kv| kv.strip_prefix("port="))
                    .and_then(|p| p.parse().ok())
            })
            .unwrap_or_else(|| panic!("the master on {port} has no replica: {info}"))
    }

    /// Freezes the node on `port` (SIGSTOP): it stays connected, but acknowledges nothing.
    pub fn pause(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port() == port) {
            node.pause();
        }
    }

    /// Lets a paused node go on (SIGCONT).
    pub fn resume(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port() == port) {
            node.resume();
        }
    }

    /// Starts the (killed) node on `port` again, in its directory: it reads its cluster
    /// configuration there and rejoins, a former master as a replica of the one that
    /// replaced it. Waits until every node is in sync again.
    pub fn restart(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port() == port) {
            node.restart();
        }
        self.wait_ready();
    }

    /// Waits until every node says `cluster_state:ok` and knows all six nodes, and every
    /// replica is in sync with its master: before that, a command may be refused
    /// (`CLUSTERDOWN`) or sent to a node that does not own its slot, and a master's failure
    /// would not be taken over.
    fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ready = self.nodes.iter().all(|n| {
                let info = command(n.port(), "CLUSTER INFO");
                let replication = command(n.port(), "INFO replication");
                info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{}", MASTERS * 2))
                    && info.contains(&format!("cluster_size:{MASTERS}"))
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            });
            if ready && self.replicas_acknowledge() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the test cluster was not ready within {READY_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether every master's replica acknowledges a write made on the master (`WAIT 1`):
    /// for a second or so after the cluster says it is ready, a replica may not, and a
    /// storage that waits for replicas would see its first writes refused.
    fn replicas_acknowledge(&self) -> bool {
        self.nodes.iter().all(|n| {
            let port = n.port();
            if !command(port, "INFO replication").contains("role:master") {
                return true;
            }
            let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
                return false;
            };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut reader = BufReader::new(&stream);
            let mut writer = &stream;
            let mut answer = |line: &str| {
                let mut reply = String::new();
                (writer.write_all(format!("{line}\r\n").as_bytes()).is_ok()
                    && reader.read_line(&mut reply).is_ok())
                .then(|| reply.trim().to_owned())
            };
            // A key of one of this master's slots: the others answer MOVED.
            let owned = (0..64).any(|i| {
                answer(&format!("SET simpleio-probe{{{i}}} 1")).is_some_and(|r| r == "+OK")
            });
            owned && answer("WAIT 1 300").is_some_and(|r| r == ":1")
        })
    }
}

/// Sends one inline command and returns the whole reply's text (a bulk string's lines).
fn command(port: u16, line: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    if stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .is_err()
        || stream.write_all(format!("{line}\r\n").as_bytes()).is_err()
    {
        return String::new();
    }
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    if reader.read_line(&mut header).is_err() {
        return String::new();
    }
    let Some(len) = header
        .trim()
        .strip_prefix('$')
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return header;
    };
    let mut body = vec![0; len];
    if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&body).into_owned()
}
