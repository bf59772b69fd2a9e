//! Middleware (issue 5, item 8), with the code of `examples/middleware.rs`: a Tower layer on
//! the handler service authorizes each event — a forbidden one gets the error ack and never
//! reaches the handler inside, an allowed one does — composed with a timeout and a concurrency
//! limit; and `Namespace::authorize` refuses a namespace to whom it must.

mod support;

#[path = "../examples/middleware.rs"]
#[allow(dead_code)]
mod example;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use simpleio::{Incoming, Reply, SimpleIoLayer};
use support::server::TestServer;
use support::wire::Wire;
use tower::{BoxError, service_fn};

/// The messages that reached the inner handler: (user, event).
type Reached = Arc<Mutex<Vec<(String, String)>>>;

/// The example's layers around a handler that records what reaches it; `slow` takes a second.
fn recording(reached: &Reached) -> simpleio::Builder {
    let reached = reached.clone();
    let inner = service_fn(move |msg: Incoming| {
        let reached = reached.clone();
        async move {
            reached
                .lock()
                .expect("reached")
                .push((msg.user.to_string(), msg.event.clone()));
            if msg.event == "slow" {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok::<_, BoxError>(Reply::json(&json!({"handled": msg.event}))?)
        }
    });
    SimpleIoLayer::builder().handler(example::protect(inner, Duration::from_millis(200)))
}

fn taken(reached: &Reached) -> Vec<(String, String)> {
    std::mem::take(&mut *reached.lock().expect("reached"))
}

#[tokio::test]
async fn a_forbidden_event_gets_the_error_ack_and_never_reaches_the_inner_handler() {
    let reached = Reached::default();
    let server = TestServer::start(recording(&reached)).await;
    let wire = Wire::new(&server);

    let acks = wire
        .tab("ann", "tab1")
        .send(json!([{"id": "m1", "event": "ban", "data": "bob"}]))
        .await;
    assert_eq!(
        acks,
        [json!({"id": "m1", "error": {
            "code": "forbidden",
            "message": "only a moderator may send \"ban\"",
        }})]
    );
    assert!(taken(&reached).is_empty(), "the ban reached the handler");
}

#[tokio::test]
async fn an_allowed_event_reaches_the_inner_handler() {
    let reached = Reached::default();
    let server = TestServer::start(recording(&reached)).await;
    let wire = Wire::new(&server);

    // A moderator may ban; anyone may send other events.
    let acks = wire
        .tab("mia", "tab1")
        .send(json!([{"id": "m1", "event": "ban", "data": "bob"}]))
        .await;
    assert_eq!(acks, [json!({"id": "m1", "reply": {"handled": "ban"}})]);
    let acks = wire
        .tab("ann", "tab1")
        .send(json!([{"id": "m1", "event": "chat", "data": "hi"}]))
        .await;
    assert_eq!(acks, [json!({"id": "m1", "reply": {"handled": "chat"}})]);
    assert_eq!(
        taken(&reached),
        [
            ("mia".to_owned(), "ban".to_owned()),
            ("ann".to_owned(), "chat".to_owned()),
        ]
    );
}

#[tokio::test]
async fn the_timeout_layer_turns_a_slow_handler_into_an_error_ack() {
    let reached = Reached::default();
    let server = TestServer::start(recording(&reached)).await;
    let acks = Wire::new(&server)
        .tab("ann", "tab1")
        .send(json!([{"id": "m1", "event": "slow"}]))
        .await;
    // Any error but a `HandlerError` stays private: the client sees a generic one.
    assert_eq!(acks[0]["error"]["code"], "handler_error", "{acks:?}");
}

#[tokio::test]
async fn the_examples_server_lets_moderators_ban_and_only_admins_use_admin() {
    let server = TestServer::start(example::builder()).await;
    let wire = Wire::new(&server);
    let (ann, mia, root) = (
        wire.tab("ann", "tab1"),
        wire.tab("mia", "tab1"),
        wire.tab("root", "tab1"),
    );
    let ban = json!([{"id": "m1", "event": "ban", "data": "bob"}]);
    assert_eq!(ann.send(ban.clone()).await[0]["error"]["code"], "forbidden");
    assert_eq!(
        mia.send(ban).await,
        [json!({"id": "m1", "reply": {"banned": "bob", "by": "mia"}})]
    );

    // `/admin`: refused to a moderator (her messages there get the rejection as their ack,
    // her polls naming it the rejection itself); served to an admin.
    let stats = json!([{"id": "m2", "ns": "/admin", "event": "stats"}]);
    assert_eq!(
        mia.send(stats.clone()).await,
        [json!({"id": "m2", "error": {
            "code": "forbidden",
            "message": "the /admin namespace is for admins",
        }})]
    );
    wire.get(Some("mia"), "client=tab1&ns=/,/admin")
        .await
        .assert_error(403, "forbidden");
    let mut root_tab = root.clone();
    root_tab.receive_in("/,/admin").await;
    assert_eq!(
        root.send(stats).await,
        [json!({"id": "m2", "reply": {"event": "stats", "online": 1}})]
    );
}
