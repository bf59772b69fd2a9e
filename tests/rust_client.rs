//! The Rust client (`simpleio::client`) against a real server on loopback.
#![cfg(feature = "client")]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use simpleio::client::{
    Client, ConnectionError, EmitError, Event, Events, Message, MessageKind, as_binary,
};
use simpleio::{
    Binary, Builder, HandlerError, Incoming, MemoryStorage, Namespace, Rejection, Reply,
    SimpleIoLayer, UserId,
};
use support::server::TestServer;
use tokio::time::timeout;
use tower::service_fn;

/// A generous bound for "this happens": far above what it takes, so a failure means it did not.
const SOON: Duration = Duration::from_secs(10);

/// Every message the handler saw, as `(event, data)`, in order.
type Seen = Arc<Mutex<Vec<(String, Value)>>>;

/// A server whose handler records each message and replies `{"echo": data}`; `add` replies with
/// the sum of its two numbers and `fail` with an error of code `refused`.
fn recording_server(seen: &Seen) -> Builder {
    let seen = seen.clone();
    SimpleIoLayer::builder()
        .hold_time(Duration::from_millis(500))
        .handler(service_fn(move |m: Incoming| {
            let seen = seen.clone();
            async move {
                let data: Value = m.json()?;
                lock(&seen).push((m.event.clone(), data.clone()));
                match m.event.as_str() {
                    "add" => {
                        let (a, b): (i64, i64) = m.json()?;
                        Ok::<_, tower::BoxError>(Reply::json(&(a + b))?)
                    }
                    "fail" => Err(HandlerError::new("refused", "this event always fails").into()),
                    _ => Ok(Reply::json(&json!({ "echo": data }))?),
                }
            }
        }))
}

fn lock(seen: &Seen) -> std::sync::MutexGuard<'_, Vec<(String, Value)>> {
    seen.lock().unwrap_or_else(|p| p.into_inner())
}

/// A client of user `user`, quick to retry.
fn connect(server: &TestServer, user: &str) -> (Client, Events) {
    Client::builder(server.url())
        .header("x-user", user)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .poll_timeout(Duration::from_secs(5))
        .connect()
        .expect("the client starts")
}

/// The next event that satisfies `want`, skipping the others.
async fn next_where(events: &mut Events, mut want: impl FnMut(&Event) -> bool) -> Event {
    timeout(SOON, async {
        loop {
            let event = events.recv().await.expect("the client is running");
            if want(&event) {
                return event;
            }
        }
    })
    .await
    .expect("the expected event arrives")
}

/// The next event must be the poll's refusal by the server with this status and code.
async fn expect_refusal(events: &mut Events, status: u16, code: &str) {
    match next_where(events, |_| true).await {
        Event::Disconnected(ConnectionError::Rejected {
            status: got_status,
            code: got_code,
            ..
        }) => assert_eq!((got_status, got_code.as_str()), (status, code)),
        other => panic!("expected a {status} {code} refusal, got {other:?}"),
    }
}

/// The next message, skipping connection events.
async fn next_message(events: &mut Events) -> Message {
    match next_where(events, |e| matches!(e, Event::Message(_))).await {
        Event::Message(m) => m,
        _ => unreachable!("filtered"),
    }
}

#[tokio::test]
async fn emit_resolves_with_the_handlers_reply() {
    let seen = Seen::default();
    let server = TestServer::start(recording_server(&seen)).await;
    let (client, _events) = connect(&server, "ann");

    let sum = timeout(SOON, client.emit("add", &[1, 2]))
        .await
        .expect("acked");
    assert_eq!(sum.expect("a reply"), json!(3));
    let echo = timeout(SOON, client.emit("chat", &json!({"text": "hi"})))
        .await
        .expect("acked");
    assert_eq!(echo.expect("a reply"), json!({"echo": {"text": "hi"}}));
    assert_eq!(lock(&seen).len(), 2);
    client.close().await;
}

#[tokio::test]
async fn an_error_ack_becomes_an_error_with_its_code() {
    let seen = Seen::default();
    let server = TestServer::start(recording_server(&seen)).await;
    let (client, _events) = connect(&server, "ann");

    let result = timeout(SOON, client.emit("fail", &json!(null)))
        .await
        .expect("acked");
    match result {
        Err(EmitError::Ack { code, message }) => {
            assert_eq!(code, "refused");
            assert_eq!(message, "this event always fails");
        }
        other => panic!("expected an error ack, got {other:?}"),
    }
    // Final: the handler saw it once, and the client did not resend it.
    assert_eq!(lock(&seen).len(), 1);
    client.close().await;
}

