//! A real PostgreSQL for tests: `initdb` into a temporary folder, `postgres` on a free port,
//! gone with the test. Never the machine's own instance.
//!
//! Use it from any test file with
//!
//! ```ignore
//! #[path = "support/postgres.rs"]
//! mod postgres_server;
//! let Some(server) = postgres_server::PostgresServer::start() else { return }; // skipped
//! ```
//!
//! The binaries are looked for on `PATH`, then in `/usr/lib/postgresql/*/bin` (where Debian's
//! `postgresql` package puts them), the newest version first. If there are none,
//! [`PostgresServer::start`] panics when `CI=true` (CI must run these tests) and otherwise
//! prints a loud warning and returns `None`, so the test can return early.
//!
//! PostgreSQL refuses to run as root: as root, `initdb` and `postgres` run as `nobody` (with
//! `setpriv`, which execs, so the process is PostgreSQL itself), in a folder given to it.
//!
//! The server runs under a small `sh` wrapper whose standard input is a pipe from the test
//! process: when that pipe closes, because the server was dropped or because the test process
//! ended in any way, the wrapper stops PostgreSQL. No server outlives its tests.
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a starting server may take to accept connections (a restart replays its WAL).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The wrapper: starts PostgreSQL in the background, waits for a line (or the end) on its
/// standard input, and stops it: `immediate` → SIGQUIT (no checkpoint, as a crash would leave
/// it), anything else → SIGINT (a fast shutdown: sessions are cut, the data is flushed).
const WRAPPER: &str = r#""$@" </dev/null >>"$SIMPLEIO_PG_LOG" 2>&1 &
r=$!
read -r how
if [ "$how" = immediate ]; then kill -QUIT "$r"; else kill -INT "$r"; fi
wait "$r"
[ -n "$SIMPLEIO_RM_DIR" ] && rm -rf "$SIMPLEIO_RM_DIR"
exit 0"#;

/// A PostgreSQL server on `127.0.0.1`, stopped when dropped.
#[derive(Debug)]
pub struct PostgresServer {
    port: u16,
    /// Its folder: `data/` (the cluster), `log`, and the Unix socket.
    dir: PathBuf,
    bin: PathBuf,
    /// The `sh` wrapper; `None` while stopped.
    wrapper: Option<Child>,
    /// Whether the wrapper removes `dir` when it stops the server: for a server that is never
    /// dropped ([`shared`](Self::shared)), whose folder would be left behind otherwise.
    remove_on_exit: bool,
}

impl PostgresServer {
    /// Makes a new cluster and starts it on a free port; `None` if PostgreSQL is not installed
    /// (and this is not CI).
    pub fn start() -> Option<Self> {
        Self::launch(false)
    }

    fn launch(remove_on_exit: bool) -> Option<Self> {
        let bin = postgres_bin()?;
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "simpleio-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let mut last_error = String::new();
        // A port picked as free may be taken before PostgreSQL binds it: try a few.
        for _ in 0..5 {
            // Made again if a failed attempt's wrapper removed it (`remove_on_exit`).
            if !dir.join("data").exists() {
                init_cluster(&bin, &dir);
            }
            let mut server = PostgresServer {
                port: free_port(),
                dir: dir.clone(),
                bin: bin.clone(),
                wrapper: None,
                remove_on_exit,
            };
            match server.spawn() {
                Ok(()) => return Some(server),
                Err(e) => {
                    last_error = e;
                    // Not dropped: that would remove the cluster.
                    std::mem::forget(server);
                }
            }
        }
        panic!("cannot start postgres: {last_error}");
    }

