//! Users are kept apart by the identity function alone: nothing a request sends (a client id, a
//! cursor, an epoch, a message id, a user named in the query or body) lets one user read,
//! confirm or replay another's messages; and a request without identity gets only the identity
//! function's refusal.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use simpleio::{Incoming, Reply, SimpleIoLayer};
use support::server::TestServer;
use support::wire::{Wire, assert_pending, finish, start};
use tower::{BoxError, service_fn};

fn builder() -> simpleio::Builder {
    SimpleIoLayer::builder()
        .hold_time(Duration::from_millis(300))
        .recheck_interval(Duration::from_secs(20))
}

#[tokio::test]
async fn a_user_can_neither_read_nor_confirm_another_users_messages() {
    let server = TestServer::start(builder()).await;
    let wire = Wire::new(&server);
    let mut bob = wire.tab("bob", "bob-phone");
    let bob_start = bob.receive().await;
    let mut sending = start(server.io.to_user("bob").emit("secret", &"for bob only")).await;

    // ann uses bob's client id, with no cursor, bob's epoch and cursors from zero to huge.
    let ann = wire.tab("ann", "bob-phone");
    let epoch = bob_start.epoch.as_str();
    let mut seen = vec![ann.poll_from(None).await];
    for cursor in [0, bob_start.cursor, (1 << 53) - 1] {
        seen.push(ann.poll_from(Some((epoch, cursor))).await);
    }
    // Past the spec's bound of 2^53 a cursor is refused outright.
    wire.get(
        Some("ann"),
        &format!("client=bob-phone&epoch={epoch}&cursor={}", u64::MAX),
    )
    .await
    .assert_error(400, "invalid_query");
    for batch in &seen {
        assert!(
            batch.messages.is_empty(),
            "ann read bob's messages: {batch:?}"
        );
        assert!(
            batch.volatile.is_empty(),
            "ann read bob's messages: {batch:?}"
        );
    }
    // A user named in the query is not a user.
    let named = wire
        .get(Some("ann"), "client=bob-phone&user=bob&x-user=bob")
        .await
        .batch();
    assert!(
        named.messages.is_empty(),
        "ann read bob's messages: {named:?}"
    );
    assert_pending(&mut sending, "bob's emit after ann's polls").await;

    // bob himself still gets it, and confirms it.
    let got = bob.receive().await;
    assert_eq!(got.data(), [json!("for bob only")]);
    bob.receive().await;
    assert!(finish(sending, "bob's emit").await.is_ok());
}

#[tokio::test]
async fn a_message_id_is_scoped_to_its_user() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let server = TestServer::start(builder().handler(service_fn(move |msg: Incoming| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            Ok::<_, BoxError>(Reply::json(&format!(
                "{} said {}",
                msg.user,
                msg.data.get()
            ))?)
        }
    })))
    .await;
    let wire = Wire::new(&server);
    let message = json!([{"id": "same-1", "event": "say", "data": "hi"}]);

    let bob = wire.tab("bob", "phone").send(message.clone()).await;
    assert_eq!(bob[0]["reply"], "bob said \"hi\"");
    // ann sends the same client id and message id: her own message, not a replay of bob's.
    let ann = wire.tab("ann", "phone").send(message).await;
    assert_eq!(ann[0]["reply"], "ann said \"hi\"");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // A user named in the body is not believed: unknown fields are ignored, and the message
    // is ann's.
    let acks = wire
        .post(
            Some("ann"),
            &json!({"client": "phone", "user": "bob", "messages": [{"id": "x-1", "event": "say", "user": "bob"}]}),
        )
        .await
        .acks();
    assert_eq!(acks[0]["reply"], "ann said null");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_request_without_identity_gets_only_the_refusal() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let server = TestServer::start(builder().handler(service_fn(move |_: Incoming| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, BoxError>(Reply::none()) }
    })))
    .await;
    let wire = Wire::new(&server);
    let mut sending = start(server.io.to_user("ann").emit("secret", &"for ann")).await;
    let refusal = json!({"error": {"code": "unauthorized", "message": "missing x-user header"}});

    for query in ["client=tab1", "client=tab1&cursor=0&epoch=whatever", ""] {
        let answer = wire.get(None, query).await;
        answer.assert_error(401, "unauthorized");
        assert_eq!(answer.body, refusal, "GET ?{query}: {}", answer.text);
    }
    let answer = wire
        .post(
            None,
            &json!({"client": "tab1", "messages": [{"id": "m-1", "event": "e"}]}),
        )
        .await;
    answer.assert_error(401, "unauthorized");
    assert_eq!(answer.body, refusal);
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler ran");
    assert_pending(&mut sending, "ann's emit after anonymous polls").await;
}

#[tokio::test]
async fn a_layer_without_an_identity_function_refuses_everyone() {
    // The test server always sets one; build a layer without, behind a bare axum app.
    let (layer, io) = SimpleIoLayer::builder()
        .hold_time(Duration::from_millis(300))
        .build();
    let app = axum::Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move { axum::serve(listener, app).await });

    let wire = Wire::at(format!("http://{addr}/simpleio"));
    let answer = wire.get(Some("ann"), "client=tab1").await;
    answer.assert_error(401, "unauthorized");
    assert_eq!(io.waiting_polls(), 0);
    task.abort();
}
