//! `RedisStorage` against a real `redis-server` that the tests start themselves: the whole
//! storage conformance suite, then what only a networked store can get wrong — outages,
//! restarts with and without persistence, several nodes, bounded memory.
#![cfg(all(feature = "redis", feature = "conformance"))]

#[path = "support/redis.rs"]
mod redis_server;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis_server::RedisServer;
use serde_json::value::RawValue;
use simpleio::storage::{
    AppendOutcome, DedupKey, DedupLimits, DeliveryState, DeliveryTarget, Departure, Epoch,
    FetchRequest, Member, NewMessage, QueueLimits, Signal, StorageError, millis_after,
};
use simpleio::{ClientId, MessageId, RedisStorage, Storage, UserId};
use tokio::sync::broadcast;

/// A storage on a fresh key prefix of the binary's shared server.
/// A storage on a fresh key prefix of the shared test Redis; `None` (after a loud warning) when
/// `redis-server` is not installed outside CI.
async fn fresh() -> Option<RedisStorage> {
    Some(connect(RedisServer::shared()?).await)
}

fn fresh_prefix() -> String {
    format!("test-{}:", ClientId::random())
}

async fn connect(server: &RedisServer) -> RedisStorage {
    RedisStorage::builder(server.url())
        .key_prefix(fresh_prefix())
        .connect()
        .await
        .expect("connect to the test Redis")
}

/// Another node on `prefix`: its own storage handle, connections and node id.
async fn node_on(server: &RedisServer, prefix: &str) -> RedisStorage {
    RedisStorage::builder(server.url())
        .key_prefix(prefix)
        .connect()
        .await
        .expect("connect to the test Redis")
}

simpleio::storage_conformance_tests!(optional fresh);

const LONG: Duration = Duration::from_secs(600);

fn message(to: &str, event: &str, ttl: Duration) -> NewMessage {
    NewMessage {
        user: UserId::from(to),
        client: None,
        namespace: "/".into(),
        event: event.into(),
        data: Arc::from(RawValue::from_string(format!("\"{event}\"")).expect("JSON")),
        expires_at: millis_after(ttl),
        sender: None,
        origin: None,
        ack: false,
    }
}

/// Queue limits with this many messages per user and no other limit (per sender, in bytes)
/// that a test reaches unless it means to.
fn queue(per_user: usize) -> QueueLimits {
    QueueLimits {
        per_user,
        per_sender: 1_000_000,
        bytes_per_user: usize::MAX,
        bytes_per_sender: usize::MAX,
    }
}

/// Dedup limits no test reaches unless it means to, with this lease.
fn lease(lease: Duration) -> DedupLimits {
    DedupLimits {
        lease,
        per_client: 1_000_000,
        per_user: 1_000_000,
    }
}

fn request(user: &str, client: &str, cursor: Option<(&Epoch, u64)>) -> FetchRequest {
    FetchRequest {
        user: UserId::from(user),
        client: ClientId::new(client).expect("client id"),
        cursor: cursor.map(|(e, p)| (e.clone(), p)),
        namespaces: Arc::from(["/".into()]),
        limit: 100,
        presence_ttl: Duration::from_secs(60),
        announce: None,
        max_clients: 1_000_000,
    }
}

fn target(user: &str, pos: u64) -> DeliveryTarget {
    DeliveryTarget {
        user: UserId::from(user),
        client: None,
        namespace: "/".into(),
        pos,
    }
}

fn stored(outcome: AppendOutcome) -> u64 {
    match outcome {
        AppendOutcome::Stored(pos) => pos,
        AppendOutcome::QueueFull => panic!("the queue was full"),
    }
}

/// Retries `op` until it succeeds, for at most `within`.
async fn eventually<T, F: Future<Output = Result<T, StorageError>>>(
    within: Duration,
    mut op: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match op().await {
            Ok(value) => return value,
            Err(err) if Instant::now() > deadline => {
                panic!("storage did not recover within {within:?}: {err}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn expect_signal(
    rx: &mut broadcast::Receiver<Signal>,
    within: Duration,
    what: &str,
    want: impl Fn(&Signal) -> bool,
) {
    let found = tokio::time::timeout(within, async {
        loop {
            match rx.recv().await {
                Ok(s) if want(&s) => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => panic!("signal channel closed"),
            }
        }
    })
    .await;
    assert!(found.is_ok(), "no {what} signal within {within:?}");
}

/// A raw connection, to look at what the storage left in Redis.
async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

#[tokio::test]
async fn an_outage_fails_fast_then_heals_with_a_new_epoch() {
    // Shows the reconnection warnings when run with --nocapture.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let storage = RedisStorage::builder(server.url())
        .key_prefix(fresh_prefix())
        .connect_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_secs(1))
        .connect()
        .await
        .expect("connect");
    let mut rx = storage.subscribe();
    let before = storage
        .append(vec![message("ann", "a", LONG)], queue(10))
        .await
        .expect("append");
    let pos = stored(before.outcomes[0]);
    expect_signal(&mut rx, Duration::from_secs(2), "Appended", |s| {
        matches!(s, Signal::Appended { .. })
    })
    .await;
    while rx.try_recv().is_ok() {}

    server.kill();
    for attempt in 0..3 {
        let started = Instant::now();
        let err = storage
            .fetch(request("ann", "tab1", None))
            .await
            .expect_err("a fetch succeeded with Redis down");
        assert!(
            matches!(err, StorageError::Unavailable(_)),
            "expected Unavailable, got {err:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "attempt {attempt}: the error took {:?}",
            started.elapsed()
        );
    }

    server.restart();
    // The pub/sub connection comes back by itself and says that signals may have been missed.
    // Nothing else can publish a Resync here: no operation ran since the restart.
    expect_signal(&mut rx, Duration::from_secs(15), "Resync", |s| {
        matches!(s, Signal::Resync)
    })
    .await;

    // Without persistence Redis came back empty: a new epoch, old deliveries lost.
    let epoch = eventually(Duration::from_secs(15), || storage.epoch()).await;
    assert_ne!(
        epoch, before.epoch,
        "Redis lost its data but kept its epoch"
    );
    let states = storage
        .delivery(&before.epoch, &[target("ann", pos)])
        .await
        .expect("delivery");
    assert_eq!(states, [DeliveryState::Lost]);
    let batch = storage
        .fetch(request("ann", "tab1", Some((&before.epoch, pos))))
        .await
        .expect("fetch");
    assert_eq!(batch.epoch, epoch);
    assert!(batch.messages.is_empty());

    // And the subscription carries signals again.
    storage
        .append(vec![message("ann", "b", LONG)], queue(10))
        .await
        .expect("append after the outage");
    expect_signal(
        &mut rx,
        Duration::from_secs(5),
        "Appended",
        |s| matches!(s, Signal::Appended { users } if users.iter().any(|u| u.as_str() == "ann")),
    )
    .await;
}

#[tokio::test]
async fn a_frozen_redis_gives_unavailable_within_the_deadline() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let storage = RedisStorage::builder(server.url())
        .key_prefix(fresh_prefix())
        .connect_timeout(Duration::from_millis(300))
        .response_timeout(Duration::from_millis(500))
        .connect()
        .await
        .expect("connect");
    let epoch = storage.epoch().await.expect("epoch");

    // No FIN, no RST: only the response timeout can end the wait.
    server.pause();
    let started = Instant::now();
    let err = storage
        .append(vec![message("ann", "a", LONG)], queue(10))
        .await
        .expect_err("an append succeeded on a frozen Redis");
    let took = started.elapsed();
    server.resume();
    assert!(matches!(err, StorageError::Unavailable(_)), "{err:?}");
    assert!(took < Duration::from_secs(2), "the error took {took:?}");

    // Nothing was lost: the same epoch, and the storage works again.
    let again = eventually(Duration::from_secs(10), || storage.epoch()).await;
    assert_eq!(again, epoch);
}

#[tokio::test]
async fn with_persistence_the_epoch_and_messages_survive_a_restart() {
    let Some(mut server) = RedisServer::start_persistent() else {
        return;
    };
    let storage = connect(&server).await;
    let a = storage
        .append(
            vec![message("ann", "a", LONG), message("ann", "b", LONG)],
            queue(10),
        )
        .await
        .expect("append");
    let pos: Vec<u64> = a.outcomes.iter().copied().map(stored).collect();
    storage
        .fetch(request("ann", "tab1", None))
        .await
        .expect("fetch");
    storage
        .fetch(request("ann", "tab1", Some((&a.epoch, pos[0]))))
        .await
        .expect("confirm");

    server.restart();
    let epoch = eventually(Duration::from_secs(15), || storage.epoch()).await;
    assert_eq!(
        epoch, a.epoch,
        "the epoch changed although no data was lost"
    );
    let states = storage
        .delivery(&a.epoch, &[target("ann", pos[0]), target("ann", pos[1])])
        .await
        .expect("delivery");
    assert_eq!(states, [DeliveryState::Delivered, DeliveryState::Pending]);
    let batch = storage
        .fetch(request("ann", "tab1", None))
        .await
        .expect("fetch");
    assert_eq!(batch.messages.len(), 1);
    assert_eq!(&*batch.messages[0].event, "b");
    assert_eq!(batch.messages[0].pos, pos[1]);
}

#[tokio::test]
async fn a_flushed_redis_takes_a_new_epoch_and_tells_everyone() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let storage = connect(&server).await;
    let old = storage.epoch().await.expect("epoch");
    let pos = stored(
        storage
            .append(vec![message("ann", "a", LONG)], queue(10))
            .await
            .expect("append")
            .outcomes[0],
    );
    let mut rx = storage.subscribe();
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut raw(&server).await)
        .await
        .expect("flushall");
    let new = storage.epoch().await.expect("epoch");
    assert_ne!(old, new);
    expect_signal(&mut rx, Duration::from_secs(2), "Resync", |s| {
        matches!(s, Signal::Resync)
    })
    .await;
    let states = storage
        .delivery(&old, &[target("ann", pos)])
        .await
        .expect("delivery");
    assert_eq!(states, [DeliveryState::Lost]);
}

#[tokio::test]
async fn signals_cross_nodes_over_one_subscription_per_node() {
    let Some(server) = RedisServer::shared() else {
        return;
    };
    let prefix = fresh_prefix();
    let a = node_on(server, &prefix).await;
    let b = node_on(server, &prefix).await;
    // Many waiters on node b, still one subscribed connection per node.
    let mut waiters: Vec<_> = (0..20).map(|_| b.subscribe()).collect();
    let subscribers: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("{prefix}signals"))
        .query_async(&mut raw(server).await)
        .await
        .expect("pubsub numsub");
    assert_eq!(subscribers[0].1, 2, "expected one subscription per node");

    // Node b has a poll of ann's (its fetch noted so): node a's append for ann reaches it.
    b.fetch(request("ann", "tab1", None))
        .await
        .expect("fetch on node b");
    a.append(vec![message("ann", "a", LONG)], queue(10))
        .await
        .expect("append");
    for rx in &mut waiters {
        expect_signal(
            rx,
            Duration::from_secs(2),
            "Appended",
            |s| matches!(s, Signal::Appended { users } if users.iter().any(|u| u.as_str() == "ann")),
        )
        .await;
    }
    let batch = b
        .fetch(request("ann", "tab1", None))
        .await
        .expect("fetch on the other node");
    assert_eq!(batch.messages.len(), 1);
}

