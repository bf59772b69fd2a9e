//! A real `redis-server` for tests: a free port, no persistence unless asked, gone with the test.
//!
//! Use it from any test file with
//!
//! ```ignore
//! #[path = "support/redis.rs"]
//! mod redis_server;
//! let Some(server) = redis_server::RedisServer::start() else { return }; // skipped: no Redis
//! ```
//!
//! If `redis-server` is not on `PATH`, [`RedisServer::start`] panics when `CI=true` (CI must
//! run these tests) and otherwise prints a loud warning and returns `None`, so the test can
//! return early.
//!
//! The server runs under a small `sh` wrapper whose standard input is a pipe from the test
//! process: when that pipe closes, because the `RedisServer` was dropped or because the test
//! process ended in any way (a panic, an abort, a server that is never dropped such as
//! [`RedisServer::shared`]), the wrapper stops Redis. No server outlives its tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a starting server may take to answer `PING` (it loads its AOF first, if any).
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The wrapper: starts Redis in the background, waits for a line (or the end) on its standard
/// input, stops Redis (`kill` → SIGKILL, anything else → SIGTERM, a clean shutdown) and reaps it.
/// Being Redis's parent, it also keeps Redis's pid from being reused before the kill.
const WRAPPER: &str = r#"redis-server "$@" </dev/null >/dev/null 2>&1 &
r=$!
read -r how
if [ "$how" = kill ]; then kill -9 "$r"; else kill "$r"; fi
wait "$r"
[ -n "$SIMPLEIO_RM_DIR" ] && rm -rf "$SIMPLEIO_RM_DIR"
exit 0"#;

/// A `redis-server` on `127.0.0.1`, stopped when dropped.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    /// Its working directory: the log, and the append-only file if persistent.
    dir: PathBuf,
    persistent: bool,
    /// Arguments after the usual ones (a cluster node's settings), kept for restarts.
    extra: Vec<String>,
    /// The `sh` wrapper; `None` while stopped.
    wrapper: Option<Child>,
    /// Redis's own pid while [`pause`](Self::pause)d: it must be resumed before it can stop.
    paused: Option<u32>,
}

impl RedisServer {
    /// Starts a server without persistence on a free port; `None` if Redis is not installed
    /// (and this is not CI).
    pub fn start() -> Option<Self> {
        Self::launch(false, |_| Vec::new())
    }

    /// Starts a server without persistence on a free port, with `extra(port)` after the usual
    /// arguments (a cluster node's settings, say); `None` if Redis is not installed.
    pub fn start_with(extra: impl Fn(u16) -> Vec<String>) -> Option<Self> {
        Self::launch(false, extra)
    }

    /// Starts a server with `appendonly yes` in its own directory, kept across
    /// [`restart`](Self::restart)s and removed on drop; `None` if Redis is not installed.
    pub fn start_persistent() -> Option<Self> {
        Self::launch(true, |_| Vec::new())
    }

