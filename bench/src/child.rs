//! Child processes of the driver — the servers (this same executable), `redis-server`,
//! PostgreSQL, and `valgrind` around a server — pinned with `taskset`, and stopped when their
//! handle drops (on success, on error and on panic) or when the driver dies
//! (`PR_SET_PDEATHSIG`).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// A running child; killed on drop.
pub struct Child {
    name: String,
    child: std::process::Child,
    /// Its port on 127.0.0.1.
    pub addr: SocketAddr,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Child {
    /// Its process id (`taskset` and `valgrind` exec in place, so it is the server's own).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the child to exit by itself; kills it otherwise.
    pub fn wait_exit(mut self, timeout: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{} did not exit within {timeout:?}", self.name)
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The directory for logs and callgrind output.
pub fn work_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join("simpleio-bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn command(core: usize, wrapper: &[String], program: &str, args: &[String]) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(core.to_string());
    cmd.args(wrapper).arg(program).args(args);
    // SAFETY: the closure only calls prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(crate::proc::die_with_parent);
    }
    cmd
}

/// Starts `simpleio-bench server ARGS` on `core`, optionally under `wrapper` (valgrind), and
/// waits for it to announce its port.
pub fn server(name: &str, args: &[String], core: usize, wrapper: &[String]) -> Result<Child> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let exe = exe.to_str().context("the executable's path is not UTF-8")?;
    let log = work_dir()?.join(format!("{name}.log"));
    let mut server_args = vec!["server".to_owned()];
    server_args.extend_from_slice(args);
    let mut child = command(core, wrapper, exe, &server_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?)
        .spawn()
        .context("starting a server (is `taskset` installed?)")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = mpsc::channel();
    // Reads the announcement, then drains the rest so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next();
        let _ = tx.send(first);
        for _ in lines {}
    });
    let mut child = Child {
        name: name.to_owned(),
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        log,
    };
    // valgrind takes a while to start a program.
    let line = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(Some(Ok(line))) => line,
        _ => bail!(
            "server {name} did not announce its port; its log ({}):\n{}",
            child.log.display(),
            child.log_tail()
        ),
    };
    let port: u16 = line
        .strip_prefix("listening ")
        .and_then(|p| p.trim().parse().ok())
        .with_context(|| format!("server {name} said {line:?}, not `listening PORT`"))?;
    child.addr.set_port(port);
    Ok(child)
}

/// A free port on 127.0.0.1 (for programs that cannot pick their own and tell it).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Starts a fresh `redis-server` on a free port, on `core`, without persistence, and waits
/// until it answers.
pub fn redis(core: usize) -> Result<Child> {
    redis_with(core, "redis", &[])
}