/// A node receives the signals of the users it has polls of or waits for, and of its own
/// operations, not every node's: a third node with no poll of ann's and no message to her
/// hears nothing of her, while the node polling her and the node waiting for her
/// confirmation hear what each needs.
#[tokio::test]
async fn signals_reach_only_the_nodes_that_need_them() {
    let Some(server) = RedisServer::shared() else {
        return;
    };
    let prefix = fresh_prefix();
    let (sender, poller, bystander) = (
        node_on(server, &prefix).await,
        node_on(server, &prefix).await,
        node_on(server, &prefix).await,
    );
    let epoch = sender.epoch().await.expect("epoch");
    let first = poller
        .fetch(request("ann", "tab1", None))
        .await
        .expect("fetch");
    // The epoch's Resync went to every node before this point; only what follows counts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut at_sender = sender.subscribe();
    let mut at_poller = poller.subscribe();
    let mut at_bystander = bystander.subscribe();
    let heard_before = bystander.signals_received();

    let appended = sender
        .append(vec![message("ann", "hello", LONG)], queue(10))
        .await
        .expect("append");
    let pos = stored(appended.outcomes[0]);
    expect_signal(
        &mut at_poller,
        Duration::from_secs(2),
        "Appended at the poller",
        |s| matches!(s, Signal::Appended { users } if users.iter().any(|u| u.as_str() == "ann")),
    )
    .await;
    let read = poller
        .fetch(request("ann", "tab1", Some((&epoch, first.cursor))))
        .await
        .expect("read");
    assert_eq!(read.messages.len(), 1);
    poller
        .fetch(request("ann", "tab1", Some((&epoch, read.cursor))))
        .await
        .expect("confirm");
    expect_signal(
        &mut at_sender,
        Duration::from_secs(2),
        "Confirmed at the sender",
        |s| matches!(s, Signal::Confirmed { user, cursor, .. } if user.as_str() == "ann" && *cursor >= pos),
    )
    .await;
    // Anything for the bystander would have come by now, as it did to the others.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        at_bystander.try_recv().is_err(),
        "a node with no interest in ann heard of her"
    );
    assert_eq!(bystander.signals_received(), heard_before);
    assert!(poller.signals_received() > 0 && sender.signals_received() > 0);
}

#[tokio::test]
async fn the_subscription_survives_its_keepalive_pings() {
    let Some(server) = RedisServer::shared() else {
        return;
    };
    let storage = connect(server).await;
    let mut rx = storage.subscribe();
    // The first operation on a fresh prefix creates the epoch, which publishes a Resync.
    storage.epoch().await.expect("epoch");
    expect_signal(&mut rx, Duration::from_secs(2), "Resync", |s| {
        matches!(s, Signal::Resync)
    })
    .await;
    // The subscriber pings every 5 s; a ping it misread would reconnect and send a Resync.
    tokio::time::sleep(Duration::from_secs(6)).await;
    while let Ok(signal) = rx.try_recv() {
        assert!(
            !matches!(signal, Signal::Resync),
            "the subscription reconnected"
        );
    }
    storage
        .append(vec![message("ann", "a", LONG)], queue(10))
        .await
        .expect("append");
    expect_signal(&mut rx, Duration::from_secs(2), "Appended", |s| {
        matches!(s, Signal::Appended { .. })
    })
    .await;
}

#[tokio::test]
async fn every_key_but_the_epoch_expires_and_logs_stay_bounded() {
    let Some(server) = RedisServer::shared() else {
        return;
    };
    let storage = connect(server).await;
    let prefix = storage.key_prefix().to_owned();

    // A bounded log: with every message delivered, appends evict instead of growing it.
    let mut epoch = storage.epoch().await.expect("epoch");
    for round in 0..10 {
        let a = storage
            .append(vec![message("ann", &format!("m{round}"), LONG)], queue(3))
            .await
            .expect("append");
        epoch = a.epoch;
        storage
            .fetch(request(
                "ann",
                "tab1",
                Some((&epoch, stored(a.outcomes[0]))),
            ))
            .await
            .expect("confirm");
    }
    let mut conn = raw(server).await;
    let log = format!("{prefix}u:ann:log");
    let len: usize = redis::cmd("ZCARD")
        .arg(&log)
        .query_async(&mut conn)
        .await
        .expect("zcard");
    assert_eq!(len, 3, "the log grew past max_queue");

    // Expired messages are removed, not just skipped.
    storage
        .append(
            vec![message("bob", "short", Duration::from_millis(100))],
            queue(10),
        )
        .await
        .expect("append");
    tokio::time::sleep(Duration::from_millis(300)).await;
    storage
        .fetch(request("bob", "tab1", Some((&epoch, 0))))
        .await
        .expect("fetch");
    let len: usize = redis::cmd("ZCARD")
        .arg(format!("{prefix}u:bob:log"))
        .query_async(&mut conn)
        .await
        .expect("zcard");
    assert_eq!(len, 0, "an expired message stayed in the log");

    // A sender's share of a queue, and the order of dedup records, expire too.
    storage
        .append(
            vec![from("eve", message("ann", "relayed", LONG))],
            queue(10),
        )
        .await
        .expect("append");
    let key = DedupKey {
        user: UserId::from("ann"),
        client: ClientId::new("tab1").expect("id"),
        id: MessageId::new("m1").expect("id"),
    };
    storage
        .claim(&key, fastrand::u64(..), lease(LONG))
        .await
        .expect("claim");

    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    assert!(keys.len() > 5, "expected user and dedup keys, got {keys:?}");
    for want in [
        format!("{prefix}u:ann:{}:from", hex("eve")),
        format!("{prefix}du:ann"),
        format!("{prefix}dc:tab1:ann"),
    ] {
        assert!(keys.contains(&want), "no {want} in {keys:?}");
    }
    for key in keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("pttl");
        if key == format!("{prefix}epoch") {
            // An evicted or expired epoch would look like lost data and change the epoch.
            assert_eq!(ttl, -1, "{key} has a TTL");
        } else {
            assert!(
                ttl > 0,
                "{key} has no TTL, so an idle user would never vanish"
            );
        }
    }
}

#[tokio::test]
async fn a_redis_that_cannot_be_reached_fails_to_connect_promptly() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    server.stop();
    let started = Instant::now();
    let err = RedisStorage::builder(url)
        .connect_timeout(Duration::from_millis(300))
        .connect()
        .await
        .expect_err("connected to a stopped Redis");
    assert!(matches!(err, StorageError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let err = RedisStorage::connect("not a url")
        .await
        .expect_err("accepted a bad URL");
    assert!(err.to_string().contains("invalid Redis URL"), "{err}");
}

fn request_with_presence(user: &str, client: &str, presence: Duration) -> FetchRequest {
    FetchRequest {
        presence_ttl: presence,
        announce: None,
        ..request(user, client, None)
    }
}

async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(conn)
        .await
        .expect("pttl")
}

async fn keys(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut found: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(conn)
        .await
        .expect("keys");
    found.sort();
    found
}

#[tokio::test]
async fn two_nodes_reaping_at_once_report_each_departure_once() {
    let Some(server) = RedisServer::shared() else {
        return;
    };
    let prefix = fresh_prefix();
    let nodes = [
        node_on(server, &prefix).await,
        node_on(server, &prefix).await,
    ];
    let short = Duration::from_secs(2);
    // Ten users with three clients each, and one user with more clients than one reap script
    // takes, polling on both nodes; "stays" keeps one client polling.
    let mut polls = Vec::new();
    for u in 0..10 {
        for c in 0..3 {
            polls.push((format!("u{u}"), format!("tab{c}")));
        }
    }
    for c in 0..600 {
        polls.push(("crowd".to_owned(), format!("tab{c}")));
    }
    let fetches = polls.iter().enumerate().map(|(i, (u, c))| {
        let node = &nodes[i % 2];
        async move {
            node.fetch(request_with_presence(u, c, short))
                .await
                .expect("fetch")
        }
    });
    let started = Instant::now();
    futures_util::future::join_all(fetches).await;
    assert!(
        started.elapsed() < short,
        "the setup took longer than the presence TTL"
    );
    nodes[0]
        .fetch(request("stays", "tab0", None))
        .await
        .expect("fetch");
    assert!(
        nodes[1].reap().await.expect("reap").is_empty(),
        "live clients were reaped"
    );
    tokio::time::sleep(short + Duration::from_millis(300)).await;

    let reaps = (0..8).map(|i| nodes[i % 2].reap());
    let results = futures_util::future::join_all(reaps).await;
    let mut gone: Vec<Departure> = results.into_iter().flat_map(|r| r.expect("reap")).collect();
    assert_eq!(gone.len(), polls.len(), "each departure exactly once");
    gone.sort_by(|a, b| (&a.user, &a.client).cmp(&(&b.user, &b.client)));
    gone.dedup_by(|a, b| a.user == b.user && a.client == b.client);
    assert_eq!(gone.len(), polls.len(), "a departure was reported twice");
    let mut offline: Vec<&str> = gone
        .iter()
        .filter(|d| d.user_went_offline)
        .map(|d| d.user.as_str())
        .collect();
    offline.sort_unstable();
    let mut expected: Vec<String> = (0..10).map(|u| format!("u{u}")).collect();
    expected.push("crowd".to_owned());
    expected.sort_unstable();
    assert_eq!(offline, expected, "each user went offline exactly once");
    for node in &nodes {
        assert!(node.reap().await.expect("reap").is_empty());
        assert_eq!(
            node.live_users().await.expect("live"),
            [UserId::from("stays")]
        );
    }
}

#[tokio::test]
async fn a_reaped_client_leaves_no_keys_and_user_rooms_persist_until_left() {
    let Some(server) = RedisServer::shared() else {
        return;
    };
    let storage = connect(server).await;
    let p = storage.key_prefix().to_owned();
    let mut conn = raw(server).await;
    let presence = Duration::from_millis(300);
    storage
        .fetch(request_with_presence("ann", "tab1", presence))
        .await
        .expect("fetch");
    let tab = Member::Client(UserId::from("ann"), ClientId::new("tab1").expect("id"));
    let ann = Member::User(UserId::from("ann"));
    storage.join("lobby", &tab, presence).await.expect("join");
    storage.join("lobby", &ann, presence).await.expect("join");
    storage
        .set_data(&tab, "nick", Some("\"annie\""), presence)
        .await
        .expect("set");
    storage
        .set_data(&ann, "lang", Some("\"fr\""), presence)
        .await
        .expect("set");
    let client_keys = [
        format!("{p}c:tab1:ann:data"),
        format!("{p}c:tab1:ann:rec"),
        format!("{p}c:tab1:ann:rooms"),
    ];
    assert_eq!(keys(&mut conn, &format!("{p}c:*")).await, client_keys);
    // The keys' own expiry is only a safety net, far behind reaping: a client's keys outlive
    // its presence by minutes, and its user's keys outlive the client's.
    for key in &client_keys {
        let ttl = pttl(&mut conn, key).await;
        assert!(ttl > 500_000, "{key} expires in {ttl} ms, before reap");
        assert!(
            pttl(&mut conn, &format!("{p}u:ann:live")).await > ttl,
            "the user's keys expire before the client's"
        );
    }
    assert!(pttl(&mut conn, &format!("{p}presence")).await > 500_000);

    tokio::time::sleep(Duration::from_millis(500)).await;
    let gone = storage.reap().await.expect("reap");
    assert_eq!(gone.len(), 1);
    assert!(gone[0].user_went_offline);
    assert!(
        keys(&mut conn, &format!("{p}c:*")).await.is_empty(),
        "a reaped client left keys behind"
    );
    for key in ["presence", "u:ann:data", "u:ann:live"] {
        assert!(
            keys(&mut conn, &format!("{p}{key}")).await.is_empty(),
            "{key} outlived the user's last client"
        );
    }
    // A user's membership persists (no TTL) until they leave.
    let lobby = format!("{p}room:lobby");
    let ann_rooms = format!("{p}u:ann:rooms");
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(&lobby)
        .query_async(&mut conn)
        .await
        .expect("smembers");
    assert_eq!(members, ["u:ann"]);
    assert_eq!(pttl(&mut conn, &lobby).await, -1);
    assert_eq!(pttl(&mut conn, &ann_rooms).await, -1);
    storage.leave("lobby", &ann).await.expect("leave");
    assert!(keys(&mut conn, &lobby).await.is_empty());
    assert!(keys(&mut conn, &ann_rooms).await.is_empty());
}