    /// One server for the whole test binary, started on first use and stopped when the test
    /// process exits. Give each test its own key prefix.
    pub fn shared() -> Option<&'static Self> {
        static SHARED: OnceLock<Option<RedisServer>> = OnceLock::new();
        SHARED.get_or_init(Self::start).as_ref()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A `redis://` URL for database `0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Whether it is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.wrapper.is_some()
    }

    /// Stops the server cleanly (SIGTERM: a persistent one flushes its append-only file) and
    /// waits until it is gone. Does nothing if it is stopped.
    pub fn stop(&mut self) {
        self.halt("term");
    }

    /// Kills the server (SIGKILL, as a crash would) and waits until it is gone.
    pub fn kill(&mut self) {
        self.halt("kill");
    }

    /// Starts the server again on the same port (and directory), stopping it first if running,
    /// and waits until it answers. Without persistence it comes back empty.
    pub fn restart(&mut self) {
        self.stop();
        let wrapper = spawn(self.port, &self.dir, self.persistent, &self.extra)
            .unwrap_or_else(|e| panic!("cannot restart redis-server on port {}: {e}", self.port));
        self.wrapper = Some(wrapper);
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers, as with a
    /// server stuck on a slow disk or a network that drops packets without resetting.
    pub fn pause(&mut self) {
        if self.paused.is_some() || self.wrapper.is_none() {
            return;
        }
        let pid = redis_pid(self.port);
        signal(pid, "-STOP");
        self.paused = Some(pid);
    }

    /// Lets a [`pause`](Self::pause)d server go on (SIGCONT).
    pub fn resume(&mut self) {
        if let Some(pid) = self.paused.take() {
            signal(pid, "-CONT");
        }
    }

    fn launch(persistent: bool, extra: impl Fn(u16) -> Vec<String>) -> Option<Self> {
        if !redis_installed() {
            return None;
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // A port picked as free may be taken before Redis binds it: try a few.
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!(
                "simpleio-redis-{}-{}-{port}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let extra = extra(port);
            match spawn(port, &dir, persistent, &extra) {
                Ok(wrapper) => {
                    return Some(RedisServer {
                        port,
                        dir,
                        persistent,
                        extra,
                        wrapper: Some(wrapper),
                        paused: None,
                    });
                }
                Err(e) => last_error = e,
            }
        }
        panic!("cannot start redis-server: {last_error}");
    }

    fn halt(&mut self, how: &str) {
        // A stopped process would not act on SIGTERM, and the wrapper would wait forever.
        self.resume();
        let Some(mut wrapper) = self.wrapper.take() else {
            return;
        };
        if let Some(mut stdin) = wrapper.stdin.take() {
            // Closing the pipe alone also stops it; the line only says how.
            let _ = writeln!(stdin, "{how}");
        }
        let _ = wrapper.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `redis-server` can run here; if not, panics on CI and warns elsewhere.
pub fn redis_installed() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "redis-server is not on PATH, and CI=true: the Redis tests must run on CI. \
             Install it (Debian/Ubuntu: apt-get install -y redis-server)."
        );
    }
    static WARNED: OnceLock<()> = OnceLock::new();
    WARNED.get_or_init(|| {
        // Straight to the process's stderr: the test harness captures `eprintln!`, and would
        // show it only for a failing test.
        let _ = std::io::stderr().write_all(
            b"\n\
            ************************************************************************\n\
            *  WARNING: redis-server is not on PATH: the Redis tests are SKIPPED.  *\n\
            *  Install it (apt-get install -y redis-server) to run them.           *\n\
            ************************************************************************\n\n",
        );
    });
    false
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// Starts the wrapper and waits until Redis answers `PING`.
fn spawn(port: u16, dir: &PathBuf, persistent: bool, extra: &[String]) -> Result<Child, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut args: Vec<String> = vec![
        "--port".into(),
        port.to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--dir".into(),
        dir.display().to_string(),
        "--logfile".into(),
        dir.join("redis.log").display().to_string(),
        "--save".into(),
        String::new(),
    ];
    if persistent {
        args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(String::from));
    } else {
        args.extend(["--appendonly", "no"].map(String::from));
    }
    args.extend(extra.iter().cloned());
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(WRAPPER)
        .arg("redis-wrapper")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if !persistent {
        // Nothing in it matters once Redis is gone, and a shared server is never dropped.
        command.env("SIMPLEIO_RM_DIR", dir);
    }
    let mut wrapper = command.spawn().map_err(|e| format!("cannot run sh: {e}"))?;
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if answers_ping(port) {
            return Ok(wrapper);
        }
        // Another process took the port between our check and Redis's bind: give up early.
        let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
        if log.contains("Could not create server TCP listening socket") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
    drop(wrapper.stdin.take());
    let _ = wrapper.wait();
    Err(format!(
        "redis-server on port {port} did not answer PING within {START_TIMEOUT:?}; its log:\n{log}"
    ))
}

/// Redis's own pid, from `INFO server` (the child we hold is the wrapper).
fn redis_pid(port: u16) -> u32 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis-server");
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("set a read timeout");
    stream.write_all(b"INFO server\r\n").expect("send INFO");
    BufReader::new(stream)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("process_id:")?.trim().parse().ok())
        .expect("redis-server did not tell its process_id")
}

fn signal(pid: u32, which: &str) {
    let status = Command::new("kill")
        .arg(which)
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {which} {pid} failed");
}

fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let timeout = Some(Duration::from_millis(500));
    if stream.set_read_timeout(timeout).is_err() || stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut line = String::new();
    // `-LOADING` while it reads its append-only file: not ready yet.
    BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("+PONG")
}
