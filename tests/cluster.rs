//! Several real chat processes (`examples/chat.rs`) on one real Redis, behind a balancer that
//! sends every request of a client to a different process than its previous one: the
//! no-sticky-sessions promise, end to end, with processes killed and Redis restarted mid-run.
//!
//! Each test starts its own `redis-server` (tests/support/redis.rs), its chat processes and the
//! balancer (tests/support/cluster.rs); all of them stop when the test ends, however it ends.
//! Clients are `simpleio::client`; server-side sends come from a `SimpleIo` in the test process
//! on its own `RedisStorage`, as another service of the application would send.
//!
//! The same faults run on PostgreSQL (`PostgresStorage`, feature `postgres`): a node killed,
//! PostgreSQL stopped with a fast and with an immediate shutdown and started again.
//!
//! Skipped, loudly, without `redis-server` (or PostgreSQL's `initdb`), and failed if `CI=true`.
#![cfg(all(feature = "redis", feature = "client"))]

#[path = "support/cluster.rs"]
mod cluster;
#[cfg(feature = "postgres")]
#[path = "support/postgres.rs"]
mod postgres_server;
#[path = "support/redis.rs"]
mod redis_server;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::{BALANCE_KEY, Balancer, NODE_HEADER, Node};
use redis_server::RedisServer;
use serde_json::{Value, json};
use simpleio::client::{Client, EmitError, Event, MessageKind};
use simpleio::storage::DeliveryState;
use simpleio::{Failure, RedisStorage, SendError, SimpleIo, SimpleIoLayer, Storage};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

/// The hold of the nodes' polls where the test is not about holding: short, so that idle
/// clients cycle often and the tests end quickly.
const SHORT_HOLD_MS: &str = "3000";

/// How long a whole exchange may take before the test fails with what is missing.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(90);

/// A generous bound for "this happens soon".
const SOON: Duration = Duration::from_secs(15);

/// Chat processes on one Redis and a balancer in front of them.
struct Cluster {
    nodes: Vec<Node>,
    balancer: Balancer,
}

impl Cluster {
    /// Starts `n` nodes (named `node0`, `node1`, …) with the environment `env`, and the
    /// balancer.
    async fn start(redis: &RedisServer, n: usize, env: &[(&'static str, &'static str)]) -> Self {
        let nodes = start_nodes(redis, n, env).await;
        let balancer = Balancer::start(nodes.iter().map(Node::addr).collect()).await;
        Cluster { nodes, balancer }
    }
}

/// Starts `n` nodes at once (each start blocks until the node listens).
async fn start_nodes(
    redis: &RedisServer,
    n: usize,
    env: &[(&'static str, &'static str)],
) -> Vec<Node> {
    let starting: Vec<_> = (0..n)
        .map(|i| {
            let (url, env) = (redis.url(), env.to_vec());
            tokio::task::spawn_blocking(move || Node::start(&format!("node{i}"), &url, &env))
        })
        .collect();
    let mut nodes = Vec::new();
    for node in starting {
        nodes.push(node.await.expect("a node started"));
    }
    nodes
}

/// A `SimpleIo` of the test process on its own connection to the cluster's Redis.
async fn sender(redis: &RedisServer) -> (SimpleIo, RedisStorage) {
    let storage = RedisStorage::connect(redis.url())
        .await
        .expect("connect to the test Redis");
    (io_on(storage.clone()), storage)
}

/// A `SimpleIo` of the test process on `storage`, as another service of the application
/// would send.
fn io_on(storage: impl Storage) -> SimpleIo {
    let (_layer, io) = SimpleIoLayer::builder()
        .storage(storage)
        .recheck_interval(Duration::from_secs(1))
        .build();
    io
}

