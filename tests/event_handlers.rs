//! The event router (`simpleio::Events`) over real HTTP: each message goes to the handler of
//! its event, in its namespace, or to the fallback; handlers take extractors (the payload
//! typed, the state, the sender, the message); a payload that does not fit is refused with
//! `invalid_data` naming the field; what a handler returns is the message's ack; and a Tower
//! layer given to one event applies to that event alone.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use simpleio::events::{Data, Event, Events, Extension, Handler, Json, State};
use simpleio::{
    ClientId, HandlerError, Incoming, MessageId, Namespace, Reply, SimpleIo, SimpleIoLayer, UserId,
};
use support::server::TestServer;
use support::wire::Wire;
use tower::ServiceBuilder;

/// The state of the routers under test: how many times a handler ran.
#[derive(Clone, Default)]
struct Counter(Arc<AtomicUsize>);

impl Counter {
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

fn builder() -> simpleio::Builder {
    SimpleIoLayer::builder()
        .hold_time(Duration::from_millis(300))
        .recheck_interval(Duration::from_secs(20))
}

/// One message, in the default namespace.
fn message(id: &str, event: &str, data: Value) -> Value {
    json!({"id": id, "event": event, "data": data})
}

/// One message, in namespace `ns`.
fn message_in(ns: &str, id: &str, event: &str, data: Value) -> Value {
    json!({"id": id, "event": event, "data": data, "ns": ns})
}

/// The single ack of sending `msg` as `ann`'s client `c1`.
async fn ack_of(server: &TestServer, msg: Value) -> Value {
    let acks = Wire::new(server).tab("ann", "c1").send(json!([msg])).await;
    assert_eq!(acks.len(), 1, "one ack per message: {acks:?}");
    acks.into_iter().next().expect("an ack")
}

fn error_code(ack: &Value) -> &str {
    ack["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error ack: {ack}"))
}

fn error_message(ack: &Value) -> &str {
    ack["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error ack: {ack}"))
}

#[derive(Deserialize)]
struct Sum {
    a: i64,
    b: i64,
}

#[derive(Serialize)]
struct Total {
    total: i64,
}

async fn add(Data(Sum { a, b }): Data<Sum>) -> Json<Total> {
    Json(Total { total: a + b })
}

async fn ping() -> &'static str {
    "pong"
}

#[tokio::test]
async fn each_event_reaches_its_own_handler() {
    let events: Events = Events::new().on("add", add).on("ping", ping);
    let server = TestServer::start(builder().handler(events)).await;
    let tab = Wire::new(&server).tab("ann", "c1");

    let acks = tab
        .send(json!([
            message("m1", "add", json!({"a": 2, "b": 3})),
            message("m2", "ping", Value::Null),
        ]))
        .await;

    assert_eq!(acks[0]["reply"], json!({"total": 5}));
    assert_eq!(acks[1]["reply"], json!("pong"));
}

#[tokio::test]
async fn one_event_name_goes_to_each_namespace_s_own_router() {
    let lobby: Events = Events::new().on("say", || async { "said in the lobby" });
    let chat: Events = Events::new().on("say", || async { "said in /chat" });
    let server = TestServer::start(
        builder()
            .handler(lobby)
            .namespace(Namespace::new("/chat").handler(chat)),
    )
    .await;
    let tab = Wire::new(&server).tab("ann", "c1");

    let acks = tab
        .send(json!([
            message("m1", "say", Value::Null),
            message_in("/chat", "m2", "say", Value::Null),
        ]))
        .await;

    assert_eq!(acks[0]["reply"], json!("said in the lobby"));
    assert_eq!(acks[1]["reply"], json!("said in /chat"));
}

#[tokio::test]
async fn an_event_without_a_handler_goes_to_the_fallback() {
    let events: Events = Events::new().on("ping", ping).fallback(
        |Event(name): Event, Data(data): Data<Value>| async move {
            Json(json!({"fallback": name, "data": data}))
        },
    );
    let server = TestServer::start(builder().handler(events)).await;

    let ack = ack_of(&server, message("m1", "wave", json!([1]))).await;

    assert_eq!(ack["reply"], json!({"fallback": "wave", "data": [1]}));
}

