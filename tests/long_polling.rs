//! The long poll (guarantee 5 and 6): a waiting poll wakes at once on a new message, not on a
//! timer; an idle one answers empty after the hold time; a newer poll of the same client ends the
//! older; a client that goes away leaves nothing waiting; a response carries at most the batch
//! limit.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use simpleio::SimpleIoLayer;
use support::faulty::FaultyStorage;
use support::server::TestServer;
use support::wire::{
    SOON, Wire, assert_pending, eventually, finish, get_request, raw_request, start,
};
use tokio::time::{Instant, timeout};

/// Polls held long, and no timer that could stand in for a wakeup within the tests' bounds.
fn long_holds() -> simpleio::Builder {
    SimpleIoLayer::builder()
        .hold_time(Duration::from_secs(20))
        .recheck_interval(Duration::from_secs(20))
}

#[tokio::test]
async fn a_waiting_poll_wakes_at_once_on_a_new_message() {
    let server = TestServer::start(long_holds()).await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    let io = server.io.clone();
    tab.receive().await; // the handshake, answered at once

    // A poll with the handshake's cursor waits, and wakes for the first message.
    let poll = tokio::spawn({
        let tab = tab.clone();
        async move { tab.peek().await }
    });
    eventually("the first poll waits", || io.waiting_polls() == 1).await;
    let first = start(io.to_user("ann").emit("n", &1)).await;
    let got = tab.take(finish(poll, "the first poll, woken").await);
    assert_eq!(got.data(), [json!(1)]);

    // A poll with a cursor (confirming the first message) waits, and wakes for the second.
    let poll = tokio::spawn({
        let tab = tab.clone();
        async move { tab.peek().await }
    });
    assert!(finish(first, "the first emit").await.is_ok());
    eventually("the second poll waits", || io.waiting_polls() == 1).await;
    let second = start(io.to_user("ann").emit("n", &2)).await;
    let got = tab.take(finish(poll, "the second poll, woken").await);
    assert_eq!(got.data(), [json!(2)]);
    drop(second);
}

#[tokio::test]
async fn an_idle_poll_answers_empty_after_the_hold_time_with_the_same_cursor() {
    let hold = Duration::from_millis(400);
    let server = TestServer::start(SimpleIoLayer::builder().hold_time(hold)).await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    let sending = start(server.io.to_user("ann").emit("n", &1)).await;
    tab.receive().await;
    let (epoch, cursor) = (tab.epoch.clone(), tab.cursor);

    let asked = Instant::now();
    let idle = tab.receive().await;
    assert!(
        asked.elapsed() >= hold,
        "answered after {:?}, before the hold time",
        asked.elapsed()
    );
    assert!(
        idle.messages.is_empty() && idle.volatile.is_empty(),
        "{idle:?}"
    );
    assert_eq!((Some(idle.epoch), Some(idle.cursor)), (epoch, cursor));
    assert!(finish(sending, "the emit").await.is_ok());
}

#[tokio::test]
async fn a_newer_poll_of_the_same_client_ends_the_older_one() {
    let server = TestServer::start(long_holds()).await;
    let wire = Wire::new(&server);
    let io = server.io.clone();
    let mut tab = wire.tab("ann", "tab1");
    let first = start(io.to_user("ann").emit("n", &0)).await;
    tab.receive().await;

    let mut older = tokio::spawn({
        let tab = tab.clone();
        async move { tab.peek().await }
    });
    eventually("the older poll waits", || io.waiting_polls() == 1).await;

    // Another client's poll, or another user's with the same client id, ends nothing.
    let others: Vec<_> = [("ann", "tab2"), ("bob", "tab1")]
        .into_iter()
        .map(|(user, client)| wire.tab(user, client))
        .collect::<Vec<_>>();
    let mut handshaken = Vec::new();
    for mut tab in others {
        tab.receive().await; // the handshake, answered at once
        handshaken.push(tab);
    }
    let others: Vec<_> = handshaken
        .into_iter()
        .map(|tab| tokio::spawn(async move { tab.peek().await }))
        .collect();
    eventually("three polls wait", || io.waiting_polls() == 3).await;
    assert_pending(&mut older, "the older poll after other clients polled").await;

    // The same client polls again: the older poll answers at once, empty, with its cursor.
    let newer = tokio::spawn({
        let tab = tab.clone();
        async move { tab.peek().await }
    });
    let ended = finish(older, "the older poll").await;
    assert!(ended.messages.is_empty(), "{ended:?}");
    assert_eq!(Some(ended.cursor), tab.cursor);
    assert!(
        ended.taken_over,
        "the ended poll does not say a newer one took over"
    );
    assert_eq!(
        io.waiting_polls(),
        3,
        "the newer poll and the others still wait"
    );

    // The newer poll is the one that gets the next message.
    let second = start(io.to_user("ann").emit("n", &1)).await;
    let got = tab.take(finish(newer, "the newer poll").await);
    assert_eq!(got.data(), [json!(1)]);
    assert!(finish(first, "the first emit").await.is_ok());
    drop((second, others));
}