#[tokio::test]
async fn members_rooms_and_data_stay_apart_whatever_the_user_ids() {
    let Some(server) = RedisServer::shared() else {
        return;
    };
    let storage = connect(server).await;
    let tab = ClientId::new("tab1").expect("id");
    // User ids that spell another member's encoding or another key's suffix.
    let members = [
        Member::User(UserId::from("ann")),
        Member::Client(UserId::from("ann"), tab.clone()),
        Member::User(UserId::from("c:tab1:ann")),
        Member::User(UserId::from("u:ann")),
        Member::User(UserId::from("ann:rooms")),
        Member::Client(UserId::from("ann:data"), tab.clone()),
        Member::User(UserId::from("")),
    ];
    for (i, m) in members.iter().enumerate() {
        storage
            .join(&format!("room:{i}"), m, LONG)
            .await
            .expect("join");
        storage.join("all", m, LONG).await.expect("join");
        storage
            .set_data(m, "k", Some(&i.to_string()), LONG)
            .await
            .expect("set");
    }
    let mut all = storage.members("all").await.expect("members");
    all.sort();
    let mut expected = members.to_vec();
    expected.sort();
    assert_eq!(all, expected);
    for (i, m) in members.iter().enumerate() {
        let mut rooms: Vec<String> = storage
            .rooms(m)
            .await
            .expect("rooms")
            .iter()
            .map(|r| r.to_string())
            .collect();
        rooms.sort();
        assert_eq!(rooms, ["all".to_owned(), format!("room:{i}")], "{m:?}");
        assert_eq!(
            storage
                .members(&format!("room:{i}"))
                .await
                .expect("members"),
            std::slice::from_ref(m)
        );
        assert_eq!(
            storage.get_data(m, "k").await.expect("get"),
            Some(i.to_string()),
            "{m:?}"
        );
    }
}

#[tokio::test]
async fn messages_keep_their_namespace_through_redis() {
    let Some(server) = RedisServer::shared() else {
        return;
    };
    let storage = connect(server).await;
    let mut odd = message("ann", "ev:1", LONG);
    odd.namespace = "/a:b 2".into();
    let a = storage
        .append(vec![odd, message("ann", "root", LONG)], queue(10))
        .await
        .expect("append");
    let batch = storage
        .fetch(FetchRequest {
            namespaces: Arc::from(["/a:b 2".into(), "/".into()]),
            ..request("ann", "tab1", None)
        })
        .await
        .expect("fetch");
    let read: Vec<(&str, &str)> = batch.messages.iter().map(|m| (&*m.ns, &*m.event)).collect();
    assert_eq!(read, [("/a:b 2", "ev:1"), ("/", "root")]);
    let pos: Vec<u64> = a.outcomes.iter().copied().map(stored).collect();
    storage
        .fetch(FetchRequest {
            namespaces: Arc::from(["/a:b 2".into()]),
            ..request("ann", "tab1", Some((&a.epoch, pos[1])))
        })
        .await
        .expect("confirm");
    let mut odd_target = target("ann", pos[0]);
    odd_target.namespace = "/a:b 2".into();
    let states = storage
        .delivery(&a.epoch, &[odd_target, target("ann", pos[1])])
        .await
        .expect("delivery");
    assert_eq!(states, [DeliveryState::Delivered, DeliveryState::Pending]);
}

#[tokio::test]
async fn a_client_back_before_it_was_reaped_neither_departs_nor_arrives_again() {
    let Some(server) = RedisServer::shared() else {
        return;
    };
    let storage = connect(server).await;
    let first = storage
        .fetch(request_with_presence(
            "ann",
            "tab1",
            Duration::from_millis(300),
        ))
        .await
        .expect("fetch");
    assert!(first.arrival.is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        storage.live_users().await.expect("live").is_empty(),
        "a lapsed client counts as live"
    );
    let back = storage
        .fetch(request("ann", "tab1", None))
        .await
        .expect("fetch");
    assert_eq!(
        back.arrival, None,
        "a client that never departed arrived twice"
    );
    assert!(storage.reap().await.expect("reap").is_empty());
    assert_eq!(
        storage
            .live_clients(&UserId::from("ann"))
            .await
            .expect("live"),
        [ClientId::new("tab1").expect("id")]
    );
}

#[tokio::test]
async fn signals_built_in_scripts_decode_exactly_whatever_the_ids() {
    let Some(server) = RedisServer::shared() else {
        return;
    };
    let storage = connect(server).await;
    let mut rx = storage.subscribe();
    // Quotes, backslashes, slashes (which Lua's cjson escapes), control and non-ASCII
    // characters: the scripts splice JSON that Rust encoded, and must not break it.
    let odd = "a\"b\\c/d\u{1}é😀";
    let ns: Arc<str> = Arc::from("/x\"y\\z");
    let mut to_odd = message(odd, "a", LONG);
    to_odd.namespace = ns.clone();
    let a = storage
        .append(
            vec![to_odd, message("bob", "b", LONG), message(odd, "c", LONG)],
            queue(10),
        )
        .await
        .expect("append");
    let mut appended = None;
    let found = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(signal) = rx.recv().await {
            if let Signal::Appended { users } = signal {
                appended = Some(users);
                return;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "no Appended signal");
    let users: Vec<&str> = appended
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(UserId::as_str)
        .collect();
    assert_eq!(users, [odd, "bob"], "one Appended naming each user once");

    let pos: Vec<u64> = a.outcomes.iter().copied().map(stored).collect();
    let read = FetchRequest {
        namespaces: Arc::from([ns.clone(), "/".into()]),
        ..request(odd, "tab1", None)
    };
    storage.fetch(read.clone()).await.expect("fetch");
    storage
        .fetch(FetchRequest {
            cursor: Some((a.epoch.clone(), pos[0])),
            ..read
        })
        .await
        .expect("confirm");
    let want = pos[0];
    expect_signal(&mut rx, Duration::from_secs(2), "Confirmed", |s| {
        matches!(s, Signal::Confirmed { epoch, user, client, cursor, namespaces }
            if *epoch == a.epoch && user.as_str() == odd && client.as_str() == "tab1"
                && *cursor == want && namespaces[..] == [ns.clone(), Arc::from("/")])
    })
    .await;
}

/// Redis's `used_memory`, in bytes.
async fn used_memory(conn: &mut redis::aio::MultiplexedConnection) -> i64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .expect("info memory");
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:")?.trim().parse().ok())
        .expect("INFO memory tells used_memory")
}

#[tokio::test]
async fn a_fan_out_stores_its_payload_once() {
    // Its own server, so that no other test's keys move the figure.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let storage = connect(&server).await;
    let mut conn = raw(&server).await;
    storage.epoch().await.expect("epoch");
    let big = format!("\"{}\"", "x".repeat(1 << 20));
    let data: Arc<RawValue> = Arc::from(RawValue::from_string(big.clone()).expect("JSON"));
    let fan_out: Vec<NewMessage> = (0..200)
        .map(|u| NewMessage {
            data: data.clone(),
            ..message(&format!("user{u}"), "big", LONG)
        })
        .collect();
    let before = used_memory(&mut conn).await;
    let a = storage.append(fan_out, queue(10)).await.expect("append");
    let at_once = used_memory(&mut conn).await - before;
    // The connection that sent the megabyte keeps a query buffer that large until Redis
    // trims it (a cron, within seconds): client memory, not stored data. Wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut grown = at_once;
    while grown >= 2 << 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        grown = used_memory(&mut conn).await - before;
    }
    println!(
        "one 1 MB message to 200 users: used_memory grew by {at_once} bytes at once \
         (the query buffer included), {grown} bytes once Redis trimmed that buffer"
    );
    assert!(
        at_once < 3 << 20 && grown < 3 << 20,
        "one 1 MB message to 200 users took {at_once} then {grown} bytes"
    );
    assert!(
        a.outcomes
            .iter()
            .all(|o| matches!(o, AppendOutcome::Stored(_)))
    );

    // Every recipient reads it whole, and one batch carries the payload once for two entries.
    for u in [0, 199] {
        let batch = storage
            .fetch(request(&format!("user{u}"), "tab1", None))
            .await
            .expect("fetch");
        assert_eq!(batch.messages.len(), 1);
        assert_eq!(&*batch.messages[0].event, "big");
        assert_eq!(batch.messages[0].data.get(), big);
    }
    let twice = vec![
        NewMessage {
            data: data.clone(),
            ..message("ann", "big", LONG)
        },
        NewMessage {
            data,
            ..message("ann", "big", LONG)
        },
    ];
    storage.append(twice, queue(10)).await.expect("append");
    let batch = storage
        .fetch(request("ann", "tab1", None))
        .await
        .expect("fetch");
    assert_eq!(batch.messages.len(), 2);
    assert!(
        Arc::ptr_eq(&batch.messages[0].data, &batch.messages[1].data),
        "a payload came twice in one batch"
    );
}

/// A fan-out of `data` to `users` users (`user0`, `user1`, …, after `prefix`) in calls of
/// `FANOUT_CHUNK`, as simpleio makes them; `expires_at` per call, by its index; `between` runs
/// before every call but the first.
async fn chunked_fan_out(
    storage: &RedisStorage,
    prefix: &str,
    data: &Arc<RawValue>,
    users: usize,
    expires_at: impl Fn(usize) -> u64,
    between: impl AsyncFn(usize),
) -> usize {
    let recipients: Vec<usize> = (0..users).collect();
    let mut calls = 0;
    for (call, chunk) in recipients
        .chunks(simpleio::storage::FANOUT_CHUNK)
        .enumerate()
    {
        if call > 0 {
            between(call).await;
        }
        let messages = chunk
            .iter()
            .map(|u| NewMessage {
                data: data.clone(),
                expires_at: expires_at(call),
                ..message(&format!("{prefix}user{u}"), "big", LONG)
            })
            .collect();
        let a = storage.append(messages, queue(10)).await.expect("append");
        assert!(
            a.outcomes
                .iter()
                .all(|o| matches!(o, AppendOutcome::Stored(_)))
        );
        calls += 1;
    }
    calls
}

