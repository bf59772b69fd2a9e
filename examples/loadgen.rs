//! A load generator for a simpleio cluster: real chat processes (`examples/chat.rs`) on a real
//! Redis, measured from outside. The figures it prints are in `docs/benchmarks.md`.
//!
//! ```text
//! cargo build --release --features redis,client --example chat --example loadgen
//! target/release/examples/loadgen [--runs 3] [--samples 500] [--users 50] [--dms 200]
//! ```
//!
//! It needs `redis-server` on `PATH` and the chat binary next to its own
//! (`target/release/examples/chat`). Every run starts a fresh Redis and fresh nodes, and stops
//! them before the next; everything it starts stops with it.
//!
//! * **Cross-node latency**: a client's poll waits on node B; the loadgen process, acting as
//!   node A with its own `RedisStorage`, emits a message to that user; the time from the start
//!   of the `emit` to the poll's response reaching the client. Many samples, p50/p90/p99.
//! * **Throughput**: `--users` clients, each sending `--dms` direct messages to the next user
//!   (pipelined: each client batches what is queued into one `POST`), through a per-request
//!   round-robin balancer over 1 node, then over 3 nodes, in the same run. Confirmed messages
//!   per second = (direct messages acknowledged to their senders + direct messages received and
//!   confirmed by their recipients) / wall time. Each direct message also goes back to its
//!   sender (the chat's other windows), which is work done but not counted.

#[path = "../tests/support/cluster.rs"]
mod cluster;
#[path = "../tests/support/redis.rs"]
mod redis_server;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cluster::{BALANCE_KEY, Balancer, Node};
use redis_server::RedisServer;
use serde_json::{Value, json};
use simpleio::client::{Client, Event, MessageKind};
use simpleio::{RedisStorage, SimpleIoLayer};
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy)]
struct Args {
    runs: usize,
    samples: usize,
    users: usize,
    dms: usize,
}

