//! `RedisClusterStorage` with replica acknowledgement (`replica_acks`), on real Redis Clusters
//! of three masters and three replicas that the tests start themselves: an acknowledged write
//! returns only once its master's replica holds it and fails when the replica cannot say so,
//! and a master killed (SIGKILL) under load loses no message whose append returned. (On
//! loopback a replica is microseconds behind its master, so the kill alone would rarely lose a
//! write without acknowledgement either: the frozen replica is what shows that a write no
//! replica holds is never reported stored.)
#![cfg(all(feature = "redis-cluster", feature = "conformance"))]

#[path = "support/redis_cluster.rs"]
mod redis_cluster;
#[path = "support/redis.rs"]
mod redis_server;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis_cluster::RedisCluster;
use serde_json::value::RawValue;
use simpleio::storage::{
    AppendOutcome, FetchRequest, Member, NewMessage, QueueLimits, StorageError, millis_after,
};
use simpleio::{ClientId, RedisClusterStorage, Storage, UserId};

/// How long an acknowledged write waits for its replica.
const ACK_TIMEOUT: Duration = Duration::from_millis(300);

fn fresh_prefix() -> String {
    format!("test-{}:", ClientId::random())
}

async fn connect(cluster: &RedisCluster, prefix: &str, acks: u32) -> RedisClusterStorage {
    RedisClusterStorage::builder(cluster.urls())
        .key_prefix(prefix)
        .replica_acks(acks, ACK_TIMEOUT)
        .connect()
        .await
        .expect("connect to the test cluster")
}

fn message(to: &str, data: &str) -> NewMessage {
    NewMessage {
        user: UserId::from(to),
        client: None,
        namespace: "/".into(),
        event: "news".into(),
        data: Arc::from(RawValue::from_string(data.to_owned()).expect("JSON")),
        expires_at: millis_after(Duration::from_secs(600)),
        sender: None,
        origin: None,
        ack: false,
    }
}

fn queue() -> QueueLimits {
    QueueLimits {
        per_user: 100_000,
        per_sender: 100_000,
        bytes_per_user: usize::MAX,
        bytes_per_sender: usize::MAX,
    }
}

fn read_from(user: &str, cursor: Option<(&simpleio::storage::Epoch, u64)>) -> FetchRequest {
    FetchRequest {
        user: UserId::from(user),
        client: ClientId::new("reader").expect("client id"),
        cursor: cursor.map(|(e, p)| (e.clone(), p)),
        namespaces: Arc::from(["/".into()]),
        limit: 500,
        presence_ttl: Duration::from_secs(60),
        announce: None,
        max_clients: 1_000,
    }
}

/// Each master's port and the users of `users` whose logs it holds.
async fn users_by_master(cluster: &RedisCluster, prefix: &str) -> Vec<(u16, Vec<String>)> {
    let mut out = Vec::new();
    for port in cluster.ports() {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("url");
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            continue;
        };
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await
            .expect("info");
        if !info.contains("role:master") {
            continue;
        }
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*:log"))
            .query_async(&mut conn)
            .await
            .expect("keys");
        let users = keys
            .iter()
            .filter_map(|k| {
                let rest = &k[k.find("}u:")? + 3..];
                rest.strip_suffix(":log").map(str::to_owned)
            })
            .collect();
        out.push((port, users));
    }
    assert_eq!(out.len(), 3, "three masters");
    out
}

