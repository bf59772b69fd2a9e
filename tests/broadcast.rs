//! Broadcasting to others (issue 5, item 2; Socket.IO's `socket.broadcast.emit`): from a
//! handler, to every other live user and the sender's other tabs, or to a room, but never back
//! to the tab that sent; and `everyone().except(user)` leaving out every tab of that user.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use simpleio::{Incoming, Member, Reply, SimpleIoLayer};
use support::server::TestServer;
use support::wire::{Tab, Wire, events, finish, start};
use tower::{BoxError, service_fn};

/// A chat handler: `say` to everyone else, `say_in` `[room, text]` to the room's other members,
/// `join` a room. Each reply comes once the broadcast is stored.
fn builder() -> simpleio::Builder {
    SimpleIoLayer::builder()
        .hold_time(Duration::from_millis(300))
        .recheck_interval(Duration::from_secs(20))
        .handler(service_fn(|msg: Incoming| async move {
            match msg.event.as_str() {
                "say" => {
                    let said = json!({"from": msg.user.as_str(), "text": msg.json::<Value>()?});
                    // Stored for them all; the reply need not wait for confirmations.
                    drop(msg.broadcast().emit("said", &said).stored().await?);
                }
                "say_in" => {
                    let (room, text): (String, Value) = msg.json()?;
                    let said = json!({"from": msg.user.as_str(), "text": text});
                    drop(msg.broadcast_to(room).emit("said", &said).stored().await?);
                }
                "join" => msg.join(&msg.json::<String>()?).await?,
                _ => {}
            }
            Ok::<_, BoxError>(Reply::none())
        }))
}

/// Tabs that have polled once (so they are live), in the order of `who`.
async fn live_tabs(wire: &Wire, who: &[(&str, &str)]) -> Vec<Tab> {
    let mut tabs = Vec::new();
    for (user, client) in who {
        let mut tab = wire.tab(user, client);
        tab.receive().await;
        tabs.push(tab);
    }
    tabs
}

#[tokio::test]
async fn a_broadcast_reaches_every_other_user_and_the_senders_other_tabs_but_not_the_sending_tab() {
    let server = TestServer::start(builder()).await;
    let wire = Wire::new(&server);
    let [mut ann1, mut ann2, mut bob1, mut bob2, mut carol] = live_tabs(
        &wire,
        &[
            ("ann", "tab1"),
            ("ann", "tab2"),
            ("bob", "tab1"),
            ("bob", "tab2"),
            ("carol", "tab1"),
        ],
    )
    .await
    .try_into()
    .expect("five tabs");

    let acks = ann1
        .send(json!([{"id": "m1", "event": "say", "data": "hi all"}]))
        .await;
    assert_eq!(acks, [json!({"id": "m1", "reply": null})]);

    for tab in [&mut ann2, &mut bob1, &mut bob2, &mut carol] {
        let got = tab.receive().await;
        assert_eq!(
            got.data(),
            [json!({"from": "ann", "text": "hi all"})],
            "{}/{}",
            tab.user,
            tab.client
        );
    }
    // The sending tab: a marker sent afterwards is the first thing it gets.
    let _marker = start(server.io.to_user("ann").emit("marker", &0)).await;
    assert_eq!(events(&ann1.receive().await), ["marker"]);

    // A user who was not online when it was sent does not get it later.
    let late = wire.tab("dave", "tab1").receive().await;
    assert!(late.messages.is_empty(), "dave got {late:?}");
}

#[tokio::test]
async fn a_room_broadcast_reaches_the_other_members_but_not_the_sending_tab() {
    let server = TestServer::start(builder()).await;
    let io = server.io.clone();
    let wire = Wire::new(&server);
    let [mut ann1, mut ann2, mut bob1, mut bob2, mut carol] = live_tabs(
        &wire,
        &[
            ("ann", "tab1"),
            ("ann", "tab2"),
            ("bob", "tab1"),
            ("bob", "tab2"),
            ("carol", "tab1"),
        ],
    )
    .await
    .try_into()
    .expect("five tabs");
    // ann is a member as a user (every tab); of bob, only tab1; carol is not a member.
    io.join("ann", "lobby").await.expect("join");
    bob1.send(json!([{"id": "j1", "event": "join", "data": "lobby"}]))
        .await;

    // From a tab of a member user: her other tab and bob's member tab get it.
    ann1.send(json!([{"id": "m1", "event": "say_in", "data": ["lobby", "hi room"]}]))
        .await;
    let _marker = start(io.recipients(["ann", "bob", "carol"]).emit("marker", &0)).await;
    for tab in [&mut ann2, &mut bob1] {
        let got = tab.receive().await;
        assert_eq!(
            events(&got),
            ["said", "marker"],
            "{}/{}",
            tab.user,
            tab.client
        );
        assert_eq!(
            got.messages[0].data,
            json!({"from": "ann", "text": "hi room"})
        );
    }
    for tab in [&mut ann1, &mut bob2, &mut carol] {
        let got = tab.receive().await;
        assert_eq!(events(&got), ["marker"], "{}/{}", tab.user, tab.client);
    }

    // From a member client: every tab of the member user gets it, the sending tab does not.
    bob1.send(json!([{"id": "m2", "event": "say_in", "data": ["lobby", "yo"]}]))
        .await;
    let _marker = start(io.recipients(["bob", "carol"]).emit("marker", &1)).await;
    for tab in [&mut ann1, &mut ann2] {
        let got = tab.receive().await;
        assert_eq!(got.data(), [json!({"from": "bob", "text": "yo"})]);
    }
    for tab in [&mut bob1, &mut bob2, &mut carol] {
        let got = tab.receive().await;
        assert_eq!(events(&got), ["marker"], "{}/{}", tab.user, tab.client);
    }
}

#[tokio::test]
async fn everyone_except_a_user_leaves_out_every_client_of_that_user() {
    let server = TestServer::start(builder()).await;
    let io = server.io.clone();
    let wire = Wire::new(&server);
    let [mut ann1, mut ann2, mut bob] =
        live_tabs(&wire, &[("ann", "tab1"), ("ann", "tab2"), ("bob", "tab1")])
            .await
            .try_into()
            .expect("three tabs");

    let sending = start(io.everyone().except("ann").emit("news", &"not for ann")).await;
    let _marker = start(io.to_user("ann").emit("marker", &0)).await;
    assert_eq!(bob.receive().await.data(), [json!("not for ann")]);
    for tab in [&mut ann1, &mut ann2] {
        assert_eq!(
            events(&tab.receive().await),
            ["marker"],
            "ann/{}",
            tab.client
        );
    }
    bob.receive().await;
    let delivered = finish(sending, "the broadcast").await.expect("delivered");
    assert_eq!(delivered.recipients, [Member::from("bob")]);
}

/// A send to more recipients than one chunk lets go of its registrations in a task. A runtime
/// that shuts down before that task ran drops it; dropping it must let go of them there and
/// then (it once spawned another such task from its drop, and so on until the stack overflowed
/// and the process aborted).
#[test]
fn a_runtime_shut_down_while_a_large_send_is_let_go_of_exits_cleanly() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let (_layer, io) = SimpleIoLayer::builder().build();
        let users: Vec<String> = (0..1_000).map(|i| format!("u{i}")).collect();
        let sending = io
            .recipients(users)
            .emit("news", &1)
            .stored()
            .await
            .expect("stored");
        // Dropped: its registrations go to a task, which never runs.
        drop(sending);
    });
    drop(runtime);
}
