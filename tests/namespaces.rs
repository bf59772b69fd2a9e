//! Namespaces (issue 5, item 3; spec §4a): independent channels over one polling connection,
//! each with its own handler and authorization. A client receives only the namespaces it polls
//! (`ns` named on the wire, left out for `/`), sends to one with `ns` on a message, and is
//! refused one that does not exist (the whole request) or that it may not use (a whole `GET`;
//! in a `POST`, each of its messages); a message in a namespace is confirmed only by a client
//! that reads it.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::request::Parts;
use serde_json::{Value, json};
use simpleio::{Incoming, Member, Namespace, Rejection, Reply, SimpleIoLayer, UserId};
use support::server::TestServer;
use support::wire::{Wire, assert_pending, eventually, finish, start, without_pos};
use tower::{BoxError, service_fn};

/// Every call of a handler: (the handler's namespace, the message's namespace, the event).
type Calls = Arc<Mutex<Vec<(String, String, String)>>>;

/// `/` and `/chat`, `/news`, and `/admin` (only for `root`). Each handler records its calls
/// and replies with its own name; `/chat`'s `say` also sends `said` back to the sender, through
/// the handler's `io`, which is in the message's namespace.
fn builder(calls: &Calls) -> simpleio::Builder {
    fn recording(name: &'static str, calls: Calls) -> impl Fn(Incoming) -> HandlerFuture + Clone {
        move |msg: Incoming| {
            let calls = calls.clone();
            Box::pin(async move {
                calls.lock().expect("calls").push((
                    name.to_owned(),
                    msg.namespace.to_string(),
                    msg.event.clone(),
                ));
                if name == "/chat" && msg.event == "say" {
                    let text: Value = msg.json()?;
                    let io = &msg.io;
                    drop(
                        io.to_user(msg.user.clone())
                            .emit("said", &text)
                            .stored()
                            .await?,
                    );
                }
                Ok::<_, BoxError>(Reply::json(&json!({"handled_by": name}))?)
            })
        }
    }
    let root_only = |_: &Parts, user: &UserId| {
        let allowed = user.as_str() == "root";
        async move {
            if allowed {
                Ok(())
            } else {
                Err(Rejection::forbidden("admins only"))
            }
        }
    };
    SimpleIoLayer::builder()
        .hold_time(Duration::from_millis(300))
        .recheck_interval(Duration::from_secs(20))
        .handler(service_fn(recording("/", calls.clone())))
        .namespace(Namespace::new("/chat").handler(service_fn(recording("/chat", calls.clone()))))
        .namespace(Namespace::new("/news").handler(service_fn(recording("/news", calls.clone()))))
        .namespace(
            Namespace::new("/admin")
                .authorize(root_only)
                .handler(service_fn(recording("/admin", calls.clone()))),
        )
}

type HandlerFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply, BoxError>> + Send>>;

fn calls() -> Calls {
    Arc::default()
}

fn taken(calls: &Calls) -> Vec<(String, String, String)> {
    std::mem::take(&mut *calls.lock().expect("calls"))
}

fn call(handler: &str, ns: &str, event: &str) -> (String, String, String) {
    (handler.to_owned(), ns.to_owned(), event.to_owned())
}

#[tokio::test]
async fn a_client_receives_the_namespaces_it_polls_and_no_other() {
    let calls = calls();
    let server = TestServer::start(builder(&calls)).await;
    let io = server.io.clone();
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    tab.receive_in("/,/chat").await;

    let _root = start(io.to_user("ann").emit("a", &1)).await;
    let _chat = start(io.of("/chat").to_user("ann").emit("b", &2)).await;
    let _news = start(io.of("/news").to_user("ann").emit("c", &3)).await;

    let got = tab.receive_in("/,/chat").await;
    // `ns` is on the wire for `/chat` and left out for `/`; `/news` is not there at all.
    assert_eq!(
        without_pos(&got),
        [
            json!({"event": "a", "data": 1}),
            json!({"ns": "/chat", "event": "b", "data": 2}),
        ]
    );
}

#[tokio::test]
async fn a_message_sent_in_a_namespace_reaches_that_namespaces_handler() {
    let calls = calls();
    let server = TestServer::start(builder(&calls)).await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    tab.receive_in("/,/chat").await;

    let acks = tab
        .send(json!([
            {"id": "m1", "ns": "/chat", "event": "say", "data": "hi chat"},
            {"id": "m2", "event": "say", "data": "hi root"},
        ]))
        .await;
    assert_eq!(
        acks,
        [
            json!({"id": "m1", "reply": {"handled_by": "/chat"}}),
            json!({"id": "m2", "reply": {"handled_by": "/"}}),
        ]
    );
    assert_eq!(
        taken(&calls),
        [call("/chat", "/chat", "say"), call("/", "/", "say")]
    );
    // The `/chat` handler's `io` sends in `/chat`.
    let got = tab.receive_in("/,/chat").await;
    assert_eq!(
        without_pos(&got),
        [json!({"ns": "/chat", "event": "said", "data": "hi chat"})]
    );
}