#[tokio::test]
async fn a_chunked_fan_out_stores_its_payload_once_across_calls() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let storage = connect(&server).await;
    let mut conn = raw(&server).await;
    let prefix = storage.key_prefix().to_owned();
    storage.epoch().await.expect("epoch");
    let big = format!("\"{}\"", "x".repeat(1 << 20));
    let data: Arc<RawValue> = Arc::from(RawValue::from_string(big.clone()).expect("JSON"));
    let expiry = |_| millis_after(LONG);
    // What 2,000 users' entries and keys take without the payload: the same fan-out of a
    // two-byte one, first.
    let tiny: Arc<RawValue> = Arc::from(RawValue::from_string("{}".into()).expect("JSON"));
    let before = used_memory(&mut conn).await;
    chunked_fan_out(&storage, "tiny-", &tiny, 2_000, expiry, async |_| {}).await;
    let entries = used_memory(&mut conn).await - before;
    let before = used_memory(&mut conn).await;
    let calls = chunked_fan_out(&storage, "", &data, 2_000, expiry, async |_| {}).await;
    // The query buffer of the connection that sent the megabyte goes within seconds (see
    // `a_fan_out_stores_its_payload_once`).
    let deadline = Instant::now() + Duration::from_secs(10);
    let at_once = used_memory(&mut conn).await - before;
    let mut grown = at_once;
    while grown - entries >= 3 << 19 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        grown = used_memory(&mut conn).await - before;
    }
    let payload_keys = keys(&mut conn, &format!("{prefix}p:*")).await;
    println!(
        "one 1 MB message to 2,000 users in {calls} calls: used_memory grew by {at_once} bytes \
         at once, {grown} bytes once Redis trimmed the query buffer; the same fan-out of a \
         2-byte payload grew it by {entries} bytes; {} payload keys (one per fan-out)",
        payload_keys.len()
    );
    assert_eq!(calls, 2_000_usize.div_ceil(simpleio::storage::FANOUT_CHUNK));
    assert_eq!(payload_keys.len(), 2, "a payload was stored more than once");
    // The payload's own cost: what the 1 MB fan-out took beyond the same fan-out of a tiny
    // payload (entries, keys and each user's record of the nodes that need its signals).
    assert!(
        grown - entries < 3 << 19,
        "a 1 MB fan-out to 2,000 users took {grown} bytes, {entries} of them for its entries"
    );
    // Once is 1 MB over the entries; twice would be 2 MB.
    assert!(
        grown - entries < 3 << 19,
        "a 1 MB fan-out to 2,000 users took {grown} bytes, {entries} without the payload"
    );
    for u in [0, 1_999] {
        let batch = storage
            .fetch(request(&format!("user{u}"), "tab1", None))
            .await
            .expect("fetch");
        assert_eq!(batch.messages.len(), 1);
        assert_eq!(batch.messages[0].data.get(), big);
    }
}

