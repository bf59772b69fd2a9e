//! Presence (issue 5, item 4): the server learns when a client connects (its first poll), when
//! it is gone (no poll for the presence TTL), and when a user's first client comes and last
//! client goes; `online`, `online_users` and `clients_of` follow; and in a cluster each change
//! is reported once, by one node, not once per node.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use simpleio::{ClientId, MemoryStorage, Presence, SimpleIo, SimpleIoLayer, UserId};
use support::server::TestServer;
use support::wire::{GRACE, SOON, Wire, eventually_async};
use tokio::sync::mpsc;

/// Polls held 100 ms and a presence TTL of 500 ms: a client that stops polling is reported
/// gone within about 0.6 s.
fn builder() -> simpleio::Builder {
    SimpleIoLayer::builder()
        .hold_time(Duration::from_millis(100))
        .presence_ttl(Duration::from_millis(500))
        .recheck_interval(Duration::from_secs(20))
}

/// A builder whose `on_presence` hands every change to the returned receiver.
fn reporting(builder: simpleio::Builder) -> (simpleio::Builder, mpsc::UnboundedReceiver<Presence>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let builder = builder.on_presence(move |change: Presence, _io: SimpleIo| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(change);
        }
    });
    (builder, rx)
}

/// The next change, which must come [`SOON`].
async fn next(rx: &mut mpsc::UnboundedReceiver<Presence>) -> Presence {
    tokio::time::timeout(SOON, rx.recv())
        .await
        .expect("a presence change within SOON")
        .expect("the presence channel is open")
}

/// Asserts no change comes within [`GRACE`].
async fn no_more(rx: &mut mpsc::UnboundedReceiver<Presence>) {
    if let Ok(Some(change)) = tokio::time::timeout(GRACE, rx.recv()).await {
        panic!("an unexpected presence change: {change:?}");
    }
}

fn connected(user: &str, client: &str) -> Presence {
    Presence::Connected {
        user: user.into(),
        client: id(client),
    }
}

fn disconnected(user: &str, client: &str) -> Presence {
    Presence::Disconnected {
        user: user.into(),
        client: id(client),
    }
}

fn online(user: &str) -> Presence {
    Presence::Online { user: user.into() }
}

fn offline(user: &str) -> Presence {
    Presence::Offline { user: user.into() }
}

