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
    let port = free_port()?;
    let log = work_dir()?.join("redis.log");
    let args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
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