/// The storage's epoch, retried while its server comes back.
async fn epoch_eventually(storage: &impl Storage) -> simpleio::storage::Epoch {
    let deadline = Instant::now() + SOON;
    loop {
        match storage.epoch().await {
            Ok(epoch) => return epoch,
            Err(e) if Instant::now() > deadline => panic!("the storage did not come back: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Stored messages one client received, in order, and what else happened to it.
#[derive(Debug, Default)]
struct Inbox {
    /// `(pos, event, data)` of every stored message, in the order the client handed them over.
    stored: Vec<(u64, String, Value)>,
    /// Distinct `(stream, number)` received, to count progress once per message.
    seen: HashSet<(String, u64)>,
    /// How often the client reported a storage reset.
    resynced: usize,
}

/// Received messages over all clients, to wait for.
#[derive(Debug, Default)]
struct Progress {
    distinct: AtomicUsize,
    changed: Notify,
}

/// One chat user with one client, through the balancer.
struct User {
    name: String,
    client: Client,
    inbox: Arc<Mutex<Inbox>>,
    receiver: JoinHandle<()>,
}

impl User {
    fn connect(url: &str, name: &str, progress: Arc<Progress>) -> User {
        let (client, mut events) = Client::builder(url)
            .header("cookie", &format!("user={name}"))
            .header(BALANCE_KEY, name)
            .poll_timeout(Duration::from_secs(10))
            .send_timeout(Duration::from_secs(10))
            .backoff(Duration::from_millis(50), Duration::from_millis(500))
            .pending_delay(Duration::from_millis(200))
            .connect()
            .expect("a client");
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let receiver = tokio::spawn({
            let (inbox, me) = (inbox.clone(), name.to_owned());
            async move {
                while let Some(event) = events.recv().await {
                    let mut inbox = inbox.lock().expect("inbox");
                    match event {
                        Event::Message(m) => {
                            let MessageKind::Stored { pos } = m.kind else {
                                continue;
                            };
                            if let Some(key) = stream_key(&me, &m.event, &m.data)
                                && inbox.seen.insert(key)
                            {
                                progress.distinct.fetch_add(1, Ordering::Relaxed);
                                progress.changed.notify_waiters();
                            }
                            inbox.stored.push((pos, m.event, m.data));
                        }
                        Event::Resynced => {
                            inbox.resynced += 1;
                            progress.changed.notify_waiters();
                        }
                        _ => {}
                    }
                }
            }
        });
        User {
            name: name.to_owned(),
            client,
            inbox,
            receiver,
        }
    }

    async fn close(self) {
        self.client.close().await;
        let _ = self.receiver.await;
    }
}

/// Which stream a message belongs to, as seen by `me`, and its number in it: `in:FROM` for a
/// direct message from someone else, `own` for my own, `news` for the server's. Numbers are
/// the chat text (`"17"`) or the news `seq`.
fn stream_key(me: &str, event: &str, data: &Value) -> Option<(String, u64)> {
    match event {
        "chat" => {
            let from = data["from"].as_str()?;
            let n = data["text"].as_str()?.parse().ok()?;
            let stream = if from == me {
                "own".to_owned()
            } else {
                format!("in:{from}")
            };
            Some((stream, n))
        }
        "news" => Some(("news".to_owned(), data["seq"].as_u64()?)),
        _ => None,
    }
}

/// Waits until `condition` holds, rechecking on every progress and at least every 100 ms.
async fn wait_for(
    progress: &Progress,
    within: Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    while !condition() {
        if Instant::now() > deadline {
            return false;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), progress.changed.notified()).await;
    }
    true
}

/// How much traffic an exchange makes.
#[derive(Debug, Clone, Copy)]
struct Traffic {
    /// Users, each with one client.
    users: usize,
    /// Direct messages each user sends to the next user (round the ring), one after another.
    dms: usize,
    /// Messages the test process sends to each user with `SimpleIo::emit`.
    news: usize,
    /// Emit each user's direct messages all at once (the client batches them into few POSTs),
    /// rather than one after another, resending any refused as `unavailable`.
    pipelined: bool,
}

/// What an exchange did.
#[derive(Debug, Default)]
struct Report {
    /// Direct messages sent, handled and acknowledged (client → server).
    dms_acked: usize,
    /// Direct messages received by their recipient (server → client), each confirmed.
    dms_received: usize,
    /// Copies of their own direct messages received by the senders.
    own_copies: usize,
    /// Server-side emits whose future resolved `Ok(Delivered)`.
    news_delivered: usize,
    /// Sends the application itself repeated after a loud failure (an `unavailable` ack, a
    /// `SendError::Storage` before anything was stored).
    resent: usize,
    /// Messages surfaced twice because a node died between running the handler and recording
    /// it (see the kill test).
    redone: usize,
    took: Duration,
}

/// Runs `traffic` through the balancer: every user sends direct messages to the next one while
/// the test process emits news to every user; once a third of it is received, runs `disrupt`.
/// Then checks that everything arrived exactly once, in order, to its recipient only.
/// `max_redone` bounds the messages a dead node may have surfaced twice.
async fn exchange(
    balancer: &Balancer,
    io: &SimpleIo,
    traffic: Traffic,
    max_redone: usize,
    disrupt: impl AsyncFnOnce(),
) -> Report {
    let started = Instant::now();
    let progress = Arc::new(Progress::default());
    let names: Vec<String> = (0..traffic.users).map(|i| format!("u{i:02}")).collect();
    let users: Vec<User> = names
        .iter()
        .map(|name| User::connect(&balancer.url(), name, progress.clone()))
        .collect();
    let expected = traffic.users * (2 * traffic.dms + traffic.news);

    let mut dm_senders = JoinSet::new();
    for (i, user) in users.iter().enumerate() {
        let client = user.client.clone();
        let (me, to) = (names[i].clone(), names[(i + 1) % names.len()].clone());
        dm_senders.spawn(async move {
            let mut resent = 0;
            if traffic.pipelined {
                let sends = (0..traffic.dms).map(|k| {
                    let line = json!({"text": k.to_string(), "to": to});
                    let client = client.clone();
                    async move { (k, client.emit("chat", &line).await) }
                });
                for (k, reply) in futures_util::future::join_all(sends).await {
                    let reply = reply.unwrap_or_else(|e| panic!("{me}'s dm {k} to {to}: {e}"));
                    assert_eq!(reply, json!({"ok": true}), "{me}'s dm {k}");
                }
                return resent;
            }
            for k in 0..traffic.dms {
                let line = json!({"text": k.to_string(), "to": to});
                loop {
                    match client.emit("chat", &line).await {
                        Ok(reply) => {
                            assert_eq!(reply, json!({"ok": true}), "{me}'s dm {k}");
                            break;
                        }
                        // Loud and final for this id: the line was not stored. Say it again.
                        Err(EmitError::Ack { code, .. }) if code == "unavailable" => {
                            resent += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => panic!("{me}'s dm {k} to {to} failed: {e}"),
                    }
                }
            }
            resent
        });
    }

    let mut news_senders = JoinSet::new();
    for name in names.clone() {
        let io = io.clone();
        news_senders.spawn(async move {
            let mut confirmations = Vec::new();
            let mut resent = 0;
            for seq in 0..traffic.news {
                // Stored one after another (in order), confirmed whenever.
                let confirmation = loop {
                    match io
                        .to_user(name.as_str())
                        .emit("news", &json!({"seq": seq}))
                        .stored()
                        .await
                    {
                        Ok(confirmation) => break confirmation,
                        Err(SendError::Storage(_)) => {
                            resent += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => panic!("news {seq} to {name} could not be sent: {e}"),
                    }
                };
                confirmations.push(tokio::spawn(confirmation));
            }
            let mut delivered = 0;
            for (seq, confirmation) in confirmations.into_iter().enumerate() {
                match confirmation.await.expect("the emit did not panic") {
                    Ok(d) => {
                        assert_eq!(d.recipients.len(), 1);
                        delivered += 1;
                    }
                    Err(e) => panic!("news {seq} to {name} was not delivered: {e}"),
                }
            }
            (delivered, resent)
        });
    }

    let third = expected / 3;
    let reached = wait_for(&progress, EXCHANGE_TIMEOUT, || {
        progress.distinct.load(Ordering::Relaxed) >= third
    })
    .await;
    assert!(reached, "a third of the messages did not arrive in time");
    disrupt().await;

    let all = wait_for(&progress, EXCHANGE_TIMEOUT, || {
        progress.distinct.load(Ordering::Relaxed) >= expected
    })
    .await;
    if !all {
        let missing: Vec<String> = users
            .iter()
            .map(|u| {
                let inbox = u.inbox.lock().expect("inbox");
                format!("{}: {}", u.name, inbox.seen.len())
            })
            .collect();
        panic!(
            "only {} of {expected} messages arrived within {EXCHANGE_TIMEOUT:?}; \
             per user (of {}): {missing:?}",
            progress.distinct.load(Ordering::Relaxed),
            2 * traffic.dms + traffic.news
        );
    }

    let mut report = Report::default();
    while let Some(resent) = dm_senders.join_next().await {
        report.resent += resent.expect("a sender did not panic");
        report.dms_acked += traffic.dms;
    }
    let drained = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        while let Some(done) = news_senders.join_next().await {
            let (delivered, resent) = done.expect("a news sender did not panic");
            report.news_delivered += delivered;
            report.resent += resent;
        }
    })
    .await;
    assert!(drained.is_ok(), "some emits never resolved");

    for (i, user) in users.iter().enumerate() {
        let prev = &names[(i + names.len() - 1) % names.len()];
        let inbox = user.inbox.lock().expect("inbox");
        let positions: Vec<u64> = inbox.stored.iter().map(|(pos, _, _)| *pos).collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "{}: positions not increasing: {positions:?}",
            user.name
        );
        let stream = |want: &str| -> Vec<u64> {
            inbox
                .stored
                .iter()
                .filter_map(|(_, event, data)| stream_key(&user.name, event, data))
                .filter(|(s, _)| s == want)
                .map(|(_, n)| n)
                .collect()
        };
        for (what, want, count) in [
            ("direct messages in", format!("in:{prev}"), traffic.dms),
            ("own direct messages", "own".to_owned(), traffic.dms),
            ("news", "news".to_owned(), traffic.news),
        ] {
            let got = stream(&want);
            let mut distinct = got.clone();
            distinct.dedup();
            report.redone += got.len() - distinct.len();
            let expected: Vec<u64> = (0..count as u64).collect();
            assert_eq!(
                distinct, expected,
                "{}: {what} lost or out of order (consecutive repeats removed)",
                user.name
            );
        }
        report.dms_received += traffic.dms;
        report.own_copies += traffic.dms;
        // Nothing else: no one else's direct messages, nothing unexpected.
        let others = inbox
            .stored
            .iter()
            .filter(|(_, event, data)| {
                stream_key(&user.name, event, data)
                    .is_none_or(|(s, _)| s != format!("in:{prev}") && s != "own" && s != "news")
            })
            .count();
        assert_eq!(others, 0, "{} got messages not meant for it", user.name);
    }
    assert!(
        report.redone <= max_redone,
        "{} messages surfaced twice (at most {max_redone} allowed)",
        report.redone
    );

    futures_util::future::join_all(users.into_iter().map(User::close)).await;
    report.took = started.elapsed();
    report
}

fn short_hold() -> Vec<(&'static str, &'static str)> {
    vec![
        ("SIMPLEIO_HOLD_MS", SHORT_HOLD_MS),
        ("SIMPLEIO_RECHECK_MS", "2000"),
        // A node killed mid-message blocks that message's retries this long.
        ("SIMPLEIO_LEASE_MS", "1000"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_users_on_three_nodes_exchange_ten_thousand_confirmed_messages() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let cluster = Cluster::start(&redis, 3, &short_hold()).await;
    let (io, _storage) = sender(&redis).await;
    let traffic = Traffic {
        users: 50,
        dms: 100,
        news: 20,
        pipelined: true,
    };
    let report = exchange(&cluster.balancer, &io, traffic, 0, async || {}).await;
    eprintln!("three nodes, {traffic:?}: {report:?}");

    // 5,000 client -> server messages handled and acknowledged, 5,000 server -> client
    // deliveries to their recipients: 10,000 confirmed messages both ways.
    assert_eq!(report.dms_acked, 5_000);
    assert_eq!(report.dms_received, 5_000);
    assert_eq!(report.dms_acked + report.dms_received, 10_000);
    assert_eq!(report.news_delivered, 1_000);
    assert_eq!((report.resent, report.redone), (0, 0));

    // No stickiness: every client's consecutive requests were answered by different nodes, and
    // every node did its share.
    let mut answered = 0;
    for i in 0..traffic.users {
        answered += cluster.balancer.assert_alternates(&format!("u{i:02}"));
    }
    let served = cluster.balancer.served();
    assert!(answered > 3 * traffic.dms, "{answered} requests answered");
    for (node, n) in served.iter().enumerate() {
        assert!(
            *n * 4 > answered,
            "node{node} answered {n} of {answered} requests: {served:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_run_loses_nothing() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let Cluster {
        mut nodes,
        balancer,
    } = Cluster::start(&redis, 3, &short_hold()).await;
    let (io, _storage) = sender(&redis).await;
    let traffic = Traffic {
        users: 20,
        dms: 50,
        news: 10,
        pipelined: true,
    };
    let served_at_kill = Arc::new(Mutex::new(Vec::new()));
    let report = exchange(
        &balancer,
        &io,
        traffic,
        // A node killed after the handler stored a line but before the outcome was recorded:
        // the client's retry runs the handler again after the lease, and its send is known by
        // its origin (`NewMessage::origin`): stored once, so surfaced once.
        0,
        async || {
            nodes[1].kill();
            // Responses the proxy was still reading when the node died are counted by then.
            tokio::time::sleep(Duration::from_millis(300)).await;
            *served_at_kill.lock().expect("lock") = balancer.served();
        },
    )
    .await;
    eprintln!("a node killed, {traffic:?}: {report:?}");
    assert_eq!(report.dms_acked, traffic.users * traffic.dms);
    assert_eq!(report.dms_received, traffic.users * traffic.dms);
    assert_eq!(report.news_delivered, traffic.users * traffic.news);

    // The dead node answered nothing more; the two others carried everything on.
    let before = served_at_kill.lock().expect("lock").clone();
    let after = balancer.served();
    assert_eq!(after[1], before[1], "the killed node answered: {after:?}");
    assert!(after[0] > before[0] && after[2] > before[2], "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_with_persistence_loses_nothing() {
    let Some(mut redis) = RedisServer::start_persistent() else {
        return;
    };
    let cluster = Cluster::start(&redis, 3, &short_hold()).await;
    let (io, storage) = sender(&redis).await;
    let epoch = storage.epoch().await.expect("epoch");
    let traffic = Traffic {
        users: 20,
        dms: 40,
        news: 10,
        pipelined: false,
    };
    // As in the kill test: a line stored just before Redis went down, whose outcome could not
    // be recorded, is handled again by the client's retry once the lease ran out, and its send
    // is not stored again.
    let report = exchange(&cluster.balancer, &io, traffic, 0, async || {
        tokio::task::block_in_place(|| redis.restart());
    })
    .await;
    eprintln!("Redis restarted (persistent), {traffic:?}: {report:?}");
    assert_eq!(report.dms_received, traffic.users * traffic.dms);
    assert_eq!(report.news_delivered, traffic.users * traffic.news);
    assert_eq!(
        epoch_eventually(&storage).await,
        epoch,
        "no data was lost, yet the epoch changed"
    );
}

/// Redis frozen mid-run for longer than the nodes' response timeout (2 s): claims, appends and
/// polls time out, some of them after Redis ran them. A claim whose answer was lost is resumed
/// by its own request, so every sender's lines still reach the handler, and the recipient, in
/// the order sent. A line whose append timed out is answered `pending` and handled again; if
/// the append had run after all, the send is known by its origin and stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_mid_run_keeps_every_senders_lines_in_order() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let cluster = Cluster::start(&redis, 3, &short_hold()).await;
    let (io, _storage) = sender(&redis).await;
    let traffic = Traffic {
        users: 20,
        dms: 40,
        news: 10,
        pipelined: false,
    };
    let report = exchange(&cluster.balancer, &io, traffic, 0, async || {
        redis.pause();
        tokio::time::sleep(Duration::from_secs(3)).await;
        redis.resume();
    })
    .await;
    eprintln!("Redis frozen for 3 s, {traffic:?}: {report:?}");
    assert_eq!(report.dms_acked, traffic.users * traffic.dms);
    assert_eq!(report.dms_received, traffic.users * traffic.dms);
    assert_eq!(report.news_delivered, traffic.users * traffic.news);
}

/// Outcomes outlive the sending process: messages are stored from one process's `SimpleIo`,
/// which then goes away with its sending futures (as a process that died would); the
/// recipient reads and confirms through the chat nodes; a new connection, from the receipts
/// alone, learns one message was delivered and the other expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_tell_a_new_process_what_became_of_its_sends() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let cluster = Cluster::start(&redis, 2, &short_hold()).await;
    let kept = {
        let (io, _storage) = sender(&redis).await;
        let mut receipts = Vec::new();
        let invoice = io
            .to_user("u00")
            .emit("news", &json!({"seq": 0}))
            .stored()
            .await
            .expect("stored");
        receipts.extend_from_slice(invoice.receipts());
        let flash = io
            .to_user("nobody")
            .ttl(Duration::from_millis(500))
            .emit("news", &json!({"seq": 0}))
            .stored()
            .await
            .expect("stored");
        receipts.extend_from_slice(flash.receipts());
        serde_json::to_string(&receipts).expect("receipts are JSON")
        // `io`, its storage connection and both sending futures are dropped here.
    };

    let progress = Arc::new(Progress::default());
    let user = User::connect(&cluster.balancer.url(), "u00", progress.clone());
    let inbox = user.inbox.clone();
    let received = wait_for(&progress, SOON, || {
        inbox
            .lock()
            .expect("inbox")
            .seen
            .contains(&("news".to_owned(), 0))
    })
    .await;
    assert!(received, "the recipient never got the message");

    let (later, _storage) = sender(&redis).await;
    let receipts: Vec<simpleio::Receipt> = serde_json::from_str(&kept).expect("receipts");
    let deadline = Instant::now() + SOON;
    let states = loop {
        let states = later.delivery(&receipts).await.expect("asked");
        if states == [DeliveryState::Delivered, DeliveryState::Expired] || Instant::now() > deadline
        {
            break states;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(states, [DeliveryState::Delivered, DeliveryState::Expired]);
    user.close().await;
}

/// One request straight to a node or through the balancer, as `user`.
async fn request(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    user: &str,
    query: &str,
    body: Option<Value>,
) -> (u16, Option<String>, Value) {
    let mut req = http
        .request(method, format!("{url}?user={user}&{query}"))
        .timeout(Duration::from_secs(30));
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.expect("a response");
    let status = res.status().as_u16();
    let node = res
        .headers()
        .get(NODE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = res.json().await.unwrap_or(Value::Null);
    (status, node, body)
}

async fn dm(http: &reqwest::Client, url: &str, from: &str, id: &str, to: Option<&str>) -> Value {
    let mut data = json!({"text": id});
    if let Some(to) = to {
        data["to"] = json!(to);
    }
    let body = json!({"client": format!("{from}-tab-0001"), "messages": [
        {"id": id, "event": "chat", "data": data}
    ]});
    let (status, _, body) = request(http, reqwest::Method::POST, url, from, "", Some(body)).await;
    assert_eq!(status, 200, "{body}");
    body["acks"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_without_persistence_resyncs_clients_and_fails_unconfirmed_sends() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let cluster = Cluster::start(&redis, 3, &short_hold()).await;
    let (io, storage) = sender(&redis).await;
    let epoch = storage.epoch().await.expect("epoch");
    let progress = Arc::new(Progress::default());
    let url = cluster.balancer.url();
    let ann = User::connect(&url, "ann", progress.clone());
    let bob = User::connect(&url, "bob", progress.clone());

    // Before: a direct message goes through.
    let ack = ann
        .client
        .emit("chat", &json!({"text": "1", "to": "bob"}))
        .await;
    assert_eq!(ack.expect("ann's first line"), json!({"ok": true}));
    assert!(
        wait_for(&progress, SOON, || bob
            .inbox
            .lock()
            .expect("inbox")
            .seen
            .len()
            == 1)
        .await,
        "bob did not get ann's line"
    );

    // Messages to users with no client online wait, unconfirmed.
    let mut unconfirmed = Vec::new();
    for user in ["zed", "zoe", "zia"] {
        for seq in 0..5 {
            let sending = io.to_user(user).emit("news", &json!({"seq": seq}));
            unconfirmed.push(tokio::spawn(sending.stored().await.expect("stored")));
        }
    }

    // Redis goes away: requests get 503 with a JSON body, promptly, on every node.
    tokio::task::block_in_place(|| redis.stop());
    let http = reqwest::Client::new();
    for node in &cluster.nodes {
        let started = Instant::now();
        let (status, _, body) = request(
            &http,
            reqwest::Method::GET,
            &node.url(),
            "ann",
            "client=probe-0001",
            None,
        )
        .await;
        assert_eq!(status, 503, "{} during the outage: {body}", node.name);
        assert_eq!(body["error"]["code"], "storage_unavailable", "{body}");
        let post = json!({"client": "probe-0001", "messages": [
            {"id": "p1", "event": "chat", "data": {"text": "x", "to": "bob"}}
        ]});
        let (status, _, body) = request(
            &http,
            reqwest::Method::POST,
            &node.url(),
            "ann",
            "",
            Some(post),
        )
        .await;
        assert_eq!(status, 503, "{} during the outage: {body}", node.name);
        assert_eq!(body["error"]["code"], "storage_unavailable", "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{}: answering took {:?}, a hang rather than an error",
            node.name,
            started.elapsed()
        );
    }

    // Back, empty.
    tokio::task::block_in_place(|| redis.restart());

    // Every unconfirmed send fails loudly, naming the loss.
    for sending in unconfirmed {
        let outcome = tokio::time::timeout(SOON, sending)
            .await
            .expect("an unconfirmed send never resolved")
            .expect("the send did not panic");
        match outcome {
            Err(SendError::NotDelivered(report)) => {
                assert_eq!(report.failed.len(), 1, "{report}");
                assert_eq!(report.failed[0].1, Failure::Lost, "{report}");
            }
            other => panic!("expected NotDelivered(Lost), got {other:?}"),
        }
    }

    // The nodes recover by themselves, with a new epoch; the clients resync and carry on.
    let new_epoch = epoch_eventually(&storage).await;
    assert_ne!(new_epoch, epoch, "Redis lost its data but kept its epoch");
    // A node's first request after the outage may still get 503 (its connection to Redis is
    // re-established on demand); within moments every node answers again.
    for node in &cluster.nodes {
        let deadline = Instant::now() + SOON;
        loop {
            let (status, _, body) = request(
                &http,
                reqwest::Method::GET,
                &node.url(),
                "probe",
                &format!("client=probe-0001&cursor=0&epoch={new_epoch}"),
                None,
            )
            .await;
            if status == 200 {
                break;
            }
            assert_eq!(status, 503, "{} after the outage: {body}", node.name);
            assert!(
                Instant::now() < deadline,
                "{} did not recover within {SOON:?}: {body}",
                node.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let resynced = wait_for(&progress, SOON, || {
        ann.inbox.lock().expect("inbox").resynced > 0
            && bob.inbox.lock().expect("inbox").resynced > 0
    })
    .await;
    assert!(resynced, "the clients did not report the storage reset");
    let ack = ann
        .client
        .emit("chat", &json!({"text": "2", "to": "bob"}))
        .await;
    assert_eq!(
        ack.expect("ann's line after the reset"),
        json!({"ok": true})
    );
    assert!(
        wait_for(&progress, SOON, || bob
            .inbox
            .lock()
            .expect("inbox")
            .seen
            .len()
            == 2)
        .await,
        "bob did not get ann's line after the reset"
    );
    ann.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_waiting_on_one_node_wakes_when_another_node_sends() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // Holds and safety-net rechecks far longer than the wakeup may take: only Redis pub/sub can
    // end the wait in time.
    let nodes = start_nodes(
        &redis,
        2,
        &[
            ("SIMPLEIO_HOLD_MS", "20000"),
            ("SIMPLEIO_RECHECK_MS", "60000"),
        ],
    )
    .await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let http = reqwest::Client::new();
    // A first poll (no cursor) answers at once with the client's epoch and cursor.
    let (status, _, body) = request(
        &http,
        reqwest::Method::GET,
        &b.url(),
        "bob",
        "client=bob-tab-0001",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut cursor = format!(
        "&cursor={}&epoch={}",
        body["cursor"],
        body["epoch"].as_str().unwrap_or("")
    );
    for round in 0..3 {
        let poll = tokio::spawn({
            let (http, url, query) = (
                http.clone(),
                b.url(),
                format!("client=bob-tab-0001{cursor}"),
            );
            async move {
                let answer = request(&http, reqwest::Method::GET, &url, "bob", &query, None).await;
                (answer, Instant::now())
            }
        });
        // Let the poll reach its wait (a message already there would answer it at once, which
        // is no test of the wakeup).
        tokio::time::sleep(Duration::from_millis(500)).await;
        if poll.is_finished() {
            let (answer, _) = poll.await.expect("the poll did not panic");
            panic!("round {round}: the poll did not wait: {answer:?}");
        }
        let sent = Instant::now();
        let ack = dm(&http, &a.url(), "ann", &format!("w{round}"), Some("bob")).await;
        assert_eq!(ack["reply"], json!({"ok": true}), "{ack}");
        let ((status, node, body), answered) = tokio::time::timeout(SOON, poll)
            .await
            .expect("the poll on node B never woke")
            .expect("the poll did not panic");
        let woke_after = answered.saturating_duration_since(sent);
        assert_eq!(status, 200, "{body}");
        assert_eq!(node.as_deref(), Some("node1"), "answered by node B");
        assert_eq!(body["messages"][0]["data"]["text"], format!("w{round}"));
        assert!(
            woke_after < Duration::from_secs(2),
            "round {round}: the poll on node B woke {woke_after:?} after node A stored the message"
        );
        cursor = format!(
            "&cursor={}&epoch={}",
            body["cursor"],
            body["epoch"].as_str().unwrap_or("")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_one_client_over_every_node_and_direct_messages_stay_private() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let cluster = Cluster::start(&redis, 3, &[("SIMPLEIO_HOLD_MS", "1000")]).await;
    let url = cluster.balancer.url();
    let http = reqwest::Client::new();

    // One client's consecutive requests, through a plain round-robin (no balance key): each
    // answered by another node, all three in turn.
    let mut answered_by = Vec::new();
    for i in 0..6 {
        let body = json!({"client": "ann-tab-0001", "messages": [
            {"id": format!("e{i}"), "event": "echo", "data": {"n": i}}
        ]});
        let (status, node, body) =
            request(&http, reqwest::Method::POST, &url, "ann", "", Some(body)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["acks"][0]["reply"],
            json!({"n": i}),
            "echo replies its data"
        );
        answered_by.push(node.expect("every answer names its node"));
    }
    for pair in answered_by.windows(2) {
        assert_ne!(
            pair[0], pair[1],
            "consecutive requests on one node: {answered_by:?}"
        );
    }
    let distinct: HashSet<&String> = answered_by.iter().collect();
    assert_eq!(distinct.len(), 3, "{answered_by:?}");

    // Everyone polls once, so that all are online and hold a cursor.
    let mut cursors = std::collections::HashMap::new();
    for user in ["ann", "bob", "carol"] {
        let query = format!("client={user}-tab-0001");
        let (status, _, body) =
            request(&http, reqwest::Method::GET, &url, user, &query, None).await;
        assert_eq!(status, 200, "{body}");
        cursors.insert(user, (body["cursor"].clone(), body["epoch"].clone()));
    }
    let poll = |user: &'static str| {
        let (cursor, epoch) = cursors[user].clone();
        let (http, url) = (http.clone(), url.clone());
        async move {
            let query = format!(
                "client={user}-tab-0001&cursor={cursor}&epoch={}",
                epoch.as_str().unwrap_or("")
            );
            let (status, _, body) =
                request(&http, reqwest::Method::GET, &url, user, &query, None).await;
            assert_eq!(status, 200, "{body}");
            body["messages"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .map(|m| m["data"]["text"].as_str().unwrap_or("").to_owned())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        }
    };

    // A direct message reaches its recipient and its sender, nobody else.
    let ack = dm(&http, &url, "ann", "secret", Some("bob")).await;
    assert_eq!(ack["reply"], json!({"ok": true}), "{ack}");
    assert_eq!(poll("bob").await, ["secret"]);
    assert_eq!(poll("ann").await, ["secret"]);
    assert_eq!(
        poll("carol").await,
        Vec::<String>::new(),
        "carol saw a direct message"
    );

    // Without `to`, everyone online gets it.
    let ack = dm(&http, &url, "ann", "hello-all", None).await;
    assert_eq!(ack["reply"], json!({"ok": true}), "{ack}");
    for user in ["ann", "bob", "carol"] {
        let texts = poll(user).await;
        assert!(texts.contains(&"hello-all".to_owned()), "{user}: {texts:?}");
    }
}

/// Across nodes, the announcement of a client's previous poll can arrive after its next poll
/// started on another node; it must not end that newer poll (the hold must be kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_is_not_ended_by_the_late_announcement_of_the_poll_before_it() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let nodes = start_nodes(
        &redis,
        2,
        &[
            ("SIMPLEIO_HOLD_MS", "20000"),
            ("SIMPLEIO_RECHECK_MS", "60000"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    // Each poll announces itself to every node so that a newer poll of its client ends it. The
    // first poll answers at once, and its announcement may reach the other node after the
    // client's next poll started there: that older announcement must not end the newer poll.
    let mut early = Vec::new();
    let mut waiting = Vec::new();
    for i in 0..30 {
        let client = format!("tab-{i:04}");
        let (status, _, first) = request(
            &http,
            reqwest::Method::GET,
            &nodes[0].url(),
            "bob",
            &format!("client={client}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{first}");
        let query = format!(
            "client={client}&cursor={}&epoch={}",
            first["cursor"],
            first["epoch"].as_str().unwrap_or("")
        );
        let (http, url) = (http.clone(), nodes[1].url());
        waiting.push((
            i,
            tokio::spawn(async move {
                request(&http, reqwest::Method::GET, &url, "bob", &query, None).await
            }),
        ));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, poll) in waiting {
        if poll.is_finished() {
            early.push((i, poll.await.expect("the poll did not panic")));
        } else {
            poll.abort();
        }
    }
    assert!(
        early.is_empty(),
        "polls answered at once instead of waiting: {early:?}"
    );
}

/// The faults above, on PostgreSQL: the chat nodes run on `DATABASE_URL`, one schema shared.
#[cfg(feature = "postgres")]
mod on_postgres {
    use super::*;
    use crate::postgres_server::PostgresServer;
    use simpleio::PostgresStorage;

    /// Chat processes on one PostgreSQL and a balancer in front of them.
    async fn start(server: &PostgresServer, n: usize) -> Cluster {
        let url = server.url();
        let starting: Vec<_> = (0..n)
            .map(|i| {
                let url = url.clone();
                tokio::task::spawn_blocking(move || {
                    let mut env: Vec<(&str, &str)> = short_hold();
                    env.push(("DATABASE_URL", &url));
                    Node::start(&format!("node{i}"), "", &env)
                })
            })
            .collect();
        let mut nodes = Vec::new();
        for node in starting {
            nodes.push(node.await.expect("a node started"));
        }
        let balancer = Balancer::start(nodes.iter().map(Node::addr).collect()).await;
        Cluster { nodes, balancer }
    }

    /// A `SimpleIo` of the test process on its own `PostgresStorage`, as another service of
    /// the application would send.
    async fn sender(server: &PostgresServer) -> (SimpleIo, PostgresStorage) {
        let storage = PostgresStorage::connect(server.url())
            .await
            .expect("connect to the test PostgreSQL");
        (io_on(storage.clone()), storage)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_postgres_a_node_killed_mid_run_loses_nothing() {
        let Some(server) = PostgresServer::start() else {
            return;
        };
        let Cluster {
            mut nodes,
            balancer,
        } = start(&server, 3).await;
        let (io, _storage) = sender(&server).await;
        let traffic = Traffic {
            users: 20,
            dms: 50,
            news: 10,
            pipelined: true,
        };
        let report = exchange(&balancer, &io, traffic, 0, async || {
            nodes[1].kill();
        })
        .await;
        eprintln!("PostgreSQL, a node killed, {traffic:?}: {report:?}");
        assert_eq!(report.dms_acked, traffic.users * traffic.dms);
        assert_eq!(report.dms_received, traffic.users * traffic.dms);
        assert_eq!(report.news_delivered, traffic.users * traffic.news);
    }

    /// PostgreSQL stopped mid-run, with a fast shutdown (sessions cut, data flushed) or an
    /// immediate one (no checkpoint: the start recovers from the WAL, as after a crash), and
    /// started again: nothing committed is lost, the epoch stays, every line reaches its
    /// recipient once and in order.
    async fn a_restart_loses_nothing(immediate: bool) {
        let Some(mut server) = PostgresServer::start() else {
            return;
        };
        let cluster = start(&server, 3).await;
        let (io, storage) = sender(&server).await;
        let epoch = storage.epoch().await.expect("epoch");
        let traffic = Traffic {
            users: 20,
            dms: 40,
            news: 10,
            pipelined: false,
        };
        let report = exchange(&cluster.balancer, &io, traffic, 0, async || {
            tokio::task::block_in_place(|| {
                if immediate {
                    server.stop_immediately();
                } else {
                    server.stop();
                }
                // Long enough for requests to fail and clients to retry.
                std::thread::sleep(Duration::from_millis(1500));
                server.start_again();
            });
        })
        .await;
        eprintln!("PostgreSQL restarted (immediate: {immediate}), {traffic:?}: {report:?}");
        assert_eq!(report.dms_acked, traffic.users * traffic.dms);
        assert_eq!(report.dms_received, traffic.users * traffic.dms);
        assert_eq!(report.news_delivered, traffic.users * traffic.news);
        assert_eq!(
            epoch_eventually(&storage).await,
            epoch,
            "no data was lost, yet the epoch changed"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_postgres_a_fast_shutdown_and_restart_loses_nothing() {
        a_restart_loses_nothing(false).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_postgres_an_immediate_shutdown_and_restart_loses_nothing() {
        a_restart_loses_nothing(true).await;
    }
}