fn id(client: &str) -> ClientId {
    ClientId::new(client).expect("a client id")
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

#[tokio::test]
async fn a_first_poll_reports_connected_then_online_and_a_second_tab_only_connected() {
    let (builder, mut changes) = reporting(builder());
    let server = TestServer::start(builder.presence_ttl(Duration::from_secs(10))).await;
    let wire = Wire::new(&server);

    wire.tab("ann", "tab1").receive().await;
    assert_eq!(next(&mut changes).await, connected("ann", "tab1"));
    assert_eq!(next(&mut changes).await, online("ann"));

    wire.tab("ann", "tab2").receive().await;
    assert_eq!(next(&mut changes).await, connected("ann", "tab2"));
    // A poll of a client already connected reports nothing.
    wire.tab("ann", "tab1").receive().await;
    no_more(&mut changes).await;
}

#[tokio::test]
async fn when_every_tab_stops_polling_each_is_reported_disconnected_then_the_user_offline() {
    let (builder, mut changes) = reporting(builder());
    let server = TestServer::start(builder).await;
    let wire = Wire::new(&server);
    wire.tab("ann", "tab1").receive().await;
    wire.tab("ann", "tab2").receive().await;
    for _ in 0..3 {
        next(&mut changes).await; // Connected, Online, Connected
    }

    // Both stop polling.
    let first = next(&mut changes).await;
    let second = next(&mut changes).await;
    let gone: BTreeSet<_> = [format!("{first:?}"), format!("{second:?}")].into();
    let expected: BTreeSet<_> = [
        format!("{:?}", disconnected("ann", "tab1")),
        format!("{:?}", disconnected("ann", "tab2")),
    ]
    .into();
    assert_eq!(gone, expected);
    assert_eq!(next(&mut changes).await, offline("ann"));
    no_more(&mut changes).await;
    assert!(!server.io.online("ann").await.expect("online"));
}

#[tokio::test]
async fn online_and_online_users_and_clients_of_follow_the_polling_clients() {
    let server = TestServer::start(builder()).await;
    let io = server.io.clone();
    let wire = Wire::new(&server);
    wire.tab("ann", "tab1").receive().await;
    wire.tab("ann", "tab2").receive().await;
    let mut bob = wire.tab("bob", "tab1");
    bob.receive().await;

    assert!(io.online("ann").await.expect("online"));
    assert!(io.online("bob").await.expect("online"));
    assert!(!io.online("carol").await.expect("online"));
    assert_eq!(
        sorted(io.online_users().await.expect("online users")),
        [UserId::from("ann"), UserId::from("bob")]
    );
    assert_eq!(
        sorted(io.clients_of("ann").await.expect("clients")),
        [id("tab1"), id("tab2")]
    );
    assert!(io.clients_of("carol").await.expect("clients").is_empty());

    // bob keeps polling; ann's tabs stop, and she goes offline.
    let polling = tokio::spawn(async move {
        loop {
            bob.receive().await;
        }
    });
    eventually_async("ann goes offline", || async {
        !io.online("ann").await.expect("online")
    })
    .await;
    assert_eq!(
        io.online_users().await.expect("online users"),
        [UserId::from("bob")]
    );
    assert!(io.clients_of("ann").await.expect("clients").is_empty());
    assert_eq!(io.clients_of("bob").await.expect("clients"), [id("tab1")]);
    polling.abort();
}

#[tokio::test]
async fn a_client_that_keeps_polling_is_never_reported_gone() {
    let (builder, mut changes) = reporting(builder());
    let server = TestServer::start(builder).await;
    let wire = Wire::new(&server);
    let mut bob = wire.tab("bob", "tab1");
    bob.receive().await;
    wire.tab("ann", "tab1").receive().await; // and then never again

    // bob polls for three presence TTLs; ann is reported gone meanwhile, bob never.
    let polling = tokio::spawn(async move {
        let until = tokio::time::Instant::now() + Duration::from_millis(1500);
        while tokio::time::Instant::now() < until {
            bob.receive().await;
        }
    });
    polling.await.expect("bob's polling");
    let mut seen = Vec::new();
    while let Ok(change) = changes.try_recv() {
        seen.push(change);
    }
    assert_eq!(
        seen,
        [
            connected("bob", "tab1"),
            online("bob"),
            connected("ann", "tab1"),
            online("ann"),
            disconnected("ann", "tab1"),
            offline("ann"),
        ]
    );
    assert!(server.io.online("bob").await.expect("online"));
}

#[tokio::test]
async fn in_a_cluster_each_change_is_reported_once_by_one_node() {
    // Two nodes: separate layers, handles and servers over one storage, each with its own
    // presence handler. Each reaps; the storage hands each departure to one of them.
    let storage = MemoryStorage::new();
    let (builder_a, mut changes_a) = reporting(builder().storage(storage.clone()));
    let (builder_b, mut changes_b) = reporting(builder().storage(storage.clone()));
    let node_a = TestServer::start(builder_a).await;
    let node_b = TestServer::start(builder_b).await;
    let (wire_a, wire_b) = (Wire::new(&node_a), Wire::new(&node_b));

    // ann on node a, bob on node b, carol's one tab on both, turn by turn.
    wire_a.tab("ann", "tab1").receive().await;
    wire_b.tab("bob", "tab1").receive().await;
    let mut carol = wire_a.tab("carol", "tab1");
    carol.receive().await;
    for wire in [&wire_b, &wire_a, &wire_b] {
        carol.wire = wire.clone();
        carol.receive().await;
    }

    // Then everyone stops: 3 × (Connected, Online, Disconnected, Offline) in all.
    let mut all = Vec::new();
    let deadline = tokio::time::Instant::now() + SOON;
    while all.len() < 12 && tokio::time::Instant::now() < deadline {
        tokio::select! {
            Some(change) = changes_a.recv() => all.push(change),
            Some(change) = changes_b.recv() => all.push(change),
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
    // Give a duplicate, if any, the time to show up.
    tokio::time::sleep(GRACE).await;
    while let Ok(change) = changes_a.try_recv() {
        all.push(change);
    }
    while let Ok(change) = changes_b.try_recv() {
        all.push(change);
    }

    let mut expected = Vec::new();
    for user in ["ann", "bob", "carol"] {
        expected.extend([
            connected(user, "tab1"),
            online(user),
            disconnected(user, "tab1"),
            offline(user),
        ]);
    }
    let as_text = |v: &[Presence]| sorted(v.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>());
    assert_eq!(as_text(&all), as_text(&expected));
}

/// The metrics' census of live clients asks the storage once per live user; when those asks
/// hang (a networked store under load, every connection busy), clients that stopped polling
/// are still reported gone on time: the census runs beside the reaper, not in its loop.
#[cfg(feature = "metrics")]
#[tokio::test]
async fn a_census_that_hangs_does_not_hold_up_reaping() {
    let storage = support::faulty::FaultyStorage::new();
    storage.stall_live_clients();
    let (builder, mut changes) = reporting(builder().storage(storage));
    let server = TestServer::start(builder).await;
    let wire = Wire::new(&server);
    wire.tab("ann", "tab1").receive().await;
    assert_eq!(next(&mut changes).await, connected("ann", "tab1"));
    assert_eq!(next(&mut changes).await, online("ann"));
    // ann stops polling: the census now hangs on her, and the reaper must go on regardless.
    assert_eq!(next(&mut changes).await, disconnected("ann", "tab1"));
    assert_eq!(next(&mut changes).await, offline("ann"));
}
