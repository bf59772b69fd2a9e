//! `PostgresStorage` against a real PostgreSQL that the tests start themselves (`initdb` into a
//! temporary folder, a free port): the whole storage conformance suite, then what only a
//! networked store can get wrong: a server stopped (fast and immediate shutdowns) and started
//! again, connections cut in the middle of transactions, two nodes on one schema.
#![cfg(all(feature = "postgres", feature = "conformance"))]

mod support;

#[path = "support/postgres.rs"]
mod postgres_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres_server::PostgresServer;
use serde_json::value::RawValue;
use simpleio::storage::{
    AppendOutcome, Claim, DedupKey, DedupLimits, DeliveryState, DeliveryTarget, Epoch,
    FetchRequest, NewMessage, QueueLimits, Signal, StorageError, millis_after,
};
use simpleio::{ClientId, MessageId, PostgresStorage, SimpleIoLayer, Storage, UserId};
use tokio::sync::broadcast;

/// A fresh schema on the binary's shared server: each test its own tables and channels.
fn fresh_schema() -> String {
    let id = ClientId::random().as_str().to_ascii_lowercase();
    format!("t_{}", id.replace('-', "_"))
}

async fn connect(server: &PostgresServer, schema: &str) -> PostgresStorage {
    PostgresStorage::builder(server.url())
        .schema(schema)
        .pool_size(8)
        // Not shorter: on a loaded machine a new session may take a second to start.
        .connect_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("connect to the test PostgreSQL")
}

/// A storage on a fresh schema of the shared test server; `None` (after a loud warning) when
/// PostgreSQL is not installed outside CI.
async fn fresh() -> Option<PostgresStorage> {
    Some(connect(PostgresServer::shared()?, &fresh_schema()).await)
}

simpleio::storage_conformance_tests!(optional fresh);

const LONG: Duration = Duration::from_secs(600);

