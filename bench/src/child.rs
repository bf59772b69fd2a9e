//! Child processes of the driver — the servers (this same executable), `redis-server`, and
//! `valgrind` around a server — pinned with `taskset`, and stopped when their handle drops
//! (on success, on error and on panic) or when the driver dies (`PR_SET_PDEATHSIG`).

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
