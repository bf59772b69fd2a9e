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
        namespaces: Arc::from(["/".into()]),
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

/// A client to the test server of its own, for what the storage does not show: its tables'
/// rows, locks held from outside.
async fn raw_client(server: &PostgresServer) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .expect("a connection of the test's own");
    tokio::spawn(connection);
    client
}

async fn count_rows(client: &tokio_postgres::Client, schema: &str, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM \"{schema}\".{table}"), &[])
        .await
        .expect("count")
        .get(0)
}

fn with_presence(mut request: FetchRequest, presence: Duration) -> FetchRequest {
    request.presence_ttl = presence;
    request
}

/// Users whose ids are never used again (guests who polled and read their messages, users
/// sent messages that expired unread, users with only a dedup record) leave no row behind once
/// their presence and their rows expired and a reap ran: `users` and `watermarks` fall back to
/// nothing. A guest who comes back with the cursor they had gets what is sent to them from then
/// on, in order, and that old cursor confirms none of it.
#[tokio::test]
async fn one_off_users_are_forgotten_and_a_returning_user_starts_afresh() {
    let Some(server) = PostgresServer::shared() else {
        return;
    };
    let schema = fresh_schema();
    let storage = connect(server, &schema).await;
    let raw = raw_client(server).await;
    const GUESTS: usize = 150;
    let short = Duration::from_millis(300);
    let mut kept = None;
    for g in 0..GUESTS {
        let guest = format!("guest{g}");
        storage
            .fetch(with_presence(request(&guest, "tab1", None), short))
            .await
            .expect("a first poll");
        storage
            .append(vec![message(&guest, "welcome")], queue())
            .await
            .expect("append");
        let read = storage
            .fetch(with_presence(request(&guest, "tab1", None), short))
            .await
            .expect("read");
        assert_eq!(read.messages.len(), 1);
        let confirmed = storage
            .fetch(with_presence(
                request(&guest, "tab1", Some((&read.epoch, read.cursor))),
                short,
            ))
            .await
            .expect("confirm");
        if g == 0 {
            kept = Some((confirmed.epoch.clone(), confirmed.cursor));
        }
    }
    // Sent to users who never poll, expiring unread.
    let unread: Vec<NewMessage> = (0..100)
        .map(|u| NewMessage {
            expires_at: millis_after(Duration::from_millis(50)),
            ..message(&format!("absent{u}"), "missed")
        })
        .collect();
    storage.append(unread, queue()).await.expect("append");
    // Users known from a dedup record alone.
    for u in 0..100 {
        let key = DedupKey {
            user: UserId::from(format!("claimer{u}")),
            client: ClientId::new("tab1").expect("id"),
            id: MessageId::new("m1").expect("id"),
        };
        let limits = DedupLimits {
            lease: short,
            per_client: 10,
            per_user: 10,
        };
        storage.claim(&key, 1, limits).await.expect("claim");
        storage
            .complete(&key, "1", Duration::from_millis(50))
            .await
            .expect("complete");
    }
    let users_before = count_rows(&raw, &schema, "users").await;
    let marks_before = count_rows(&raw, &schema, "watermarks").await;
    eprintln!("before: {users_before} users rows, {marks_before} watermarks rows");
    assert!(users_before >= 350, "only {users_before} users rows");
    assert!(
        marks_before >= GUESTS as i64,
        "only {marks_before} watermarks"
    );

    tokio::time::sleep(short + Duration::from_millis(300)).await;
    let departed = storage.reap().await.expect("reap");
    assert_eq!(departed.len(), GUESTS, "every guest departed once");
    let users_after = count_rows(&raw, &schema, "users").await;
    let marks_after = count_rows(&raw, &schema, "watermarks").await;
    eprintln!("after one reap: {users_after} users rows, {marks_after} watermarks rows");
    assert_eq!(users_after, 0, "users rows outlived everything of theirs");
    assert_eq!(marks_after, 0, "watermarks outlived their users");

    // guest0 comes back, with the cursor it had.
    let (epoch, old_cursor) = kept.expect("guest0's cursor");
    let back = storage
        .fetch(request("guest0", "tab1", Some((&epoch, old_cursor))))
        .await
        .expect("the return");
    assert_eq!(back.epoch, epoch, "nothing was lost: the epoch stays");
    assert!(back.arrival.is_some(), "a returning client arrives again");
    assert!(back.messages.is_empty(), "nothing was sent meanwhile");
    let sent = storage
        .append(
            vec![
                message("guest0", "one"),
                message("guest0", "two"),
                message("guest0", "three"),
            ],
            queue(),
        )
        .await
        .expect("append");
    let positions: Vec<u64> = sent
        .outcomes
        .iter()
        .map(|o| match o {
            AppendOutcome::Stored(pos) => *pos,
            AppendOutcome::QueueFull => panic!("not stored"),
        })
        .collect();
    assert!(
        positions.iter().all(|p| *p > old_cursor),
        "a returning user got positions {positions:?} not above their old cursor {old_cursor}"
    );
    let targets: Vec<DeliveryTarget> = positions
        .iter()
        .map(|pos| DeliveryTarget {
            user: UserId::from("guest0"),
            client: None,
            namespace: "/".into(),
            pos: *pos,
        })
        .collect();
    // The client sends its old cursor again (a retry): it confirms none of the new ones.
    let read = storage
        .fetch(request("guest0", "tab1", Some((&epoch, old_cursor))))
        .await
        .expect("read");
    assert_eq!(
        read.messages.iter().map(|m| &*m.event).collect::<Vec<_>>(),
        ["one", "two", "three"],
        "the returning user's messages, in order"
    );
    assert_eq!(
        storage.delivery(&epoch, &targets).await.expect("delivery"),
        [DeliveryState::Pending; 3],
        "an old cursor confirmed messages it never read"
    );
    storage
        .fetch(request("guest0", "tab1", Some((&epoch, read.cursor))))
        .await
        .expect("confirm");
    assert_eq!(
        storage.delivery(&epoch, &targets).await.expect("delivery"),
        [DeliveryState::Delivered; 3]
    );
    assert_eq!(count_rows(&raw, &schema, "users").await, 1);
}