#[tokio::test]
async fn a_client_that_disconnects_mid_wait_leaks_nothing() {
    let server = TestServer::start(
        SimpleIoLayer::builder()
            .hold_time(Duration::from_millis(500))
            .recheck_interval(Duration::from_millis(100)),
    )
    .await;
    let io = server.io.clone();
    let mut streams = Vec::new();
    for n in 0..10 {
        // After its handshake a client's poll waits; that is the one dropped.
        let mut tab = Wire::new(&server).tab("ann", &format!("tab{n}"));
        tab.receive().await;
        let request = get_request(&format!("/simpleio?{}", tab.query()), "ann");
        streams.push(raw_request(server.addr, &request).await);
    }
    eventually("ten polls wait", || io.waiting_polls() == 10).await;
    drop(streams);
    eventually("no poll is left waiting", || io.waiting_polls() == 0).await;

    // The server still serves, and the user's messages still arrive.
    let sending = start(io.to_user("ann").emit("n", &1)).await;
    let mut tab = Wire::new(&server).tab("ann", "tab0");
    assert_eq!(tab.receive().await.data(), [json!(1)]);
    tab.receive().await;
    assert!(finish(sending, "the emit").await.is_ok());
    assert_eq!(io.waiting_polls(), 0);
}

#[tokio::test]
async fn a_response_carries_at_most_the_batch_limit_and_the_rest_follow() {
    let server = TestServer::start(
        SimpleIoLayer::builder()
            .hold_time(Duration::from_millis(300))
            .batch_limit(3),
    )
    .await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    let mut sends = Vec::new();
    for n in 0..7 {
        sends.push(start(server.io.to_user("ann").emit("n", &n)).await);
    }

    let mut batches = Vec::new();
    for _ in 0..3 {
        batches.push(tab.receive().await);
    }
    let sizes: Vec<usize> = batches.iter().map(|b| b.messages.len()).collect();
    assert_eq!(sizes, [3, 3, 1]);
    for batch in &batches {
        assert_eq!(batch.cursor, batch.messages.last().expect("a message").pos);
    }
    let data: Vec<Value> = batches.iter().flat_map(|b| b.data()).collect();
    assert_eq!(data, (0..7).map(|n| json!(n)).collect::<Vec<_>>());

    // The first three were confirmed by the second poll, the next three by the third.
    for send in sends.drain(..6) {
        assert!(finish(send, "a confirmed emit").await.is_ok());
    }
    tab.receive().await;
    assert!(finish(sends.remove(0), "the last emit").await.is_ok());
}

#[tokio::test]
async fn a_message_stored_while_the_poll_reads_still_wakes_it() {
    let storage = FaultyStorage::new();
    let server = TestServer::start(long_holds().storage(storage.clone())).await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    let first = start(server.io.to_user("ann").emit("n", &0)).await;
    tab.receive().await;

    // The poll reads an empty log; the message is stored, and its wakeup delivered, before
    // the read's answer is back.
    storage.slow_down_next_fetch();
    let poll = tokio::spawn({
        let tab = tab.clone();
        async move { tab.peek().await }
    });
    let read = storage.read_done.clone();
    eventually("the poll has read", || read.load(Ordering::SeqCst)).await;
    let second = start(server.io.to_user("ann").emit("n", &1)).await;

    let got = timeout(SOON, poll)
        .await
        .expect("the poll missed the wakeup that came during its read")
        .expect("the poll task");
    assert_eq!(tab.take(got).data(), [json!(1)]);
    assert!(finish(first, "the first emit").await.is_ok());
    drop(second);
}

#[tokio::test]
async fn a_newer_poll_that_starts_while_the_older_reads_still_ends_it() {
    let storage = FaultyStorage::new();
    let server = TestServer::start(long_holds().storage(storage.clone())).await;
    let wire = Wire::new(&server);
    let mut tab = wire.tab("ann", "tab1");
    let first = start(server.io.to_user("ann").emit("n", &0)).await;
    tab.receive().await;

    storage.slow_down_next_fetch();
    let older = tokio::spawn({
        let tab = tab.clone();
        async move { tab.peek().await }
    });
    let read = storage.read_done.clone();
    eventually("the older poll has read", || read.load(Ordering::SeqCst)).await;
    let newer = tokio::spawn({
        let tab = tab.clone();
        async move { tab.peek().await }
    });

    let ended = timeout(SOON, older)
        .await
        .expect("the older poll missed the newer poll's start, which came during its read")
        .expect("the poll task");
    assert!(ended.messages.is_empty());
    let io = server.io.clone();
    eventually("only the newer poll waits", || io.waiting_polls() == 1).await;
    assert!(finish(first, "the first emit").await.is_ok());
    drop(newer);
}

#[tokio::test]
async fn a_first_poll_without_a_cursor_is_answered_at_once() {
    let server = TestServer::start(long_holds()).await;
    let tab = Wire::new(&server).tab("ann", "tab1");
    let handshake = tokio::spawn({
        let tab = tab.clone();
        async move { tab.peek().await }
    });
    let batch = finish(handshake, "the handshake").await;
    assert!(batch.messages.is_empty(), "{batch:?}");
    assert!(!batch.epoch.is_empty(), "the handshake must name the epoch");
    assert_eq!(server.io.waiting_polls(), 0);
}

#[tokio::test]
async fn a_handshake_advertises_the_servers_limits() {
    let server = TestServer::start(
        long_holds()
            .batch_limit(7)
            .max_body(4_096)
            .max_messages_per_request(9),
    )
    .await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    let handshake = tab.receive().await;
    let limits = handshake.limits.expect("the handshake carries the limits");
    assert_eq!(limits["batch_limit"], 7);
    assert_eq!(limits["max_body"], 4_096);
    assert_eq!(limits["max_messages"], 9);
    assert!(limits["hold_ms"].as_u64().is_some_and(|ms| ms > 0));
    assert!(!handshake.taken_over);
    // Later polls do not repeat them.
    let io = server.io.clone();
    let sent = start(io.to_user("ann").emit("n", &1)).await;
    let next = tab.receive().await;
    assert!(next.limits.is_none());
    drop(sent);
}