#[tokio::test]
async fn an_event_without_a_handler_or_a_fallback_is_refused_as_unknown() {
    let events: Events = Events::new().on("ping", ping);
    let server = TestServer::start(builder().handler(events)).await;

    let ack = ack_of(&server, message("m1", "wave", Value::Null)).await;

    assert_eq!(error_code(&ack), "unknown_event");
    assert!(error_message(&ack).contains("\"wave\""), "{ack}");
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Chat {
    text: String,
    to: Option<Recipient>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Recipient {
    name: String,
}

/// `invalid_data` quotes the value that did not fit, and the ack is kept for the dedup window:
/// its message is cut to 1 KiB, so a client cannot make the server keep its text, however long.
#[tokio::test]
async fn an_error_ack_quoting_a_huge_value_is_cut_to_a_kilobyte() {
    let events = Events::new().on("count", |Data(n): Data<u32>| async move { n.to_string() });
    let server = TestServer::start(builder().handler(events)).await;
    let tab = Wire::new(&server).tab("ann", "c1");
    let huge = "A".repeat(500_000);

    let acks = tab.send(json!([message("m1", "count", json!(huge))])).await;
    assert_eq!(error_code(&acks[0]), "invalid_data");
    let first = error_message(&acks[0]).to_owned();
    assert!(
        first.len() <= 1024,
        "an ack message of {} bytes",
        first.len()
    );
    assert!(
        first.starts_with("invalid data: invalid type: string \"AAA"),
        "{first}"
    );
    // The resend gets the recorded outcome: the same, cut.
    let again = tab.send(json!([message("m1", "count", json!(huge))])).await;
    assert_eq!(error_message(&again[0]), first);
}

#[tokio::test]
async fn a_payload_that_does_not_fit_is_refused_with_invalid_data_naming_the_field() {
    let ran = Counter::default();
    let events = Events::new()
        .on(
            "chat",
            |State(ran): State<Counter>, Data(_chat): Data<Chat>| async move {
                ran.0.fetch_add(1, Ordering::SeqCst);
            },
        )
        .with_state(ran.clone());
    let server = TestServer::start(builder().handler(events)).await;
    let tab = Wire::new(&server).tab("ann", "c1");

    let acks = tab
        .send(json!([
            message("m1", "chat", json!({"text": "hi", "to": {"name": 3}})),
            message("m2", "chat", json!({"to": null})),
            message("m3", "chat", Value::Null),
            message("m4", "chat", json!({"text": "fits"})),
        ]))
        .await;

    assert_eq!(error_code(&acks[0]), "invalid_data");
    assert_eq!(
        error_message(&acks[0]),
        "invalid data at `to.name`: invalid type: integer `3`, expected a string"
    );
    assert_eq!(error_code(&acks[1]), "invalid_data");
    assert_eq!(
        error_message(&acks[1]),
        "invalid data: missing field `text`"
    );
    assert_eq!(error_code(&acks[2]), "invalid_data");
    assert_eq!(acks[3]["reply"], Value::Null);
    assert_eq!(
        ran.get(),
        1,
        "the handler ran only for the payload that fits"
    );
}

#[tokio::test]
async fn state_given_once_reaches_every_handler_and_every_message() {
    let counter = Counter::default();
    let events = Events::new()
        .on("bump", |State(counter): State<Counter>| async move {
            Json(counter.0.fetch_add(1, Ordering::SeqCst) + 1)
        })
        .on("read", |State(counter): State<Counter>| async move {
            Json(counter.get())
        })
        .with_state(counter.clone());
    let server = TestServer::start(builder().handler(events)).await;
    let tab = Wire::new(&server).tab("ann", "c1");

    let acks = tab
        .send(json!([
            message("m1", "bump", Value::Null),
            message("m2", "bump", Value::Null),
            message("m3", "read", Value::Null),
        ]))
        .await;

    assert_eq!(acks[0]["reply"], json!(1));
    assert_eq!(acks[1]["reply"], json!(2));
    assert_eq!(acks[2]["reply"], json!(2));
    assert_eq!(
        counter.get(),
        2,
        "the application's own handle sees the same state"
    );
}

#[tokio::test]
async fn the_sender_s_ids_and_the_message_itself_are_extractors() {
    let events: Events = Events::new().on(
        "whoami",
        |user: UserId, client: ClientId, id: MessageId, msg: Incoming| async move {
            Json(json!({
                "user": user,
                "client": client.to_string(),
                "id": id.to_string(),
                "namespace": &*msg.namespace,
                "event": msg.event,
            }))
        },
    );
    let server =
        TestServer::start(builder().namespace(Namespace::new("/chat").handler(events))).await;

    let ack = ack_of(&server, message_in("/chat", "m7", "whoami", Value::Null)).await;

    assert_eq!(
        ack["reply"],
        json!({"user": "ann", "client": "c1", "id": "m7", "namespace": "/chat", "event": "whoami"})
    );
}

#[tokio::test]
async fn the_simpleio_extractor_sends_from_the_handler() {
    let events: Events = Events::new().on(
        "echo",
        |user: UserId, io: SimpleIo, Data(text): Data<String>| async move {
            io.to_user(user)
                .emit("echoed", &text)
                .stored()
                .await
                .map(drop)
        },
    );
    let server = TestServer::start(builder().handler(events)).await;
    let wire = Wire::new(&server);
    let mut tab = wire.tab("ann", "c1");
    tab.receive().await;

    let ack = ack_of(&server, message("m1", "echo", json!("hello"))).await;
    let batch = tab.receive().await;

    assert_eq!(ack["reply"], Value::Null);
    assert_eq!(support::wire::events(&batch), ["echoed"]);
    assert_eq!(batch.data(), [json!("hello")]);
}

#[tokio::test]
async fn what_a_handler_returns_is_the_message_s_ack() {
    let events: Events = Events::new()
        .on("unit", || async {})
        .on("reply", || async { Reply::json(&[1, 2]) })
        .on("value", || async { json!({"v": true}) })
        .on("refused", || async {
            Err::<(), _>(HandlerError::new("too_late", "the poll has closed"))
        })
        .on("failed", || async {
            Err::<(), _>(std::io::Error::other(
                "the database is down: secret details",
            ))
        });
    let server = TestServer::start(builder().handler(events)).await;
    let tab = Wire::new(&server).tab("ann", "c1");

    let acks = tab
        .send(json!([
            message("m1", "unit", Value::Null),
            message("m2", "reply", Value::Null),
            message("m3", "value", Value::Null),
            message("m4", "refused", Value::Null),
            message("m5", "failed", Value::Null),
        ]))
        .await;

    assert_eq!(acks[0], json!({"id": "m1", "reply": null}));
    assert_eq!(acks[1]["reply"], json!([1, 2]));
    assert_eq!(acks[2]["reply"], json!({"v": true}));
    assert_eq!(
        acks[3]["error"],
        json!({"code": "too_late", "message": "the poll has closed"})
    );
    assert_eq!(error_code(&acks[4]), "handler_error");
    assert!(
        !error_message(&acks[4]).contains("secret"),
        "internal errors stay in the server's logs: {}",
        acks[4]
    );
}

#[tokio::test]
async fn a_missing_extension_is_a_handler_error_and_an_optional_one_is_none() {
    #[derive(Clone)]
    struct Roles;
    let events: Events = Events::new()
        .on("needs", |_: Extension<Roles>| async { "ran" })
        .on("maybe", |roles: Option<Extension<Roles>>| async move {
            Json(roles.is_some())
        });
    let server = TestServer::start(builder().handler(events)).await;
    let tab = Wire::new(&server).tab("ann", "c1");

    let acks = tab
        .send(json!([
            message("m1", "needs", Value::Null),
            message("m2", "maybe", Value::Null),
        ]))
        .await;

    assert_eq!(error_code(&acks[0]), "handler_error");
    assert_eq!(acks[1]["reply"], json!(false));
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_millis(400)).await;
    "finally"
}

#[tokio::test]
async fn a_tower_layer_given_to_one_event_applies_to_that_event_alone() {
    let timed = ServiceBuilder::new()
        .timeout(Duration::from_millis(50))
        .service(slow.with_state(()));
    let events: Events = Events::new().on_service("timed", timed).on("untimed", slow);
    let server = TestServer::start(builder().handler(events)).await;
    let tab = Wire::new(&server).tab("ann", "c1");

    let acks = tab
        .send(json!([
            message("m1", "timed", Value::Null),
            message("m2", "untimed", Value::Null),
        ]))
        .await;

    assert_eq!(error_code(&acks[0]), "handler_error", "{acks:?}");
    assert_eq!(acks[1]["reply"], json!("finally"));
}

#[tokio::test]
async fn a_plain_service_keeps_working_beside_a_router() {
    let plain = tower::service_fn(|msg: Incoming| async move {
        Ok::<_, tower::BoxError>(Reply::json(&format!("plain got {}", msg.event))?)
    });
    let events: Events = Events::new().on("ping", ping);
    let server = TestServer::start(
        builder()
            .handler(plain)
            .namespace(Namespace::new("/chat").handler(events)),
    )
    .await;
    let tab = Wire::new(&server).tab("ann", "c1");

    let acks = tab
        .send(json!([
            message("m1", "ping", Value::Null),
            message_in("/chat", "m2", "ping", Value::Null),
        ]))
        .await;

    assert_eq!(acks[0]["reply"], json!("plain got ping"));
    assert_eq!(acks[1]["reply"], json!("pong"));
}
