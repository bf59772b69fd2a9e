//! A storage that lost its data takes a new epoch: clients holding the old one are given the new
//! epoch and a cursor to go on from, and senders waiting for confirmations learn their messages
//! were lost — at once, not on a timer.

mod support;

use std::time::Duration;

use serde_json::json;
use simpleio::{Failure, Member, MemoryStorage, SendError, SimpleIoLayer};
use support::server::TestServer;
use support::wire::{Wire, assert_pending, eventually, finish, start};

fn builder(storage: &MemoryStorage, hold: Duration) -> simpleio::Builder {
    SimpleIoLayer::builder()
        .storage(storage.clone())
        .hold_time(hold)
        .recheck_interval(Duration::from_secs(20))
}

#[tokio::test]
async fn a_client_with_an_old_epoch_gets_the_new_epoch_and_cursor() {
    let storage = MemoryStorage::new();
    let server = TestServer::start(builder(&storage, Duration::from_millis(300))).await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    let sending = start(server.io.to_user("ann").emit("n", &"before")).await;
    assert_eq!(tab.receive().await.data(), [json!("before")]);
    tab.receive().await;
    assert!(finish(sending, "the emit before the reset").await.is_ok());
    let (old_epoch, old_cursor) = (tab.epoch.clone().expect("epoch"), tab.cursor);

    storage.reset();
    let resynced = tab.peek().await;
    assert_ne!(resynced.epoch, old_epoch, "the epoch did not change");
    assert!(resynced.messages.is_empty(), "{resynced:?}");
    tab.take(resynced.clone());
    assert_eq!(tab.cursor, Some(resynced.cursor));
    assert_ne!(tab.cursor, old_cursor, "the old cursor was kept");

    // The client goes on in the new epoch: new messages reach it and are confirmed.
    let sending = start(server.io.to_user("ann").emit("n", &"after")).await;
    assert_eq!(tab.receive().await.data(), [json!("after")]);
    tab.receive().await;
    assert!(finish(sending, "the emit after the reset").await.is_ok());
    assert_eq!(tab.epoch.as_deref(), Some(resynced.epoch.as_str()));
}

#[tokio::test]
async fn a_poll_waiting_across_a_reset_answers_in_the_new_epoch() {
    let storage = MemoryStorage::new();
    let server = TestServer::start(builder(&storage, Duration::from_secs(20))).await;
    let io = server.io.clone();
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    let first = start(io.to_user("ann").emit("n", &0)).await;
    tab.receive().await;
    let old_epoch = tab.epoch.clone().expect("epoch");

    let poll = tokio::spawn({
        let tab = tab.clone();
        async move { tab.peek().await }
    });
    eventually("the poll waits", || io.waiting_polls() == 1).await;
    // The waiting poll's cursor confirmed the first message.
    assert!(finish(first, "the first emit").await.is_ok());
    storage.reset();
    let second = start(io.to_user("ann").emit("n", &1)).await;
    let got = finish(poll, "the poll across the reset").await;
    assert_ne!(got.epoch, old_epoch);
    let got = tab.take(got);
    assert_eq!(got.data(), [json!(1)]);
    // The next poll confirms it (and is answered at once by a third message).
    let third = start(io.to_user("ann").emit("n", &2)).await;
    assert_eq!(tab.receive().await.data(), [json!(2)]);
    assert!(finish(second, "the emit in the new epoch").await.is_ok());
    drop(third);
}

#[tokio::test]
async fn a_sender_waiting_on_an_unconfirmed_message_learns_it_was_lost() {
    let storage = MemoryStorage::new();
    let server = TestServer::start(builder(&storage, Duration::from_millis(300))).await;
    let mut sending = start(
        server
            .io
            .recipients(["ann", "bob"])
            .ttl(Duration::from_secs(60))
            .emit("n", &1),
    )
    .await;
    assert_pending(&mut sending, "the emit before the reset").await;

    storage.reset();
    match finish(sending, "the emit after the reset").await {
        Err(SendError::NotDelivered(undelivered)) => {
            let mut failed = undelivered.failed.clone();
            failed.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(
                failed,
                [
                    (Member::from("ann"), Failure::Lost),
                    (Member::from("bob"), Failure::Lost)
                ]
            );
            assert!(undelivered.delivered.is_empty());
        }
        other => panic!("expected NotDelivered, got {other:?}"),
    }
}

#[tokio::test]
async fn a_poll_with_a_stale_epoch_answers_at_once() {
    let storage = MemoryStorage::new();
    let server = TestServer::start(builder(&storage, Duration::from_secs(20))).await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    tab.receive().await;
    storage.reset();
    // A hold of 20 s, and nothing to deliver: the new epoch alone is worth answering for.
    let started = std::time::Instant::now();
    let resynced = tab.peek().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a poll with a stale epoch waited out its hold"
    );
    assert_ne!(Some(resynced.epoch), tab.epoch);
}
