//! The test kit (`simpleio::testing`): an in-process client through the real layer, as an
//! application's own tests would use it.

use std::time::Duration;

use serde_json::json;
use simpleio::testing::{EmitError, TestClient};
use simpleio::{
    HandlerError, Incoming, Member, Namespace, Rejection, Reply, SimpleIo, SimpleIoLayer, UserId,
};
use tower::{BoxError, service_fn};

/// Who an outer layer said the request is from (as a session layer would put it there).
#[derive(Clone)]
struct Principal(&'static str);

fn app() -> (SimpleIoLayer, SimpleIo) {
    SimpleIoLayer::builder()
        .identity(|parts: &http::request::Parts| {
            let from_header = parts
                .headers
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .map(UserId::from);
            let from_extension = parts
                .extensions
                .get::<Principal>()
                .map(|p| UserId::from(p.0));
            let user = from_header.or(from_extension);
            async move { user.ok_or_else(|| Rejection::unauthorized("sign in first")) }
        })
        .handler(service_fn(|msg: Incoming| async move {
            match msg.event.as_str() {
                "whoami" => Ok::<_, BoxError>(Reply::from(json!(msg.user.as_str()))),
                "fail" => Err(HandlerError::new("nope", "this always fails").into()),
                "shout" => {
                    let text: String = msg.json()?;
                    // Stored is enough: the reply must not wait for anyone to confirm.
                    drop(
                        msg.broadcast()
                            .emit("shouted", &text.to_uppercase())
                            .stored()
                            .await?,
                    );
                    Ok(Reply::none())
                }
                _ => Ok(Reply::none()),
            }
        }))
        .namespace(
            Namespace::new("/admin").handler(service_fn(|_msg: Incoming| async move {
                Ok::<_, BoxError>(Reply::from(json!("admin")))
            })),
        )
        .build()
}

#[tokio::test]
async fn an_emit_returns_the_handlers_reply_for_the_user_the_identity_function_named() {
    let (layer, _io) = app();
    let mut ann = TestClient::builder(&layer)
        .header("x-user", "ann")
        .connect()
        .await
        .expect("ann");
    assert_eq!(ann.emit("whoami", &()).await.expect("reply"), json!("ann"));
    let mut bob = TestClient::builder(&layer)
        .extension(Principal("bob"))
        .connect()
        .await
        .expect("bob");
    assert_eq!(bob.emit("whoami", &()).await.expect("reply"), json!("bob"));
    assert_eq!(
        bob.emit_in("/admin", "x", &()).await.expect("reply"),
        json!("admin")
    );
}

#[tokio::test]
async fn a_failing_handler_and_a_refused_identity_are_errors_with_their_codes() {
    let (layer, _io) = app();
    let mut ann = TestClient::builder(&layer)
        .header("x-user", "ann")
        .connect()
        .await
        .expect("ann");
    let failed = ann.emit("fail", &()).await.expect_err("it fails");
    assert!(matches!(failed, EmitError::Failed { .. }), "{failed:?}");
    assert_eq!(failed.code(), Some("nope"));

    let refused = TestClient::builder(&layer)
        .connect()
        .await
        .expect_err("no identity");
    assert_eq!(refused.code(), Some("unauthorized"));
}

#[tokio::test]
async fn a_message_taken_with_recv_is_confirmed_by_the_next_poll_and_not_before() {
    let (layer, io) = app();
    let mut ann = TestClient::builder(&layer)
        .header("x-user", "ann")
        .connect()
        .await
        .expect("ann");
    let sending = io
        .to_user("ann")
        .emit("news", &1)
        .stored()
        .await
        .expect("stored");
    let mut sending = tokio::spawn(sending);

    // Received into the client, not taken: not confirmed.
    ann.confirm().await.expect("poll");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut sending)
            .await
            .is_err(),
        "confirmed before the test took it"
    );
    let got = ann.recv().await.expect("a message");
    assert_eq!((got.event.as_str(), got.data.clone()), ("news", json!(1)));
    assert!(!got.is_volatile());
    ann.confirm().await.expect("poll");
    let delivered = tokio::time::timeout(Duration::from_secs(5), sending)
        .await
        .expect("resolved")
        .expect("join")
        .expect("delivered");
    assert_eq!(delivered.recipients, [Member::from("ann")]);
    // Nothing comes twice.
    assert_eq!(ann.try_recv().await.expect("poll"), None);
}

