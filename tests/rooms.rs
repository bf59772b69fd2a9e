//! Rooms (issue 5, item 1): membership lives in storage; `to_room` reaches every member — a
//! member user on every tab, a member client on that tab only — and reports per member who
//! confirmed; a member who is offline gets the message on return; a client member leaves its
//! rooms when it is reaped.

mod support;

use std::time::Duration;

use serde_json::json;
use simpleio::{ClientId, Failure, Incoming, Member, Reply, SendError, SimpleIoLayer};
use support::server::TestServer;
use support::wire::{Wire, assert_pending, events, eventually_async, finish, start};
use tower::{BoxError, service_fn};

/// Short polls; a recheck timer too slow to stand in for a missed wakeup.
fn builder() -> simpleio::Builder {
    SimpleIoLayer::builder()
        .hold_time(Duration::from_millis(300))
        .recheck_interval(Duration::from_secs(20))
        // A client joins a room by sending `join` with the room's name.
        .handler(service_fn(|msg: Incoming| async move {
            if msg.event == "join" {
                msg.join(&msg.json::<String>()?).await?;
            }
            Ok::<_, BoxError>(Reply::none())
        }))
}

fn id(client: &str) -> ClientId {
    ClientId::new(client).expect("a client id")
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

#[tokio::test]
async fn join_and_leave_change_rooms_of_and_members_of() {
    let server = TestServer::start(builder()).await;
    let io = &server.io;
    let bob_tab = Member::client("bob", id("tab1"));

    io.join("ann", "lobby").await.expect("join");
    io.join("ann", "games").await.expect("join");
    io.join(bob_tab.clone(), "lobby").await.expect("join");
    io.join("ann", "lobby")
        .await
        .expect("joining twice is fine");

    assert_eq!(
        sorted(io.rooms_of("ann").await.expect("rooms")),
        ["games", "lobby"]
    );
    assert_eq!(
        sorted(io.members_of("lobby").await.expect("members")),
        [Member::from("ann"), bob_tab.clone()]
    );
    // A user's rooms are the user's own, not those of their clients.
    assert!(io.rooms_of("bob").await.expect("rooms").is_empty());
    assert_eq!(
        io.rooms_of(bob_tab.clone()).await.expect("rooms"),
        ["lobby"]
    );

    io.leave("ann", "lobby").await.expect("leave");
    assert_eq!(io.rooms_of("ann").await.expect("rooms"), ["games"]);
    let members = io.members_of("lobby").await.expect("members");
    assert!(members == [bob_tab.clone()], "{members:?}");
    io.leave(bob_tab.clone(), "lobby").await.expect("leave");
    io.leave(bob_tab, "lobby")
        .await
        .expect("leaving twice is fine");
    assert!(io.members_of("lobby").await.expect("members").is_empty());
}

#[tokio::test]
async fn a_room_message_reaches_member_users_on_every_tab_and_member_clients_on_that_tab_only() {
    let server = TestServer::start(builder()).await;
    let io = server.io.clone();
    let wire = Wire::new(&server);
    let mut ann1 = wire.tab("ann", "tab1");
    let mut ann2 = wire.tab("ann", "tab2");
    let mut bob1 = wire.tab("bob", "tab1");
    let mut bob2 = wire.tab("bob", "tab2");
    let mut carol = wire.tab("carol", "tab1");
    for tab in [&mut ann1, &mut ann2, &mut bob1, &mut bob2, &mut carol] {
        tab.receive().await;
    }
    // ann joins as a user (every tab); bob's tab1 joins itself, from the client side.
    io.join("ann", "lobby").await.expect("join");
    let acks = bob1
        .send(json!([{"id": "j1", "event": "join", "data": "lobby"}]))
        .await;
    assert_eq!(acks, [json!({"id": "j1", "reply": null})]);
    assert_eq!(
        io.rooms_of(Member::client("bob", id("tab1")))
            .await
            .expect("rooms"),
        ["lobby"]
    );

    let mut sending = start(io.to_room("lobby").emit("hello", &"room")).await;
    // Then a marker to everyone, so that a tab which must not get the room message shows it
    // with its first answer instead of a held poll.
    let _marker = start(io.recipients(["ann", "bob", "carol"]).emit("marker", &0)).await;

    for tab in [&mut ann1, &mut ann2, &mut bob1] {
        let got = tab.receive().await;
        assert_eq!(
            events(&got),
            ["hello", "marker"],
            "{}/{}",
            tab.user,
            tab.client
        );
        assert_eq!(got.messages[0].data, json!("room"));
    }
    for tab in [&mut bob2, &mut carol] {
        let got = tab.receive().await;
        assert_eq!(events(&got), ["marker"], "{}/{}", tab.user, tab.client);
    }

    // Each member confirms for itself: ann (any tab of hers) did, bob's tab1 not yet.
    ann1.receive().await;
    bob2.receive().await; // bob's other tab confirms nothing addressed to tab1
    assert_pending(&mut sending, "the room message before bob's tab1 confirmed").await;
    bob1.receive().await;
    let delivered = finish(sending, "the room message")
        .await
        .expect("delivered");
    assert_eq!(
        sorted(delivered.recipients),
        [Member::from("ann"), Member::client("bob", id("tab1"))]
    );
}

#[tokio::test]
async fn a_room_message_names_exactly_the_members_that_did_not_confirm() {
    let server = TestServer::start(builder()).await;
    let io = server.io.clone();
    let wire = Wire::new(&server);
    let mut ann = wire.tab("ann", "tab1");
    let mut bob = wire.tab("bob", "tab1");
    ann.receive().await;
    bob.receive().await;
    io.join("ann", "lobby").await.expect("join");
    io.join(Member::client("bob", id("tab1")), "lobby")
        .await
        .expect("join");
    io.join("dave", "lobby").await.expect("join"); // never polls

    let sending = start(
        io.to_room("lobby")
            .ttl(Duration::from_millis(800))
            .emit("hello", &1),
    )
    .await;
    // ann receives and confirms; bob's tab receives but never confirms; dave never comes.
    assert_eq!(events(&ann.receive().await), ["hello"]);
    assert_eq!(events(&bob.receive().await), ["hello"]);
    ann.receive().await;

    let Err(SendError::NotDelivered(mut report)) = finish(sending, "the room message").await else {
        panic!("the room message was not reported undelivered");
    };
    assert_eq!(report.delivered, [Member::from("ann")]);
    report.failed.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        report.failed,
        [
            (Member::from("dave"), Failure::Expired),
            (Member::client("bob", id("tab1")), Failure::Expired),
        ]
    );
}

