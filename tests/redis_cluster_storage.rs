//! `RedisClusterStorage` against a real Redis Cluster that the tests start themselves (three
//! masters, three replicas): the whole storage conformance suite, then what only a cluster can
//! get wrong — a fan-out over many slots, signals between nodes over sharded pub/sub, a shard
//! that loses its data.
#![cfg(all(feature = "redis-cluster", feature = "conformance"))]

#[path = "support/redis_cluster.rs"]
mod redis_cluster;
#[path = "support/redis.rs"]
mod redis_server;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use redis_cluster::RedisCluster;
use serde_json::value::RawValue;
use simpleio::storage::{
    AppendOutcome, DeliveryState, DeliveryTarget, Epoch, FetchRequest, Member, NewMessage,
    QueueLimits, Signal, millis_after,
};
use simpleio::{ClientId, RedisClusterStorage, Storage, UserId};
use tokio::sync::broadcast;

fn fresh_prefix() -> String {
    format!("test-{}:", ClientId::random())
}

async fn connect(cluster: &RedisCluster, prefix: &str) -> RedisClusterStorage {
    RedisClusterStorage::builder(cluster.urls())
        .key_prefix(prefix)
        .connect()
        .await
        .expect("connect to the test cluster")
}

/// A storage on a fresh key prefix of the binary's shared cluster; `None` (after a loud
/// warning) when `redis-server` is not installed outside CI.
async fn fresh() -> Option<RedisClusterStorage> {
    Some(connect(RedisCluster::shared()?, &fresh_prefix()).await)
}

simpleio::storage_conformance_tests!(optional fresh);

const LONG: Duration = Duration::from_secs(600);

fn message(to: &str, data: &Arc<RawValue>) -> NewMessage {
    NewMessage {
        user: UserId::from(to),
        client: None,
        namespace: "/".into(),
        event: "news".into(),
        data: data.clone(),
        expires_at: millis_after(LONG),
        sender: None,
        origin: None,
        ack: false,
    }
}

fn queue() -> QueueLimits {
    QueueLimits {
        per_user: 1_000,
        per_sender: 1_000,
        bytes_per_user: usize::MAX,
        bytes_per_sender: usize::MAX,
    }
}

fn request(user: &str, cursor: Option<(&Epoch, u64)>) -> FetchRequest {
    FetchRequest {
        user: UserId::from(user),
        client: ClientId::new("tab1").expect("client id"),
        cursor: cursor.map(|(e, p)| (e.clone(), p)),
        namespaces: Arc::from(["/".into()]),
        limit: 100,
        presence_ttl: Duration::from_secs(60),
        announce: None,
        max_clients: 1_000,
    }
}

fn stored(outcome: &AppendOutcome) -> u64 {
    match outcome {
        AppendOutcome::Stored(pos) => *pos,
        AppendOutcome::QueueFull => panic!("the queue was full"),
    }
}

/// A plain connection to each master of the cluster (not a cluster client: one node's view).
async fn masters(cluster: &RedisCluster) -> Vec<redis::aio::MultiplexedConnection> {
    let mut out = Vec::new();
    for url in cluster.urls() {
        let client = redis::Client::open(url.as_str()).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to a node");
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await
            .expect("info");
        if info.contains("role:master") {
            out.push(conn);
        }
    }
    assert_eq!(out.len(), 3, "three masters");
    out
}

/// The users whose logs (`{P}{N}u:USER:log`) a node holds.
async fn users_on(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Vec<String> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*:log"))
        .query_async(conn)
        .await
        .expect("keys");
    keys.iter()
        .filter_map(|k| {
            let rest = &k[k.find("}u:")? + 3..];
            rest.strip_suffix(":log").map(str::to_owned)
        })
        .collect()
}

/// The users an `Appended` signal named, over the signals received within a second, and how
/// many `Appended` signals there were.
async fn appended(rx: &mut broadcast::Receiver<Signal>) -> (HashSet<String>, usize) {
    let mut named = HashSet::new();
    let mut signals = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(received) = tokio::time::timeout_at(deadline, rx.recv()).await {
        if let Signal::Appended { users } = received.expect("signals") {
            signals += 1;
            named.extend(users.iter().map(|u| u.as_str().to_owned()));
        }
    }
    (named, signals)
}

