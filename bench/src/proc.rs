//! What the benchmark reads from and does to processes: CPU time and memory from `/proc`, core
//! pinning, the open-files limit, and the wall clock that latencies are measured on.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

/// CPU time (user + system, every thread, living or exited) of process `pid`, in microseconds.
///
/// From `/proc/PID/stat` fields 14 and 15, in clock ticks (10 ms each on Linux): coarse, which is
/// why every scenario measures over seconds of load, never single messages.
pub fn cpu_us(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("unexpected /proc/PID/stat format")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so fields 14 and 15 are at indexes 11 and 12.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .context("short /proc/PID/stat")?
            .parse::<u64>()
            .context("non-numeric CPU field in /proc/PID/stat")
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(total * 1_000_000 / clock_ticks_per_second())
}

/// CPU time of process `pid` and of its children it has waited for (`/proc/PID/stat` fields
/// 14–17: `utime`, `stime`, `cutime`, `cstime`), in microseconds.
pub fn cpu_with_children_us(pid: u32) -> Result<u64> {
    let fields = stat_fields(pid)?;
    let mut ticks = 0;
    for i in 11..=14 {
        ticks += field(&fields, i)?;
    }
    Ok(ticks * 1_000_000 / clock_ticks_per_second())
}

/// How long the threads of process `pid` living now have waited, runnable, for a CPU (the
/// second field of each `/proc/PID/task/TID/schedstat`), in microseconds: a process that waits
/// long is short of CPU, whatever share of it it got.
pub fn runqueue_wait_us(pid: u32) -> Result<u64> {
    let mut ns = 0;
    let tasks = format!("/proc/{pid}/task");
    for entry in std::fs::read_dir(&tasks).with_context(|| format!("reading {tasks}"))? {
        let Ok(entry) = entry else { continue };
        // A thread that ended since the listing is left out.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("schedstat")) else {
            continue;
        };
        ns += stat
            .split_whitespace()
            .nth(1)
            .and_then(|f| f.parse::<u64>().ok())
            .context("unexpected schedstat format")?;
    }
    Ok(ns / 1000)
}

/// The parent of process `pid` (`/proc/PID/stat` field 4).
pub fn parent_pid(pid: u32) -> Result<u32> {
    let fields = stat_fields(pid)?;
    Ok(field(&fields, 1)? as u32)
}

/// The fields of `/proc/PID/stat` from field 3 (the state) on.
fn stat_fields(pid: u32) -> Result<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("unexpected /proc/PID/stat format")?;
    Ok(rest.split_whitespace().map(str::to_owned).collect())
}

fn field(fields: &[String], i: usize) -> Result<u64> {
    fields
        .get(i)
        .context("short /proc/PID/stat")?
        .parse::<u64>()
        .context("non-numeric field in /proc/PID/stat")
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as u64 } else { 100 }
}

/// Resident memory of process `pid` now (`VmRSS`), in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS:").map(|kib| kib * 1024)
}

/// Peak resident memory of process `pid` (`VmHWM`), in bytes.
pub fn peak_rss_bytes(pid: u32) -> Result<u64> {
    status_kib(pid, "VmHWM:").map(|kib| kib * 1024)
}

fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .with_context(|| format!("no {key} in /proc/{pid}/status"))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("bad {key} line {line:?}"))
}

/// Nanoseconds since the Unix epoch (CLOCK_REALTIME): the servers stamp each tick with it and the
/// load generator subtracts, both on this machine's clock.
pub fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The number of cores this process may run on.
pub fn online_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Pins the calling thread, and every thread it starts afterwards, to `core`. Call it before
/// starting a runtime: threads inherit the mask when they are created.
pub fn pin_current_thread(core: usize) -> Result<()> {
    // SAFETY: `set` is a plain bitmask we own; pid 0 means the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "sched_setaffinity to core {core}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Raises the soft open-files limit to the hard limit: 10,000 connections need 10,000
/// descriptors, and the soft limit is often 1,024.
pub fn raise_nofile_limit() -> Result<u64> {
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                bail!("setrlimit: {}", std::io::Error::last_os_error());
            }
        }
        Ok(lim.rlim_cur)
    }
}

/// Makes the calling process get SIGKILL when its parent thread dies, so a crashed or killed
/// driver leaves no servers behind. For `pre_exec` in a child.
pub fn die_with_parent() -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on the calling process.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
