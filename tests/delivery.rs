//! Confirmed delivery (guarantee 1): an emit resolves only once a client of the recipient
//! confirmed the message with its next poll's cursor; an offline user gets it on return; every
//! tab of a user gets every message; a message to one tab reaches only that tab.

mod support;

use std::time::Duration;

use serde_json::json;
use simpleio::{ClientId, Member, SimpleIoLayer};
use support::server::TestServer;
use support::wire::{Wire, assert_pending, finish, start};

/// Short polls; a recheck timer too slow to stand in for a missed wakeup within [`SOON`].
///
/// [`SOON`]: support::wire::SOON
fn builder() -> simpleio::Builder {
    SimpleIoLayer::builder()
        .hold_time(Duration::from_millis(300))
        .recheck_interval(Duration::from_secs(20))
}

#[tokio::test]
async fn an_emit_resolves_only_after_the_next_poll_confirms_the_message() {
    let server = TestServer::start(builder()).await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    tab.receive().await;

    let mut sending = start(server.io.to_user("ann").emit("news", &json!({"n": 1}))).await;
    let got = tab.receive().await;
    assert_eq!(got.data(), [json!({"n": 1})]);
    assert_eq!(got.messages[0].event, "news");
    // Received is not confirmed: the client has not said it handed the message on.
    assert_pending(&mut sending, "the emit after the message was received").await;

    // The next poll carries a cursor covering the message: that is the confirmation.
    tab.receive().await;
    let delivered = finish(sending, "the emit after the confirming poll").await;
    assert_eq!(
        delivered.expect("delivered").recipients,
        [Member::from("ann")]
    );
}

#[tokio::test]
async fn a_cursor_below_a_message_does_not_confirm_it() {
    let server = TestServer::start(builder()).await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    tab.receive().await;

    let first = start(server.io.to_user("ann").emit("n", &1)).await;
    let mut second = start(server.io.to_user("ann").emit("n", &2)).await;
    let got = tab.receive().await;
    assert_eq!(got.data(), [json!(1), json!(2)]);

    // Confirm only up to the first message.
    let epoch = got.epoch.clone();
    let rest = tab.poll_from(Some((&epoch, got.messages[0].pos))).await;
    assert_eq!(
        rest.positions(),
        [got.messages[1].pos],
        "the second comes again"
    );
    assert!(finish(first, "the first emit").await.is_ok());
    assert_pending(&mut second, "the emit of the unconfirmed second message").await;

    tab.poll_from(Some((&epoch, rest.cursor))).await;
    assert!(finish(second, "the second emit").await.is_ok());
}

#[tokio::test]
async fn an_offline_user_receives_the_message_on_return() {
    let server = TestServer::start(builder()).await;
    // Nobody of bob's polls while the message is sent.
    let mut sending = start(
        server
            .io
            .to_user("bob")
            .emit("letter", &"while you were out"),
    )
    .await;
    assert_pending(&mut sending, "the emit to an offline user").await;

    // A client bob never used before shows up later and gets it.
    let mut tab = Wire::new(&server).tab("bob", "laptop");
    let got = tab.receive().await;
    assert_eq!(got.data(), [json!("while you were out")]);
    assert_pending(&mut sending, "the emit before bob confirmed").await;

    tab.receive().await;
    let delivered = finish(sending, "the emit after bob's return").await;
    assert_eq!(
        delivered.expect("delivered").recipients,
        [Member::from("bob")]
    );
}

