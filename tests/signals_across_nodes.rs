//! Signals addressed to nodes, counted: 1, 2, 4 and 8 nodes — each a layer and server of its
//! own on loopback with its own `RedisStorage`, on one test `redis-server` and one key prefix —
//! and 16 users, each polling through one node. One node sends each user a message per round;
//! every poll answers it and the next poll confirms it. The signals every node received per
//! message must not grow with the number of nodes: a node hears of the users it has polls of or
//! waits for, not of everyone (with one channel for all, each message's signals reached every
//! node, so the count grew with them).
#![cfg(feature = "redis")]

mod support;

#[path = "support/redis.rs"]
mod redis_server;

use std::time::Duration;

use simpleio::{ClientId, Delivered, RedisStorage, SendError, Sending, SimpleIoLayer};
use support::server::TestServer;
use support::wire::{Tab, Wire, eventually};
use tokio::task::JoinHandle;

const USERS: usize = 16;
const ROUNDS: usize = 3;

/// Polls held far longer than the test, and a recheck that never fires during it: every
/// answer comes from a signal.
fn app() -> simpleio::Builder {
    SimpleIoLayer::builder()
        .hold_time(Duration::from_secs(20))
        .recheck_interval(Duration::from_secs(30))
}

async fn stored(sending: Sending) -> JoinHandle<Result<Delivered, SendError>> {
    let confirmation = sending.stored().await.expect("the message is stored");
    tokio::spawn(confirmation)
}

/// What one run counted: signals received by all nodes, and by the busiest one, per message.
struct Count {
    per_message: f64,
    busiest_node_per_message: f64,
}

async fn count(nodes: usize, redis: &redis_server::RedisServer) -> Count {
    let prefix = format!("signals-{}:", ClientId::random());
    let mut storages = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..nodes {
        let storage = RedisStorage::builder(redis.url())
            .key_prefix(prefix.clone())
            .connect()
            .await
            .expect("connect to the test Redis");
        servers.push(TestServer::start(app().storage(storage.clone())).await);
        storages.push(storage);
    }
    let mut tabs: Vec<Tab> = (0..USERS)
        .map(|i| Wire::new(&servers[i % nodes]).tab(&format!("u{i}"), "tab"))
        .collect();
    for tab in &mut tabs {
        tab.receive().await;
    }
    // The new prefix's epoch was announced to every node; only what follows is counted.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before: Vec<u64> = storages.iter().map(|s| s.signals_received()).collect();

    let mut confirmations = Vec::new();
    let mut last_polls = Vec::new();
    for round in 0..=ROUNDS {
        // Every tab polls (confirming what it read last round) and waits.
        let polls: Vec<JoinHandle<(Tab, Vec<u64>)>> = tabs
            .drain(..)
            .map(|mut tab| {
                tokio::spawn(async move {
                    let batch = tab.receive().await;
                    (tab, batch.positions())
                })
            })
            .collect();
        for (k, server) in servers.iter().enumerate() {
            let here = (0..USERS).filter(|i| i % nodes == k).count();
            eventually("every poll waits", || server.io.waiting_polls() == here).await;
        }
        if round == ROUNDS {
            // These polls only confirm the last round's messages.
            last_polls = polls;
            break;
        }
        for i in 0..USERS {
            let sending = servers[0].io.to_user(format!("u{i}")).emit("note", &round);
            confirmations.push(stored(sending).await);
        }
        for poll in polls {
            let (tab, positions) = poll.await.expect("poll");
            assert_eq!(positions.len(), 1, "{} got {positions:?}", tab.user);
            tabs.push(tab);
        }
    }
    for confirmation in confirmations {
        let outcome = confirmation.await.expect("confirmation task");
        assert!(outcome.is_ok(), "a message was not delivered: {outcome:?}");
    }
    // Signals published by the last confirmations are on their way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received: Vec<u64> = storages
        .iter()
        .zip(&before)
        .map(|(s, b)| s.signals_received() - b)
        .collect();
    for poll in last_polls {
        poll.abort();
    }
    let messages = (USERS * ROUNDS) as f64;
    Count {
        per_message: received.iter().sum::<u64>() as f64 / messages,
        busiest_node_per_message: received.iter().copied().max().unwrap_or(0) as f64 / messages,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signals_per_message_stay_flat_as_nodes_are_added() {
    let Some(redis) = redis_server::RedisServer::shared() else {
        return;
    };
    let mut counts = Vec::new();
    println!("| nodes | signals received per message, all nodes | the busiest node |");
    println!("|---|---|---|");
    for nodes in [1, 2, 4, 8] {
        let c = count(nodes, redis).await;
        println!(
            "| {nodes} | {:.2} | {:.2} |",
            c.per_message, c.busiest_node_per_message
        );
        counts.push(c);
    }
    // Per message: its append's wakeup, the next poll's announcement and its confirmation,
    // each to the node that polls and, for the wakeup and the confirmation, to the sending
    // node too. Nothing grows with the nodes that have nothing to do with the message.
    for c in &counts {
        assert!(
            c.per_message <= 6.0,
            "{:.2} signals per message reached the nodes",
            c.per_message
        );
    }
    assert!(
        counts[3].per_message < 2.0 * counts[0].per_message,
        "8 nodes received {:.2} signals per message, 1 node {:.2}",
        counts[3].per_message,
        counts[0].per_message
    );
}