/// A `redis-server` with `extra` arguments after the usual ones, its log `NAME.log`.
fn redis_with(core: usize, name: &str, extra: &[String]) -> Result<Child> {
    let port = free_port()?;
    let log = work_dir()?.join(format!("{name}-{port}.log"));
    let dir = work_dir()?;
    let dir = dir
        .to_str()
        .context("the work folder's path is not UTF-8")?;
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        // A replica writes the snapshot it syncs from to its folder: not the caller's.
        "--dir",
        dir,
        "--dbfilename",
        &format!("dump-{port}.rdb"),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend_from_slice(extra);
    let child = command(core, &[], "redis-server", &args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting redis-server (is it installed?)")?;
    let child = Child {
        name: "redis-server".to_owned(),
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        log,
    };
    for _ in 0..200 {
        if redis_ping(child.addr).is_ok() {
            return Ok(child);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!(
        "redis-server did not answer on {}: {}",
        child.addr,
        child.log_tail()
    )
}

/// Starts a Redis Cluster of `masters` masters, each with `replicas` replicas, every node on
/// `core`, joined with `redis-cli --cluster create`; returns once every node says the cluster
/// is ready and every master's replicas are online. The nodes' files go with the work folder's
/// `cluster-PID-N` folder.
pub fn redis_cluster(core: usize, masters: usize, replicas: usize) -> Result<Vec<Child>> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = work_dir()?.join(format!("cluster-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut nodes = Vec::new();
    for i in 0..masters * (1 + replicas) {
        let extra: Vec<String> = vec![
            "--cluster-enabled".into(),
            "yes".into(),
            "--cluster-config-file".into(),
            dir.join(format!("nodes-{i}.conf")).display().to_string(),
            // The bus port is the node's plus 10000 by default: maybe taken, or out of range.
            "--cluster-port".into(),
            free_port()?.to_string(),
            "--repl-diskless-sync-delay".into(),
            "0".into(),
        ];
        nodes.push(redis_with(core, "redis-cluster", &extra)?);
    }
    let created = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(nodes.iter().map(|n| n.addr.to_string()))
        .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
        .output()
        .context("running redis-cli --cluster create (is redis-tools installed?)")?;
    anyhow::ensure!(
        created.status.success(),
        "redis-cli --cluster create failed: {}",
        String::from_utf8_lossy(&created.stdout)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = nodes.iter().all(|node| {
            let info = redis_command(node.addr, "CLUSTER INFO").unwrap_or_default();
            let replication = redis_command(node.addr, "INFO replication").unwrap_or_default();
            info.contains("cluster_state:ok")
                && info.contains(&format!("cluster_known_nodes:{}", nodes.len()))
                && (!replication.contains("role:master")
                    || replication.contains(&format!("connected_slaves:{replicas}")))
                && (replication.contains("role:master")
                    || replication.contains("master_link_status:up"))
        });
        // A replica may say its link is up a second or so before it acknowledges writes.
        if ready
            && (replicas == 0
                || nodes
                    .iter()
                    .all(|node| replicas_acknowledge(node.addr).unwrap_or(false)))
        {
            return Ok(nodes);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the Redis Cluster was not ready within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether a node is a replica, or a master whose replica acknowledges a write made on it
/// (`WAIT 1`).
fn replicas_acknowledge(addr: SocketAddr) -> Result<bool> {
    use std::io::Write;
    if !redis_command(addr, "INFO replication")?.contains("role:master") {
        return Ok(true);
    }
    let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut reader = BufReader::new(&stream);
    let mut writer = &stream;
    let mut answer = |line: &str| -> Result<String> {
        writer.write_all(format!("{line}\r\n").as_bytes())?;
        let mut reply = String::new();
        reader.read_line(&mut reply)?;
        Ok(reply.trim().to_owned())
    };
    // A key of one of this master's slots: the others answer MOVED.
    for i in 0..64 {
        if answer(&format!("SET simpleio-probe{{{i}}} 1"))? == "+OK" {
            return Ok(answer("WAIT 1 300")? == ":1");
        }
    }
    Ok(false)
}

/// One inline command to a Redis node; the reply's text (a bulk string's body).
fn redis_command(addr: SocketAddr, line: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.write_all(format!("{line}\r\n").as_bytes())?;
    let mut reader = BufReader::new(s);
    let mut header = String::new();
    reader.read_line(&mut header)?;
    let len: usize = header
        .trim()
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .context("not a bulk string")?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn redis_ping(addr: SocketAddr) -> Result<()> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    s.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf)?;
    anyhow::ensure!(&buf == b"+PONG\r\n", "unexpected answer");
    Ok(())
}

/// The folder of `initdb`, `postgres` and `psql`: Debian's `postgresql-15`
/// (`/usr/lib/postgresql/15/bin`), or else the newest version there.
pub fn postgres_bin() -> Option<PathBuf> {
    let preferred = PathBuf::from("/usr/lib/postgresql/15/bin");
    let complete = |bin: &std::path::Path| {
        ["initdb", "postgres", "pg_isready", "psql"]
            .iter()
            .all(|p| bin.join(p).is_file())
    };
    if complete(&preferred) {
        return Some(preferred);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            complete(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// A PostgreSQL of its own for one measurement: a new cluster (`initdb`) in a fresh folder of
/// the work folder, its postmaster on a free port of 127.0.0.1, pinned to the server core.
/// Dropped: a fast shutdown (SIGINT), then the folder is removed. Never the machine's own
/// instance.
pub struct Postgres {
    /// The postmaster: `taskset` and `setpriv` exec in place, so the pid is its own.
    postmaster: Option<Child>,
    dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

/// `setpriv` arguments that run a program as `nobody` when the driver is root (PostgreSQL
/// refuses to run as root), with a parent-death signal set again after the change of user,
/// which clears it: SIGQUIT, PostgreSQL's immediate shutdown, if the driver dies.
fn as_postgres_user() -> Vec<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Vec::new();
    }
    [
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "--pdeathsig=SIGQUIT",
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Starts a fresh PostgreSQL 15 on `core` with its default settings (so `fsync` and
/// `synchronous_commit` on: a commit is on disk before it is answered, as `DurableStorage`'s
/// are), and waits until it accepts connections.
pub fn postgres(core: usize) -> Result<Postgres> {
    let bin = postgres_bin().context("PostgreSQL is not installed (/usr/lib/postgresql/*/bin)")?;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = work_dir()?.join(format!("postgres-{}-{n}", std::process::id()));
    // A folder left by a killed run of the same pid must not hand its data to this one.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let as_user = as_postgres_user();
    if !as_user.is_empty() {
        let status = Command::new("chown")
            .arg("nobody:nogroup")
            .arg(&dir)
            .status()
            .context("running chown")?;
        anyhow::ensure!(status.success(), "cannot give {} to nobody", dir.display());
    }
    let data = dir.join("data");
    let data_arg = data
        .to_str()
        .context("the work folder's path is not UTF-8")?;
    let dir_arg = dir
        .to_str()
        .context("the work folder's path is not UTF-8")?;
    let initdb = command(
        core,
        &as_user,
        &bin.join("initdb").display().to_string(),
        &[
            "-D",
            data_arg,
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]
        .map(String::from),
    )
    .stdin(Stdio::null())
    .output()
    .context("running initdb (is postgresql-15 installed?)")?;
    anyhow::ensure!(
        initdb.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&initdb.stderr)
    );
    let port = free_port()?;
    let log = work_dir()?.join(format!("postgres-{port}.log"));
    let args = [
        "-D",
        data_arg,
        "-p",
        &port.to_string(),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        &format!("unix_socket_directories={dir_arg}"),
    ]
    .map(String::from);
    let child = command(
        core,
        &as_user,
        &bin.join("postgres").display().to_string(),
        &args,
    )
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?)
    .spawn()
    .context("starting postgres")?;
    let server = Postgres {
        postmaster: Some(Child {
            name: "postgres".to_owned(),
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        }),
        dir,
        port,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let ready = Command::new(bin.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            return Ok(server);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "postgres did not accept connections on port {port} within 30 s: {}",
        server
            .postmaster
            .as_ref()
            .map(Child::log_tail)
            .unwrap_or_default()
    )
}

impl Postgres {
    /// The `postgres` database as the `postgres` superuser.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The postmaster's pid.
    pub fn pid(&self) -> u32 {
        self.postmaster.as_ref().map_or(0, Child::pid)
    }

    /// CPU time of every PostgreSQL process, in µs: the postmaster's own and that of its
    /// children it has reaped (`cutime`, `cstime`: backends and autovacuum workers that
    /// exited), plus each living child's (its backends, one per connection, and the
    /// checkpointer, WAL writer and the rest). A child that exits between two readings moves
    /// from the second sum to the first, so differences stay exact.
    pub fn cpu_us(&self) -> Result<u64> {
        let pid = self.pid();
        let mut total = crate::proc::cpu_with_children_us(pid)?;
        for entry in std::fs::read_dir("/proc").context("reading /proc")? {
            let Some(child) = entry
                .ok()
                .and_then(|e| e.file_name().to_str()?.parse::<u32>().ok())
            else {
                continue;
            };
            if crate::proc::parent_pid(child).ok() == Some(pid) {
                // Gone since it was listed: its time is in the postmaster's `cutime` by now.
                total += crate::proc::cpu_us(child).unwrap_or(0);
            }
        }
        Ok(total)
    }
}

/// One table of PostgreSQL's, at one moment.
#[derive(Debug, Clone, Default)]
pub struct TableSize {
    pub name: String,
    /// `pg_total_relation_size`: the table, its indexes and TOAST, in bytes.
    pub bytes: u64,
    /// Live and dead rows as PostgreSQL's statistics have them (`n_live_tup`, `n_dead_tup`:
    /// estimates, updated within a second or so).
    pub live: u64,
    pub dead: u64,
}

/// Every table of `schema` on the PostgreSQL at `port` of 127.0.0.1, largest first; with
/// `psql`.
pub fn postgres_table_sizes(port: u16, schema: &str) -> Result<Vec<TableSize>> {
    let bin = postgres_bin().context("PostgreSQL is not installed")?;
    let query = format!(
        "SELECT c.relname, pg_total_relation_size(c.oid), coalesce(s.n_live_tup, 0), \
         coalesce(s.n_dead_tup, 0) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid \
         WHERE n.nspname = '{schema}' AND c.relkind IN ('r', 'p') ORDER BY 2 DESC, 1"
    );
    let out = Command::new(bin.join("psql"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-U", "postgres", "-d", "postgres", "-X", "-A", "-t", "-F", "\t",
        ])
        .args(["-c", &query])
        .stdin(Stdio::null())
        .output()
        .context("running psql")?;
    anyhow::ensure!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let [name, bytes, live, dead] = fields[..] else {
                bail!("psql said {line:?}");
            };
            let number = |f: &str| f.trim().parse::<u64>().context("a number from psql");
            Ok(TableSize {
                name: name.to_owned(),
                bytes: number(bytes)?,
                live: number(live)?,
                dead: number(dead)?,
            })
        })
        .collect()
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(postmaster) = self.postmaster.take() {
            // A fast shutdown: sessions are cut, the postmaster waits for its children, so
            // none is left behind when the folder goes.
            // SAFETY: kill has no memory preconditions; the pid is our own child's.
            unsafe {
                libc::kill(postmaster.pid() as libc::pid_t, libc::SIGINT);
            }
            // Killed (SIGKILL) by its own drop if it has not exited by then.
            let _ = postmaster.wait_exit(Duration::from_secs(20));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `program` is on `PATH`.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