/// One append call to 600 users, spread over every master: each message lands once, the node
/// that appended gets one `Appended` naming all of them, and each other node one naming
/// exactly the users it has polls of — over sharded pub/sub, whichever shard their channels
/// are on.
#[tokio::test]
async fn a_fan_out_over_many_slots_lands_every_message_and_signals_the_nodes() {
    const USERS: usize = 600;
    let Some(cluster) = RedisCluster::shared() else {
        return;
    };
    let prefix = fresh_prefix();
    let (a, b, c) = (
        connect(cluster, &prefix).await,
        connect(cluster, &prefix).await,
        connect(cluster, &prefix).await,
    );
    let users: Vec<String> = (0..USERS).map(|i| format!("user{i}")).collect();
    // b serves the first half, c the second: their fetches note their interest.
    for (i, u) in users.iter().enumerate() {
        let node = if i < USERS / 2 { &b } else { &c };
        node.fetch(request(u, None)).await.expect("fetch");
    }
    let (mut rx_a, mut rx_b, mut rx_c) = (a.subscribe(), b.subscribe(), c.subscribe());
    let shared: Arc<RawValue> =
        Arc::from(RawValue::from_string(r#"{"text":"to all"}"#.to_owned()).expect("JSON"));
    let sent = a
        .append(users.iter().map(|u| message(u, &shared)).collect(), queue())
        .await
        .expect("append");
    assert_eq!(sent.outcomes.len(), USERS);

    let everyone: HashSet<String> = users.iter().cloned().collect();
    let first: HashSet<String> = users[..USERS / 2].iter().cloned().collect();
    let second: HashSet<String> = users[USERS / 2..].iter().cloned().collect();
    assert_eq!(appended(&mut rx_a).await, (everyone, 1), "the sending node");
    assert_eq!(
        appended(&mut rx_b).await,
        (first, 1),
        "the node of the first half"
    );
    assert_eq!(
        appended(&mut rx_c).await,
        (second, 1),
        "the node of the second half"
    );

    for (u, outcome) in users.iter().zip(&sent.outcomes) {
        let batch = b.fetch(request(u, None)).await.expect("fetch");
        assert_eq!(batch.epoch, sent.epoch);
        assert_eq!(batch.messages.len(), 1, "{u} reads the fan-out once");
        assert_eq!(batch.messages[0].pos, stored(outcome));
        assert_eq!(batch.messages[0].data.get(), shared.get());
    }
    // The users' keys are on every master: the fan-out really crossed shards.
    for mut master in masters(cluster).await {
        let here = users_on(&mut master, &prefix).await;
        assert!(
            here.len() > USERS / 10,
            "a master holds {} of the {USERS} users",
            here.len()
        );
    }
}

/// Emptying one master (as a shard restarted empty would be) gives the cluster a new epoch:
/// a cursor of a user of that shard under the old epoch confirms nothing, its deliveries are
/// lost, every node is told to resync; users of the other shards keep their messages, under
/// the new epoch.
#[tokio::test]
async fn a_shard_that_loses_its_data_gives_a_new_epoch() {
    let Some(cluster) = RedisCluster::shared() else {
        return;
    };
    let prefix = fresh_prefix();
    let storage = connect(cluster, &prefix).await;
    let other = connect(cluster, &prefix).await;
    let shared: Arc<RawValue> = Arc::from(RawValue::from_string("1".to_owned()).expect("JSON"));
    let users: Vec<String> = (0..60).map(|i| format!("user{i}")).collect();
    let sent = storage
        .append(users.iter().map(|u| message(u, &shared)).collect(), queue())
        .await
        .expect("append");
    let old = sent.epoch.clone();
    let mut masters = masters(cluster).await;
    let lost = users_on(&mut masters[0], &prefix).await;
    let kept = users_on(&mut masters[1], &prefix).await;
    let (Some(x), Some(y)) = (lost.first(), kept.first()) else {
        panic!("60 users did not reach two masters");
    };
    let pos = |u: &str| stored(&sent.outcomes[users.iter().position(|v| v == u).expect("user")]);
    let mut rx = other.subscribe();
    // Every key of this prefix on that master goes, one at a time (they are in many slots);
    // the other tests' prefixes on the shared cluster stay.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut masters[0])
        .await
        .expect("keys");
    for key in keys {
        let _: i64 = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut masters[0])
            .await
            .expect("del");
    }

    let batch = storage
        .fetch(request(x, Some((&old, pos(x)))))
        .await
        .expect("fetch");
    assert_ne!(batch.epoch, old, "an emptied shard kept its epoch");
    assert!(batch.messages.is_empty());
    let target = DeliveryTarget {
        user: UserId::from(x.as_str()),
        client: None,
        namespace: "/".into(),
        pos: pos(x),
    };
    assert_eq!(
        storage.delivery(&old, &[target]).await.expect("delivery"),
        [DeliveryState::Lost]
    );
    let resync = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if matches!(rx.recv().await, Ok(Signal::Resync)) {
                return;
            }
        }
    })
    .await;
    assert!(resync.is_ok(), "the other node was not told to resync");

    let new = storage.epoch().await.expect("epoch");
    assert_eq!(new, batch.epoch);
    assert_eq!(other.epoch().await.expect("epoch"), new);
    let kept_batch = other.fetch(request(y, None)).await.expect("fetch");
    assert_eq!(kept_batch.epoch, new);
    assert_eq!(kept_batch.messages.len(), 1, "{y}'s shard lost nothing");
    assert_eq!(kept_batch.messages[0].pos, pos(y));
}

