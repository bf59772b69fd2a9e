//! Nothing is lost silently (guarantee 1): a message nobody confirms fails its emit once its TTL
//! passes, naming exactly the recipients that did not confirm it.

mod support;

use std::time::Duration;

use simpleio::{Failure, Member, SendError, SimpleIoLayer};
use support::server::TestServer;
use support::wire::{Wire, assert_pending, finish, start};
use tokio::time::Instant;

fn builder() -> simpleio::Builder {
    SimpleIoLayer::builder()
        .hold_time(Duration::from_millis(300))
        .recheck_interval(Duration::from_secs(20))
}

fn not_delivered(result: Result<simpleio::Delivered, SendError>) -> simpleio::Undelivered {
    match result {
        Err(SendError::NotDelivered(undelivered)) => undelivered,
        other => panic!("expected NotDelivered, got {other:?}"),
    }
}

#[tokio::test]
async fn a_message_nobody_confirms_expires_and_names_its_recipient() {
    let server = TestServer::start(builder()).await;
    let ttl = Duration::from_millis(400);
    let sent_at = Instant::now();
    let sending = start(server.io.to_user("bob").ttl(ttl).emit("ping", &1)).await;

    let undelivered = not_delivered(finish(sending, "the emit to nobody").await);
    // Expiry times are whole milliseconds of the wall clock: allow for their rounding.
    assert!(
        sent_at.elapsed() + Duration::from_millis(5) >= ttl,
        "failed after {:?}, before the TTL of {ttl:?}",
        sent_at.elapsed()
    );
    assert_eq!(
        undelivered.failed,
        [(Member::from("bob"), Failure::Expired)]
    );
    assert!(undelivered.delivered.is_empty());
    let text = SendError::NotDelivered(undelivered).to_string();
    assert!(text.contains("bob"), "the error does not name bob: {text}");
}

#[tokio::test]
async fn a_message_received_but_never_confirmed_expires() {
    let server = TestServer::start(builder()).await;
    let ttl = Duration::from_secs(1);
    let sending = start(server.io.to_user("bob").ttl(ttl).emit("ping", &1)).await;

    // bob's client reads it, then never polls again: reading is not confirming.
    let mut tab = Wire::new(&server).tab("bob", "tab1");
    assert_eq!(tab.receive().await.messages.len(), 1);

    let undelivered = not_delivered(finish(sending, "the unconfirmed emit").await);
    assert_eq!(
        undelivered.failed,
        [(Member::from("bob"), Failure::Expired)]
    );

    // Once expired it is gone: bob's next poll does not bring it back.
    let later = tab.poll_from(None).await;
    assert!(
        later.messages.is_empty(),
        "an expired message came back: {later:?}"
    );
}

#[tokio::test]
async fn of_several_recipients_the_error_names_exactly_those_who_did_not_confirm() {
    let server = TestServer::start(builder()).await;
    // Long enough for two users' round trips even on a loaded machine.
    let ttl = Duration::from_secs(3);
    let mut sending = start(
        server
            .io
            .recipients(["ann", "bob", "cat"])
            .ttl(ttl)
            .emit("meeting", &"at noon"),
    )
    .await;

    // ann and cat confirm; bob never shows up.
    let wire = Wire::new(&server);
    for user in ["ann", "cat"] {
        let mut tab = wire.tab(user, "tab1");
        assert_eq!(tab.receive().await.messages.len(), 1, "{user} got it");
        tab.receive().await;
    }
    assert_pending(&mut sending, "the emit while bob may still confirm").await;

    let undelivered = not_delivered(finish(sending, "the emit to three").await);
    assert_eq!(
        undelivered.failed,
        [(Member::from("bob"), Failure::Expired)]
    );
    let mut delivered = undelivered.delivered.clone();
    delivered.sort();
    assert_eq!(delivered, [Member::from("ann"), Member::from("cat")]);
}