/// Rows no event points a reap at (left by an older version, say) are found by the slice of
/// the table each reap looks through, and forgotten; rows of users with anything left stay.
#[tokio::test]
async fn reaps_go_through_the_whole_table_for_rows_nothing_needs() {
    // A position far past the clock's (which is near 1.8e15), below 2^53.
    const AHEAD: u64 = 5_000_000_000_000_000;
    let Some(server) = PostgresServer::shared() else {
        return;
    };
    let schema = fresh_schema();
    let storage = connect(server, &schema).await;
    let raw = raw_client(server).await;
    raw.batch_execute(&format!(
        "INSERT INTO \"{schema}\".users (user_id, last_pos) \
         SELECT 'old' || g, g FROM generate_series(1, 2500) AS g; \
         INSERT INTO \"{schema}\".users (user_id, last_pos) VALUES ('ahead', {AHEAD}); \
         INSERT INTO \"{schema}\".watermarks (user_id, ns, wm) \
         SELECT 'old' || g, '/', g FROM generate_series(1, 2500) AS g"
    ))
    .await
    .expect("rows of an older version");
    storage
        .append(vec![message("waiting", "kept")], queue())
        .await
        .expect("append");
    let online = storage
        .fetch(request("online", "tab1", None))
        .await
        .expect("a poll");
    for _ in 0..3 {
        storage.reap().await.expect("reap");
    }
    assert_eq!(count_rows(&raw, &schema, "watermarks").await, 0);
    // A quiet client's cursor stays its user's own last position, not the forgotten users'
    // (its next fetch would otherwise confirm, writing and notifying, after every reap).
    let again = storage
        .fetch(request(
            "online",
            "tab1",
            Some((&online.epoch, online.cursor)),
        ))
        .await
        .expect("a quiet poll");
    assert_eq!(
        again.cursor, online.cursor,
        "the cursor moved with the forgotten"
    );
    let left: Vec<String> = raw
        .query(
            &format!("SELECT user_id FROM \"{schema}\".users ORDER BY user_id"),
            &[],
        )
        .await
        .expect("users")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ["online", "waiting"], "forgot too much or too little");
    // Positions stay above every forgotten user's, even one given past the clock (a node
    // whose clock ran ahead): a returning user's old cursor never covers a new message.
    for user in ["old7", "someone_new"] {
        let sent = storage
            .append(vec![message(user, "again")], queue())
            .await
            .expect("append");
        assert!(
            matches!(sent.outcomes[0], AppendOutcome::Stored(pos) if pos > AHEAD),
            "{user} got {:?}, not above {AHEAD}",
            sent.outcomes[0]
        );
    }
}