/// Every pub/sub connection of the cluster killed (as a network failure would) makes a node
/// resync, since signals were missed, and its subscription comes back by itself: a signal
/// published afterwards reaches it. On a cluster of its own: the kill would disturb the
/// other tests' nodes.
#[tokio::test]
async fn a_lost_subscription_resyncs_and_comes_back() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let prefix = fresh_prefix();
    let a = connect(&cluster, &prefix).await;
    let b = connect(&cluster, &prefix).await;
    let mut rx = a.subscribe();
    let mut killed = 0;
    for url in cluster.urls() {
        let client = redis::Client::open(url.as_str()).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to a node");
        let n: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut conn)
            .await
            .expect("client kill");
        killed += n;
    }
    // Each node's two channels, on one or two shards.
    assert!(killed >= 2, "killed {killed} pub/sub connections");
    let resync = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if matches!(rx.recv().await, Ok(Signal::Resync)) {
                return;
            }
        }
    })
    .await;
    assert!(resync.is_ok(), "no resync after the subscription was lost");
    let users: Arc<[UserId]> = Arc::from(vec![UserId::from("ann")]);
    let back = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            b.publish(Signal::Appended {
                users: users.clone(),
            })
            .await
            .expect("publish");
            let wait = tokio::time::timeout(Duration::from_millis(200), async {
                loop {
                    if let Ok(Signal::Appended { .. }) = rx.recv().await {
                        return;
                    }
                }
            });
            if wait.await.is_ok() {
                return;
            }
        }
    })
    .await;
    assert!(back.is_ok(), "the subscription did not come back");
}

/// A client whose keys expired without a reap (no node reaped for a whole grace) has no
/// presence record in its user's bucket: `members`, reading the room in another bucket, looks
/// the room's clients up there, leaves it out and takes it out of the room.
#[tokio::test]
async fn members_drop_a_client_that_expired_unreaped() {
    let Some(cluster) = RedisCluster::shared() else {
        return;
    };
    let prefix = fresh_prefix();
    let storage = connect(cluster, &prefix).await;
    let tab = Member::Client(UserId::from("ann"), ClientId::new("tab1").expect("id"));
    let bob = Member::User(UserId::from("bob"));
    storage
        .join("lobby", &tab, Duration::from_secs(60))
        .await
        .expect("join");
    storage
        .join("lobby", &bob, Duration::from_secs(60))
        .await
        .expect("join");
    let members = storage.members("lobby").await.expect("members");
    assert_eq!(members.len(), 2, "{members:?}");
    // As if its record had expired: out of its bucket's presence set, wherever that is.
    let mut removed = 0;
    for mut master in masters(cluster).await {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*presence"))
            .query_async(&mut master)
            .await
            .expect("keys");
        for key in keys {
            let n: i64 = redis::cmd("ZREM")
                .arg(key)
                .arg("c:tab1:ann")
                .query_async(&mut master)
                .await
                .expect("zrem");
            removed += n;
        }
    }
    assert_eq!(removed, 1, "the client's presence record");
    assert_eq!(storage.members("lobby").await.expect("members"), [bob]);
    // Taken out of the room for good, not only left out of one answer.
    let client = redis::cluster::ClusterClient::new(cluster.urls()).expect("cluster client");
    let mut conn = client.get_async_connection().await.expect("connect");
    let room_keys: Vec<String> = {
        let mut found = Vec::new();
        for mut master in masters(cluster).await {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}*room:lobby"))
                .query_async(&mut master)
                .await
                .expect("keys");
            found.extend(keys);
        }
        found
    };
    assert_eq!(room_keys.len(), 1, "{room_keys:?}");
    let left: Vec<String> = redis::cmd("SMEMBERS")
        .arg(&room_keys[0])
        .query_async(&mut conn)
        .await
        .expect("smembers");
    assert_eq!(left, ["u:bob"]);
}

