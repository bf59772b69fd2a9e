//! `smoke`: every server and scenario type, tiny and short, with sanity assertions; for CI.
//! Fails (non-zero exit) on any lost or duplicated confirmed message, on a scenario that
//! received nothing (a room emit not stored, its honest client unanswered), or on any error.

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};

use crate::child;
use crate::scenarios::{Opts, Target, broadcast, callgrind, durable, fanout, history, idle, room};
use crate::servers::Mode;
use crate::servers::dm::Send;

/// Runs the smoke test.
pub async fn run(opts: Opts) -> Result<()> {
    let started = Instant::now();
    let case = |target, mode| broadcast::Case {
        target,
        mode,
        clients: 20,
        rate: 10.0,
        secs: 2.0,
    };
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");

    let mut cases = vec![
        case(Target::Simpleio, Mode::Confirmed),
        case(Target::Simpleio, Mode::Volatile),
        case(Target::Socketioxide, Mode::Confirmed),
        case(Target::HyperPoll, Mode::Confirmed),
        case(Target::SimpleioDurable, Mode::Confirmed),
    ];
    if child::have("redis-server") {
        cases.push(case(Target::SimpleioRedis, Mode::Confirmed));
    } else if in_ci {
        bail!("redis-server is missing (CI=true)");
    } else {
        eprintln!("smoke: SKIPPING the Redis case: redis-server is not installed");
    }
    for c in cases {
        let o = broadcast::measure(c, opts).await?;
        let label = c.label();
        eprintln!(
            "smoke: {label}: received {}/{}, lost {}, dup {}, p50 {} µs, {:.1} µs/msg",
            o.received,
            o.expected,
            o.lost,
            o.duplicates,
            o.p50_us,
            o.cpu_per_msg()
        );
        ensure!(o.received > 0, "{label}: no message received");
        ensure!(o.duplicates == 0, "{label}: {} duplicates", o.duplicates);
        ensure!(
            o.out_of_order == 0,
            "{label}: {} out of order",
            o.out_of_order
        );
        if c.mode == Mode::Confirmed {
            ensure!(o.lost == 0, "{label}: {} lost", o.lost);
            ensure!(
                o.received == o.expected,
                "{label}: {}/{}",
                o.received,
                o.expected
            );
        }
        // Only simpleio confirms; socketioxide and the floor deliver at most once.
        if c.mode == Mode::Confirmed
            && !matches!(c.target, Target::Socketioxide | Target::HyperPoll)
        {
            ensure!(
                o.delivered == o.sent && o.not_delivered == 0,
                "{label}: {} of {} broadcasts resolved delivered",
                o.delivered,
                o.sent
            );
        }
        if c.target == Target::SimpleioDurable {
            ensure!(
                o.commits.is_some_and(|n| n > 0) && o.file_bytes.is_some_and(|n| n > 0),
                "{label}: no commits ({:?}) or no file ({:?})",
                o.commits,
                o.file_bytes
            );
        }
    }

    let mut dm_targets = vec![Target::Simpleio, Target::SimpleioDurable];
    if child::have("redis-server") && child::have("redis-cli") {
        // The `cluster` scenario's heaviest case: three masters and replicas, writes
        // acknowledged by them.
        dm_targets.push(Target::SimpleioRedisCluster {
            replicas: true,
            acks: true,
        });
    } else if in_ci {
        bail!("redis-server or redis-cli is missing (CI=true)");
    } else {
        eprintln!("smoke: SKIPPING the Redis Cluster case: redis-server or redis-cli is missing");
    }
    // A fresh PostgreSQL of its own: about two seconds for initdb and the start.
    if child::postgres_bin().is_some() {
        dm_targets.push(Target::SimpleioPostgres);
    } else if in_ci {
        bail!("PostgreSQL is missing (/usr/lib/postgresql/*/bin, CI=true)");
    } else {
        eprintln!("smoke: SKIPPING the PostgreSQL case: it is not installed");
    }
    // Each storage with senders awaiting `stored()`, and durable also with `ordered()`.
    let dm_cases = dm_targets.into_iter().flat_map(|target| {
        let ordered = (target == Target::SimpleioDurable).then_some(Send::Ordered);
        std::iter::once(Send::Stored)
            .chain(ordered)
            .map(move |send| (target, send))
    });
    for (target, send) in dm_cases {
        let case = durable::DmCase {
            target,
            users: 20,
            window: 4,
            secs: 1.0,
            send,
        };
        let o = durable::measure_dm(case, opts, false).await?;
        eprintln!(
            "smoke: direct messages {target:?}, {send:?}: {:.0} msg/s, sent {}, delivered {}, received {}, \
             dup {}, commits {:?}",
            o.rate(),
            o.sent,
            o.delivered,
            o.received,
            o.duplicates,
            o.commits
        );
        ensure!(
            o.sent > 0 && o.delivered == o.sent && o.received == o.sent,
            "direct messages {target:?}: sent {}, delivered {}, received {}; send errors {} \
             (first: {:?})",
            o.sent,
            o.delivered,
            o.received,
            o.send_errors,
            o.first_error
        );
        ensure!(
            o.duplicates == 0 && o.out_of_order == 0,
            "direct messages {target:?}: {} duplicates, {} out of order",
            o.duplicates,
            o.out_of_order
        );
        if target == Target::SimpleioDurable {
            ensure!(
                o.commits.is_some_and(|n| n > 0),
                "direct messages on durable: no commits"
            );
        }
        if target == Target::SimpleioPostgres {
            ensure!(
                o.tables_bytes().is_some_and(|n| n > 0) && o.store_cpu_us > 0,
                "direct messages on PostgreSQL: no tables ({:?}) or no CPU counted for its \
                 processes ({} µs)",
                o.tables,
                o.store_cpu_us
            );
        }
    }

    let windows = history::measure(opts, 20, 2, Duration::from_secs(1)).await?;
    eprintln!(
        "smoke: history: {:?}",
        windows.iter().map(|w| w.received).collect::<Vec<_>>()
    );
    ensure!(
        windows.iter().all(|w| w.received > 0),
        "history: a window received nothing"
    );

    let f = fanout::measure(opts, Target::Simpleio, 200).await?;
    eprintln!(
        "smoke: fanout to 200: stored {} µs, all answered {} µs, volatile {}/200",
        f.stored_us, f.all_answered_us, f.volatile_received
    );
    ensure!(
        f.confirmed_received == 200,
        "fanout: {}/200",
        f.confirmed_received
    );
    ensure!(
        f.all_confirmed_us > 0,
        "fanout: the emit never resolved delivered"
    );
    ensure!(
        f.volatile_received > 0,
        "fanout: no volatile message received"
    );

    let r = room::measure(opts, Target::Simpleio, 2_000, Duration::from_millis(300)).await?;
    eprintln!(
        "smoke: room of 2,000: stored {} µs, {} requests during (max {} µs), {} before (max {} µs)",
        r.stored_us,
        r.during_us.len(),
        r.during_max_us(),
        r.before,
        r.before_max_us
    );
    ensure!(
        r.members == 2_000 && r.stored_us > 0,
        "room: the emit to 2,000 members was not stored"
    );
    ensure!(
        r.before > 0,
        "room: the honest client got no answer before the emit"
    );
    ensure!(
        r.errors == 0,
        "room: the honest client had {} failed requests; first: {}",
        r.errors,
        r.first_error.as_deref().unwrap_or("?")
    );

    for target in [Target::Simpleio, Target::HyperHold] {
        let per = idle::per_poll(opts, target, crate::servers::Http::Axum, 200).await?;
        eprintln!("smoke: idle {target:?}: {per:.0} bytes per waiting poll");
        ensure!(per.is_finite(), "idle {target:?}: no figure");
    }

    if child::have("valgrind") {
        let o = callgrind::measure(opts, 5, 3).await?;
        eprintln!(
            "smoke: callgrind: {} instructions / message",
            o.per_message() as u64
        );
        ensure!(o.instructions > 0, "callgrind: no instructions counted");
    } else {
        eprintln!("smoke: SKIPPING callgrind: valgrind is not installed");
    }
    eprintln!("smoke: ok in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