#[tokio::test]
async fn messages_emitted_together_reach_the_handler_once_each_in_order() {
    let seen = Seen::default();
    let server = TestServer::start(recording_server(&seen)).await;
    let (client, _events) = connect(&server, "ann");

    let replies = timeout(SOON, join_all((0..30).map(|i| client.emit("n", &i))))
        .await
        .expect("all acked");
    for (i, reply) in replies.into_iter().enumerate() {
        assert_eq!(reply.expect("a reply"), json!({ "echo": i }));
    }
    let handled: Vec<Value> = lock(&seen).iter().map(|(_, d)| d.clone()).collect();
    assert_eq!(handled, (0..30).map(|i| json!(i)).collect::<Vec<_>>());
    client.close().await;
}

#[tokio::test]
async fn server_messages_arrive_in_order_and_each_once() {
    let seen = Seen::default();
    // Five per response, so the twenty take several polls, each confirming the one before.
    let server = TestServer::start(recording_server(&seen).batch_limit(5)).await;
    let (client, mut events) = connect(&server, "ann");
    next_where(&mut events, |e| matches!(e, Event::Connected)).await;

    let io = server.io.clone();
    let sending =
        tokio::spawn(
            async move { join_all((0..20).map(|i| io.to_user("ann").emit("n", &i))).await },
        );
    let mut got = Vec::new();
    let mut last_pos = 0;
    for _ in 0..20 {
        let m = next_message(&mut events).await;
        assert_eq!(m.event, "n");
        let MessageKind::Stored { pos } = m.kind else {
            panic!("a stored message, got {m:?}");
        };
        assert!(pos > last_pos, "positions increase");
        last_pos = pos;
        got.push(m.data);
    }
    assert_eq!(got, (0..20).map(|i| json!(i)).collect::<Vec<_>>());

    // Every one was confirmed to its sender.
    let sent = timeout(SOON, sending)
        .await
        .expect("confirmed")
        .expect("joined");
    assert!(sent.iter().all(Result::is_ok), "{sent:?}");

    // Nothing comes twice: the next message is the next one sent.
    let io = server.io.clone();
    tokio::spawn(async move { io.to_user("ann").emit("after", &"last").await });
    let m = next_message(&mut events).await;
    assert_eq!((m.event.as_str(), &m.data), ("after", &json!("last")));
    client.close().await;
}

#[tokio::test]
async fn a_volatile_message_reaches_a_waiting_client() {
    let seen = Seen::default();
    let server = TestServer::start(recording_server(&seen).hold_time(Duration::from_secs(5))).await;
    let (client, mut events) = connect(&server, "ann");
    // An idle poll is answered only after the hold time, so `Connected` would come late.
    wait_until(|| server.io.waiting_polls() == 1).await;

    server
        .io
        .to_user("ann")
        .volatile()
        .emit("typing", &json!({"from": "bob"}))
        .await
        .expect("published");
    let m = next_message(&mut events).await;
    assert_eq!(m.kind, MessageKind::Volatile);
    assert_eq!(
        (m.event.as_str(), &m.data),
        ("typing", &json!({"from": "bob"}))
    );
    client.close().await;
}

#[tokio::test]
async fn the_client_reconnects_after_a_restart_and_nothing_is_lost_or_repeated() {
    let seen = Seen::default();
    let mut server = TestServer::start(recording_server(&seen)).await;
    let (client, mut events) = connect(&server, "ann");
    next_where(&mut events, |e| matches!(e, Event::Connected)).await;

    let io = server.io.clone();
    tokio::spawn(async move { io.to_user("ann").emit("n", &0).await });
    assert_eq!(next_message(&mut events).await.data, json!(0));

    server.stop().await;
    let down = next_where(&mut events, |e| matches!(e, Event::Disconnected(_))).await;
    assert!(
        matches!(down, Event::Disconnected(ConnectionError::Http(_))),
        "{down:?}"
    );

    // Sent to the user while the client cannot reach the server: kept in storage.
    let io = server.io.clone();
    let sending =
        tokio::spawn(
            async move { join_all((1..=5).map(|i| io.to_user("ann").emit("n", &i))).await },
        );
    server.restart().await;

    next_where(&mut events, |e| matches!(e, Event::Connected)).await;
    for i in 1..=5 {
        assert_eq!(next_message(&mut events).await.data, json!(i));
    }
    let sent = timeout(SOON, sending)
        .await
        .expect("confirmed")
        .expect("joined");
    assert!(sent.iter().all(Result::is_ok), "{sent:?}");

    let io = server.io.clone();
    tokio::spawn(async move { io.to_user("ann").emit("n", &6).await });
    assert_eq!(next_message(&mut events).await.data, json!(6), "no repeats");
    client.close().await;
}