#[tokio::test]
async fn every_client_of_a_user_gets_what_another_user_broadcasts() {
    let (layer, _io) = app();
    let mut tab1 = TestClient::builder(&layer)
        .header("x-user", "ann")
        .connect()
        .await
        .expect("1");
    let mut tab2 = TestClient::builder(&layer)
        .header("x-user", "ann")
        .connect()
        .await
        .expect("2");
    let mut bob = TestClient::builder(&layer)
        .header("x-user", "bob")
        .connect()
        .await
        .expect("b");
    assert_ne!(tab1.client_id(), tab2.client_id());
    bob.emit("shout", &"hi").await.expect("shouted");
    for tab in [&mut tab1, &mut tab2] {
        let got = tab.recv_within(Duration::from_secs(5)).await.expect("poll");
        assert_eq!(got.map(|m| m.data), Some(json!("HI")));
    }
    // bob's own client is left out of his broadcast.
    assert_eq!(bob.try_recv().await.expect("poll"), None);
}

#[tokio::test]
async fn a_volatile_message_reaches_a_client_that_is_waiting() {
    let (layer, io) = app();
    let mut ann = TestClient::builder(&layer)
        .header("x-user", "ann")
        .connect()
        .await
        .expect("ann");
    let waiting = tokio::spawn(async move {
        let got = ann.recv().await;
        (ann, got)
    });
    // Volatile messages go to polls waiting now: send once ann's poll waits.
    while io.waiting_polls() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    io.to_user("ann")
        .volatile()
        .emit("typing", &"bob")
        .await
        .expect("sent");
    let (_ann, got) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("received")
        .expect("join");
    let got = got.expect("a message");
    assert!(got.is_volatile());
    assert_eq!(got.json::<String>().expect("a string"), "bob");
}

/// Needs the feature `test-util`, which makes the storage's clock follow tokio's.
#[cfg(feature = "test-util")]
#[tokio::test(start_paused = true)]
async fn under_a_paused_clock_a_ttl_passes_in_no_time() {
    use simpleio::{Failure, SendError};

    let (layer, io) = app();
    let mut ann = TestClient::builder(&layer)
        .header("x-user", "ann")
        .connect()
        .await
        .expect("ann");
    let sending = tokio::spawn(
        io.to_user("ann")
            .ttl(Duration::from_secs(600))
            .emit("n", &1),
    );
    // A held poll ends without waiting for real: the paused clock jumps to its end.
    let got = ann
        .recv_within(Duration::from_secs(60))
        .await
        .expect("poll");
    assert_eq!(got.map(|m| m.data), Some(json!(1)));
    // Taken and never confirmed; ten minutes later it has expired.
    tokio::time::advance(Duration::from_secs(601)).await;
    match sending.await.expect("join") {
        Err(SendError::NotDelivered(report)) => {
            assert_eq!(report.failed, [(Member::from("ann"), Failure::Expired)]);
        }
        other => panic!("{other:?}"),
    }
    drop(ann);
}

#[tokio::test]
async fn an_unknown_namespace_is_refused_with_its_code() {
    let (layer, _io) = app();
    let result = TestClient::builder(&layer)
        .header("x-user", "ann")
        .namespaces(["/", "/nowhere"])
        .connect()
        .await;
    assert_eq!(
        result.expect_err("refused").code(),
        Some("unknown_namespace")
    );
}
