//! kvbench: crash-safe embedded KV store candidates for simpleio durable storage.
//!
//! Stores: redb (Durability::Immediate, default repair), redbqr (same + quick_repair),
//!         fjall (WriteBatch with PersistMode::SyncAll), sqlite (WAL + synchronous=FULL).
//!
//! Subcommands (all print one machine-readable `RESULT ...` line per measurement):
//!   latency <store> <dir> [n=2000]
//!   group   <store> <dir> <batch> <records>
//!   space   <store> <dir> [n=1000000] [batch=1000]
//!   load    <store> <dir> [n=1000000]
//!   scan    <store> <dir>
//!   get     <store> <dir> [n_in_store=1000000] [gets=100000]
//!   writer  <store> <dir> <start>           (child for killtest)
//!   killtest <store> <dir> [trials=10]
use std::error::Error;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

type R<T> = Result<T, Box<dyn Error>>;

const VAL_LEN: usize = 200;

fn mix(mut x: u64) -> u64 {
    // splitmix64
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// 24-byte key: 8-byte big-endian "user" prefix + 16-byte id. Unique per i, scattered over 4096 prefixes.
fn key(i: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(24);
    k.extend_from_slice(&(mix(i) % 4096).to_be_bytes());
    k.extend_from_slice(&i.to_be_bytes());
    k.extend_from_slice(&mix(i ^ 0xABCD).to_be_bytes());
    k
}

/// 200-byte deterministic pseudo-random (incompressible) value.
fn value(i: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(i ^ 0x5151_5151);
    let mut v = vec![0u8; VAL_LEN];
    rng.fill(&mut v);
    v
}

fn cpu_time() -> Duration {
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        let us = (ru.ru_utime.tv_sec as i64 + ru.ru_stime.tv_sec as i64) * 1_000_000
            + ru.ru_utime.tv_usec as i64
            + ru.ru_stime.tv_usec as i64;
        Duration::from_micros(us as u64)
    }
}

/// (apparent bytes, allocated bytes) of all files under dir, like `du -s --apparent-size` / `du -s -B1`.
fn du(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut app = 0;
    let mut blk = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                app += m.len();
                blk += m.blocks() * 512;
            }
        }
    }
    (app, blk)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

trait Kv {
    /// Durable commit of all records in one transaction.
    fn put_batch(&mut self, recs: &[(Vec<u8>, Vec<u8>)]) -> R<()>;
    /// Durable commit deleting all keys in one transaction.
    fn del_batch(&mut self, keys: &[Vec<u8>]) -> R<()>;
    /// Point-read each key (one read snapshot), calling f(index, value).
    fn read_each(&mut self, keys: &[Vec<u8>], f: &mut dyn FnMut(usize, Option<&[u8]>)) -> R<()>;
    /// Iterate everything; returns (count, bytes of key+value).
    fn scan(&mut self) -> R<(u64, u64)>;
}

// ---------------- redb ----------------
const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("kv");

struct Redb {
    db: redb::Database,
    quick_repair: bool,
}

impl Redb {
    fn open(dir: &Path, quick_repair: bool) -> R<Self> {
        std::fs::create_dir_all(dir)?;
        let db = redb::Database::create(dir.join("db.redb"))?;
        Ok(Redb { db, quick_repair })
    }
    fn txn(&self) -> R<redb::WriteTransaction> {
        let mut t = self.db.begin_write()?;
        t.set_durability(redb::Durability::Immediate)?;
        if self.quick_repair {
            t.set_quick_repair(true);
        }
        Ok(t)
    }
}