#[tokio::test]
async fn messages_emitted_while_the_server_is_down_are_sent_once_it_is_back() {
    let seen = Seen::default();
    let mut server = TestServer::start(recording_server(&seen)).await;
    let (client, mut events) = connect(&server, "ann");
    next_where(&mut events, |e| matches!(e, Event::Connected)).await;

    server.stop().await;
    next_where(&mut events, |e| matches!(e, Event::Disconnected(_))).await;
    let emitting = {
        let client = client.clone();
        tokio::spawn(async move {
            join_all((0..3).map(|i| client.emit("chat", &json!({ "n": i })))).await
        })
    };
    server.restart().await;

    let replies = timeout(SOON, emitting)
        .await
        .expect("acked")
        .expect("joined");
    for (i, reply) in replies.into_iter().enumerate() {
        assert_eq!(reply.expect("a reply"), json!({"echo": {"n": i}}));
    }
    let handled: Vec<Value> = lock(&seen).iter().map(|(_, d)| d.clone()).collect();
    assert_eq!(handled, [json!({"n": 0}), json!({"n": 1}), json!({"n": 2})]);
    client.close().await;
}

#[tokio::test]
async fn a_post_that_times_out_is_resent_and_handled_once() {
    let calls = Arc::new(Mutex::new(0usize));
    let handler_calls = calls.clone();
    let server = TestServer::start(
        SimpleIoLayer::builder()
            .hold_time(Duration::from_millis(500))
            .pending_wait(Duration::from_millis(100))
            // Should the server drop the first handling with its connection, a resend may
            // handle the message again after this; the test then fails instead of hanging.
            .handler_lease(Duration::from_secs(3))
            .handler(service_fn(move |_m: Incoming| {
                let calls = handler_calls.clone();
                async move {
                    let n = {
                        let mut calls = calls.lock().unwrap_or_else(|p| p.into_inner());
                        *calls += 1;
                        *calls
                    };
                    // Slower than the client's timeout: the client gives up on the response
                    // and sends the message again while this still runs.
                    tokio::time::sleep(Duration::from_millis(800)).await;
                    Ok::<_, tower::BoxError>(Reply::json(&n)?)
                }
            })),
    )
    .await;
    let (client, _events) = Client::builder(server.url())
        .header("x-user", "ann")
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .send_timeout(Duration::from_millis(300))
        .pending_delay(Duration::from_millis(50))
        .connect()
        .expect("the client starts");

    // Resent with the same id, the message is acknowledged `pending` while the first handling
    // runs, and asked about again until its outcome is known: the first call's reply.
    let reply = timeout(SOON, client.emit("slow", &()))
        .await
        .expect("acked");
    assert_eq!(reply.expect("a reply"), json!(1));
    assert_eq!(*calls.lock().unwrap_or_else(|p| p.into_inner()), 1);
    client.close().await;
}

#[tokio::test]
async fn a_batch_over_the_servers_limit_is_split() {
    let seen = Seen::default();
    let server = TestServer::start(recording_server(&seen).max_messages_per_request(2)).await;
    let (client, _events) = connect(&server, "ann");

    let replies = timeout(SOON, join_all((0..7).map(|i| client.emit("n", &i))))
        .await
        .expect("all acked");
    assert!(replies.iter().all(Result::is_ok), "{replies:?}");
    let handled: Vec<Value> = lock(&seen).iter().map(|(_, d)| d.clone()).collect();
    assert_eq!(handled, (0..7).map(|i| json!(i)).collect::<Vec<_>>());
    client.close().await;
}

