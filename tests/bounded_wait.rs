//! Bounded waits: `Sending::wait` returns within its time with delivered, not delivered, or
//! pending, and a pending message's outcome is still there to await, with its receipts.

mod support;

use std::time::Duration;

use serde_json::json;
use simpleio::storage::DeliveryState;
use simpleio::{Failure, Member, SendError, SimpleIoLayer, Waited};
use support::server::TestServer;
use support::wire::Wire;

fn builder() -> simpleio::Builder {
    SimpleIoLayer::builder().hold_time(Duration::from_millis(300))
}

#[tokio::test]
async fn a_wait_that_runs_out_gives_back_the_message_which_is_delivered_later() {
    let server = TestServer::start(builder()).await;
    // Nobody of bob's polls yet: the wait runs out.
    let waited = server
        .io
        .to_user("bob")
        .emit("letter", &json!({"n": 1}))
        .wait(Duration::from_millis(200))
        .await;
    let Waited::Pending(sending) = waited else {
        panic!("expected pending, got {waited:?}");
    };
    // Stored before the time ran out: the receipts tell it from any node.
    assert_eq!(sending.receipts().len(), 1);
    let states = server
        .io
        .delivery(sending.receipts())
        .await
        .expect("delivery");
    assert_eq!(states, [DeliveryState::Pending]);

    // bob comes, receives and confirms: the same future now resolves delivered.
    let mut tab = Wire::new(&server).tab("bob", "laptop");
    assert_eq!(tab.receive().await.data(), [json!({"n": 1})]);
    let outcome = tokio::spawn(sending.wait(Duration::from_secs(10)));
    tab.receive().await;
    match outcome.await.expect("join") {
        Waited::Delivered(delivered) => assert_eq!(delivered.recipients, [Member::from("bob")]),
        other => panic!("expected delivered, got {other:?}"),
    }
}

#[tokio::test]
async fn a_wait_returns_delivered_as_soon_as_the_recipient_confirms() {
    let server = TestServer::start(builder()).await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    tab.receive().await;
    let waiting = tokio::spawn(
        server
            .io
            .to_user("ann")
            .emit("news", &1)
            .wait(Duration::from_secs(20)),
    );
    assert_eq!(tab.receive().await.data(), [json!(1)]);
    tab.receive().await;
    let waited = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the wait ends with the confirmation, not with its time")
        .expect("join");
    assert!(waited.is_delivered(), "{waited:?}");
}

#[tokio::test]
async fn a_wait_reports_a_message_that_expired_as_not_delivered() {
    let server = TestServer::start(builder()).await;
    let waited = server
        .io
        .to_user("carol")
        .ttl(Duration::from_millis(300))
        .emit("n", &1)
        .wait(Duration::from_secs(20))
        .await;
    match waited {
        Waited::NotDelivered(SendError::NotDelivered(undelivered)) => {
            assert_eq!(
                undelivered.failed,
                [(Member::from("carol"), Failure::Expired)]
            );
        }
        other => panic!("expected not delivered, got {other:?}"),
    }
}

#[tokio::test]
async fn a_wait_reports_a_refused_message_at_once() {
    let server = TestServer::start(builder()).await;
    let waited = server
        .io
        .to_user("ann")
        .emit("", &1)
        .wait(Duration::from_secs(20))
        .await;
    assert!(
        matches!(waited, Waited::NotDelivered(SendError::InvalidEvent { .. })),
        "{waited:?}"
    );
}