impl Kv for Redb {
    fn put_batch(&mut self, recs: &[(Vec<u8>, Vec<u8>)]) -> R<()> {
        let t = self.txn()?;
        {
            let mut tab = t.open_table(TABLE)?;
            for (k, v) in recs {
                tab.insert(k.as_slice(), v.as_slice())?;
            }
        }
        t.commit()?;
        Ok(())
    }
    fn del_batch(&mut self, keys: &[Vec<u8>]) -> R<()> {
        let t = self.txn()?;
        {
            let mut tab = t.open_table(TABLE)?;
            for k in keys {
                tab.remove(k.as_slice())?;
            }
        }
        t.commit()?;
        Ok(())
    }
    fn read_each(&mut self, keys: &[Vec<u8>], f: &mut dyn FnMut(usize, Option<&[u8]>)) -> R<()> {
        use redb::{ReadableDatabase, TableError};
        let rt = self.db.begin_read()?;
        let tab = match rt.open_table(TABLE) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => {
                for i in 0..keys.len() {
                    f(i, None);
                }
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        for (i, k) in keys.iter().enumerate() {
            match tab.get(k.as_slice())? {
                Some(g) => f(i, Some(g.value())),
                None => f(i, None),
            }
        }
        Ok(())
    }
    fn scan(&mut self) -> R<(u64, u64)> {
        use redb::{ReadableDatabase, ReadableTable};
        let rt = self.db.begin_read()?;
        let tab = rt.open_table(TABLE)?;
        let (mut n, mut b) = (0u64, 0u64);
        for e in tab.iter()? {
            let (k, v) = e?;
            n += 1;
            b += (k.value().len() + v.value().len()) as u64;
        }
        Ok((n, b))
    }
}

// ---------------- fjall ----------------
struct Fjall {
    db: fjall::Database,
    ks: fjall::Keyspace,
}

impl Fjall {
    fn open(dir: &Path) -> R<Self> {
        let db = fjall::Database::builder(dir).open()?;
        let ks = db.keyspace("kv", fjall::KeyspaceCreateOptions::default)?;
        Ok(Fjall { db, ks })
    }
}

impl Kv for Fjall {
    fn put_batch(&mut self, recs: &[(Vec<u8>, Vec<u8>)]) -> R<()> {
        let mut b = self.db.batch().durability(Some(fjall::PersistMode::SyncAll));
        for (k, v) in recs {
            b.insert(&self.ks, k.as_slice(), v.as_slice());
        }
        b.commit()?;
        Ok(())
    }
    fn del_batch(&mut self, keys: &[Vec<u8>]) -> R<()> {
        let mut b = self.db.batch().durability(Some(fjall::PersistMode::SyncAll));
        for k in keys {
            b.remove(&self.ks, k.as_slice());
        }
        b.commit()?;
        Ok(())
    }
    fn read_each(&mut self, keys: &[Vec<u8>], f: &mut dyn FnMut(usize, Option<&[u8]>)) -> R<()> {
        for (i, k) in keys.iter().enumerate() {
            match self.ks.get(k)? {
                Some(v) => f(i, Some(&v)),
                None => f(i, None),
            }
        }
        Ok(())
    }
    fn scan(&mut self) -> R<(u64, u64)> {
        let (mut n, mut b) = (0u64, 0u64);
        for g in self.ks.iter() {
            let (k, v) = g.into_inner()?;
            n += 1;
            b += (k.len() + v.len()) as u64;
        }
        Ok((n, b))
    }
}

// ---------------- sqlite ----------------
struct Sqlite {
    conn: rusqlite::Connection,
}

impl Sqlite {
    fn open(dir: &Path) -> R<Self> {
        std::fs::create_dir_all(dir)?;
        let conn = rusqlite::Connection::open(dir.join("db.sqlite"))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        assert_eq!(mode.to_lowercase(), "wal");
        conn.execute_batch(
            "PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;",
        )?;
        Ok(Sqlite { conn })
    }
}

impl Kv for Sqlite {
    fn put_batch(&mut self, recs: &[(Vec<u8>, Vec<u8>)]) -> R<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached("INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)")?;
            for (k, v) in recs {
                st.execute((k, v))?;
            }
        }
        tx.commit()?;
        Ok(())
    }
    fn del_batch(&mut self, keys: &[Vec<u8>]) -> R<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached("DELETE FROM kv WHERE k = ?1")?;
            for k in keys {
                st.execute([k])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
    fn read_each(&mut self, keys: &[Vec<u8>], f: &mut dyn FnMut(usize, Option<&[u8]>)) -> R<()> {
        let tx = self.conn.transaction()?; // one read snapshot
        {
            let mut st = tx.prepare_cached("SELECT v FROM kv WHERE k = ?1")?;
            for (i, k) in keys.iter().enumerate() {
                let mut rows = st.query([k])?;
                match rows.next()? {
                    Some(row) => {
                        let v = row.get_ref(0)?.as_blob()?;
                        f(i, Some(v))
                    }
                    None => f(i, None),
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
    fn scan(&mut self) -> R<(u64, u64)> {
        let mut st = self.conn.prepare("SELECT k, v FROM kv")?;
        let mut rows = st.query([])?;
        let (mut n, mut b) = (0u64, 0u64);
        while let Some(row) = rows.next()? {
            let k = row.get_ref(0)?.as_blob()?;
            let v = row.get_ref(1)?.as_blob()?;
            n += 1;
            b += (k.len() + v.len()) as u64;
        }
        Ok((n, b))
    }
}

fn open_store(store: &str, dir: &Path) -> R<Box<dyn Kv>> {
    Ok(match store {
        "redb" => Box::new(Redb::open(dir, false)?),
        "redbqr" => Box::new(Redb::open(dir, true)?),
        "fjall" => Box::new(Fjall::open(dir)?),
        "sqlite" => Box::new(Sqlite::open(dir)?),
        s => return Err(format!("unknown store {s}").into()),
    })
}

fn fresh(dir: &Path) -> R<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    Ok(())
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1e6
}

fn recs(range: std::ops::Range<u64>) -> Vec<(Vec<u8>, Vec<u8>)> {
    range.map(|i| (key(i), value(i))).collect()
}

// ---------------- subcommands ----------------
fn cmd_latency(store: &str, dir: &Path, n: u64) -> R<()> {
    fresh(dir)?;
    let mut kv = open_store(store, dir)?;
    let mut lats = Vec::with_capacity(n as usize);
    let t0 = Instant::now();
    for i in 0..n {
        let r = recs(i..i + 1);
        let t = Instant::now();
        kv.put_batch(&r)?;
        lats.push(t.elapsed());
    }
    let total = t0.elapsed();
    lats.sort();
    println!(
        "RESULT latency store={store} commits={n} commits_per_s={:.1} p50_us={:.0} p99_us={:.0} max_us={:.0}",
        n as f64 / total.as_secs_f64(),
        pct(&lats, 0.50),
        pct(&lats, 0.99),
        pct(&lats, 1.0)
    );
    Ok(())
}

fn cmd_group(store: &str, dir: &Path, batch: u64, total: u64) -> R<()> {
    fresh(dir)?;
    let mut kv = open_store(store, dir)?;
    let commits = total / batch;
    // pre-generate data so generation cost is not counted
    let batches: Vec<_> = (0..commits).map(|c| recs(c * batch..(c + 1) * batch)).collect();
    let c0 = cpu_time();
    let t0 = Instant::now();
    for b in &batches {
        kv.put_batch(b)?;
    }
    let wall = t0.elapsed();
    let cpu = cpu_time() - c0;
    let n = commits * batch;
    println!(
        "RESULT group store={store} batch={batch} records={n} commits={commits} records_per_s={:.0} commits_per_s={:.1} cpu_us_per_record={:.2} wall_s={:.2}",
        n as f64 / wall.as_secs_f64(),
        commits as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / n as f64,
        wall.as_secs_f64()
    );
    Ok(())
}

fn report_space(store: &str, dir: &Path, phase: &str, secs: f64) {
    let (a, b) = du(dir);
    println!(
        "RESULT space store={store} phase={phase} apparent_mib={:.1} allocated_mib={:.1} phase_s={secs:.1}",
        mib(a),
        mib(b)
    );
}

fn cmd_space(store: &str, dir: &Path, n: u64, batch: u64) -> R<()> {
    fresh(dir)?;
    let idle = Duration::from_secs(5);
    {
        let mut kv = open_store(store, dir)?;
        let t = Instant::now();
        for c in 0..n / batch {
            kv.put_batch(&recs(c * batch..(c + 1) * batch))?;
        }
        report_space(store, dir, "1_insert", t.elapsed().as_secs_f64());
        std::thread::sleep(idle);
        report_space(store, dir, "1_insert+5s", 0.0);
        let t = Instant::now();
        for c in 0..n / batch {
            let keys: Vec<_> = (c * batch..(c + 1) * batch).map(key).collect();
            kv.del_batch(&keys)?;
        }
        report_space(store, dir, "2_delete", t.elapsed().as_secs_f64());
        std::thread::sleep(idle);
        report_space(store, dir, "2_delete+5s", 0.0);
        let t = Instant::now();
        for c in 0..n / batch {
            kv.put_batch(&recs(n + c * batch..n + (c + 1) * batch))?;
        }
        report_space(store, dir, "3_reinsert", t.elapsed().as_secs_f64());
        std::thread::sleep(idle);
        report_space(store, dir, "3_reinsert+5s", 0.0);
        let (cnt, _) = kv.scan()?;
        assert_eq!(cnt, n, "record count after reinsert");
    }
    report_space(store, dir, "4_closed", 0.0);
    Ok(())
}

fn cmd_load(store: &str, dir: &Path, n: u64) -> R<()> {
    fresh(dir)?;
    let mut kv = open_store(store, dir)?;
    let t = Instant::now();
    for c in 0..n / 1000 {
        kv.put_batch(&recs(c * 1000..(c + 1) * 1000))?;
    }
    drop(kv);
    let (a, b) = du(dir);
    println!(
        "RESULT load store={store} n={n} s={:.1} apparent_mib={:.1} allocated_mib={:.1}",
        t.elapsed().as_secs_f64(),
        mib(a),
        mib(b)
    );
    Ok(())
}

fn drop_caches() -> bool {
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn cmd_scan(store: &str, dir: &Path) -> R<()> {
    for pass in ["cold", "warm"] {
        if pass == "cold" && !drop_caches() {
            eprintln!("could not drop caches; 'cold' is warm");
        }
        let t = Instant::now();
        let mut kv = open_store(store, dir)?;
        let open = t.elapsed();
        let t = Instant::now();
        let (n, b) = kv.scan()?;
        let scan = t.elapsed();
        println!(
            "RESULT scan store={store} cache={pass} open_ms={:.1} scan_ms={:.1} total_ms={:.1} records={n} bytes={b}",
            open.as_secs_f64() * 1e3,
            scan.as_secs_f64() * 1e3,
            (open + scan).as_secs_f64() * 1e3
        );
    }
    Ok(())
}

fn cmd_get(store: &str, dir: &Path, n: u64, gets: usize) -> R<()> {
    let _ = drop_caches();
    let mut kv = open_store(store, dir)?;
    let mut rng = fastrand::Rng::with_seed(42);
    for pass in ["first", "second"] {
        let keys: Vec<_> = (0..gets).map(|_| key(rng.u64(0..n))).collect();
        let mut found = 0usize;
        let mut bytes = 0usize;
        let t = Instant::now();
        kv.read_each(&keys, &mut |_, v| {
            if let Some(v) = v {
                found += 1;
                bytes += v.len();
            }
        })?;
        let el = t.elapsed();
        assert_eq!(found, gets, "all keys should be found");
        println!(
            "RESULT get store={store} pass={pass} gets={gets} ns_per_get={:.0} bytes={bytes}",
            el.as_nanos() as f64 / gets as f64
        );
    }
    Ok(())
}

fn cmd_writer(store: &str, dir: &Path, start: u64) -> R<()> {
    let mut kv = open_store(store, dir)?;
    let mut rng = fastrand::Rng::new();
    let out = std::io::stdout();
    let mut out = out.lock();
    let mut i = start;
    loop {
        let k = rng.u64(1..=8);
        kv.put_batch(&recs(i..i + k))?;
        // commit returned => durable; only now announce
        let mut s = String::new();
        for j in i..i + k {
            s.push_str(&j.to_string());
            s.push('\n');
        }
        out.write_all(s.as_bytes())?;
        out.flush()?;
        i += k;
    }
}

fn cmd_killtest(store: &str, dir: &Path, trials: u32) -> R<()> {
    let exe = std::env::current_exe()?;
    let mut acked: Vec<u64> = Vec::new();
    let mut pass = 0;
    let mut rng = fastrand::Rng::new();
    for t in 0..trials {
        let start = (t as u64 + 1) * 1_000_000_000;
        let mut child = std::process::Command::new(&exe)
            .args(["writer", store, dir.to_str().unwrap(), &start.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut so = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = so.read_to_end(&mut buf);
            buf
        });
        let wait_ms = 1000 + rng.u64(0..1000);
        std::thread::sleep(Duration::from_millis(wait_ms));
        child.kill()?; // SIGKILL on unix
        let status = child.wait()?;
        let buf = reader.join().unwrap();
        // only complete lines count as acknowledged
        let complete = match buf.iter().rposition(|&c| c == b'\n') {
            Some(p) => &buf[..=p],
            None => &buf[..0],
        };
        let mut this = 0;
        for line in complete.lines() {
            acked.push(line?.trim().parse()?);
            this += 1;
        }
        let t0 = Instant::now();
        let mut open_ms = Duration::ZERO;
        let res = (|| -> R<(usize, usize)> {
            let mut kv = open_store(store, dir)?;
            open_ms = t0.elapsed();
            let keys: Vec<_> = acked.iter().map(|&i| key(i)).collect();
            let mut missing = 0;
            let mut bad = 0;
            kv.read_each(&keys, &mut |idx, v| match v {
                None => missing += 1,
                Some(v) if v != value(acked[idx]).as_slice() => bad += 1,
                _ => {}
            })?;
            Ok((missing, bad))
        })();
        let reopen_ms = t0.elapsed().as_secs_f64() * 1e3;
        let ok = matches!(res, Ok((0, 0)));
        if ok {
            pass += 1;
        }
        println!(
            "RESULT killtrial store={store} trial={t} killed_after_ms={wait_ms} status={status} acked_this_trial={this} acked_total={} open_ms={:.1} reopen_and_check_ms={reopen_ms:.1} outcome={}",
            acked.len(),
            open_ms.as_secs_f64() * 1e3,
            match &res {
                Ok((0, 0)) => "PASS".to_string(),
                Ok((m, b)) => format!("FAIL(missing={m},wrong_value={b})"),
                Err(e) => format!("FAIL(open_error={e})"),
            }
        );
    }
    println!("RESULT killtest store={store} trials={trials} pass={pass}");
    Ok(())
}

/// ENOSPC behaviour: dir must be on a small filesystem (e.g. a 24 MiB tmpfs) with a ballast file
/// `<dir>/../ballast` that can be removed to free space.
fn cmd_enospc(store: &str, dir: &Path) -> R<()> {
    let ballast = dir.parent().unwrap().join("ballast");
    let mut kv = open_store(store, dir)?;
    let mut i = 0u64;
    let err = loop {
        match kv.put_batch(&recs(i..i + 100)) {
            Ok(()) => i += 100,
            Err(e) => break e,
        }
        if i > 10_000_000 {
            return Err("never hit ENOSPC".into());
        }
    };
    let acked = i;
    println!("RESULT enospc store={store} step=first_error acked={acked} err={err:?}");
    // same handle, still full
    let r = kv.put_batch(&recs(50_000_000..50_000_001));
    println!("RESULT enospc store={store} step=retry_while_full ok={} err={:?}", r.is_ok(), r.err());
    // free space, retry on the same handle
    let _ = std::fs::remove_file(&ballast);
    let r = kv.put_batch(&recs(60_000_000..60_000_001));
    println!("RESULT enospc store={store} step=retry_after_freeing_same_handle ok={} err={:?}", r.is_ok(), r.err());
    let keys: Vec<_> = (0..acked).map(key).collect();
    let mut missing = 0;
    let rr = kv.read_each(&keys, &mut |_, v| if v.is_none() { missing += 1 });
    println!("RESULT enospc store={store} step=read_same_handle ok={} missing={missing} err={:?}", rr.is_ok(), rr.err());
    drop(kv);
    let t = Instant::now();
    let reopened = open_store(store, dir);
    match reopened {
        Err(e) => println!("RESULT enospc store={store} step=reopen ok=false err={e:?}"),
        Ok(mut kv) => {
            let open_ms = t.elapsed().as_secs_f64() * 1e3;
            let mut missing = 0;
            kv.read_each(&keys, &mut |_, v| if v.is_none() { missing += 1 })?;
            let r = kv.put_batch(&recs(70_000_000..70_000_100));
            println!(
                "RESULT enospc store={store} step=reopen ok=true open_ms={open_ms:.1} acked_missing={missing} commit_after_reopen_ok={} err={:?}",
                r.is_ok(),
                r.err()
            );
        }
    }
    Ok(())
}

fn main() -> R<()> {
    let a: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: u64| -> u64 { a.get(i).map(|s| s.parse().unwrap()).unwrap_or(d) };
    if a.len() < 4 {
        eprintln!("usage: kvbench <cmd> <store> <dir> [args]");
        std::process::exit(2);
    }
    let store = a[2].as_str();
    let dir = PathBuf::from(&a[3]);
    match a[1].as_str() {
        "latency" => cmd_latency(store, &dir, arg(4, 2000)),
        "group" => cmd_group(store, &dir, arg(4, 16), arg(5, 16_000)),
        "space" => cmd_space(store, &dir, arg(4, 1_000_000), arg(5, 1000)),
        "load" => cmd_load(store, &dir, arg(4, 1_000_000)),
        "scan" => cmd_scan(store, &dir),
        "get" => cmd_get(store, &dir, arg(4, 1_000_000), arg(5, 100_000) as usize),
        "writer" => cmd_writer(store, &dir, arg(4, 0)),
        "enospc" => cmd_enospc(store, &dir),
        "killtest" => cmd_killtest(store, &dir, arg(4, 10) as u32),
        c => Err(format!("unknown cmd {c}").into()),
    }
}