/// A master whose replica is frozen (SIGSTOP) cannot have its writes acknowledged: an
/// acknowledged append or join to one of its users fails with `Unavailable` after the ack
/// timeout, saying why, while the same append without acknowledgement succeeds, and the
/// other masters' users are served; once the replica goes on, acknowledged writes succeed.
#[tokio::test]
async fn an_acknowledged_write_waits_for_the_replica_and_fails_without_it() {
    let Some(mut cluster) = RedisCluster::start() else {
        return;
    };
    let prefix = fresh_prefix();
    let acked = connect(&cluster, &prefix, 1).await;
    let plain = connect(&cluster, &prefix, 0).await;
    let users: Vec<String> = (0..60).map(|i| format!("user{i}")).collect();
    for user in &users {
        acked
            .append(vec![message(user, "0")], queue())
            .await
            .expect("an acknowledged append with every replica up");
    }
    let shards = users_by_master(&cluster, &prefix).await;
    let (port, frozen_users) = &shards[0];
    let x = frozen_users
        .first()
        .expect("a user on the first master")
        .clone();
    let elsewhere = shards[1]
        .1
        .first()
        .expect("a user on another master")
        .clone();
    let replica = cluster.replica_of(*port);
    cluster.pause(replica);

    let started = std::time::Instant::now();
    let refused = acked.append(vec![message(&x, "1")], queue()).await;
    assert!(
        matches!(&refused, Err(StorageError::Unavailable(e)) if e.contains("0 of the 1 replicas")),
        "an append its replica did not acknowledge: {refused:?}"
    );
    assert!(
        started.elapsed() >= ACK_TIMEOUT,
        "the append failed before the ack timeout: {:?}",
        started.elapsed()
    );
    let member = Member::client(x.as_str(), ClientId::new("tab1").expect("id"));
    let refused = acked.join("lobby", &member, Duration::from_secs(60)).await;
    assert!(
        matches!(&refused, Err(StorageError::Unavailable(_))),
        "a join its replica did not acknowledge: {refused:?}"
    );
    assert!(
        matches!(
            plain.append(vec![message(&x, "2")], queue()).await,
            Ok(ref a) if matches!(a.outcomes[..], [AppendOutcome::Stored(_)])
        ),
        "without acknowledgement, the master alone stores it"
    );
    acked
        .append(vec![message(&elsewhere, "3")], queue())
        .await
        .expect("another master's user is served");

    cluster.resume(replica);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match acked.append(vec![message(&x, "4")], queue()).await {
            Ok(_) => break,
            Err(err) if tokio::time::Instant::now() > deadline => {
                panic!("acknowledged writes did not come back with the replica: {err}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    acked
        .join("lobby", &member, Duration::from_secs(60))
        .await
        .expect("a join once the replica is back");
}

/// Writers append to 60 users as fast as they can, with acknowledgement; a master is killed
/// (SIGKILL) mid-load and its replica takes over. Every message whose append returned is read
/// afterwards, under the same epoch, in order; appends to the killed master's users fail
/// (503) until its old process rejoins as the new master's replica, then succeed again.
#[tokio::test]
async fn a_master_killed_under_load_loses_no_acknowledged_message() {
    let Some(mut cluster) = RedisCluster::start() else {
        return;
    };
    let prefix = fresh_prefix();
    let storage = connect(&cluster, &prefix, 1).await;
    let users: Vec<String> = (0..60).map(|i| format!("user{i}")).collect();
    let epoch = storage.epoch().await.expect("epoch");
    for user in &users {
        storage
            .append(vec![message(user, "0")], queue())
            .await
            .expect("first message");
    }
    let shards = users_by_master(&cluster, &prefix).await;
    let (port, doomed) = shards[0].clone();

    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for group in users.chunks(5) {
        let (storage, stop, failed) = (storage.clone(), stop.clone(), failed.clone());
        let group: Vec<String> = group.to_vec();
        writers.push(tokio::spawn(async move {
            // What each append that returned stored: user → (position, sequence number).
            let mut stored: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
            let mut seq = 1u64;
            while !stop.load(Ordering::Relaxed) {
                for user in &group {
                    let sent = storage
                        .append(vec![message(user, &seq.to_string())], queue())
                        .await;
                    match sent {
                        Ok(appended) => match appended.outcomes[..] {
                            [AppendOutcome::Stored(pos)] => {
                                stored.entry(user.clone()).or_default().push((pos, seq))
                            }
                            ref other => panic!("append outcome {other:?}"),
                        },
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            // Not spinning on a shard that answers at once.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    seq += 1;
                }
            }
            stored
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.kill(port);
    // The cluster's node timeout is 5 s: the replica takes over a little after that.
    tokio::time::sleep(Duration::from_secs(9)).await;
    stop.store(true, Ordering::Relaxed);
    let mut stored: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    for writer in writers {
        for (user, mut sent) in writer.await.expect("writer") {
            stored.entry(user).or_default().append(&mut sent);
        }
    }
    let on_doomed: usize = doomed
        .iter()
        .map(|u| stored.get(u).map_or(0, Vec::len))
        .sum();
    assert!(
        on_doomed > 0,
        "nothing was stored on the killed master's users: the test tested nothing"
    );
    assert!(
        failed.load(Ordering::Relaxed) > 0,
        "no append failed while a master was down"
    );

    // Every stored message, read by a fresh node after the failover, is there, in order.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let reader = loop {
        let connecting = RedisClusterStorage::builder(cluster.urls())
            .key_prefix(&prefix)
            .connect();
        match connecting.await {
            Ok(reader) => break reader,
            Err(e) if tokio::time::Instant::now() > deadline => {
                panic!("no connection to the cluster after the failover: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    for user in &users {
        let mut read: Vec<(u64, String)> = Vec::new();
        let mut cursor = None;
        loop {
            // The failover may still be settling (the node timeout, the election): retried.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
            let batch = loop {
                match reader
                    .fetch(read_from(user, cursor.as_ref().map(|c| (&epoch, *c))))
                    .await
                {
                    Ok(batch) => break batch,
                    Err(e) if tokio::time::Instant::now() > deadline => {
                        panic!("read {user} after the failover: {e}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            assert_eq!(batch.epoch, epoch, "the failover changed the epoch");
            let done = batch.messages.is_empty();
            read.extend(
                batch
                    .messages
                    .iter()
                    .map(|m| (m.pos, m.data.get().to_owned())),
            );
            cursor = Some(batch.cursor);
            if done {
                break;
            }
        }
        let positions: Vec<u64> = read.iter().map(|(p, _)| *p).collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "{user}'s messages out of order"
        );
        let mut seen = std::collections::HashSet::new();
        for (pos, data) in &read {
            assert!(
                seen.insert(data),
                "{user}'s message {data} stored twice (again at {pos})"
            );
        }
        let by_pos: HashMap<u64, &str> = read.iter().map(|(p, d)| (*p, d.as_str())).collect();
        for (pos, seq) in stored.get(user).into_iter().flatten() {
            assert_eq!(
                by_pos.get(pos).copied(),
                Some(seq.to_string().as_str()),
                "{user}'s message {seq}, stored at {pos}, was lost in the failover"
            );
        }
    }
    println!(
        "a master killed under load: {} acknowledged appends kept ({on_doomed} on its users), \
         {} refused while it was down",
        stored.values().map(Vec::len).sum::<usize>(),
        failed.load(Ordering::Relaxed)
    );

    // The killed process rejoins as the new master's replica: its users' writes are
    // acknowledged again.
    cluster.restart(port);
    let x = doomed.first().expect("a user on the killed master");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match storage.append(vec![message(x, "-1")], queue()).await {
            Ok(_) => break,
            Err(err) if tokio::time::Instant::now() > deadline => {
                panic!("writes did not come back once a replica rejoined: {err}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