#[tokio::test]
async fn a_message_the_server_refuses_fails_alone() {
    let seen = Seen::default();
    let server = TestServer::start(recording_server(&seen).max_data_depth(2)).await;
    let (client, _events) = connect(&server, "ann");

    let (refused, fine) = timeout(SOON, async {
        tokio::join!(client.emit("deep", &json!([[[1]]])), client.emit("ok", &2))
    })
    .await
    .expect("both settled");
    match refused {
        Err(EmitError::Rejected { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (400, "data_too_deep"));
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(fine.expect("a reply"), json!({"echo": 2}));
    assert_eq!(lock(&seen).as_slice(), [("ok".to_owned(), json!(2))]);
    client.close().await;
}

/// Event names are checked against the server's limit once its handshake told it, not the
/// builder's: a longer one than the builder's default is sent, one past the server's fails at
/// once.
#[tokio::test]
async fn event_names_are_checked_against_the_servers_limit() {
    let seen = Seen::default();
    let server = TestServer::start(recording_server(&seen).max_event_len(200)).await;
    let (client, mut events) = connect(&server, "ann");
    next_where(&mut events, |e| matches!(e, Event::Connected)).await;

    let long = "e".repeat(150);
    let reply = timeout(SOON, client.emit(long.as_str(), &1)).await;
    assert_eq!(reply.expect("acked").expect("a reply"), json!({"echo": 1}));
    let too_long = "e".repeat(201);
    let refused = timeout(SOON, client.emit(too_long.as_str(), &2)).await;
    assert!(
        matches!(refused, Ok(Err(EmitError::InvalidEvent { max: 200 }))),
        "{refused:?}"
    );
    assert_eq!(lock(&seen).as_slice(), [(long, json!(1))]);
    client.close().await;
}

/// Spec §8: a message answered `pending` round after round is given up once its retry window
/// has passed, as one that is never answered is: past the server's dedup window a resend could
/// be handled twice.
#[tokio::test]
async fn a_message_still_pending_past_the_retry_window_fails() {
    let server = TestServer::start(
        SimpleIoLayer::builder()
            .hold_time(Duration::from_millis(500))
            .handler_lease(Duration::from_millis(300))
            .pending_wait(Duration::from_millis(100))
            .handler(service_fn(|_m: Incoming| async {
                // Longer than the test: the first request of the message is still handling it.
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, tower::BoxError>(Reply::json(&json!("done"))?)
            })),
    )
    .await;
    let (client, mut events) = Client::builder(server.url())
        .header("x-user", "ann")
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .retry_window(Duration::from_millis(800))
        .connect()
        .expect("the client starts");
    next_where(&mut events, |e| matches!(e, Event::Connected)).await;
    // The same message, sent first by another request under the client's id: its first id.
    let tab = support::wire::Wire::new(&server).tab("ann", client.id());
    let first = format!("{}-1", client.id());
    let holder =
        tokio::spawn(async move { tab.send(json!([{"id": first, "event": "slow"}])).await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let outcome = timeout(SOON, client.emit("slow", &1))
        .await
        .expect("settled");
    assert!(
        matches!(outcome, Err(EmitError::StillPending { after }) if after >= Duration::from_millis(800)),
        "{outcome:?}"
    );
    holder.abort();
    client.close().await;
}

#[tokio::test]
async fn a_refused_sign_in_is_reported() {
    let seen = Seen::default();
    let server = TestServer::start(recording_server(&seen)).await;
    let (client, mut events) = Client::builder(server.url())
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect()
        .expect("the client starts");

    expect_refusal(&mut events, 401, "unauthorized").await;
    client.close().await;
}

#[tokio::test]
async fn close_ends_the_waiting_poll_and_the_events() {
    let seen = Seen::default();
    // A long hold: the poll ends early only if closing the client ends it.
    let server =
        TestServer::start(recording_server(&seen).hold_time(Duration::from_secs(20))).await;
    let (client, mut events) = connect(&server, "ann");
    wait_until(|| server.io.waiting_polls() == 1).await;

    timeout(SOON, client.close()).await.expect("closed");
    assert!(client.is_closed());
    wait_until(|| server.io.waiting_polls() == 0).await;
    assert!(matches!(
        client.emit("chat", &"after").await,
        Err(EmitError::Closed)
    ));
    timeout(SOON, async { while events.recv().await.is_some() {} })
        .await
        .expect("the events end");
}

#[tokio::test]
async fn close_fails_the_messages_not_yet_acknowledged() {
    let seen = Seen::default();
    let mut server = TestServer::start(recording_server(&seen)).await;
    let (client, mut events) = connect(&server, "ann");
    server.stop().await;
    next_where(&mut events, |e| matches!(e, Event::Disconnected(_))).await;

    let stuck = tokio::spawn(client.emit("chat", &"never sent"));
    tokio::task::yield_now().await;
    client.close().await;
    let stuck = timeout(SOON, stuck)
        .await
        .expect("settled")
        .expect("joined");
    assert!(matches!(stuck, Err(EmitError::Closed)), "{stuck:?}");
    assert!(lock(&seen).is_empty());
}

#[tokio::test]
async fn a_reset_storage_resyncs_the_client() {
    let seen = Seen::default();
    let storage = MemoryStorage::new();
    let server = TestServer::start(recording_server(&seen).storage(storage.clone())).await;
    let (client, mut events) = connect(&server, "ann");
    next_where(&mut events, |e| matches!(e, Event::Connected)).await;

    let io = server.io.clone();
    tokio::spawn(async move { io.to_user("ann").emit("n", &1).await });
    assert_eq!(next_message(&mut events).await.data, json!(1));

    storage.reset();
    let io = server.io.clone();
    tokio::spawn(async move { io.to_user("ann").emit("n", &2).await });
    next_where(&mut events, |e| matches!(e, Event::Resynced)).await;
    assert_eq!(next_message(&mut events).await.data, json!(2));
    client.close().await;
}

#[tokio::test]
async fn a_slow_reader_holds_back_confirmation() {
    let seen = Seen::default();
    let server = TestServer::start(recording_server(&seen)).await;
    let (client, mut events) = Client::builder(server.url())
        .header("x-user", "ann")
        .event_buffer(1)
        .connect()
        .expect("the client starts");
    next_where(&mut events, |e| matches!(e, Event::Connected)).await;

    let io = server.io.clone();
    let mut sending =
        tokio::spawn(
            async move { join_all((0..3).map(|i| io.to_user("ann").emit("n", &i))).await },
        );
    // Nobody reads: the client cannot hand the messages over, so it does not confirm them.
    assert!(
        timeout(Duration::from_millis(500), &mut sending)
            .await
            .is_err(),
        "confirmed before the application had the messages"
    );
    for i in 0..3 {
        assert_eq!(next_message(&mut events).await.data, json!(i));
    }
    let sent = timeout(SOON, sending)
        .await
        .expect("confirmed")
        .expect("joined");
    assert!(sent.iter().all(Result::is_ok), "{sent:?}");
    client.close().await;
}

/// Every message a namespace's handler saw, as `(namespace, event, data)`, in order.
type SeenIn = Arc<Mutex<Vec<(String, String, Value)>>>;

/// A handler that records each message with its namespace and replies `{"ns", "echo"}`.
fn recording_handler(
    seen: SeenIn,
) -> impl tower::Service<
    Incoming,
    Response = Reply,
    Error = tower::BoxError,
    Future = impl Future<Output = Result<Reply, tower::BoxError>> + Send,
> + Clone
+ Send
+ Sync
+ 'static {
    service_fn(move |m: Incoming| {
        let seen = seen.clone();
        async move {
            let data: Value = m.json()?;
            seen.lock().unwrap_or_else(|p| p.into_inner()).push((
                m.namespace.to_string(),
                m.event.clone(),
                data.clone(),
            ));
            Ok::<_, tower::BoxError>(Reply::json(&json!({ "ns": &*m.namespace, "echo": data }))?)
        }
    })
}

/// Lets `root` only into the namespace.
fn only_root(
    _parts: &http::request::Parts,
    user: &UserId,
) -> std::future::Ready<Result<(), Rejection>> {
    std::future::ready(if user.as_str() == "root" {
        Ok(())
    } else {
        Err(Rejection::forbidden("admins only"))
    })
}

/// A server with `/` plus `/chat`, `/news` and `/admin` (for `root` only), each handler
/// recording into `seen`.
fn namespaced_server(seen: &SeenIn) -> Builder {
    SimpleIoLayer::builder()
        .hold_time(Duration::from_millis(500))
        .handler(recording_handler(seen.clone()))
        .namespace(Namespace::new("/chat").handler(recording_handler(seen.clone())))
        .namespace(Namespace::new("/news").handler(recording_handler(seen.clone())))
        .namespace(
            Namespace::new("/admin")
                .authorize(only_root)
                .handler(recording_handler(seen.clone())),
        )
}

fn seen_in(seen: &SeenIn) -> Vec<(String, String, Value)> {
    seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

#[tokio::test]
async fn a_client_receives_the_namespaces_it_subscribed_to_and_no_others() {
    let seen = SeenIn::default();
    let server = TestServer::start(namespaced_server(&seen)).await;
    let (client, mut events) = Client::builder(server.url())
        .header("x-user", "ann")
        .namespaces(["/", "/chat"])
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect()
        .expect("the client starts");
    next_where(&mut events, |e| matches!(e, Event::Connected)).await;

    // Stored first: were /news delivered, it would be the first message to arrive.
    let news = server
        .io
        .of("/news")
        .to_user("ann")
        .emit("headline", &"not for you")
        .stored()
        .await
        .expect("stored");
    let news = tokio::spawn(news);
    let chat = server
        .io
        .of("/chat")
        .to_user("ann")
        .emit("said", &json!({"from": "bob", "text": "yo"}))
        .stored()
        .await
        .expect("stored");
    let chat = tokio::spawn(chat);
    let m = next_message(&mut events).await;
    assert_eq!(
        (m.namespace.as_str(), m.event.as_str(), &m.data),
        ("/chat", "said", &json!({"from": "bob", "text": "yo"}))
    );
    let io = server.io.clone();
    let root = tokio::spawn(async move { io.to_user("ann").emit("status", &"up").await });
    let m = next_message(&mut events).await;
    assert_eq!(
        (m.namespace.as_str(), m.event.as_str(), &m.data),
        ("/", "status", &json!("up"))
    );

    // Both confirmed; the /news one is not: no client of ann's receives /news.
    let chat = timeout(SOON, chat)
        .await
        .expect("confirmed")
        .expect("joined");
    assert!(chat.is_ok(), "{chat:?}");
    let root = timeout(SOON, root)
        .await
        .expect("confirmed")
        .expect("joined");
    assert!(root.is_ok(), "{root:?}");
    assert!(!news.is_finished(), "a /news message was confirmed");

    // Volatile messages name their namespace too, and follow the same subscription.
    wait_until(|| server.io.waiting_polls() == 1).await;
    server
        .io
        .of("/news")
        .to_user("ann")
        .volatile()
        .emit("flash", &1)
        .await
        .expect("published");
    server
        .io
        .of("/chat")
        .to_user("ann")
        .volatile()
        .emit("typing", &json!({"from": "bob"}))
        .await
        .expect("published");
    let m = next_message(&mut events).await;
    assert_eq!(m.kind, MessageKind::Volatile);
    assert_eq!(
        (m.namespace.as_str(), m.event.as_str()),
        ("/chat", "typing")
    );
    news.abort();
    client.close().await;
}

#[tokio::test]
async fn emitting_into_a_namespace_reaches_its_handler() {
    let seen = SeenIn::default();
    let server = TestServer::start(namespaced_server(&seen)).await;
    // Sending needs no subscription: this client receives `/` only.
    let (client, _events) = connect(&server, "ann");

    let chat = client.of("/chat");
    assert_eq!((client.namespace(), chat.namespace()), ("/", "/chat"));
    let reply = timeout(SOON, chat.emit("say", &json!({"text": "hi"})))
        .await
        .expect("acked");
    assert_eq!(
        reply.expect("a reply"),
        json!({"ns": "/chat", "echo": {"text": "hi"}})
    );
    let reply = timeout(SOON, client.emit("say", &"in the root"))
        .await
        .expect("acked");
    assert_eq!(
        reply.expect("a reply"),
        json!({"ns": "/", "echo": "in the root"})
    );
    assert_eq!(
        seen_in(&seen),
        [
            ("/chat".to_owned(), "say".to_owned(), json!({"text": "hi"})),
            ("/".to_owned(), "say".to_owned(), json!("in the root")),
        ]
    );

    // A namespace the server does not have is refused with its code; one with a malformed
    // name is not even sent.
    match timeout(SOON, client.of("/nope").emit("say", &1))
        .await
        .expect("settled")
    {
        Err(EmitError::Rejected { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (400, "unknown_namespace"));
        }
        other => panic!("expected unknown_namespace, got {other:?}"),
    }
    assert!(matches!(
        client.of("chat").emit("say", &1).await,
        Err(EmitError::InvalidNamespace { namespace, .. }) if namespace == "chat"
    ));
    assert_eq!(seen_in(&seen).len(), 2);
    client.close().await;
}

#[tokio::test]
async fn a_namespace_the_user_may_not_use_is_refused_with_the_servers_code() {
    let seen = SeenIn::default();
    let server = TestServer::start(namespaced_server(&seen)).await;

    // Receiving: the poll names /admin, so every poll is refused, with the server's code.
    let (client, mut events) = Client::builder(server.url())
        .header("x-user", "ann")
        .namespaces(["/", "/admin"])
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect()
        .expect("the client starts");
    expect_refusal(&mut events, 403, "forbidden").await;
    client.close().await;

    // The user it is for gets in.
    let (client, mut events) = Client::builder(server.url())
        .header("x-user", "root")
        .namespaces(["/admin"])
        .connect()
        .expect("the client starts");
    assert!(matches!(
        next_where(&mut events, |_| true).await,
        Event::Connected
    ));
    client.close().await;

    // A namespace the server does not have.
    let (client, mut events) = Client::builder(server.url())
        .header("x-user", "ann")
        .namespaces(["/", "/nope"])
        .connect()
        .expect("the client starts");
    expect_refusal(&mut events, 400, "unknown_namespace").await;
    client.close().await;

    // Sending: a message to a namespace the user may not use is refused with an error ack
    // carrying the server's code (spec §4a), at once; a message to `/` in the same batch is
    // handled.
    let (client, _events) = Client::builder(server.url())
        .header("x-user", "ann")
        .connect()
        .expect("the client starts");
    let (root, admin) = timeout(SOON, async {
        tokio::join!(
            client.emit("hello", &1),
            client.of("/admin").emit("shutdown", &())
        )
    })
    .await
    .expect("both settled");
    assert_eq!(root.expect("a reply"), json!({"ns": "/", "echo": 1}));
    match admin {
        Err(EmitError::Ack { code, .. }) => assert_eq!(code, "forbidden"),
        other => panic!("expected the refusal, got {other:?}"),
    }
    assert_eq!(
        seen_in(&seen),
        [("/".to_owned(), "hello".to_owned(), json!(1))]
    );
    client.close().await;
}

/// A payload with bytes in it, as both sides declare it.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Upload {
    name: String,
    content: Binary,
}

#[tokio::test]
async fn bytes_round_trip_both_ways() {
    let received = Arc::new(Mutex::new(Vec::<Upload>::new()));
    let handler_received = received.clone();
    let server = TestServer::start(
        SimpleIoLayer::builder()
            .hold_time(Duration::from_millis(500))
            .handler(service_fn(move |m: Incoming| {
                let received = handler_received.clone();
                async move {
                    let upload: Upload = m.json()?;
                    let reversed: Vec<u8> = upload.content.iter().rev().copied().collect();
                    received
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(upload);
                    Ok::<_, tower::BoxError>(Reply::json(
                        &json!({ "reversed": Binary::from(reversed) }),
                    )?)
                }
            })),
    )
    .await;
    let (client, mut events) = connect(&server, "ann");
    next_where(&mut events, |e| matches!(e, Event::Connected)).await;

    // Client to server, and the reply back: every byte value survives.
    let all: Vec<u8> = (0..=255).collect();
    let upload = Upload {
        name: "all.bin".into(),
        content: Binary::from(all.clone()),
    };
    let reply = timeout(SOON, client.emit("upload", &upload))
        .await
        .expect("acked")
        .expect("a reply");
    assert_eq!(
        received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_slice(),
        [upload]
    );
    let reversed = as_binary(&reply["reversed"]).expect("bytes in the reply");
    assert_eq!(
        &reversed[..],
        &all.iter().rev().copied().collect::<Vec<u8>>()[..]
    );

    // Server to client.
    let io = server.io.clone();
    tokio::spawn(async move {
        io.to_user("ann")
            .emit(
                "file",
                &Upload {
                    name: "hello.bin".into(),
                    content: Binary::from(vec![0u8, 159, 146, 150]),
                },
            )
            .await
    });
    let m = next_message(&mut events).await;
    assert_eq!(m.data["content"], json!({"$bytes": "AJ+Slg=="}));
    let file: Upload = m.json().expect("an upload");
    assert_eq!(file.name, "hello.bin");
    assert_eq!(&file.content[..], &[0, 159, 146, 150]);
    assert_eq!(as_binary(&m.data["content"]), Some(file.content));
    client.close().await;
}

/// Waits until `condition` holds, looking every few milliseconds, for at most [`SOON`].
async fn wait_until(condition: impl Fn() -> bool) {
    timeout(SOON, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the condition comes true");
}

/// A backlog larger than the client takes in one response (40 messages of 1 MB while the user
/// was offline) comes in responses the server bounds by bytes, so the client reads all of it.
#[tokio::test]
async fn a_backlog_of_large_messages_reaches_the_client_in_bounded_responses() {
    let seen = Seen::default();
    let server = TestServer::start(recording_server(&seen).max_message_bytes(1_100_000)).await;
    let big = "z".repeat(1_000_000);
    for i in 0..40 {
        // Stored is enough here: the client confirms them below.
        drop(
            server
                .io
                .to_user("ann")
                .emit("big", &format!("{i}:{big}"))
                .stored()
                .await
                .expect("stored"),
        );
    }
    let (client, mut events) = connect(&server, "ann");
    for i in 0..40 {
        let m = next_message(&mut events).await;
        let text = m.data.as_str().unwrap_or_default();
        assert!(
            text.starts_with(&format!("{i}:")),
            "message {i} out of order"
        );
        assert_eq!(text.len(), big.len() + format!("{i}:").len());
    }
    client.close().await;
}

/// Spec v1.1 §6: the client sizes its POSTs by the limits of the server's handshake, so it never
/// meets `413 too_many_messages` to learn them.
#[tokio::test]
async fn the_handshakes_limits_size_the_batches() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let seen = Seen::default();
    let (layer, _io) = recording_server(&seen)
        .max_messages_per_request(2)
        .identity(support::server::header_identity)
        .build();
    let too_large = Arc::new(AtomicUsize::new(0));
    let counted = too_large.clone();
    let app = axum::Router::new()
        .layer(layer)
        .layer(axum::middleware::map_response(
            move |response: axum::response::Response| {
                if response.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
                std::future::ready(response)
            },
        ));
    let running = support::server::RunningApp::start(app).await;
    let (client, mut events) = Client::builder(running.url("/simpleio"))
        .header("x-user", "ann")
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect()
        .expect("the client starts");
    next_where(&mut events, |e| matches!(e, Event::Connected)).await;
    let replies = timeout(SOON, join_all((0..7).map(|i| client.emit("n", &i))))
        .await
        .expect("all acked");
    assert!(replies.iter().all(Result::is_ok), "{replies:?}");
    assert_eq!(lock(&seen).len(), 7);
    assert_eq!(too_large.load(Ordering::SeqCst), 0, "the client met a 413");
    client.close().await;
}

/// Spec v1.1 §5: a `429`'s `Retry-After` is a floor under the client's backoff.
#[tokio::test]
async fn a_429s_retry_after_is_waited_for() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let seen = Seen::default();
    let (layer, _io) = recording_server(&seen)
        .identity(support::server::header_identity)
        .build();
    let refusals = Arc::new(AtomicUsize::new(1));
    let posts = Arc::new(Mutex::new(Vec::new()));
    let (left, times) = (refusals.clone(), posts.clone());
    let app = axum::Router::new()
        .layer(layer)
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let (left, times) = (left.clone(), times.clone());
                async move {
                    if request.method() == http::Method::POST {
                        times.lock().expect("lock").push(std::time::Instant::now());
                        let refuse = left
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok();
                        if refuse {
                            let body =
                                r#"{"error":{"code":"too_many_in_progress","message":"later"}}"#;
                            return axum::response::Response::builder()
                                .status(429)
                                .header("retry-after", "1")
                                .header("content-type", "application/json")
                                .body(axum::body::Body::from(body))
                                .expect("a response");
                        }
                    }
                    next.run(request).await
                }
            },
        ));
    let running = support::server::RunningApp::start(app).await;
    let (client, _events) = Client::builder(running.url("/simpleio"))
        .header("x-user", "ann")
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .connect()
        .expect("the client starts");
    let reply = timeout(SOON, client.emit("n", &1))
        .await
        .expect("acked")
        .expect("a reply");
    assert_eq!(reply, json!({"echo": 1}));
    let times = posts.lock().expect("lock").clone();
    assert_eq!(times.len(), 2, "{times:?}");
    let waited = times[1] - times[0];
    assert!(
        waited >= Duration::from_millis(950),
        "sent again after {waited:?}"
    );
    client.close().await;
}