#[tokio::test]
async fn a_later_chunk_stores_the_payload_again_if_it_is_gone_and_keeps_it_long_enough() {
    let Some(server) = RedisServer::shared() else {
        return;
    };
    let storage = connect(server).await;
    let mut conn = raw(server).await;
    let prefix = storage.key_prefix().to_owned();
    let data: Arc<RawValue> =
        Arc::from(RawValue::from_string(r#"{"text":"hello"}"#.into()).expect("JSON"));
    // Each chunk expires later than the one before: the payload's key covers the latest.
    let base = millis_after(LONG);
    let later = |call: usize| base + call as u64 * 60_000;
    let payload_keys = async |conn: &mut redis::aio::MultiplexedConnection| {
        keys(conn, &format!("{prefix}p:*")).await
    };
    let calls = chunked_fan_out(&storage, "", &data, 1_000, later, async |call| {
        let mut conn = conn.clone();
        let found = payload_keys(&mut conn).await;
        assert_eq!(found.len(), 1, "before call {call}: {found:?}");
        if call == 2 {
            // As an eviction policy would: the next chunk must store it again.
            let _: i64 = redis::cmd("DEL")
                .arg(&found[0])
                .query_async(&mut conn)
                .await
                .expect("del");
        }
    })
    .await;
    assert_eq!(calls, 1_000_usize.div_ceil(simpleio::storage::FANOUT_CHUNK));
    let found = payload_keys(&mut conn).await;
    assert_eq!(found.len(), 1, "{found:?}");
    let at: i64 = redis::cmd("PEXPIRETIME")
        .arg(&found[0])
        .query_async(&mut conn)
        .await
        .expect("pexpiretime");
    assert!(
        at as u64 >= later(calls - 1),
        "the payload expires at {at}, before its last entries ({})",
        later(calls - 1)
    );
    // Stored again under the same id: the chunks before the deletion have it back too.
    for u in [0, 300, 600, 999] {
        let batch = storage
            .fetch(request(&format!("user{u}"), "tab1", None))
            .await
            .expect("fetch");
        let read: Vec<&str> = batch.messages.iter().map(|m| m.data.get()).collect();
        assert_eq!(read, [r#"{"text":"hello"}"#], "user{u}");
    }
}

/// The longest run of a script, in microseconds, from the server's slow log (see
/// [`log_commands_slower_than`]).
async fn slowest_script(conn: &mut redis::aio::MultiplexedConnection) -> i64 {
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query_async(conn)
        .await
        .expect("slowlog get");
    let mut slowest = 0;
    for entry in entries {
        let redis::Value::Array(fields) = entry else {
            continue;
        };
        let (Some(redis::Value::Int(micros)), Some(redis::Value::Array(args))) =
            (fields.get(2), fields.get(3))
        else {
            continue;
        };
        let is_script = matches!(args.first(), Some(redis::Value::BulkString(name))
            if name.eq_ignore_ascii_case(b"evalsha") || name.eq_ignore_ascii_case(b"eval"));
        if is_script {
            slowest = slowest.max(*micros);
        }
    }
    slowest
}

/// Makes the server's slow log keep every command that runs `micros` or longer, from now on.
async fn log_commands_slower_than(conn: &mut redis::aio::MultiplexedConnection, micros: u32) {
    let micros = micros.to_string();
    for (name, value) in [
        ("slowlog-log-slower-than", micros.as_str()),
        ("slowlog-max-len", "10000"),
    ] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(conn)
            .await
            .expect("config set");
    }
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(conn)
        .await
        .expect("slowlog reset");
}

#[tokio::test]
async fn a_fetch_does_not_walk_entries_of_other_clients_and_namespaces() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let storage = connect(&server).await;
    let mut conn = raw(&server).await;
    let other_ns = |i: usize| {
        let mut m = message("ann", &format!("o{i}"), LONG);
        m.namespace = "/other".into();
        m
    };
    let other_client = |i: usize| {
        let mut m = message("ann", &format!("c{i}"), LONG);
        m.client = Some(ClientId::new("elsewhere").expect("id"));
        m
    };
    let mut for_late = message("ann", "for-late", LONG);
    for_late.client = Some(ClientId::new("late").expect("id"));
    // 20,000 entries this client skips, around the three it reads, below and above the
    // watermark that another client moves past them.
    let mut all: Vec<NewMessage> = (0..10_000).map(other_ns).collect();
    all.push(for_late);
    all.extend((0..10_000).map(other_client));
    all.push(message("ann", "all-1", LONG));
    all.extend((10_000..20_000).map(other_ns));
    all.push(message("ann", "all-2", LONG));
    let mut epoch = storage.epoch().await.expect("epoch");
    let mut last = 0;
    for chunk in all.chunks(1024) {
        let a = storage
            .append(chunk.to_vec(), queue(100_000))
            .await
            .expect("append");
        epoch = a.epoch;
        last = a.outcomes.iter().copied().map(stored).max().unwrap_or(last);
    }
    storage
        .fetch(request("ann", "early", None))
        .await
        .expect("fetch");
    storage
        .fetch(request("ann", "early", Some((&epoch, last))))
        .await
        .expect("confirm");

    log_commands_slower_than(&mut conn, 0).await;
    let batch = storage
        .fetch(FetchRequest {
            limit: 2,
            ..request("ann", "late", None)
        })
        .await
        .expect("fetch");
    let read: Vec<&str> = batch.messages.iter().map(|m| &*m.event).collect();
    assert_eq!(read, ["for-late", "all-1"]);
    let batch = storage
        .fetch(FetchRequest {
            limit: 2,
            ..request("ann", "late", Some((&epoch, batch.cursor)))
        })
        .await
        .expect("fetch");
    let read: Vec<&str> = batch.messages.iter().map(|m| &*m.event).collect();
    assert_eq!(read, ["all-2"]);
    assert_eq!(
        batch.cursor, last,
        "the read ends at the log's last position"
    );
    let slowest = slowest_script(&mut conn).await;
    println!("fetches past 30,000 skipped entries took at most {slowest} µs in Redis");
    // Walking 30,000 entries takes tens of milliseconds; the index read, well under one.
    assert!(slowest < 5_000, "a fetch took {slowest} µs");
}

#[tokio::test]
async fn a_log_full_of_expired_entries_takes_a_whole_call_of_new_ones() {
    let Some(server) = RedisServer::shared() else {
        return;
    };
    let storage = connect(server).await;
    let short: Vec<NewMessage> = (0..300)
        .map(|i| message("ann", &format!("s{i}"), Duration::from_millis(100)))
        .collect();
    storage.append(short, queue(300)).await.expect("append");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let long: Vec<NewMessage> = (0..300)
        .map(|i| message("ann", &format!("l{i}"), LONG))
        .collect();
    let a = storage.append(long, queue(300)).await.expect("append");
    assert!(
        a.outcomes
            .iter()
            .all(|o| matches!(o, AppendOutcome::Stored(_))),
        "expired entries took the room of new ones"
    );
}

/// A fan-out to 100,000 users, in `FANOUT_CHUNK` calls as simpleio makes them, never keeps Redis
/// from answering a PING for long (run with `--nocapture` for the figures).
///
/// The bounds here are a tenth of a second, ten times what this machine measures, so that a
/// loaded CI machine does not fail it: they catch a fan-out run as one script (seconds), not a
/// slowdown. The benchmark (`simpleio-bench run --scenario room`) measures the real figure.
#[tokio::test]
async fn chunked_fan_out_to_100k_users_never_blocks_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let storage = connect(&server).await;
    let mut conn = raw(&server).await;
    storage.epoch().await.expect("epoch");
    // Not the PINGs, only what could hold them up.
    log_commands_slower_than(&mut conn, 1_000).await;
    let data: Arc<RawValue> =
        Arc::from(RawValue::from_string(r#"{"text":"hello, everyone"}"#.into()).expect("JSON"));
    let users = 100_000;
    // On a thread of its own, over a plain socket: a PING's time is Redis's answer, not the
    // test's scheduling.
    let stop = Arc::new(AtomicBool::new(false));
    let pinger = std::thread::spawn({
        let stop = stop.clone();
        let port = server.port();
        move || {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let (mut slowest, mut pings) = (Duration::ZERO, 0u64);
            let mut line = String::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                stream.write_all(b"PING\r\n").expect("ping");
                line.clear();
                reader.read_line(&mut line).expect("pong");
                assert_eq!(line, "+PONG\r\n");
                slowest = slowest.max(started.elapsed());
                pings += 1;
            }
            (slowest, pings)
        }
    });
    let started = Instant::now();
    let mut chunk = Vec::with_capacity(simpleio::storage::FANOUT_CHUNK);
    let mut calls = 0;
    for u in 0..users {
        chunk.push(NewMessage {
            data: data.clone(),
            ..message(&format!("user{u}"), "hello", LONG)
        });
        if chunk.len() == simpleio::storage::FANOUT_CHUNK || u == users - 1 {
            let a = storage
                .append(std::mem::take(&mut chunk), queue(10_000))
                .await
                .expect("append");
            assert!(
                a.outcomes
                    .iter()
                    .all(|o| matches!(o, AppendOutcome::Stored(_)))
            );
            calls += 1;
        }
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (slowest_ping, pings) = pinger.join().expect("the pinger panicked");
    let slowest_append = slowest_script(&mut conn).await;
    println!(
        "{users} users in {calls} calls of {} took {took:?}; the slowest append script ran \
         {slowest_append} µs; the slowest of {pings} PINGs meanwhile waited {slowest_ping:?}",
        simpleio::storage::FANOUT_CHUNK
    );
    assert!(
        slowest_ping <= Duration::from_millis(500),
        "a PING waited {slowest_ping:?} behind a fan-out"
    );
    assert!(
        slowest_append <= 500_000,
        "an append of {} messages held Redis for {slowest_append} µs",
        simpleio::storage::FANOUT_CHUNK
    );
}

/// Reading a 100,000-member room takes a page of members per script, so that Redis answers
/// other commands between pages, and still gives every member once: users, a live client, not
/// a client whose record expired unreaped (run with `--nocapture` for the figures).
///
/// One script reading the whole room held Redis for about 100 ms on the benchmark's machine.
/// The pages are counted, not timed (a loaded machine makes any script slow); the slowest
/// script's time is printed for a look.
#[tokio::test]
async fn a_big_room_is_read_a_page_per_script() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let storage = connect(&server).await;
    let mut conn = raw(&server).await;
    let users = 100_000;
    let room = format!("{}room:big", storage.key_prefix());
    // Straight into the room's set, a batch per command: `join` would take a script per user.
    for start in (0..users).step_by(10_000) {
        let mut sadd = redis::cmd("SADD");
        sadd.arg(&room);
        for u in start..start + 10_000 {
            sadd.arg(format!("u:user{u}"));
        }
        let _: i64 = sadd.query_async(&mut conn).await.expect("sadd");
    }
    let tab = ClientId::random();
    storage
        .join("big", &Member::client("ann", tab.clone()), LONG)
        .await
        .expect("join");
    // A client member with no presence record: it expired without being reaped.
    let stale = ClientId::random();
    let _: i64 = redis::cmd("SADD")
        .arg(&room)
        .arg(format!("c:{stale}:bob"))
        .query_async(&mut conn)
        .await
        .expect("sadd");
    log_commands_slower_than(&mut conn, 1_000).await;
    let before = command_stats(&mut conn).await;
    let started = Instant::now();
    let mut members = storage.members("big").await.expect("members");
    let took = started.elapsed();
    let after = command_stats(&mut conn).await;
    let slowest = slowest_script(&mut conn).await;
    let pages = after.get("sscan").map_or(0, |s| s.0) - before.get("sscan").map_or(0, |s| s.0);
    println!(
        "{} members in {pages} pages took {took:?}; the slowest script ran {slowest} µs",
        members.len()
    );
    assert_eq!(members.len(), users + 1, "each member once");
    members.sort();
    members.dedup();
    assert_eq!(members.len(), users + 1, "each member once");
    assert!(members.contains(&Member::client("ann", tab)));
    assert!(members.contains(&Member::User(UserId::from("user99999"))));
    assert!(
        !members
            .iter()
            .any(|m| matches!(m, Member::Client(_, c) if *c == stale)),
        "a client with no record is no member"
    );
    assert!(
        pages >= 25,
        "{users} members were read in {pages} pages, not a couple of thousand at a time"
    );
    // The stale client's membership is gone for good.
    let is_member: bool = redis::cmd("SISMEMBER")
        .arg(&room)
        .arg(format!("c:{stale}:bob"))
        .query_async(&mut conn)
        .await
        .expect("sismember");
    assert!(!is_member);
}

/// Many live users are read a page per script too (`ZSCAN`), each once, and only the live
/// ones: users whose latest seen-until passed are left out.
#[tokio::test]
async fn many_live_users_are_read_a_page_per_script() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let storage = connect(&server).await;
    let mut conn = raw(&server).await;
    let live = format!("{}live", storage.key_prefix());
    let later = simpleio::storage::now_millis() + 600_000;
    let users = 20_000;
    for start in (0..users).step_by(5_000) {
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(&live);
        for u in start..start + 5_000 {
            // Every tenth user lapsed a while ago.
            let score = if u % 10 == 0 { 1_000 } else { later };
            zadd.arg(score).arg(format!("user{u}"));
        }
        let _: i64 = zadd.query_async(&mut conn).await.expect("zadd");
    }
    let before = command_stats(&mut conn).await;
    let mut got: Vec<String> = storage
        .live_users()
        .await
        .expect("live users")
        .iter()
        .map(|u| u.as_str().to_owned())
        .collect();
    let after = command_stats(&mut conn).await;
    let pages = after.get("zscan").map_or(0, |s| s.0) - before.get("zscan").map_or(0, |s| s.0);
    got.sort();
    let mut want: Vec<String> = (0..users)
        .filter(|u| u % 10 != 0)
        .map(|u| format!("user{u}"))
        .collect();
    want.sort();
    assert_eq!(got, want, "live users lost, repeated or lapsed ones kept");
    assert!(
        pages >= 5,
        "{users} live users were read in {pages} pages, not a couple of thousand at a time"
    );
}

/// Every command's `(calls, usec)` from `INFO commandstats`, by name; commands run by scripts
/// count too.
async fn command_stats(
    conn: &mut redis::aio::MultiplexedConnection,
) -> std::collections::BTreeMap<String, (u64, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("info commandstats");
    let mut stats = std::collections::BTreeMap::new();
    for line in info.lines() {
        let Some((name, fields)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let field = |want: &str| {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix(want)?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        stats.insert(name.to_owned(), (field("calls="), field("usec=")));
    }
    stats
}

/// What the commands run since `before` cost: per command name, its calls.
fn commands_since(
    before: &std::collections::BTreeMap<String, (u64, u64)>,
    after: &std::collections::BTreeMap<String, (u64, u64)>,
) -> Vec<(String, u64, u64)> {
    after
        .iter()
        .filter_map(|(name, (calls, usec))| {
            let (c0, u0) = before.get(name).copied().unwrap_or((0, 0));
            (calls > &c0 && !matches!(name.as_str(), "info" | "config|resetstat"))
                .then(|| (name.clone(), calls - c0, usec - u0))
        })
        .collect()
}

#[tokio::test]
async fn steady_broadcasts_cost_few_commands_per_fetch_and_message() {
    // Its own server: the counts are the server's.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let storage = connect(&server).await;
    let mut conn = raw(&server).await;
    let users = 200;
    let rounds = 20;
    let data: Arc<RawValue> =
        Arc::from(RawValue::from_string(r#"{"text":"hello, everyone"}"#.into()).expect("JSON"));
    let broadcast = || -> Vec<NewMessage> {
        (0..users)
            .map(|u| NewMessage {
                data: data.clone(),
                ..message(&format!("user{u}"), "hello", LONG)
            })
            .collect()
    };
    // Every user's client polled once and holds a cursor, with some history in the log.
    let mut epoch = storage.epoch().await.expect("epoch");
    let mut cursors = vec![0; users];
    for _ in 0..5 {
        storage
            .append(broadcast(), queue(1000))
            .await
            .expect("append");
    }
    for (u, cursor) in cursors.iter_mut().enumerate() {
        let b = storage
            .fetch(request(&format!("user{u}"), "tab1", None))
            .await
            .expect("fetch");
        epoch = b.epoch;
        *cursor = b.cursor;
    }
    // A poll as simpleio runs it, per message: a fetch that confirms the last batch and finds
    // nothing, a wakeup, then a fetch (same cursor) that reads the new message.
    let (mut appends, mut fetches) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let before = command_stats(&mut conn).await;
        storage
            .append(broadcast(), queue(1000))
            .await
            .expect("append");
        let after = command_stats(&mut conn).await;
        appends.push(commands_since(&before, &after));
        let before = after;
        for (u, cursor) in cursors.iter_mut().enumerate() {
            let user = format!("user{u}");
            for _ in 0..2 {
                let b = storage
                    .fetch(request(&user, "tab1", Some((&epoch, *cursor))))
                    .await
                    .expect("fetch");
                *cursor = b.cursor;
            }
        }
        let after = command_stats(&mut conn).await;
        fetches.push(commands_since(&before, &after));
    }
    let per = |samples: &[Vec<(String, u64, u64)>], each: u64| {
        let mut totals: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
        for sample in samples {
            for (name, calls, usec) in sample {
                let t = totals.entry(name.clone()).or_default();
                t.0 += calls;
                t.1 += usec;
            }
        }
        let n = each * samples.len() as u64;
        let inner: u64 = totals
            .iter()
            .filter(|(name, _)| !name.starts_with("eval"))
            .map(|(_, (calls, _))| calls)
            .sum();
        let script_usec: u64 = totals
            .iter()
            .filter(|(name, _)| name.starts_with("eval"))
            .map(|(_, (_, usec))| usec)
            .sum();
        let detail: Vec<String> = totals
            .iter()
            .filter(|(name, _)| !name.starts_with("eval"))
            .map(|(name, (calls, _))| format!("{name} {:.2}", *calls as f64 / n as f64))
            .collect();
        (
            inner as f64 / n as f64,
            script_usec as f64 / n as f64,
            detail.join(", "),
        )
    };
    let (append_cmds, append_usec, append_detail) = per(&appends, users as u64);
    let (fetch_cmds, fetch_usec, fetch_detail) = per(&fetches, 2 * users as u64);
    println!(
        "per appended message: {append_cmds:.2} commands, {append_usec:.1} µs of script \
         ({append_detail})"
    );
    println!("per fetch: {fetch_cmds:.2} commands, {fetch_usec:.1} µs of script ({fetch_detail})");
}

#[tokio::test]
async fn keys_made_between_expiry_steps_get_their_expiry_too() {
    let Some(server) = RedisServer::shared() else {
        return;
    };
    let storage = connect(server).await;
    let p = storage.key_prefix().to_owned();
    let mut conn = raw(server).await;
    // The first poll gives every key of the user its expiry; there is no watermark yet.
    let first = storage
        .fetch(request("ann", "tab1", None))
        .await
        .expect("fetch");
    assert!(keys(&mut conn, &format!("{p}u:ann:wm")).await.is_empty());
    let a = storage
        .append(vec![message("ann", "m", LONG)], queue(10))
        .await
        .expect("append");
    // Within the same expiry step: the watermark, the user's data and a second client's
    // record are made after the user's expiry was last moved.
    storage
        .fetch(request(
            "ann",
            "tab1",
            Some((&first.epoch, stored(a.outcomes[0]))),
        ))
        .await
        .expect("confirm");
    let ann = Member::User(UserId::from("ann"));
    storage
        .set_data(&ann, "lang", Some("\"fr\""), Duration::from_secs(60))
        .await
        .expect("set");
    let tab2 = Member::Client(UserId::from("ann"), ClientId::new("tab2").expect("id"));
    storage
        .join("lobby", &tab2, Duration::from_secs(60))
        .await
        .expect("join");
    storage
        .fetch(request("ann", "tab2", None))
        .await
        .expect("fetch");
    let found = keys(&mut conn, &format!("{p}*")).await;
    for want in [
        "u:ann:wm",
        "u:ann:data",
        "c:tab2:ann:rec",
        "c:tab2:ann:rooms",
    ] {
        assert!(
            found.contains(&format!("{p}{want}")),
            "no {want} in {found:?}"
        );
    }
    for key in found {
        let ttl = pttl(&mut conn, &key).await;
        if key == format!("{p}epoch") || key.ends_with(":rooms") && key.contains(":u:") {
            continue;
        }
        if key == format!("{p}room:lobby") {
            assert_eq!(ttl, -1);
            continue;
        }
        // Client keys: at least the reap grace (10 min); user keys outlive them.
        assert!(ttl > 590_000, "{key} expires in {ttl} ms");
    }
}

fn from(sender: &str, mut m: NewMessage) -> NewMessage {
    m.sender = Some(UserId::from(sender));
    m
}

/// A user id in hex, as the storage names a sender in its keys.
fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

async fn zcard(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> usize {
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(conn)
        .await
        .expect("zcard")
}

async fn zrange(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<String> {
    redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .expect("zrange")
}

fn dedup(user: &str, client: &str, id: &str) -> DedupKey {
    DedupKey {
        user: UserId::from(user),
        client: ClientId::new(client).expect("id"),
        id: MessageId::new(id).expect("id"),
    }
}

/// A sender's set of positions loses each entry that leaves the log, by expiry, by eviction of
/// a delivered entry of anyone's, or by eviction among the sender's own; it expires with the
/// log. The sender's id has a `:` and a suffix in it: it cannot reach another key.
#[tokio::test]
async fn a_senders_share_loses_every_entry_that_leaves_the_log() {
    let Some(server) = RedisServer::shared() else {
        return;
    };
    let storage = connect(server).await;
    let p = storage.key_prefix().to_owned();
    let mut conn = raw(server).await;
    let eve = "eve:log";
    let share = format!("{p}u:ann:{}:from", hex(eve));
    let limits = QueueLimits {
        per_sender: 100,
        ..queue(100)
    };
    let a = storage
        .append(
            vec![
                from(eve, message("ann", "s0", Duration::from_millis(100))),
                from(eve, message("ann", "s1", Duration::from_millis(100))),
                from(eve, message("ann", "l0", LONG)),
                message("ann", "server", LONG),
            ],
            limits,
        )
        .await
        .expect("append");
    assert_eq!(zcard(&mut conn, &share).await, 3);
    assert!(pttl(&mut conn, &share).await > 0, "the share has no TTL");
    let epoch = a.epoch;

    // Expired: a fetch drops them, and their places.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = storage
        .fetch(request("ann", "tab1", None))
        .await
        .expect("fetch");
    let events: Vec<&str> = b.messages.iter().map(|m| &*m.event).collect();
    assert_eq!(events, ["l0", "server"]);
    assert_eq!(
        zrange(&mut conn, &share).await,
        [stored(a.outcomes[2]).to_string()]
    );

    // Delivered, then evicted to make room in a full log: its place goes with it.
    storage
        .fetch(request(
            "ann",
            "tab1",
            Some((&epoch, stored(a.outcomes[2]))),
        ))
        .await
        .expect("confirm");
    let full = QueueLimits {
        per_sender: 100,
        ..queue(2)
    };
    let c = storage
        .append(vec![message("ann", "server2", LONG)], full)
        .await
        .expect("append");
    assert!(matches!(c.outcomes[0], AppendOutcome::Stored(_)));
    assert_eq!(
        zcard(&mut conn, &share).await,
        0,
        "an evicted entry kept its place"
    );

    // At the sender's share, one of their own delivered entries makes room, and only that one.
    let two = QueueLimits {
        per_sender: 2,
        ..queue(100)
    };
    let d = storage
        .append(
            vec![
                from(eve, message("ann", "e0", LONG)),
                from(eve, message("ann", "e1", LONG)),
                from(eve, message("ann", "e2", LONG)),
                from("bob", message("ann", "b0", LONG)),
            ],
            two,
        )
        .await
        .expect("append");
    assert_eq!(d.outcomes[2], AppendOutcome::QueueFull);
    storage
        .fetch(request(
            "ann",
            "tab1",
            Some((&epoch, stored(d.outcomes[0]))),
        ))
        .await
        .expect("confirm");
    let e = storage
        .append(vec![from(eve, message("ann", "e3", LONG))], two)
        .await
        .expect("append");
    let mut want = vec![
        stored(d.outcomes[1]).to_string(),
        stored(e.outcomes[0]).to_string(),
    ];
    want.sort();
    let mut got = zrange(&mut conn, &share).await;
    got.sort();
    assert_eq!(got, want, "the share does not match the sender's entries");
    assert_eq!(
        zcard(&mut conn, &format!("{p}u:ann:{}:from", hex("bob"))).await,
        1
    );
    let log: Vec<String> = zrange(&mut conn, &format!("{p}u:ann:log")).await;
    assert_eq!(
        log.iter()
            .filter(|e| e.contains(&format!(":={}:", hex(eve))))
            .count(),
        2,
        "{log:?}"
    );
    assert!(pttl(&mut conn, &share).await > 0, "the share has no TTL");
}

/// A record is ordered in its user's and client's sets until it is forgotten: completed with
/// no ttl, evicted to make room, or found gone. A refused claim writes nothing.
#[tokio::test]
async fn dedup_order_sets_follow_their_records() {
    let Some(server) = RedisServer::shared() else {
        return;
    };
    let storage = connect(server).await;
    let p = storage.key_prefix().to_owned();
    let mut conn = raw(server).await;
    let (du, dc) = (format!("{p}du:ann"), format!("{p}dc:tab1:ann"));
    let limits = DedupLimits {
        lease: LONG,
        per_client: 2,
        per_user: 10,
    };
    storage
        .claim(&dedup("ann", "tab1", "m1"), fastrand::u64(..), limits)
        .await
        .expect("claim");
    assert_eq!(zrange(&mut conn, &du).await, ["tab1:m1"]);
    assert_eq!(zrange(&mut conn, &dc).await, ["m1"]);
    assert!(pttl(&mut conn, &du).await > 0 && pttl(&mut conn, &dc).await > 0);
    storage
        .complete(&dedup("ann", "tab1", "m1"), "1", Duration::ZERO)
        .await
        .expect("complete");
    assert!(keys(&mut conn, &format!("{p}d*")).await.is_empty());

    for id in ["m1", "m2"] {
        storage
            .claim(&dedup("ann", "tab1", id), fastrand::u64(..), limits)
            .await
            .expect("claim");
    }
    let before = keys(&mut conn, &format!("{p}d*")).await;
    let order = (zrange(&mut conn, &du).await, zrange(&mut conn, &dc).await);
    assert!(matches!(
        storage
            .claim(&dedup("ann", "tab1", "m3"), fastrand::u64(..), limits)
            .await,
        Err(StorageError::Limit(_))
    ));
    assert_eq!(keys(&mut conn, &format!("{p}d*")).await, before);
    assert_eq!(
        (zrange(&mut conn, &du).await, zrange(&mut conn, &dc).await),
        order,
        "a refused claim changed the order"
    );

    storage
        .complete(&dedup("ann", "tab1", "m1"), "1", LONG)
        .await
        .expect("complete");
    storage
        .claim(&dedup("ann", "tab1", "m3"), fastrand::u64(..), limits)
        .await
        .expect("claim");
    assert_eq!(zrange(&mut conn, &du).await, ["tab1:m2", "tab1:m3"]);
    assert_eq!(zrange(&mut conn, &dc).await, ["m2", "m3"]);
    assert!(keys(&mut conn, &format!("{p}d:tab1:m1:*")).await.is_empty());

    // A lapsed lease leaves its place behind, which the next claim at the limit clears.
    let short = DedupLimits {
        lease: Duration::from_millis(100),
        per_client: 1,
        per_user: 10,
    };
    storage
        .claim(&dedup("ann", "tab2", "n1"), fastrand::u64(..), short)
        .await
        .expect("claim");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        storage
            .claim(&dedup("ann", "tab2", "n2"), fastrand::u64(..), short)
            .await
            .expect("claim"),
        simpleio::storage::Claim::Acquired
    );
    assert_eq!(zrange(&mut conn, &format!("{p}dc:tab2:ann")).await, ["n2"]);
    // The lapsed record is gone. (Its place in the user's set goes with the claim that found
    // it in the client's set; if that set expired first, its keys' expiry being set in steps,
    // the place waits for the user's limit to clear it: either way no record is left.)
    assert!(keys(&mut conn, &format!("{p}d:tab2:n1:*")).await.is_empty());
}

/// A new client refused for its user's client limit leaves no trace: no record, no presence.
#[tokio::test]
async fn a_refused_client_leaves_nothing_behind() {
    let Some(server) = RedisServer::shared() else {
        return;
    };
    let storage = connect(server).await;
    let p = storage.key_prefix().to_owned();
    let mut conn = raw(server).await;
    let one = |c: &str| FetchRequest {
        max_clients: 1,
        ..request("ann", c, None)
    };
    storage.fetch(one("tab1")).await.expect("fetch");
    let before = keys(&mut conn, &format!("{p}*")).await;
    assert!(matches!(
        storage.fetch(one("tab2")).await,
        Err(StorageError::Limit(_))
    ));
    assert_eq!(keys(&mut conn, &format!("{p}*")).await, before);
    let seen: Option<f64> = redis::cmd("ZSCORE")
        .arg(format!("{p}presence"))
        .arg("c:tab2:ann")
        .query_async(&mut conn)
        .await
        .expect("zscore");
    assert_eq!(seen, None);
    // A client that joined a room has a record: it is known, and served.
    let tab3 = Member::Client(UserId::from("ann"), ClientId::new("tab3").expect("id"));
    storage
        .join("lobby", &tab3, Duration::from_secs(60))
        .await
        .expect("join");
    storage
        .fetch(one("tab3"))
        .await
        .expect("a client with a record is known");
}

/// The log's last position is the last one given, not the last entry left: a cursor at a
/// message that expired since is confirmed as it is, and comes back unchanged.
#[tokio::test]
async fn a_cursor_at_an_expired_last_message_stays_where_it_is() {
    let Some(server) = RedisServer::shared() else {
        return;
    };
    let storage = connect(server).await;
    let a = storage
        .append(
            vec![
                message("ann", "long", LONG),
                message("ann", "short", Duration::from_millis(100)),
            ],
            queue(10),
        )
        .await
        .expect("append");
    let last = stored(a.outcomes[1]);
    storage
        .fetch(request("ann", "tab1", None))
        .await
        .expect("fetch");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = storage
        .fetch(request("ann", "tab1", Some((&a.epoch, last))))
        .await
        .expect("fetch");
    assert_eq!(b.cursor, last, "the cursor moved back");
    assert!(b.messages.is_empty());
    let states = storage
        .delivery(&a.epoch, &[target("ann", stored(a.outcomes[0]))])
        .await
        .expect("delivery");
    assert_eq!(states, [DeliveryState::Delivered]);
}

/// What the scripts run per call, on a server of its own: commands other than the scripts.
async fn commands_of(conn: &mut redis::aio::MultiplexedConnection, f: impl AsyncFnOnce()) -> u64 {
    let before = command_stats(conn).await;
    f().await;
    let after = command_stats(conn).await;
    commands_since(&before, &after)
        .iter()
        .filter(|(name, _, _)| !name.starts_with("eval"))
        .map(|(_, calls, _)| calls)
        .sum()
}

/// A claim at a client's limit, with a thousand records, costs a few commands more than one
/// far below it, and a sender at their share of a long queue, counted or in bytes, is refused
/// after a bounded look; so is a message into a queue whose bytes are all in expired messages.
#[tokio::test]
async fn bounds_cost_the_same_whatever_the_number_of_records() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let storage = connect(&server).await;
    let mut conn = raw(&server).await;
    let limits = DedupLimits {
        lease: LONG,
        per_client: 1000,
        per_user: 4000,
    };
    let first = commands_of(&mut conn, async || {
        storage
            .claim(&dedup("ann", "tab1", "m0"), fastrand::u64(..), limits)
            .await
            .expect("claim");
    })
    .await;
    for i in 0..1000 {
        let key = dedup("ann", "tab1", &format!("m{i}"));
        storage
            .claim(&key, fastrand::u64(..), limits)
            .await
            .expect("claim");
        storage.complete(&key, "1", LONG).await.expect("complete");
    }
    let at_limit = commands_of(&mut conn, async || {
        storage
            .claim(&dedup("ann", "tab1", "n0"), fastrand::u64(..), limits)
            .await
            .expect("claim");
    })
    .await;
    println!("commands per claim: {first} below the limits, {at_limit} at one");
    assert!(first <= 16, "a claim ran {first} commands");
    assert!(
        at_limit <= first + 6,
        "a claim at the limit ran {at_limit} commands"
    );

    let share = QueueLimits {
        per_sender: 1000,
        ..queue(10_000)
    };
    let flood: Vec<NewMessage> = (0..1000)
        .map(|i| from("eve", message("ann", &format!("e{i}"), LONG)))
        .collect();
    for chunk in flood.chunks(simpleio::storage::FANOUT_CHUNK) {
        storage.append(chunk.to_vec(), share).await.expect("append");
    }
    let mut refused = None;
    let refusal = commands_of(&mut conn, async || {
        let a = storage
            .append(vec![from("eve", message("ann", "more", LONG))], share)
            .await
            .expect("append");
        refused = Some(a.outcomes[0]);
    })
    .await;
    assert_eq!(refused, Some(AppendOutcome::QueueFull));
    println!("commands for a refused append at a sender's share of 1000: {refusal}");
    assert!(
        refusal <= 2 * 64 + 20,
        "a refusal at a sender's share ran {refusal} commands"
    );

    // The same in bytes: eve's 1000 entries hold her share, and nobody's is delivered.
    let held = flood.iter().map(|m| m.data.get().len()).sum();
    let in_bytes = bytes(1 << 30, held);
    let mut refused = None;
    let refusal = commands_of(&mut conn, async || {
        let a = storage
            .append(vec![from("eve", message("ann", "more", LONG))], in_bytes)
            .await
            .expect("append");
        refused = Some(a.outcomes[0]);
    })
    .await;
    assert_eq!(refused, Some(AppendOutcome::QueueFull));
    println!("commands for a refused append at a sender's share of {held} bytes: {refusal}");
    assert!(
        refusal <= 2 * 64 + 20,
        "a refusal at a sender's share in bytes ran {refusal} commands"
    );

    // A queue full in bytes of a thousand expired messages: one append takes what it may of
    // them, no more, however many are left.
    let short = Duration::from_millis(100);
    let expiring: Vec<NewMessage> = (0..1000)
        .map(|i| sized("bob", &format!("b{i}"), 100, short))
        .collect();
    for chunk in expiring.chunks(simpleio::storage::FANOUT_CHUNK) {
        storage
            .append(chunk.to_vec(), bytes(100_000, 100_000))
            .await
            .expect("append");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut outcome = None;
    let sweep = commands_of(&mut conn, async || {
        let a = storage
            .append(
                vec![sized("bob", "big", 50_000, LONG)],
                bytes(100_000, 100_000),
            )
            .await
            .expect("append");
        outcome = Some(a.outcomes[0]);
    })
    .await;
    println!(
        "commands for an append of 50,000 bytes into 100,000 bytes of expired messages: {sweep} \
         ({outcome:?})"
    );
    assert!(
        sweep <= (1 + 2 * 64) * 4 + 20,
        "an append into an expired queue ran {sweep} commands"
    );
}

/// A broadcast relayed on behalf of a user (every message has the same sender) costs the
/// sender's set and their bytes, read and written with what a plain broadcast does anyway.
#[tokio::test]
async fn a_relayed_broadcast_costs_a_few_commands_per_message() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let storage = connect(&server).await;
    let mut conn = raw(&server).await;
    let users = 200;
    let data: Arc<RawValue> =
        Arc::from(RawValue::from_string(r#"{"text":"hello, everyone"}"#.into()).expect("JSON"));
    let broadcast = || -> Vec<NewMessage> {
        (0..users)
            .map(|u| {
                from(
                    "eve",
                    NewMessage {
                        data: data.clone(),
                        ..message(&format!("user{u}"), "hello", LONG)
                    },
                )
            })
            .collect()
    };
    for _ in 0..5 {
        storage
            .append(broadcast(), queue(1000))
            .await
            .expect("append");
    }
    let rounds = 20;
    let mut total = 0;
    for _ in 0..rounds {
        total += commands_of(&mut conn, async || {
            storage
                .append(broadcast(), queue(1000))
                .await
                .expect("append");
        })
        .await;
    }
    let per = total as f64 / (rounds * users) as f64;
    println!("per message of a relayed broadcast: {per:.2} commands");
    // Two of them address the signals: the sending node notes that it waits for the user's
    // confirmation, and reads which nodes have polls of the user.
    assert!(per < 12.0, "a relayed message cost {per:.2} commands");
}

/// A message to `to` whose data (a JSON string) is `size` bytes long.
fn sized(to: &str, event: &str, size: usize, ttl: Duration) -> NewMessage {
    let data = format!("\"{}\"", "x".repeat(size - 2));
    NewMessage {
        data: Arc::from(RawValue::from_string(data).expect("JSON")),
        ..message(to, event, ttl)
    }
}

/// Queue limits in bytes only (counts no test reaches).
fn bytes(per_user: usize, per_sender: usize) -> QueueLimits {
    QueueLimits {
        bytes_per_user: per_user,
        bytes_per_sender: per_sender,
        ..queue(1_000_000)
    }
}

/// The bytes `user`'s `meta` holds for their queue (`b`, and `=HEX` per sender), and what the
/// entries of their log add up to, both as field → bytes without zeros: they must agree.
async fn queue_bytes(
    conn: &mut redis::aio::MultiplexedConnection,
    p: &str,
    user: &str,
) -> (
    std::collections::BTreeMap<String, i64>,
    std::collections::BTreeMap<String, i64>,
) {
    let meta: std::collections::BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{p}u:{user}:meta"))
        .query_async(conn)
        .await
        .expect("hgetall");
    let kept = meta
        .into_iter()
        .filter(|(f, _)| f == "b" || f.starts_with('='))
        .map(|(f, v)| (f, v.parse::<i64>().expect("a byte count")))
        .filter(|(_, v)| *v != 0)
        .collect();
    let mut logged = std::collections::BTreeMap::new();
    for entry in zrange(conn, &format!("{p}u:{user}:log")).await {
        let mut rest = entry.splitn(4, ':').nth(3).expect("an entry").to_owned();
        let mut sender = None;
        if let Some(after) = rest.strip_prefix('=') {
            let (hex, after) = after.split_once(':').expect("a sender");
            sender = Some(format!("={hex}"));
            rest = after.to_owned();
        }
        let size: i64 = rest
            .strip_prefix('#')
            .and_then(|r| r.split_once(':'))
            .map_or(0, |(size, _)| size.parse().expect("a size"));
        for field in std::iter::once("b".to_owned()).chain(sender) {
            *logged.entry(field).or_insert(0) += size;
        }
    }
    logged.retain(|_, v| *v != 0);
    (kept, logged)
}

async fn assert_bytes_agree(conn: &mut redis::aio::MultiplexedConnection, p: &str, what: &str) {
    let (kept, logged) = queue_bytes(conn, p, "ann").await;
    assert_eq!(kept, logged, "the bytes kept do not match the log {what}");
}

/// The bytes of a queue, in all and per sender, lose every entry that leaves the log: by the
/// expiry sweep of a fetch and of an append, by eviction of a delivered entry of anyone's
/// (the sender's field goes when it comes to 0), by eviction among a sender's own.
#[tokio::test]
async fn a_queues_bytes_follow_every_entry_that_leaves_the_log() {
    let Some(server) = RedisServer::shared() else {
        return;
    };
    let storage = connect(server).await;
    let p = storage.key_prefix().to_owned();
    let mut conn = raw(server).await;
    let short = Duration::from_millis(100);
    let eve = format!("={}", hex("eve"));
    let a = storage
        .append(
            vec![
                from("eve", sized("ann", "s0", 100, short)),
                from("eve", sized("ann", "s1", 100, short)),
                from("eve", sized("ann", "l0", 100, LONG)),
                from("bob", sized("ann", "b0", 50, LONG)),
                sized("ann", "x0", 30, LONG),
            ],
            queue(100),
        )
        .await
        .expect("append");
    assert_bytes_agree(&mut conn, &p, "after an append").await;
    let (kept, _) = queue_bytes(&mut conn, &p, "ann").await;
    assert_eq!((kept["b"], kept[&eve]), (380, 300));

    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = storage
        .fetch(request("ann", "tab1", None))
        .await
        .expect("fetch");
    assert_eq!(b.messages.len(), 3);
    assert_bytes_agree(&mut conn, &p, "after a fetch's expiry sweep").await;
    assert_eq!(queue_bytes(&mut conn, &p, "ann").await.0["b"], 180);

    // Delivered: the oldest (eve's, though eve sends nothing now) makes room for 200 bytes.
    storage
        .fetch(request("ann", "tab1", Some((&a.epoch, b.cursor))))
        .await
        .expect("confirm");
    let c = storage
        .append(vec![sized("ann", "x1", 200, LONG)], bytes(300, 300))
        .await
        .expect("append");
    assert!(matches!(c.outcomes[0], AppendOutcome::Stored(_)));
    assert_bytes_agree(&mut conn, &p, "after evicting a delivered entry").await;
    let (kept, _) = queue_bytes(&mut conn, &p, "ann").await;
    assert_eq!(kept["b"], 280);
    assert!(!kept.contains_key(&eve), "a sender's 0 bytes kept a field");

    // At their share in bytes, one of eve's own delivered entries makes room for another.
    let d = storage
        .append(
            vec![
                from("eve", sized("ann", "e0", 100, LONG)),
                from("eve", sized("ann", "e1", 100, LONG)),
                from("eve", sized("ann", "e2", 100, LONG)),
            ],
            bytes(10_000, 250),
        )
        .await
        .expect("append");
    assert_eq!(d.outcomes[2], AppendOutcome::QueueFull);
    storage
        .fetch(request(
            "ann",
            "tab1",
            Some((&a.epoch, stored(d.outcomes[0]))),
        ))
        .await
        .expect("confirm");
    let e = storage
        .append(
            vec![from("eve", sized("ann", "e3", 100, LONG))],
            bytes(10_000, 250),
        )
        .await
        .expect("append");
    assert!(matches!(e.outcomes[0], AppendOutcome::Stored(_)));
    assert_bytes_agree(&mut conn, &p, "after evicting among a sender's own").await;
    assert_eq!(queue_bytes(&mut conn, &p, "ann").await.0[&eve], 200);

    // An append's expiry sweep takes bob's short message, though bob sends nothing in it.
    storage
        .append(vec![from("bob", sized("ann", "b1", 40, short))], queue(100))
        .await
        .expect("append");
    tokio::time::sleep(Duration::from_millis(300)).await;
    storage
        .append(vec![sized("ann", "x2", 10, LONG)], queue(100))
        .await
        .expect("append");
    assert_bytes_agree(&mut conn, &p, "after an append's expiry sweep").await;
    let (kept, _) = queue_bytes(&mut conn, &p, "ann").await;
    assert_eq!((kept["b"], kept[&format!("={}", hex("bob"))]), (490, 50));

    // A message larger than a limit by itself is refused, and evicts nothing for it.
    let before = zrange(&mut conn, &format!("{p}u:ann:log")).await;
    let f = storage
        .append(
            vec![
                sized("ann", "huge", 301, LONG),
                from("eve", sized("ann", "big", 251, LONG)),
            ],
            bytes(300, 250),
        )
        .await
        .expect("append");
    assert_eq!(f.outcomes, [AppendOutcome::QueueFull; 2]);
    assert_eq!(zrange(&mut conn, &format!("{p}u:ann:log")).await, before);
}

/// Entries written before byte limits (no size in the entry nor in its `exp` name) are read,
/// count as 0 bytes, and go by expiry and eviction without taking anything off the counts.
#[tokio::test]
async fn entries_written_before_byte_limits_count_as_nothing() {
    let Some(server) = RedisServer::shared() else {
        return;
    };
    let storage = connect(server).await;
    let p = storage.key_prefix().to_owned();
    let mut conn = raw(server).await;
    let a = storage
        .append(
            vec![from("eve", sized("ann", "new", 100, LONG))],
            queue(100),
        )
        .await
        .expect("append");
    let after = stored(a.outcomes[0]);
    // As the previous release wrote them: one from eve expiring soon, one without a sender.
    let soon = millis_after(Duration::from_millis(100));
    let eve = hex("eve");
    let old = [
        (after + 1, soon, format!("={eve}:1:/:3:old\"o\""), true),
        (
            after + 2,
            millis_after(LONG),
            "1:/:4:old2\"o\"".to_owned(),
            false,
        ),
    ];
    for (pos, exp, rest, from_eve) in &old {
        let ixm = format!("1:/::{pos:016}");
        let expm = if *from_eve {
            format!("{ixm}:={eve}")
        } else {
            ixm.clone()
        };
        let mut pipe = redis::pipe();
        pipe.cmd("ZADD")
            .arg(format!("{p}u:ann:log"))
            .arg(*pos)
            .arg(format!("{pos}:{exp}::{rest}"))
            .cmd("ZADD")
            .arg(format!("{p}u:ann:ix"))
            .arg(0)
            .arg(&ixm)
            .cmd("ZADD")
            .arg(format!("{p}u:ann:exp"))
            .arg(*exp)
            .arg(&expm)
            .cmd("HSET")
            .arg(format!("{p}u:ann:meta"))
            .arg("last")
            .arg(*pos);
        if *from_eve {
            pipe.cmd("ZADD")
                .arg(format!("{p}u:ann:{eve}:from"))
                .arg(*pos)
                .arg(*pos);
        }
        let _: () = pipe.query_async(&mut conn).await.expect("old entries");
    }
    let b = storage
        .fetch(request("ann", "tab1", None))
        .await
        .expect("fetch");
    let events: Vec<&str> = b.messages.iter().map(|m| &*m.event).collect();
    assert_eq!(events, ["new", "old", "old2"]);
    assert_bytes_agree(&mut conn, &p, "with old entries").await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = storage
        .fetch(request("ann", "tab1", Some((&a.epoch, b.cursor))))
        .await
        .expect("fetch");
    assert!(c.messages.is_empty());
    assert_eq!(zcard(&mut conn, &format!("{p}u:ann:exp")).await, 2);
    assert_eq!(zcard(&mut conn, &format!("{p}u:ann:ix")).await, 2);
    assert_eq!(zcard(&mut conn, &format!("{p}u:ann:{eve}:from")).await, 1);
    assert_bytes_agree(&mut conn, &p, "after an old entry expired").await;

    // Both delivered: making room for 150 bytes under 200 evicts the new entry, and the old
    // one frees nothing, but goes if a count needs it.
    let d = storage
        .append(vec![sized("ann", "x", 150, LONG)], bytes(200, 200))
        .await
        .expect("append");
    assert!(matches!(d.outcomes[0], AppendOutcome::Stored(_)));
    let e = storage
        .append(
            vec![sized("ann", "y", 10, LONG)],
            QueueLimits {
                per_user: 2,
                ..bytes(200, 200)
            },
        )
        .await
        .expect("append");
    assert!(matches!(e.outcomes[0], AppendOutcome::Stored(_)));
    let log = zrange(&mut conn, &format!("{p}u:ann:log")).await;
    assert!(log.iter().all(|e| !e.contains("old")), "{log:?}");
    assert_bytes_agree(&mut conn, &p, "after evicting old entries").await;
    let (kept, _) = queue_bytes(&mut conn, &p, "ann").await;
    assert_eq!(kept["b"], 160);
    assert_eq!(zcard(&mut conn, &format!("{p}u:ann:exp")).await, 2);
}

/// How many of each thing [`what_a_dedup_record_and_a_client_id_cost_in_redis`] makes.
const MEMORY_N: usize = 20_000;

/// What Redis's `used_memory` grew by per call of `add(i)`, for `i` in `0..MEMORY_N`, made 32 at
/// a time. (Connection buffers are a few KiB in all: nothing per item.)
async fn redis_bytes_per_item<F, Fut>(conn: &mut redis::aio::MultiplexedConnection, add: F) -> f64
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    use futures_util::StreamExt;
    let before = used_memory(conn).await;
    futures_util::stream::iter(0..MEMORY_N)
        .for_each_concurrent(32, add)
        .await;
    (used_memory(conn).await - before) as f64 / MEMORY_N as f64
}

/// What each bounded resource costs in Redis, by `INFO memory`'s `used_memory` on a fresh
/// server for each: a dedup record with a small reply and with an 8 KiB one, a client id of
/// one user (as `memory_per_record.rs` measures `MemoryStorage`). The figures multiply with
/// the bounds (records per user, clients per user) to say what those cost in Redis.
#[tokio::test]
async fn what_a_dedup_record_and_a_client_id_cost_in_redis() {
    let limits = DedupLimits {
        lease: Duration::from_secs(60),
        per_client: usize::MAX,
        per_user: usize::MAX,
    };
    let window = Duration::from_secs(600);
    // Ids as the JS client makes them: the client id and a counter.
    let key = |user: &str, i: usize| DedupKey {
        user: UserId::from(user),
        client: ClientId::new("k2J8mW0qZr5tYb1x").expect("id"),
        id: MessageId::new(format!("k2J8mW0qZr5tYb1x-{i}")).expect("id"),
    };
    let record = async |reply: String| -> Option<f64> {
        let server = RedisServer::start()?;
        let storage = connect(&server).await;
        let mut conn = raw(&server).await;
        // Warm-up: the scripts are loaded, the epoch is set.
        for i in 0..100 {
            let k = key("warm", i);
            storage
                .claim(&k, fastrand::u64(..), limits)
                .await
                .expect("claim");
            storage
                .complete(&k, &reply, window)
                .await
                .expect("complete");
        }
        let figures = redis_bytes_per_item(&mut conn, |i| {
            let (storage, k, reply) = (storage.clone(), key("ann", i), reply.clone());
            async move {
                let claim = storage
                    .claim(&k, fastrand::u64(..), limits)
                    .await
                    .expect("claim");
                assert_eq!(claim, simpleio::storage::Claim::Acquired);
                storage
                    .complete(&k, &reply, window)
                    .await
                    .expect("complete");
            }
        })
        .await;
        Some(figures)
    };
    let Some(small) = record("{\"reply\":{\"ok\":true}}".to_owned()).await else {
        return;
    };
    let large_reply = format!("{{\"reply\":\"{}\"}}", "x".repeat(8 * 1024 - 12));
    let Some(large) = record(large_reply).await else {
        return;
    };

    let Some(server) = RedisServer::start() else {
        return;
    };
    let storage = connect(&server).await;
    let mut conn = raw(&server).await;
    let fetch = |user: &str, client: String| FetchRequest {
        max_clients: usize::MAX,
        ..request(user, &client, None)
    };
    for i in 0..100 {
        storage
            .fetch(fetch("warm", format!("warm{i}")))
            .await
            .expect("fetch");
    }
    let client = redis_bytes_per_item(&mut conn, |i| {
        let storage = storage.clone();
        let request = fetch("carol", format!("k2J8mW0qZr5t{i:06}"));
        async move {
            storage.fetch(request).await.expect("fetch");
        }
    })
    .await;
    println!(
        "RedisStorage, used_memory per item of {MEMORY_N}: {small:.0} bytes per dedup record with \
         a small reply, {large:.0} with an 8 KiB reply, {client:.0} bytes per client id of one user"
    );
    assert!(small < 1_000.0, "a dedup record costs {small:.0} bytes");
    // The record's value is `d` and the reply: just over 8 KiB, which the allocator (jemalloc)
    // rounds up to its next size class, 10 KiB.
    assert!(
        large < 10_240.0 + 1_000.0,
        "a dedup record with an 8 KiB reply costs {large:.0} bytes"
    );
    assert!(client < 1_000.0, "a client id costs {client:.0} bytes");
}

/// A client in 30,000 rooms is reaped in scripts of bounded work: at most 4,096 memberships
/// per script, so at least 8 scripts (counted by Redis's own command statistics, not timed:
/// a loaded machine makes any one script slow), and every membership is gone at the end, the
/// departure reported once.
#[tokio::test]
async fn reaping_a_client_in_thousands_of_rooms_runs_no_long_script() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let storage = connect(&server).await;
    let mut conn = raw(&server).await;
    let tab = Member::Client(UserId::from("ann"), ClientId::new("tab1").expect("id"));
    let rooms: Vec<String> = (0..30_000).map(|i| format!("room{i}")).collect();
    for chunk in rooms.chunks(1_000) {
        let joins = chunk
            .iter()
            .map(|room| storage.join(room, &tab, Duration::from_secs(60)));
        for joined in futures_util::future::join_all(joins).await {
            joined.expect("join");
        }
    }
    storage
        .fetch(request_with_presence(
            "ann",
            "tab1",
            Duration::from_millis(300),
        ))
        .await
        .expect("fetch");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .expect("config resetstat");

    let gone = storage.reap().await.expect("reap");
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert!(gone[0].user_went_offline);
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("info commandstats");
    let scripts: u64 = stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(
        scripts >= 30_000_u64.div_ceil(4_096),
        "30,000 memberships reaped in {scripts} scripts: more than 4,096 in one"
    );
    for room in ["room0", "room14999", "room29999"] {
        assert!(
            storage.members(room).await.expect("members").is_empty(),
            "{room} kept a reaped client"
        );
    }
    assert!(storage.rooms(&tab).await.expect("rooms").is_empty());
    assert!(storage.reap().await.expect("reap").is_empty());
}

/// A primary with one replica (`--replicaof`): with `replica_acks(1, ..)`, an append returns
/// once the replica holds it; with the replica frozen (SIGSTOP) it fails with `Unavailable`
/// after the ack timeout, saying why, where a storage without acknowledgement stores it; once
/// the replica goes on, acknowledged appends succeed again.
#[tokio::test]
async fn an_acknowledged_append_waits_for_the_replica_and_fails_without_it() {
    let Some(primary) = RedisServer::start() else {
        return;
    };
    let primary_port = primary.port();
    let Some(mut replica) = RedisServer::start_with(|_| {
        vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary_port.to_string(),
        ]
    }) else {
        return;
    };
    let prefix = fresh_prefix();
    let acked = RedisStorage::builder(primary.url())
        .key_prefix(&prefix)
        .replica_acks(1, Duration::from_millis(300))
        .connect()
        .await
        .expect("connect");
    let plain = node_on(&primary, &prefix).await;
    // The replica's first sync takes a moment: until then, nothing is acknowledged.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while acked
        .append(vec![message("ann", "first", LONG)], queue(1_000))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replica never acknowledged a write"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    replica.pause();
    let started = std::time::Instant::now();
    let refused = acked
        .append(vec![message("ann", "unacknowledged", LONG)], queue(1_000))
        .await;
    assert!(
        matches!(
            &refused,
            Err(StorageError::Unavailable(e)) if e.contains("0 of the 1 replicas")
        ),
        "an append its replica did not acknowledge: {refused:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "failed before the ack timeout"
    );
    plain
        .append(vec![message("ann", "plain", LONG)], queue(1_000))
        .await
        .expect("without acknowledgement, the primary alone stores it");
    // Reads do not queue behind the writes waiting for the replica: a fetch made while eight
    // acknowledged appends wait answers at once.
    let waiting: Vec<_> = (0..8)
        .map(|i| {
            let acked = acked.clone();
            tokio::spawn(async move {
                acked
                    .append(
                        vec![message("ann", &format!("waiting{i}"), LONG)],
                        queue(1_000),
                    )
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let read = std::time::Instant::now();
    acked
        .fetch(request("ann", "tab1", None))
        .await
        .expect("a fetch with the replica frozen");
    assert!(
        read.elapsed() < Duration::from_millis(250),
        "a fetch waited {:?} behind the acknowledged appends",
        read.elapsed()
    );
    for append in waiting {
        assert!(
            append.await.expect("append task").is_err(),
            "acknowledged without a replica"
        );
    }

    replica.resume();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Err(err) = acked
        .append(vec![message("ann", "again", LONG)], queue(1_000))
        .await
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "acknowledged appends did not come back with the replica: {err}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