#[tokio::test]
async fn two_tabs_of_one_user_both_receive_every_message() {
    let server = TestServer::start(builder()).await;
    let wire = Wire::new(&server);
    let mut tab1 = wire.tab("ann", "tab1");
    let mut tab2 = wire.tab("ann", "tab2");
    tab1.receive().await;
    tab2.receive().await;

    let mut sends = Vec::new();
    for n in 0..5 {
        sends.push(start(server.io.to_user("ann").emit("n", &n)).await);
    }
    let expected: Vec<_> = (0..5).map(|n| json!(n)).collect();

    let got1 = tab1.receive().await;
    assert_eq!(got1.data(), expected);
    // The first tab confirms: the messages are delivered to the user...
    tab1.receive().await;
    for send in sends {
        assert!(finish(send, "an emit confirmed by tab1").await.is_ok());
    }
    // ...and the second tab still gets every one of them, at the same positions.
    let got2 = tab2.receive().await;
    assert_eq!(got2.data(), expected);
    assert_eq!(got2.positions(), got1.positions());
}

#[tokio::test]
async fn a_message_to_one_client_reaches_only_that_tab() {
    let server = TestServer::start(builder()).await;
    let wire = Wire::new(&server);
    let mut tab1 = wire.tab("ann", "tab1");
    let mut tab2 = wire.tab("ann", "tab2");
    tab1.receive().await;
    tab2.receive().await;

    let tab2_id = ClientId::new("tab2").expect("a client id");
    let mut sending = start(
        server
            .io
            .to_client("ann", tab2_id)
            .emit("only", &"for tab2"),
    )
    .await;

    let other = tab1.receive().await;
    assert!(other.messages.is_empty(), "tab1 got {other:?}");
    // tab1's cursor now lies past the message; confirming it does not deliver tab2's message.
    tab1.receive().await;
    assert_pending(&mut sending, "the emit after only tab1 confirmed").await;

    let got = tab2.receive().await;
    assert_eq!(got.data(), [json!("for tab2")]);
    tab2.receive().await;
    assert!(finish(sending, "the emit to tab2").await.is_ok());

    // A new tab of the same user does not get it either.
    let late = wire.tab("ann", "tab3").receive().await;
    assert!(late.messages.is_empty(), "tab3 got {late:?}");
}

/// A sender's outcomes outlive it: the receipts of a message, kept as JSON, tell a new process
/// on the same storage what became of it — pending, then delivered once the recipient confirms;
/// expired when nobody did in time; lost when the storage lost its data.
#[tokio::test]
async fn receipts_tell_any_process_what_became_of_a_message() {
    use simpleio::storage::DeliveryState;
    use simpleio::{MemoryStorage, Receipt};

    let storage = MemoryStorage::new();
    let mut first = TestServer::start(builder().storage(storage.clone())).await;
    let kept = {
        let sending = first
            .io
            .recipients(["bob", "carol"])
            .emit("invoice", &42)
            .stored()
            .await
            .expect("stored");
        let short = first
            .io
            .to_user("dave")
            .ttl(Duration::from_millis(200))
            .emit("flash", &1)
            .stored()
            .await
            .expect("stored");
        let mut all = sending.receipts().to_vec();
        all.extend_from_slice(short.receipts());
        serde_json::to_string(&all).expect("receipts are JSON")
        // The sending futures go with this block, as they would with a process that died.
    };
    first.stop().await;
    drop(first);

    let second = TestServer::start(builder().storage(storage.clone())).await;
    let receipts: Vec<Receipt> = serde_json::from_str(&kept).expect("receipts read back");
    assert_eq!(receipts.len(), 3);
    assert_eq!(receipts[0].recipient, Member::from("bob"));
    let states = second.io.delivery(&receipts).await.expect("asked");
    assert_eq!(
        states[..2],
        [DeliveryState::Pending, DeliveryState::Pending]
    );

    let mut bob = Wire::new(&second).tab("bob", "bob-tab");
    assert_eq!(bob.receive().await.data(), [json!(42)]);
    bob.receive().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let states = second.io.delivery(&receipts).await.expect("asked");
    assert_eq!(
        states,
        [
            DeliveryState::Delivered,
            DeliveryState::Pending,
            DeliveryState::Expired
        ]
    );

    storage.reset();
    let states = second.io.delivery(&receipts).await.expect("asked");
    assert_eq!(states, [DeliveryState::Lost; 3]);
}
