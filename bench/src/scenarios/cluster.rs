//! `cluster`: one Redis beside a Redis Cluster of three masters, under the same confirmed
//! direct-message load as `durable` ([`durable::measure_dm`]), in the same run:
//!
//! 1. `RedisStorage` on one `redis-server`;
//! 2. `RedisClusterStorage` on three masters (no replicas): what cutting the data along slots
//!    costs per message;
//! 3. the same on three masters with a replica each, writes not waiting for them, and
//! 4. with `replica_acks(1, ..)`: what a write acknowledged by its replica (`WAIT`) costs, in
//!    time to `stored()` and in CPU.
//!
//! Then the same four at low load — two users sending to each other, one message unconfirmed each — where the
//! time to `stored()` is the round trips themselves, not a queue behind the load: what an
//! acknowledged write adds to each send.
//!
//! Every Redis process is pinned to the server core with the simpleio node, and its CPU is
//! counted with the node's: on a 2-core machine this measures the cost of each message, not
//! what more machines would add (see `docs/benchmarks.md`).

use anyhow::Result;

use super::durable::{self, DmCase, DmOutcome, WINDOW, storage_name};
use super::{Opts, Target};
use crate::child;
use crate::report::{self, Table, median};

/// Users of the direct-message load: each sends to the next.
const USERS: usize = 200;

/// The `cluster` scenario.
pub async fn run(opts: Opts) -> Result<Vec<Table>> {
    if !child::have("redis-server") || !child::have("redis-cli") {
        eprintln!("  note: redis-server or redis-cli is not installed: no cluster scenario");
        return Ok(Vec::new());
    }
    let secs = if opts.quick { 5.0 } else { 10.0 };
    let targets = [
        Target::SimpleioRedis,
        Target::SimpleioRedisCluster {
            replicas: false,
            acks: false,
        },
        Target::SimpleioRedisCluster {
            replicas: true,
            acks: false,
        },
        Target::SimpleioRedisCluster {
            replicas: true,
            acks: true,
        },
    ];
    let loaded = measure_all(&targets, USERS, WINDOW, secs, opts).await?;
    let quiet = measure_all(&targets, 2, 1, secs, opts).await?;
    Ok(vec![
        table(
            &loaded,
            &format!(
                "cluster: confirmed direct messages for {secs} s, {USERS} users each sending to \
                 the next, {WINDOW} unconfirmed per sender (median of {} run(s))",
                opts.runs
            ),
        ),
        table(
            &quiet,
            &format!(
                "cluster at low load: two users sending to each other, one message unconfirmed each, for {secs} \
                 s (median of {} run(s))",
                opts.runs
            ),
        ),
    ])
}

/// Each target under the same load, `opts.runs` times.
async fn measure_all(
    targets: &[Target],
    users: usize,
    window: usize,
    secs: f64,
    opts: Opts,
) -> Result<Vec<(Target, Vec<DmOutcome>)>> {
    let mut results = Vec::new();
    for &target in targets {
        let case = DmCase {
            target,
            users,
            window,
            secs,
            send: crate::servers::dm::Send::Stored,
        };
        let mut runs = Vec::new();
        for run in 1..=opts.runs {
            eprintln!(
                "  direct messages on {}, {users} users, window {window}, run {run}/{} ...",
                storage_name(target),
                opts.runs
            );
            let o = durable::measure_dm(case, opts, false).await?;
            eprintln!(
                "    {:.0} msg/s confirmed, {:.2} µs/msg ({:.0}% Redis), stored p50 {} µs p99 {} \
                 µs, sent {} delivered {} received {} dup {}{}",
                o.rate(),
                o.cpu_per_msg(),
                100.0 * redis_share(&o),
                o.stored_p50_us,
                o.stored_p99_us,
                o.sent,
                o.delivered,
                o.received,
                o.duplicates,
                o.first_error
                    .as_ref()
                    .map(|e| format!(", {} send errors (first: {e})", o.send_errors))
                    .unwrap_or_default()
            );
            runs.push(o);
        }
        results.push((target, runs));
    }
    Ok(results)
}

fn redis_share(o: &DmOutcome) -> f64 {
    o.store_cpu_us as f64 / (o.server_cpu_us + o.store_cpu_us).max(1) as f64
}

fn table(results: &[(Target, Vec<DmOutcome>)], title: &str) -> Table {
    let mut table = Table::new(
        title.to_owned(),
        &[
            "storage",
            "confirmed msg/s",
            "CPU/msg",
            "Redis CPU",
            "stored p50",
            "stored p99",
            "p50",
            "p99",
            "lost",
            "dup",
            "send errors",
        ],
    );
    for (target, runs) in results {
        let m = |f: &dyn Fn(&DmOutcome) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        table.row(vec![
            storage_name(*target).to_owned(),
            report::count(m(&|o| o.rate()) as u64),
            report::us(m(&|o| o.cpu_per_msg())),
            format!("{:.0}%", 100.0 * m(&redis_share)),
            report::ms(m(&|o| o.stored_p50_us as f64)),
            report::ms(m(&|o| o.stored_p99_us as f64)),
            report::ms(m(&|o| o.p50_us as f64)),
            report::ms(m(&|o| o.p99_us as f64)),
            report::count(m(&|o| o.lost() as f64) as u64),
            report::count(m(&|o| o.duplicates as f64) as u64),
            report::count(m(&|o| o.send_errors as f64) as u64),
        ]);
    }
    table.note(
        "CPU/msg: the simpleio node's CPU plus every Redis process's (all pinned to the server \
         core), over the load, per confirmed message; `Redis CPU` is their share. stored: emit \
         to `stored()` at the server; p50/p99: sent to received by the recipient's client.",
    );
    table
}