#[tokio::test]
async fn a_room_message_to_an_offline_member_waits_for_their_return() {
    let server = TestServer::start(builder()).await;
    let io = server.io.clone();
    io.join("dave", "lobby").await.expect("join");

    let mut sending = start(io.to_room("lobby").emit("missed", &"while you were out")).await;
    assert_pending(&mut sending, "the room message to an offline member").await;

    let mut dave = Wire::new(&server).tab("dave", "laptop");
    let got = dave.receive().await;
    assert_eq!(got.data(), [json!("while you were out")]);
    assert_pending(&mut sending, "the room message before dave confirmed").await;
    dave.receive().await;
    let delivered = finish(sending, "the room message")
        .await
        .expect("delivered");
    assert_eq!(delivered.recipients, [Member::from("dave")]);
}

#[tokio::test]
async fn a_client_member_leaves_its_rooms_when_it_is_reaped() {
    let server = TestServer::start(
        builder()
            .hold_time(Duration::from_millis(100))
            .presence_ttl(Duration::from_millis(400)),
    )
    .await;
    let io = server.io.clone();
    let mut bob = Wire::new(&server).tab("bob", "tab1");
    bob.receive().await;
    let bob_tab = Member::client("bob", id("tab1"));
    io.join(bob_tab.clone(), "lobby").await.expect("join");
    io.join("ann", "lobby").await.expect("join"); // a user, with no client at all

    // bob's tab stops polling: past the presence TTL it is reaped, and out of the room.
    eventually_async("bob's tab leaves the room", || async {
        io.members_of("lobby").await.expect("members") == [Member::from("ann")]
    })
    .await;
    assert!(io.rooms_of(bob_tab).await.expect("rooms").is_empty());
    // A user's membership does not depend on any client: ann stays until she leaves.
    assert_eq!(io.rooms_of("ann").await.expect("rooms"), ["lobby"]);
}