#[tokio::test]
async fn an_unknown_namespace_is_refused_on_get_and_post() {
    let calls = calls();
    let server = TestServer::start(builder(&calls)).await;
    let wire = Wire::new(&server);

    wire.get(Some("ann"), "client=tab1&ns=/,/nope")
        .await
        .assert_error(400, "unknown_namespace");
    let tab = wire.tab("ann", "tab1");
    tab.post(json!([
        {"id": "m1", "event": "say", "data": 1},
        {"id": "m2", "ns": "/nope", "event": "say", "data": 2},
    ]))
    .await
    .assert_error(400, "unknown_namespace");
    // Refused whole: not even the message in `/` was handled.
    assert!(taken(&calls).is_empty());
}

#[tokio::test]
async fn a_namespace_that_refuses_a_user_refuses_the_get_and_each_of_its_messages_in_a_post() {
    let calls = calls();
    let server = TestServer::start(builder(&calls)).await;
    let wire = Wire::new(&server);

    // A GET naming it gets the rejection, for the whole request (spec §4a).
    wire.get(Some("ann"), "client=tab1&ns=/,/admin")
        .await
        .assert_error(403, "forbidden");
    // In a POST, each of its messages gets the rejection as an error ack and is not handled;
    // the batch's other messages are.
    let ann = wire.tab("ann", "tab1");
    let forbidden = json!({"code": "forbidden", "message": "admins only"});
    let acks = ann
        .send(json!([{"id": "m1", "ns": "/admin", "event": "ban", "data": "bob"}]))
        .await;
    assert_eq!(acks, [json!({"id": "m1", "error": forbidden})]);
    let acks = ann
        .send(json!([
            {"id": "m2", "event": "say", "data": 1},
            {"id": "m3", "ns": "/admin", "event": "ban", "data": "bob"},
        ]))
        .await;
    assert_eq!(
        acks,
        [
            json!({"id": "m2", "reply": {"handled_by": "/"}}),
            json!({"id": "m3", "error": forbidden}),
        ]
    );
    assert_eq!(
        taken(&calls),
        [call("/", "/", "say")],
        "only the message to `/` was handled"
    );

    // The user it allows is served as usual.
    let mut root = wire.tab("root", "tab1");
    root.receive_in("/,/admin").await;
    let acks = root
        .send(json!([{"id": "m1", "ns": "/admin", "event": "ban", "data": "bob"}]))
        .await;
    assert_eq!(
        acks,
        [json!({"id": "m1", "reply": {"handled_by": "/admin"}})]
    );
    assert_eq!(taken(&calls), [call("/admin", "/admin", "ban")]);
}

#[tokio::test]
async fn a_message_in_a_namespace_a_client_does_not_read_waits_for_a_client_that_reads_it() {
    let calls = calls();
    let server = TestServer::start(builder(&calls)).await;
    let io = server.io.clone();
    let wire = Wire::new(&server);
    let mut reader = wire.tab("ann", "tab1");
    reader.receive_in("/,/chat").await;

    let mut news = start(io.of("/news").to_user("ann").emit("headline", &"rain")).await;
    let _marker = start(io.to_user("ann").emit("marker", &0)).await;
    let got = reader.receive_in("/,/chat").await;
    assert_eq!(without_pos(&got), [json!({"event": "marker", "data": 0})]);
    // Its cursor is now past the `/news` message, and it confirms it: that confirms nothing in
    // `/news`, which it does not read.
    reader.receive_in("/,/chat").await;
    assert_pending(
        &mut news,
        "the /news message confirmed by a client of / and /chat",
    )
    .await;

    let mut newsreader = wire.tab("ann", "tab2");
    let got = newsreader.receive_in("/news").await;
    assert_eq!(
        without_pos(&got),
        [json!({"ns": "/news", "event": "headline", "data": "rain"})]
    );
    assert_pending(&mut news, "the /news message before its reader confirmed").await;
    newsreader.receive_in("/news").await;
    let delivered = finish(news, "the /news message").await.expect("delivered");
    assert_eq!(delivered.recipients, [Member::from("ann")]);
}

#[tokio::test]
async fn volatile_messages_reach_only_clients_reading_their_namespace() {
    let calls = calls();
    let server = TestServer::start(
        builder(&calls)
            .hold_time(Duration::from_secs(20))
            .presence_ttl(Duration::from_secs(30)),
    )
    .await;
    let io = server.io.clone();
    let wire = Wire::new(&server);
    let mut tab = wire.tab("ann", "tab1");
    tab.receive_in("/,/chat").await;

    let poll = tokio::spawn({
        let (wire, query) = (wire.clone(), tab.query_in("/,/chat"));
        async move { wire.get(Some("ann"), &query).await }
    });
    eventually("ann's poll waits", || io.waiting_polls() == 1).await;
    // `/news` first: had it reached the poll, the poll would have answered with it alone.
    io.of("/news")
        .everyone()
        .volatile()
        .emit("flash", &"not for ann")
        .await
        .expect("published");
    io.of("/chat")
        .everyone()
        .volatile()
        .emit("typing", &"bob")
        .await
        .expect("published");
    let answer = finish(poll, "the poll, woken by the /chat volatile message").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        answer.body["volatile"],
        json!([{"ns": "/chat", "event": "typing", "data": "bob"}])
    );
}