fn message(to: &str, event: &str) -> NewMessage {
    NewMessage {
        user: UserId::from(to),
        client: None,
        namespace: "/".into(),
        event: event.into(),
        data: Arc::from(RawValue::from_string(format!("\"{event}\"")).expect("JSON")),
        expires_at: millis_after(LONG),
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

fn request(user: &str, client: &str, cursor: Option<(&Epoch, u64)>) -> FetchRequest {
    FetchRequest {
        user: UserId::from(user),
        client: ClientId::new(client).expect("client id"),
        cursor: cursor.map(|(e, p)| (e.clone(), p)),
        namespaces: vec!["/".into()],
        limit: 10_000,
        presence_ttl: Duration::from_secs(60),
        announce: None,
        max_clients: 1_000,
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

/// While the server is down, operations fail fast with `Unavailable` and polls answer 503;
/// once it is back, the storage heals by itself: the same epoch (nothing was lost), the
/// message still there, a `Resync` from the listening connection, signals flowing again. Both
/// with a fast shutdown and with an immediate one (no checkpoint: recovery from the WAL).
#[tokio::test]
async fn an_outage_answers_503_then_heals_with_everything_committed() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let Some(mut server) = PostgresServer::start() else {
        return;
    };
    let storage = connect(&server, "outage").await;
    let app =
        support::server::TestServer::start(SimpleIoLayer::builder().storage(storage.clone())).await;
    let mut rx = storage.subscribe();
    let before = storage
        .append(vec![message("ann", "kept")], queue())
        .await
        .expect("append");
    let AppendOutcome::Stored(pos) = before.outcomes[0] else {
        panic!("not stored");
    };
    for immediate in [false, true] {
        if immediate {
            server.stop_immediately();
        } else {
            server.stop();
        }
        for attempt in 0..3 {
            let started = Instant::now();
            let err = storage
                .fetch(request("ann", "tab1", None))
                .await
                .expect_err("a fetch succeeded with PostgreSQL down");
            assert!(
                matches!(err, StorageError::Unavailable(_)),
                "expected Unavailable, got {err:?}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "attempt {attempt}: the error took {:?}",
                started.elapsed()
            );
        }
        let res = reqwest::Client::new()
            .get(format!("{}?client=tab-0001", app.url()))
            .header("x-user", "ann")
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("a response");
        assert_eq!(res.status().as_u16(), 503, "a poll during the outage");
        let body: serde_json::Value = res.json().await.expect("a JSON body");
        assert_eq!(body["error"]["code"], "storage_unavailable", "{body}");
        while rx.try_recv().is_ok() {}

        server.start_again();
        // The listening connection comes back by itself and says signals may have been missed.
        expect_signal(&mut rx, Duration::from_secs(15), "Resync", |s| {
            matches!(s, Signal::Resync)
        })
        .await;
        let epoch = eventually(Duration::from_secs(15), || storage.epoch()).await;
        assert_eq!(
            epoch, before.epoch,
            "a restart lost nothing, the epoch stays"
        );
        let target = DeliveryTarget {
            user: UserId::from("ann"),
            client: None,
            namespace: "/".into(),
            pos,
        };
        let states = storage.delivery(&epoch, &[target]).await.expect("delivery");
        assert_eq!(states, [DeliveryState::Pending]);
        let batch = storage
            .fetch(request("ann", "tab1", None))
            .await
            .expect("fetch after the outage");
        assert_eq!(
            batch.messages.iter().map(|m| &*m.event).collect::<Vec<_>>(),
            ["kept"]
        );
        storage
            .append(vec![message("bob", "after")], queue())
            .await
            .expect("append after the outage");
        expect_signal(
            &mut rx,
            Duration::from_secs(5),
            "Appended",
            |s| matches!(s, Signal::Appended { users } if users.iter().any(|u| u.as_str() == "bob")),
        )
        .await;
    }
}

/// Connections cut in the middle of transactions (`pg_terminate_backend`, as a crashed
/// backend or a proxy dropping them would) while a sender appends numbered messages, retrying
/// each failed append with the same origin: every message is stored exactly once, in order,
/// and every append answered (stored, or an error the sender retried).
#[tokio::test]
async fn connections_cut_mid_transaction_lose_nothing_and_duplicate_nothing() {
    // A server of its own: the cuts would hit the other tests' connections too.
    let Some(server) = PostgresServer::start() else {
        return;
    };
    let storage = connect(&server, "cuts").await;
    const N: usize = 300;
    let cuts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let killer = {
        let url = server.url();
        let cuts = cuts.clone();
        tokio::spawn(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("a connection to cut the others");
            tokio::spawn(connection);
            loop {
                tokio::time::sleep(Duration::from_millis(15)).await;
                let rows = client
                    .query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE application_name = 'simpleio' AND state <> 'idle' \
                         AND pid <> pg_backend_pid()",
                        &[],
                    )
                    .await
                    .expect("terminate");
                cuts.fetch_add(rows.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let mut errors = 0;
    let mut positions = Vec::with_capacity(N);
    for i in 0..N {
        let m = NewMessage {
            origin: Some(format!("send-{i}").into()),
            ..message("ann", &format!("m{i}"))
        };
        let pos = loop {
            match storage.append(vec![m.clone()], queue()).await {
                Ok(a) => match a.outcomes[0] {
                    AppendOutcome::Stored(pos) => break pos,
                    AppendOutcome::QueueFull => panic!("the queue was full"),
                },
                Err(StorageError::Unavailable(_)) => errors += 1,
                Err(other) => panic!("an append failed with {other:?}"),
            }
        };
        positions.push(pos);
    }
    killer.abort();
    let cut = cuts.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        cut > 0,
        "no connection was cut while the appends ran: nothing was tested"
    );
    let batch = eventually(Duration::from_secs(10), || {
        storage.fetch(request("ann", "reader", None))
    })
    .await;
    let events: Vec<&str> = batch.messages.iter().map(|m| &*m.event).collect();
    let expected: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    assert_eq!(events, expected, "lost, duplicated or reordered messages");
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions went back"
    );
    eprintln!("{errors} appends failed and were retried; connections cut: {cut}");
}

/// Two nodes on one schema: an append on one wakes the other, which polls for its user, and a
/// confirmation on the other is seen by the first, which waits for it.
#[tokio::test]
async fn two_nodes_share_one_schema_and_signal_each_other() {
    let Some(server) = PostgresServer::shared() else {
        return;
    };
    let schema = fresh_schema();
    let a = connect(server, &schema).await;
    let b = connect(server, &schema).await;
    // b has a poll of ann (its first fetch), so it receives ann's signals.
    let first = b
        .fetch(request("ann", "tab1", None))
        .await
        .expect("fetch on b");
    assert!(first.messages.is_empty());
    let mut on_b = b.subscribe();
    let mut on_a = a.subscribe();
    let appended = a
        .append(vec![message("ann", "hello")], queue())
        .await
        .expect("append on a");
    expect_signal(
        &mut on_b,
        Duration::from_secs(2),
        "Appended on b",
        |s| matches!(s, Signal::Appended { users } if users.iter().any(|u| u.as_str() == "ann")),
    )
    .await;
    let read = b
        .fetch(request("ann", "tab1", None))
        .await
        .expect("fetch on b");
    assert_eq!(read.messages.len(), 1);
    b.fetch(request("ann", "tab1", Some((&read.epoch, read.cursor))))
        .await
        .expect("confirm on b");
    expect_signal(
        &mut on_a,
        Duration::from_secs(2),
        "Confirmed on a",
        |s| matches!(s, Signal::Confirmed { user, .. } if user.as_str() == "ann"),
    )
    .await;
    let AppendOutcome::Stored(pos) = appended.outcomes[0] else {
        panic!("not stored");
    };
    let target = DeliveryTarget {
        user: UserId::from("ann"),
        client: None,
        namespace: "/".into(),
        pos,
    };
    assert_eq!(
        a.delivery(&appended.epoch, &[target])
            .await
            .expect("delivery"),
        [DeliveryState::Delivered]
    );
    assert!(a.signals_received() > 0 && b.signals_received() > 0);
}

/// A retried client message that finds its first attempt in progress on another node waits
/// for that attempt's completion: the `Completed` signal must reach the waiting node.
#[tokio::test]
async fn a_claim_found_in_progress_gets_the_completion_signal() {
    let Some(server) = PostgresServer::shared() else {
        return;
    };
    let schema = fresh_schema();
    let handling = connect(server, &schema).await;
    let retrying = connect(server, &schema).await;
    let key = DedupKey {
        user: UserId::from("ann"),
        client: ClientId::new("tab1").expect("id"),
        id: MessageId::new("m1").expect("id"),
    };
    let limits = DedupLimits {
        lease: Duration::from_secs(30),
        per_client: 100,
        per_user: 100,
    };
    assert_eq!(
        handling.claim(&key, 1, limits).await.expect("claim"),
        Claim::Acquired
    );
    assert!(
        matches!(
            retrying.claim(&key, 2, limits).await.expect("claim"),
            Claim::InProgress { .. }
        ),
        "the retry finds the first attempt in progress"
    );
    let mut on_retrying = retrying.subscribe();
    handling
        .complete(&key, "{\"ok\":1}", Duration::from_secs(600))
        .await
        .expect("complete");
    expect_signal(
        &mut on_retrying,
        Duration::from_secs(5),
        "Completed on the node whose request waits",
        |s| matches!(s, Signal::Completed { user } if user.as_str() == "ann"),
    )
    .await;
}

/// Signals go to the nodes that need them: an append to a user reaches the node that polls
/// for them and not a node that serves someone else, while a volatile message reaches all.
#[tokio::test]
async fn a_signal_goes_only_to_the_nodes_that_serve_its_user() {
    let Some(server) = PostgresServer::shared() else {
        return;
    };
    let schema = fresh_schema();
    let sender = connect(server, &schema).await;
    let serving = connect(server, &schema).await;
    let elsewhere = connect(server, &schema).await;
    serving
        .fetch(request("ann", "tab1", None))
        .await
        .expect("a poll of ann on one node");
    elsewhere
        .fetch(request("bob", "tab1", None))
        .await
        .expect("a poll of bob on another");
    let mut on_serving = serving.subscribe();
    let mut on_elsewhere = elsewhere.subscribe();
    let mut on_sender = sender.subscribe();
    sender
        .append(vec![message("ann", "a")], queue())
        .await
        .expect("append");
    let to_ann = |s: &Signal| matches!(s, Signal::Appended { users } if users.iter().any(|u| u.as_str() == "ann"));
    expect_signal(
        &mut on_serving,
        Duration::from_secs(2),
        "Appended on the node of ann",
        to_ann,
    )
    .await;
    expect_signal(
        &mut on_sender,
        Duration::from_secs(2),
        "Appended on the sending node",
        to_ann,
    )
    .await;
    // A volatile message is for every node; once it arrived, the append (committed before it)
    // would have too.
    sender
        .publish(Signal::Volatile {
            recipients: Arc::from([simpleio::Member::User(UserId::from("bob"))]),
            namespace: "/".into(),
            event: "typing".into(),
            data: Arc::from(RawValue::from_string("1".into()).expect("JSON")),
        })
        .await
        .expect("publish");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let signal = tokio::time::timeout_at(deadline.into(), on_elsewhere.recv())
            .await
            .expect("the volatile message reaches every node")
            .expect("a signal");
        assert!(
            !to_ann(&signal),
            "a node that serves no poll of ann got its append"
        );
        if matches!(signal, Signal::Volatile { .. }) {
            break;
        }
    }
}

/// Rows in each of the tables that expire, as the storage left them.
async fn table_rows(server: &PostgresServer, schema: &str) -> Vec<(&'static str, i64)> {
    let (client, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .expect("a connection to count rows");
    tokio::spawn(connection);
    let mut counts = Vec::new();
    for table in [
        "messages",
        "payloads",
        "acks",
        "replies",
        "origins",
        "dedup",
        "senders",
        "signal_bodies",
        "interest",
        "users",
    ] {
        let row = client
            .query_one(&format!("SELECT count(*) FROM \"{schema}\".{table}"), &[])
            .await
            .expect("count");
        counts.push((table, row.get::<_, i64>(0)));
    }
    counts
}

/// More expired rows than one sweep batch (2,000) are all gone after one reap: the sweep goes
/// on batch after batch while they come back full, so a high rate of sends does not outgrow
/// it.
#[tokio::test]
async fn one_reap_sweeps_more_expired_rows_than_a_batch() {
    let Some(server) = PostgresServer::shared() else {
        return;
    };
    let schema = fresh_schema();
    let storage = connect(server, &schema).await;
    // 25 calls of 100 messages, each with its own payload: 2,500 messages and payloads.
    for call in 0..25 {
        let messages: Vec<NewMessage> = (0..100)
            .map(|u| NewMessage {
                data: Arc::from(
                    RawValue::from_string(format!("{{\"n\":{}}}", call * 100 + u)).expect("JSON"),
                ),
                expires_at: millis_after(Duration::from_millis(1)),
                ..message(&format!("u{u}"), "news")
            })
            .collect();
        storage.append(messages, queue()).await.expect("append");
    }
    let before = table_rows(server, &schema).await;
    for (table, n) in &before {
        if matches!(*table, "messages" | "payloads") {
            assert!(
                *n >= 2_500,
                "{table} has {n} rows, fewer than the test needs"
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    storage.reap().await.expect("reap");
    let rows = table_rows(server, &schema).await;
    for (table, n) in &rows {
        if matches!(*table, "messages" | "payloads") {
            assert_eq!(*n, 0, "{table} kept {n} expired rows after one reap");
        }
    }
}

/// A long run of short-lived traffic (messages asking for replies, with origins and senders,
/// confirmed by their readers; dedup records with a short ttl) leaves the tables bounded by
/// what is live: per round they stay flat, and once everything expired and a reap swept, they
/// are empty but for one row per user.
#[tokio::test]
async fn the_tables_stay_bounded_over_a_long_run() {
    let Some(server) = PostgresServer::shared() else {
        return;
    };
    let schema = fresh_schema();
    let storage = connect(server, &schema).await;
    const USERS: usize = 40;
    const ROUNDS: usize = 40;
    let ttl = Duration::from_millis(800);
    let mut sizes = Vec::new();
    for round in 0..ROUNDS {
        let shared: Arc<RawValue> =
            Arc::from(RawValue::from_string(format!("{{\"round\":{round}}}")).expect("JSON"));
        let messages: Vec<NewMessage> = (0..USERS)
            .map(|u| NewMessage {
                data: shared.clone(),
                expires_at: millis_after(ttl),
                sender: Some(UserId::from("sender")),
                origin: Some(format!("r{round}").into()),
                ack: true,
                ..message(&format!("u{u}"), "news")
            })
            .collect();
        let appended = storage.append(messages, queue()).await.expect("append");
        for u in 0..USERS {
            let user = format!("u{u}");
            let read = storage
                .fetch(request(&user, "tab1", None))
                .await
                .expect("read");
            storage
                .fetch(request(&user, "tab1", Some((&appended.epoch, read.cursor))))
                .await
                .expect("confirm");
            let key = simpleio::storage::DedupKey {
                user: UserId::from(user.as_str()),
                client: ClientId::new("tab1").expect("id"),
                id: simpleio::MessageId::new(format!("m{round}")).expect("id"),
            };
            let limits = simpleio::storage::DedupLimits {
                lease: ttl,
                per_client: 1_000,
                per_user: 1_000,
            };
            storage.claim(&key, 1, limits).await.expect("claim");
            storage.complete(&key, "1", ttl).await.expect("complete");
        }
        storage.reap().await.expect("reap");
        let rows = table_rows(server, &schema).await;
        let total: i64 = rows
            .iter()
            .filter(|(t, _)| *t != "users")
            .map(|(_, n)| n)
            .sum();
        sizes.push(total);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("rows (but users) after each round: {sizes:?}");
    let early = sizes[..ROUNDS / 4].iter().max().copied().unwrap_or(0);
    let late = sizes[ROUNDS * 3 / 4..].iter().max().copied().unwrap_or(0);
    assert!(
        late <= early * 2,
        "the tables grew with the history: {early} rows early, {late} late ({sizes:?})"
    );
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    storage.reap().await.expect("reap");
    let rows = table_rows(server, &schema).await;
    eprintln!("after everything expired: {rows:?}");
    for (table, n) in &rows {
        match *table {
            "users" => assert_eq!(*n, USERS as i64, "one row per user"),
            // The interest of this node in its users lasts a minute.
            "interest" => assert!(*n <= USERS as i64),
            _ => assert_eq!(*n, 0, "{table} kept {n} expired rows"),
        }
    }
}