/// Waits until `n` sessions of the test server wait for a lock.
async fn lock_waiters(raw: &tokio_postgres::Client, n: i64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = raw
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = 'simpleio' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if waiting >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: no session waits");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Memberships and data of client records that no longer exist, in schema `locks`.
async fn orphans(raw: &tokio_postgres::Client) -> i64 {
    raw.query_one(
        "SELECT (SELECT count(*) FROM locks.rooms r WHERE r.client_id <> '' AND NOT EXISTS \
           (SELECT 1 FROM locks.clients c WHERE c.user_id = r.user_id \
              AND c.client_id = r.client_id)) \
         + (SELECT count(*) FROM locks.member_data d WHERE d.client_id <> '' AND NOT EXISTS \
           (SELECT 1 FROM locks.clients c WHERE c.user_id = d.user_id \
              AND c.client_id = d.client_id))",
        &[],
    )
    .await
    .expect("orphans")
    .get(0)
}

/// `join` and `set_data` take the user's lock a reap takes: with the lock held from outside
/// (as a reap holds it in its transaction), they wait, and they and a reap of the user take
/// turns. When they go first, the reap then removes the lapsed client record with the
/// membership and data they wrote; when the reap goes first, they make the record again and
/// keep what they wrote. Either way no membership or data is left without its record, and no
/// join is lost for a record that stays.
#[tokio::test]
async fn join_and_set_data_wait_for_the_users_lock_a_reap_takes() {
    // A server of its own: the count of sessions waiting for a lock must be this test's.
    let Some(server) = PostgresServer::start() else {
        return;
    };
    let storage = connect(&server, "locks").await;
    let raw = raw_client(&server).await;
    let short = Duration::from_millis(200);
    let tab = simpleio::Member::Client(UserId::from("ann"), ClientId::new("tab1").expect("id"));
    let (mut holder, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .expect("a connection to hold the lock");
    tokio::spawn(connection);
    for reap_first in [false, true] {
        // A client record that lapsed: a reap removes it with its memberships and data.
        storage
            .fetch(with_presence(request("ann", "tab1", None), short))
            .await
            .expect("a poll");
        tokio::time::sleep(short + Duration::from_millis(200)).await;
        let lock = holder.transaction().await.expect("begin");
        lock.query(
            "SELECT 1 FROM locks.users WHERE user_id = 'ann' FOR UPDATE",
            &[],
        )
        .await
        .expect("the user's lock");
        let spawn_reap = || {
            let storage = storage.clone();
            tokio::spawn(async move { storage.reap().await })
        };
        let mut waiting = 0;
        let mut reap = None;
        if reap_first {
            reap = Some(spawn_reap());
            waiting += 1;
            lock_waiters(&raw, waiting, "a reap while the user's lock is held").await;
        }
        let join = tokio::spawn({
            let (storage, tab) = (storage.clone(), tab.clone());
            async move { storage.join("lobby", &tab, LONG).await }
        });
        waiting += 1;
        lock_waiters(&raw, waiting, "join while the user's lock is held").await;
        let set = tokio::spawn({
            let (storage, tab) = (storage.clone(), tab.clone());
            async move {
                storage
                    .set_data(&tab, "nick", Some("\"annie\""), LONG)
                    .await
            }
        });
        waiting += 1;
        lock_waiters(&raw, waiting, "set_data while the user's lock is held").await;
        assert!(!join.is_finished() && !set.is_finished());
        let reap = match reap {
            Some(reap) => reap,
            None => {
                let reap = spawn_reap();
                lock_waiters(&raw, waiting + 1, "a reap behind them").await;
                reap
            }
        };
        lock.commit().await.expect("release the lock");
        join.await.expect("join task").expect("join");
        set.await.expect("set_data task").expect("set_data");
        let departed = reap.await.expect("reap task").expect("reap");
        assert_eq!(departed.len(), 1, "the lapsed client departed once");
        assert_eq!(orphans(&raw).await, 0, "rows of a reaped client record");
        let members = storage.members("lobby").await.expect("members");
        let data = storage.get_data(&tab, "nick").await.expect("get");
        let records = count_rows(&raw, "locks", "clients").await;
        let users = count_rows(&raw, "locks", "users").await;
        if reap_first {
            assert_eq!(records, 1, "the join made the client's record again");
            assert_eq!(members, std::slice::from_ref(&tab), "the join was lost");
            assert_eq!(data.as_deref(), Some("\"annie\""), "the data was lost");
            assert_eq!(users, 1, "the user's row was made again");
        } else {
            assert_eq!(records, 0, "the lapsed record was kept");
            assert!(members.is_empty(), "a reaped client stayed in its room");
            assert_eq!(data, None, "a reaped client kept its data");
            assert_eq!(users, 0, "the user's row outlived everything of theirs");
        }
    }
}

/// What [`CountingProxy`] saw on the first connection through it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Traffic {
    /// Statements run: extended-protocol `Execute` and simple `Query` messages.
    statements: u64,
    /// Sends after an answer: the client waited for the server before each.
    round_trips: u64,
}

/// A TCP proxy to the test server that counts, on the first connection through it, the
/// statements the client runs and the round trips it makes. With a pool of one connection, that
/// is the storage's operations (the listening connection comes second).
struct CountingProxy {
    port: u16,
    statements: Arc<std::sync::atomic::AtomicU64>,
    round_trips: Arc<std::sync::atomic::AtomicU64>,
    _task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    async fn start(upstream: u16) -> CountingProxy {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the proxy");
        let port = listener.local_addr().expect("address").port();
        let statements = Arc::new(AtomicU64::new(0));
        let round_trips = Arc::new(AtomicU64::new(0));
        let (counted_statements, counted_trips) = (statements.clone(), round_trips.clone());
        let task = tokio::spawn(async move {
            let mut first = true;
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                let counting = std::mem::take(&mut first);
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                let answered = Arc::new(AtomicBool::new(true));
                let answered_up = answered.clone();
                let (statements, trips) = (counted_statements.clone(), counted_trips.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    // The frontend's messages, across reads: the startup message has no type
                    // byte, every later one a type byte and a length that counts itself.
                    let mut pending: Vec<u8> = Vec::new();
                    let mut started = false;
                    loop {
                        let n = match from_client.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if counting {
                            if answered_up.swap(false, Relaxed) {
                                trips.fetch_add(1, Relaxed);
                            }
                            pending.extend_from_slice(&buf[..n]);
                            loop {
                                let (skip, kind) = if started {
                                    (1, pending.first().copied())
                                } else {
                                    (0, None)
                                };
                                if pending.len() < skip + 4 {
                                    break;
                                }
                                let len = u32::from_be_bytes([
                                    pending[skip],
                                    pending[skip + 1],
                                    pending[skip + 2],
                                    pending[skip + 3],
                                ]) as usize;
                                if pending.len() < skip + len {
                                    break;
                                }
                                if matches!(kind, Some(b'E' | b'Q')) {
                                    statements.fetch_add(1, Relaxed);
                                }
                                pending.drain(..skip + len);
                                started = true;
                            }
                        }
                        if to_server.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match from_server.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        answered.store(true, Relaxed);
                        if to_client.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        CountingProxy {
            port,
            statements,
            round_trips,
            _task: task,
        }
    }

    fn traffic(&self) -> Traffic {
        use std::sync::atomic::Ordering::Relaxed;
        Traffic {
            statements: self.statements.load(Relaxed),
            round_trips: self.round_trips.load(Relaxed),
        }
    }

    /// The traffic of `op` after `setup` (not counted), both run twice (statements are
    /// prepared in the first run): the second's.
    async fn measure<F: Future<Output = ()>, G: Future<Output = ()>>(
        &self,
        mut setup: impl FnMut() -> G,
        mut op: impl FnMut() -> F,
    ) -> Traffic {
        setup().await;
        op().await;
        setup().await;
        let before = self.traffic();
        op().await;
        let after = self.traffic();
        Traffic {
            statements: after.statements - before.statements,
            round_trips: after.round_trips - before.round_trips,
        }
    }
}

/// A fetch costs four round trips (the transaction's start, its reads, its writes, the
/// commit) whatever it does: reading after a wakeup with nothing new to confirm (and then no
/// watermark is written), confirming (watermarks, a trim, a signal), announcing its poll, or
/// signalling nodes that poll the same user (one statement notifies them all).
#[tokio::test]
async fn a_fetch_is_four_round_trips_whatever_it_confirms() {
    let Some(server) = PostgresServer::shared() else {
        return;
    };
    let schema = fresh_schema();
    let proxy = CountingProxy::start(server.port()).await;
    let storage = PostgresStorage::builder(format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        proxy.port
    ))
    .schema(schema.as_str())
    .pool_size(1)
    .connect()
    .await
    .expect("connect through the proxy");
    let epoch = storage.epoch().await.expect("epoch");
    let first = storage
        .fetch(request("ann", "tab1", None))
        .await
        .expect("a first poll");
    let cursor = std::sync::Mutex::new(first.cursor);
    let at = || *cursor.lock().expect("cursor");
    let nothing = || async {};
    // A message, read: the next fetch confirms it.
    let news = || async {
        storage
            .append(vec![message("ann", "news")], queue())
            .await
            .expect("append");
        let read = storage
            .fetch(request("ann", "tab1", Some((&epoch, at()))))
            .await
            .expect("read");
        assert_eq!(read.messages.len(), 1);
        *cursor.lock().expect("cursor") = read.cursor;
    };
    let fetch = |announce: Option<u64>| {
        let mut poll = request("ann", "tab1", Some((&epoch, at())));
        poll.announce = announce;
        async {
            storage.fetch(poll).await.expect("fetch");
        }
    };
    let idle = proxy.measure(nothing, || fetch(None)).await;
    let confirming = proxy.measure(news, || fetch(None)).await;
    let announcing = proxy.measure(nothing, || fetch(Some(7))).await;
    // Three more clients of ann, behind (so nothing is trimmed), first on this node, then on
    // three other nodes: a confirmation then goes to each of those too, in the same statement.
    for n in 0..3 {
        storage
            .fetch(request("ann", &format!("here{n}"), None))
            .await
            .expect("another client");
    }
    let lagging = proxy.measure(news, || fetch(None)).await;
    let mut nodes = Vec::new();
    for n in 0..3 {
        let node = connect(server, &schema).await;
        node.fetch(request("ann", &format!("there{n}"), None))
            .await
            .expect("a poll on another node");
        nodes.push(node);
    }
    let to_nodes = proxy.measure(news, || fetch(None)).await;
    eprintln!(
        "a fetch: idle {idle:?}, confirming {confirming:?}, announcing {announcing:?}, \
         confirming with other clients behind {lagging:?}, and with 3 more nodes to signal \
         {to_nodes:?}"
    );
    assert!(idle.round_trips <= 4, "an idle fetch: {idle:?}");
    assert!(
        confirming.round_trips <= 4,
        "a confirming fetch: {confirming:?}"
    );
    assert!(
        announcing.round_trips <= 4,
        "an announcing fetch: {announcing:?}"
    );
    assert_eq!(
        to_nodes, lagging,
        "signalling more nodes cost more statements or round trips"
    );
    assert!(
        idle.statements < confirming.statements,
        "an idle fetch ran what only a confirmation needs: {idle:?}, {confirming:?}"
    );
}

/// A schema dropped under a running node: its next operation finds the tables gone and
/// answers `Unavailable`; the node makes them again with a new epoch (never the old one over
/// empty tables), tells its subscribers to resync, and its operations work again: a
/// delivery check under the old epoch is lost, a cursor of the old epoch confirms nothing.
#[tokio::test]
async fn a_schema_dropped_under_a_running_node_comes_back_with_a_new_epoch() {
    let Some(server) = PostgresServer::shared() else {
        return;
    };
    let schema = fresh_schema();
    let storage = connect(server, &schema).await;
    let raw = raw_client(server).await;
    let sent = storage
        .append(vec![message("ann", "before")], queue())
        .await
        .expect("append");
    let AppendOutcome::Stored(pos) = sent.outcomes[0] else {
        panic!("not stored");
    };
    let read = storage
        .fetch(request("ann", "tab1", None))
        .await
        .expect("read");
    let mut rx = storage.subscribe();
    raw.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .expect("drop the schema");
    let err = storage
        .fetch(request("ann", "tab1", Some((&read.epoch, read.cursor))))
        .await
        .expect_err("a fetch on dropped tables");
    assert!(matches!(err, StorageError::Unavailable(_)), "{err:?}");
    expect_signal(&mut rx, Duration::from_secs(5), "Resync", |s| {
        matches!(s, Signal::Resync)
    })
    .await;
    let epoch = eventually(Duration::from_secs(10), || storage.epoch()).await;
    assert_ne!(
        epoch, sent.epoch,
        "the data was lost: the epoch must change"
    );
    let target = DeliveryTarget {
        user: UserId::from("ann"),
        client: None,
        namespace: "/".into(),
        pos,
    };
    assert_eq!(
        storage
            .delivery(&sent.epoch, &[target])
            .await
            .expect("delivery"),
        [DeliveryState::Lost]
    );
    let after = storage
        .append(vec![message("ann", "after")], queue())
        .await
        .expect("append after");
    assert_eq!(after.epoch, epoch);
    let back = storage
        .fetch(request("ann", "tab1", Some((&read.epoch, read.cursor))))
        .await
        .expect("fetch after");
    assert_eq!(back.epoch, epoch);
    assert_eq!(
        back.messages.iter().map(|m| &*m.event).collect::<Vec<_>>(),
        ["after"],
        "a cursor of the old epoch was trusted"
    );
    storage.reap().await.expect("reap after");
}

/// An append into a full queue evicts what it needs (here 150 expired messages) with a read
/// of the queue's oldest per 64 evictions and one statement for them all, not a query and a
/// delete each; what it stores and evicts is as before.
#[tokio::test]
async fn evictions_cost_a_read_per_64_and_one_statement() {
    let Some(server) = PostgresServer::shared() else {
        return;
    };
    let schema = fresh_schema();
    let proxy = CountingProxy::start(server.port()).await;
    let storage = PostgresStorage::builder(format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        proxy.port
    ))
    .schema(schema.as_str())
    .pool_size(1)
    .connect()
    .await
    .expect("connect through the proxy");
    let limits = QueueLimits {
        per_user: 200,
        ..queue()
    };
    let round = std::sync::Mutex::new(0);
    let user = || format!("full{}", *round.lock().expect("round"));
    let fill = || async {
        *round.lock().expect("round") += 1;
        let old: Vec<NewMessage> = (0..200)
            .map(|_| NewMessage {
                expires_at: millis_after(Duration::from_millis(5)),
                ..message(&user(), "old")
            })
            .collect();
        storage.append(old, limits).await.expect("fill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let evicting = || async {
        let new: Vec<NewMessage> = (0..150).map(|_| message(&user(), "new")).collect();
        let appended = storage.append(new, limits).await.expect("append");
        assert!(
            appended
                .outcomes
                .iter()
                .all(|o| matches!(o, AppendOutcome::Stored(_))),
            "the expired messages were not evicted"
        );
        assert_eq!(appended.deepest, Some(200));
    };
    let traffic = proxy.measure(fill, evicting).await;
    eprintln!("an append evicting 150 messages: {traffic:?}");
    // Begin, the reads, a read of the oldest per 64 evictions (and one to start), the writes,
    // the commit.
    let reads = 150 / 64 + 2;
    assert!(
        traffic.round_trips <= 4 + reads && traffic.statements <= 20,
        "evictions cost per eviction: {traffic:?}"
    );
    let read = storage
        .fetch(request(&user(), "tab1", None))
        .await
        .expect("read");
    assert_eq!(
        read.messages.len(),
        150,
        "the queue holds the new messages only"
    );
    assert!(read.messages.iter().all(|m| &*m.event == "new"));
}