    /// One server for the whole test binary, started on first use and stopped when the test
    /// process exits. Give each test its own schema.
    pub fn shared() -> Option<&'static Self> {
        static SHARED: OnceLock<Option<PostgresServer>> = OnceLock::new();
        SHARED.get_or_init(|| Self::launch(true)).as_ref()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for the `postgres` database as the `postgres` superuser.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?connect_timeout=2",
            self.port
        )
    }

    pub fn is_running(&self) -> bool {
        self.wrapper.is_some()
    }

    /// A fast shutdown (SIGINT: sessions are cut, the data is flushed); waits until it is gone.
    pub fn stop(&mut self) {
        self.halt("fast");
    }

    /// An immediate shutdown (SIGQUIT: no checkpoint, the next start recovers from the WAL, as
    /// after a crash); waits until it is gone.
    pub fn stop_immediately(&mut self) {
        self.halt("immediate");
    }

    /// Starts the server again on the same port and data, stopping it first if running.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn()
            .unwrap_or_else(|e| panic!("cannot restart postgres on port {}: {e}", self.port));
    }

    /// Starts a stopped server again; does nothing if it runs.
    pub fn start_again(&mut self) {
        if self.wrapper.is_none() {
            self.spawn()
                .unwrap_or_else(|e| panic!("cannot start postgres on port {}: {e}", self.port));
        }
    }

    fn halt(&mut self, how: &str) {
        let Some(mut wrapper) = self.wrapper.take() else {
            return;
        };
        if let Some(mut stdin) = wrapper.stdin.take() {
            // Closing the pipe alone also stops it; the line only says how.
            let _ = writeln!(stdin, "{how}");
        }
        let _ = wrapper.wait();
    }

    /// Starts the wrapper and waits until the server accepts connections.
    fn spawn(&mut self) -> Result<(), String> {
        let data = self.dir.join("data");
        let log = self.dir.join("log");
        let server = as_server_user(&self.bin.join("postgres"));
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(WRAPPER)
            .arg("postgres-wrapper")
            .arg(server.get_program())
            .args(server.get_args())
            .args(["-D", &data.display().to_string()])
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args([
                "-c",
                &format!("unix_socket_directories={}", self.dir.display()),
            ])
            // Tests need no durability against power loss (the OS keeps what a killed server
            // wrote), so no fsync. But a commit must be written before it is answered
            // (`synchronous_commit` stays on): an immediate shutdown loses whatever is still
            // in the server's WAL buffers, and the tests check that nothing committed is lost.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=300"])
            .env("SIMPLEIO_PG_LOG", &log)
            .env_remove("SIMPLEIO_RM_DIR")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.remove_on_exit {
            command.env("SIMPLEIO_RM_DIR", &self.dir);
        }
        let mut wrapper = command.spawn().map_err(|e| format!("cannot run sh: {e}"))?;
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if self.accepts_connections() {
                self.wrapper = Some(wrapper);
                return Ok(());
            }
            if let Ok(Some(_)) = wrapper.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(wrapper.stdin.take());
        let _ = wrapper.wait();
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        Err(format!(
            "postgres on port {} did not accept connections within {START_TIMEOUT:?}; its log:\n{log}",
            self.port
        ))
    }

    fn accepts_connections(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.halt("immediate");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A new cluster in `dir/data`, owned by the user the server runs as.
fn init_cluster(bin: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).expect("a temporary folder for PostgreSQL");
    give_to_server_user(dir);
    let status = as_server_user(&bin.join("initdb"))
        .args(["-D", &dir.join("data").display().to_string()])
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run initdb");
    assert!(
        status.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
}

/// Whether this process runs as root, whom PostgreSQL refuses.
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program`, run as `nobody` when this process is root.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn give_to_server_user(dir: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .arg("nobody:nogroup")
            .arg(dir)
            .status()
            .expect("run chown");
        assert!(status.success(), "cannot give {} to nobody", dir.display());
    }
}

/// The folder of `initdb` and `postgres`; if there is none, panics on CI and warns elsewhere.
pub fn postgres_bin() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    let found = BIN.get_or_init(|| {
        // A link on PATH (say /usr/local/bin/initdb) leads to the folder of the other tools.
        let on_path = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
                .and_then(|dir| std::fs::canonicalize(dir.join("initdb")).ok())
                .and_then(|initdb| Some(initdb.parent()?.to_path_buf()))
        });
        on_path.or_else(|| {
            let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
                .ok()?
                .filter_map(|entry| {
                    let entry = entry.ok()?;
                    let version = entry.file_name().to_str()?.parse().ok()?;
                    let bin = entry.path().join("bin");
                    bin.join("initdb").is_file().then_some((version, bin))
                })
                .collect();
            versions.sort();
            versions.pop().map(|(_, bin)| bin)
        })
    });
    if found.is_some() {
        return found.clone();
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "initdb and postgres are not installed, and CI=true: the PostgreSQL tests must run \
             on CI. Install them (Debian/Ubuntu: apt-get install -y postgresql)."
        );
    }
    static WARNED: OnceLock<()> = OnceLock::new();
    WARNED.get_or_init(|| {
        // Straight to the process's stderr: the test harness captures `eprintln!`.
        let _ = std::io::stderr().write_all(
            b"\n\
            ************************************************************************\n\
            *  WARNING: PostgreSQL is not installed: its tests are SKIPPED.        *\n\
            *  Install it (apt-get install -y postgresql) to run them.             *\n\
            ************************************************************************\n\n",
        );
    });
    None
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}