/// Calls per command name on one node, from `INFO commandstats`, and the microseconds spent in
/// scripts (`evalsha`'s `usec`, under the name `usec`).
async fn command_calls(
    conn: &mut redis::aio::MultiplexedConnection,
) -> std::collections::HashMap<String, u64> {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("info commandstats");
    let mut calls: std::collections::HashMap<String, u64> = stats
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect();
    let usec = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
        .and_then(|rest| rest.split(",usec=").nth(1)?.split(',').next()?.parse().ok())
        .unwrap_or(0);
    calls.insert("usec".to_owned(), usec);
    calls
}

/// What a broadcast costs a cluster, counted by the masters' own command statistics (repeatable,
/// unlike times): a fan-out to 10,240 users in append calls of `FANOUT_CHUNK`, with a second
/// node polling every user. Each call is at most one script per bucket it reaches and one
/// `SPUBLISH` per node, and the scripts spread over the three masters. On a cluster of its own,
/// so that no other test's commands are counted.
#[tokio::test]
async fn what_a_broadcast_costs_a_cluster() {
    const USERS: usize = 10_240;
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let prefix = fresh_prefix();
    let (a, b) = (
        connect(&cluster, &prefix).await,
        connect(&cluster, &prefix).await,
    );
    let users: Vec<String> = (0..USERS).map(|i| format!("user{i}")).collect();
    for chunk in users.chunks(256) {
        let polls = chunk.iter().map(|u| b.fetch(request(u, None)));
        for polled in futures_util::future::join_all(polls).await {
            polled.expect("fetch");
        }
    }
    let shared: Arc<RawValue> =
        Arc::from(RawValue::from_string(r#"{"text":"to all"}"#.to_owned()).expect("JSON"));
    let mut masters = masters(&cluster).await;
    let mut before = Vec::new();
    for m in &mut masters {
        before.push(command_calls(m).await);
    }
    let calls = USERS.div_ceil(simpleio::storage::FANOUT_CHUNK);
    for chunk in users.chunks(simpleio::storage::FANOUT_CHUNK) {
        let sent = a
            .append(chunk.iter().map(|u| message(u, &shared)).collect(), queue())
            .await
            .expect("append");
        assert!(
            sent.outcomes
                .iter()
                .all(|o| matches!(o, AppendOutcome::Stored(_)))
        );
    }
    let mut scripts = Vec::new();
    let (mut commands, mut spublish, mut usec) = (0u64, 0u64, 0u64);
    for (m, before) in masters.iter_mut().zip(&before) {
        let after = command_calls(m).await;
        let diff = |name: &str| {
            after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0)
        };
        scripts.push(diff("evalsha") + diff("eval"));
        spublish += diff("spublish");
        usec += diff("usec");
        commands += after
            .keys()
            .filter(|name| {
                !matches!(
                    name.as_str(),
                    "info" | "evalsha" | "eval" | "spublish" | "cluster" | "ping" | "usec"
                )
            })
            .map(|name| diff(name))
            .sum::<u64>();
    }
    let total: u64 = scripts.iter().sum();
    println!(
        "RedisClusterStorage, a broadcast to {USERS} users in {calls} append calls over 3 masters: \
         {:.2} scripts per recipient ({:.0} per call; per master {:?}), {:.1} commands inside \
         them per recipient, {:.0} µs of script per recipient (all masters), {spublish} \
         SPUBLISH ({:.1} per call)",
        total as f64 / USERS as f64,
        total as f64 / calls as f64,
        scripts,
        commands as f64 / USERS as f64,
        usec as f64 / USERS as f64,
        spublish as f64 / calls as f64,
    );
    // At most one per recipient (one per bucket per call; consecutive ids, whose CRC16s differ
    // in their low bits, land in as many buckets as there are of them), and the first call of
    // the script on each master, refused until the script is loaded there.
    assert!(
        total <= USERS as u64 + 6,
        "more scripts than recipients: {total}"
    );
    assert!(
        spublish <= 2 * calls as u64 + 8,
        "{spublish} signals for {calls} calls to two nodes (and a few probes)"
    );
    for s in &scripts {
        assert!(
            *s > total / 5,
            "a master ran {s} of {total} scripts: the buckets did not spread"
        );
    }

    // The same broadcast on one server, in the same run, for comparison.
    let Some(server) = redis_server::RedisServer::start() else {
        return;
    };
    let connect_one = || {
        simpleio::RedisStorage::builder(server.url())
            .key_prefix(prefix.as_str())
            .connect()
    };
    let (a, b) = (
        connect_one().await.expect("connect"),
        connect_one().await.expect("connect"),
    );
    for chunk in users.chunks(256) {
        let polls = chunk.iter().map(|u| b.fetch(request(u, None)));
        for polled in futures_util::future::join_all(polls).await {
            polled.expect("fetch");
        }
    }
    let mut one = redis::Client::open(server.url().as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let before = command_calls(&mut one).await;
    for chunk in users.chunks(simpleio::storage::FANOUT_CHUNK) {
        a.append(chunk.iter().map(|u| message(u, &shared)).collect(), queue())
            .await
            .expect("append");
    }
    let after = command_calls(&mut one).await;
    let diff =
        |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    println!(
        "RedisStorage, the same broadcast on one server: {} scripts, {:.0} µs of script per \
         recipient",
        diff("evalsha"),
        diff("usec") as f64 / USERS as f64
    );
}

/// Retries `op` until it succeeds, for at most `within`.
async fn eventually<T, F: Future<Output = Result<T, simpleio::storage::StorageError>>>(
    within: Duration,
    mut op: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match op().await {
            Ok(value) => return value,
            Err(err) if tokio::time::Instant::now() > deadline => {
                panic!("the cluster did not recover within {within:?}: {err}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A master killed (SIGKILL) is replaced by its replica: the storage follows the cluster to it
/// by itself, the epoch stays (the replica has every bucket's copy), the messages the replica
/// had are read, and signals about that shard's users reach the other node again. On a
/// cluster of its own.
#[tokio::test]
async fn a_failover_keeps_the_epoch_the_messages_and_the_signals() {
    let Some(mut cluster) = RedisCluster::start() else {
        return;
    };
    let prefix = fresh_prefix();
    let a = connect(&cluster, &prefix).await;
    let b = connect(&cluster, &prefix).await;
    let shared: Arc<RawValue> = Arc::from(RawValue::from_string("1".to_owned()).expect("JSON"));
    let users: Vec<String> = (0..60).map(|i| format!("user{i}")).collect();
    let sent = a
        .append(users.iter().map(|u| message(u, &shared)).collect(), queue())
        .await
        .expect("append");
    let mut masters = masters(&cluster).await;
    let on_dead = users_on(&mut masters[0], &prefix).await;
    let x = on_dead.first().expect("a user on the first master").clone();
    let port: u16 = {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut masters[0])
            .await
            .expect("info");
        info.lines()
            .find_map(|l| l.strip_prefix("tcp_port:"))
            .and_then(|p| p.trim().parse().ok())
            .expect("the master's port")
    };
    drop(masters);
    // What the master holds is on its replica (replication is asynchronous: a master killed
    // before that loses its last writes, the epoch copies included).
    cluster.wait_replicated(port);
    cluster.kill(port);

    let batch = eventually(Duration::from_secs(40), || b.fetch(request(&x, None))).await;
    assert_eq!(batch.epoch, sent.epoch, "a failover changed the epoch");
    assert_eq!(
        batch.messages.len(),
        1,
        "{x}'s message was lost in the failover"
    );
    assert_eq!(a.epoch().await.expect("epoch"), sent.epoch);
    // b polls x again; a's next message to x wakes b, whatever shard its channel was on.
    let mut rx = b.subscribe();
    let woken = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            b.fetch(request(&x, Some((&sent.epoch, batch.cursor))))
                .await
                .ok();
            a.append(vec![message(&x, &shared)], queue()).await.ok();
            let wait = tokio::time::timeout(Duration::from_millis(500), async {
                loop {
                    if let Ok(Signal::Appended { users }) = rx.recv().await
                        && users.iter().any(|u| u.as_str() == x)
                    {
                        return;
                    }
                }
            });
            if wait.await.is_ok() {
                return;
            }
        }
    })
    .await;
    assert!(
        woken.is_ok(),
        "no signal reached the other node after the failover"
    );
}
