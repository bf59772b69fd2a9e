//! Volatile messages reach the clients waiting at that moment, in `volatile`, and are never
//! stored: a later poll does not see them.

mod support;

use std::time::Duration;

use serde_json::json;
use simpleio::{ClientId, SimpleIoLayer};
use support::server::TestServer;
use support::wire::{Tab, Wire, eventually, finish};

/// Polls held long enough to be waiting when the volatile message is sent; a test never waits
/// for a hold to pass.
fn builder() -> simpleio::Builder {
    SimpleIoLayer::builder()
        .hold_time(Duration::from_secs(20))
        .recheck_interval(Duration::from_secs(20))
}

fn waiting(tab: &Tab) -> tokio::task::JoinHandle<support::wire::Batch> {
    let tab = tab.clone();
    tokio::spawn(async move { tab.peek().await })
}

#[tokio::test]
async fn a_volatile_message_reaches_a_waiting_poll_and_is_not_stored() {
    let server = TestServer::start(builder()).await;
    let io = server.io.clone();
    let wire = Wire::new(&server);
    let mut tab = wire.tab("ann", "tab1");
    tab.receive().await; // the handshake, answered at once

    let poll = waiting(&tab);
    eventually("ann's poll waits", || io.waiting_polls() == 1).await;
    io.to_user("ann")
        .volatile()
        .emit("typing", &json!({"from": "bob"}))
        .await
        .expect("published");
    let got = tab.take(finish(poll, "the poll, woken by the volatile message").await);
    assert!(got.messages.is_empty(), "{got:?}");
    assert_eq!(got.volatile.len(), 1);
    assert_eq!(got.volatile[0].event, "typing");
    assert_eq!(got.volatile[0].data, json!({"from": "bob"}));

    // Not stored: the next poll of this client, and a new client, see nothing of it. A stored
    // message sent afterwards ends their polls, so no test waits out a hold.
    let later = waiting(&tab);
    let mut newcomer = wire.tab("ann", "tab2");
    newcomer.receive().await;
    let newcomer = waiting(&newcomer);
    eventually("both polls wait", || io.waiting_polls() == 2).await;
    let sending = io.to_user("ann").emit("stored", &1);
    let sending = tokio::spawn(sending);
    for poll in [later, newcomer] {
        let batch = finish(poll, "a later poll").await;
        assert!(
            batch.volatile.is_empty(),
            "the volatile message came again: {batch:?}"
        );
        assert_eq!(batch.data(), [json!(1)]);
    }
    drop(sending);
}

#[tokio::test]
async fn a_volatile_message_misses_a_client_between_polls() {
    let server = TestServer::start(builder()).await;
    let io = server.io.clone();
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    let first = tokio::spawn(io.to_user("ann").emit("stored", &0));
    tab.receive().await;

    // Sent while no poll of ann's waits.
    io.to_user("ann")
        .volatile()
        .emit("typing", &"bob")
        .await
        .expect("published");
    let poll = waiting(&tab);
    eventually("ann's poll waits", || io.waiting_polls() == 1).await;
    let second = tokio::spawn(io.to_user("ann").emit("stored", &1));
    let got = finish(poll, "the poll").await;
    assert!(got.volatile.is_empty(), "{got:?}");
    assert_eq!(got.data(), [json!(1)]);
    drop((first, second));
}

#[tokio::test]
async fn a_volatile_message_to_one_client_reaches_only_that_tab() {
    let server = TestServer::start(builder()).await;
    let io = server.io.clone();
    let wire = Wire::new(&server);
    let mut tab1 = wire.tab("ann", "tab1");
    let mut tab2 = wire.tab("ann", "tab2");
    let mut bob = wire.tab("bob", "tab2");
    for tab in [&mut tab1, &mut tab2, &mut bob] {
        tab.receive().await; // the handshake, answered at once
    }
    let polls = [waiting(&tab1), waiting(&tab2), waiting(&bob)];
    eventually("three polls wait", || io.waiting_polls() == 3).await;

    let tab2_id = ClientId::new("tab2").expect("a client id");
    io.to_client("ann", tab2_id)
        .volatile()
        .emit("cursor", &[3, 4])
        .await
        .expect("published");
    let [p1, p2, pb] = polls;
    let got = finish(p2, "tab2's poll").await;
    assert_eq!(got.volatile.len(), 1);
    assert_eq!(got.volatile[0].data, json!([3, 4]));

    // The others are still waiting; a stored message to each ends their polls without it.
    let sends = tokio::spawn(io.recipients(["ann", "bob"]).emit("stored", &1));
    for poll in [p1, pb] {
        let batch = finish(poll, "another poll").await;
        assert!(batch.volatile.is_empty(), "{batch:?}");
        assert_eq!(batch.data(), [json!(1)]);
    }
    drop(sends);
}