fn args() -> Args {
    let mut args = Args {
        runs: 3,
        samples: 500,
        users: 50,
        dms: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value: usize = it
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{flag} needs a number"));
        match flag.as_str() {
            "--runs" => args.runs = value,
            "--samples" => args.samples = value,
            "--users" => args.users = value,
            "--dms" => args.dms = value,
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

#[tokio::main]
async fn main() {
    let args = args();
    println!("loadgen {args:?}");
    let mut latency_p50 = Vec::new();
    let mut latency_p99 = Vec::new();
    let mut one = Vec::new();
    let mut three = Vec::new();
    for run in 1..=args.runs {
        let lat = latency(args.samples).await;
        println!(
            "run {run}: cross-node latency over {} samples: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            lat.len(),
            pct(&lat, 50.0),
            pct(&lat, 90.0),
            pct(&lat, 99.0),
            pct(&lat, 100.0)
        );
        latency_p50.push(pct(&lat, 50.0));
        latency_p99.push(pct(&lat, 99.0));
        for (nodes, into) in [(1, &mut one), (3, &mut three)] {
            let rate = throughput(nodes, args.users, args.dms).await;
            println!("run {run}: {nodes} node(s): {rate:.0} confirmed messages/s");
            into.push(rate);
        }
        println!(
            "run {run}: 3 nodes / 1 node = {:.2}",
            three[run - 1] / one[run - 1]
        );
    }
    let ratios: Vec<f64> = one.iter().zip(&three).map(|(a, b)| b / a).collect();
    println!("--- medians over {} runs", args.runs);
    println!(
        "cross-node latency: p50 {:.2} ms, p99 {:.2} ms",
        median(&latency_p50),
        median(&latency_p99)
    );
    println!(
        "throughput: 1 node {:.0}/s, 3 nodes {:.0}/s, ratio 3/1 {:.2}",
        median(&one),
        median(&three),
        median(&ratios)
    );
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The `p`th percentile of `samples` (milliseconds), nearest rank.
fn pct(samples: &[f64], p: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn redis() -> RedisServer {
    RedisServer::start().expect("redis-server is needed (apt-get install -y redis-server)")
}

async fn nodes(redis: &RedisServer, n: usize) -> Vec<Node> {
    let mut started = Vec::new();
    for i in 0..n {
        let url = redis.url();
        started.push(tokio::task::spawn_blocking(move || {
            Node::start(
                &format!("node{i}"),
                &url,
                &[("RUST_LOG", "error,chat=info")],
            )
        }));
    }
    let mut nodes = Vec::new();
    for node in started {
        nodes.push(node.await.expect("a node started"));
    }
    nodes
}

/// Milliseconds from an emit in this process to the response of a poll waiting on another
/// node, `samples` times.
async fn latency(samples: usize) -> Vec<f64> {
    let redis = redis();
    let nodes = nodes(&redis, 1).await;
    let storage = RedisStorage::connect(redis.url()).await.expect("Redis");
    let (_layer, io) = SimpleIoLayer::builder().storage(storage).build();
    let http = reqwest::Client::new();
    let url = format!("{}?user=lat", nodes[0].url());
    let first: Value = http
        .get(format!("{url}&client=lat-tab-0001"))
        .send()
        .await
        .expect("poll")
        .json()
        .await
        .expect("json");
    let mut cursor = (first["cursor"].clone(), first["epoch"].clone());
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let query = format!(
            "{url}&client=lat-tab-0001&cursor={}&epoch={}",
            cursor.0,
            cursor.1.as_str().unwrap_or("")
        );
        let poll = tokio::spawn(http.get(query).send());
        // Let the poll park on node B, so the wakeup path is what is measured.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let started = Instant::now();
        let confirmation = io
            .to_user("lat")
            .emit("news", &json!({ "i": i }))
            .stored()
            .await
            .expect("stored");
        let body: Value = poll
            .await
            .expect("poll task")
            .expect("poll")
            .json()
            .await
            .expect("json");
        out.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(body["messages"][0]["data"]["i"], i, "{body}");
        cursor = (body["cursor"].clone(), body["epoch"].clone());
        drop(confirmation); // confirmed by the next poll; not waited for here
    }
    out
}

/// Confirmed messages per second with `n` nodes behind the balancer.
async fn throughput(n: usize, users: usize, dms: usize) -> f64 {
    let redis = redis();
    let nodes = nodes(&redis, n).await;
    let balancer = Balancer::start(nodes.iter().map(Node::addr).collect()).await;
    let received = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(Notify::new());
    let names: Vec<String> = (0..users).map(|i| format!("u{i:02}")).collect();
    let mut clients = Vec::new();
    let mut readers = Vec::new();
    for name in &names {
        let (client, mut events) = Client::builder(balancer.url())
            .header("cookie", &format!("user={name}"))
            .header(BALANCE_KEY, name)
            .event_buffer(1024)
            .connect()
            .expect("client");
        let (received, progress, me) = (received.clone(), progress.clone(), name.clone());
        readers.push(tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let Event::Message(m) = event
                    && matches!(m.kind, MessageKind::Stored { .. })
                    && m.data["from"] != me.as_str()
                {
                    received.fetch_add(1, Ordering::Relaxed);
                    progress.notify_one();
                }
            }
        }));
        clients.push(client);
    }
    // Every client connected (its first poll answered) before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let acked = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let (client, to, acked) = (
            client.clone(),
            names[(i + 1) % users].clone(),
            acked.clone(),
        );
        senders.push(tokio::spawn(async move {
            let sends = (0..dms).map(|k| {
                let line = json!({"text": k.to_string(), "to": to});
                let client = client.clone();
                async move { client.emit("chat", &line).await }
            });
            for reply in futures_util::future::join_all(sends).await {
                reply.expect("a direct message was acknowledged");
                acked.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for sender in senders {
        sender.await.expect("sender");
    }
    let total = users * dms;
    let deadline = Instant::now() + Duration::from_secs(300);
    while received.load(Ordering::Relaxed) < total {
        assert!(Instant::now() < deadline, "messages missing after 300 s");
        let _ = tokio::time::timeout(Duration::from_millis(50), progress.notified()).await;
    }
    let took = started.elapsed().as_secs_f64();
    let confirmed = acked.load(Ordering::Relaxed) + received.load(Ordering::Relaxed);
    for client in &clients {
        client.close().await;
    }
    for reader in readers {
        let _ = reader.await;
    }
    confirmed as f64 / took
}
