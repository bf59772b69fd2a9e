//! Every resource is bounded under abuse (guarantee 6): each attack below is the one that once
//! broke the server, replayed over real HTTP. Each test checks that the bound holds, that the
//! answer is the documented status and code, and that an honest user beside the attack loses
//! and duplicates nothing.
//!
//! Tests about what storage keeps run on `MemoryStorage` and, with the `redis` feature, on
//! `RedisStorage` against a real `redis-server` the tests start.

mod support;

#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
mod redis_server;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use simpleio::{
    Builder, HandlerError, Incoming, MemoryStorage, Presence, Reply, SendError, SimpleIo,
    SimpleIoLayer,
};
use support::server::TestServer;
use support::wire::{SOON, Tab, Wire, raw_request, read_at_least};
use tokio::io::AsyncWriteExt;
use tower::{BoxError, service_fn};

/// Which storage a test runs on.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Memory,
    #[cfg(feature = "redis")]
    Redis,
}

/// The builder on `backend`, or `None` when its server is not installed (outside CI).
async fn on(backend: Backend) -> Option<Builder> {
    let builder = SimpleIoLayer::builder().hold_time(Duration::from_millis(300));
    match backend {
        Backend::Memory => Some(builder.storage(MemoryStorage::new())),
        #[cfg(feature = "redis")]
        Backend::Redis => {
            let server = redis_server::RedisServer::shared()?;
            let storage = simpleio::RedisStorage::builder(server.url())
                .key_prefix(format!("bounds-{}:", simpleio::ClientId::random()))
                .connect()
                .await
                .expect("connect to the test Redis");
            Some(builder.storage(storage))
        }
    }
}

/// One test per backend.
macro_rules! on_each_storage {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::Memory).await;
                }
            )*
        }
        #[cfg(feature = "redis")]
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::Redis).await;
                }
            )*
        }
    };
}

on_each_storage!(
    a_flood_of_message_ids_is_remembered_only_up_to_the_limit,
    one_sender_fills_only_its_share_of_an_offline_users_queue,
    a_user_gets_no_client_ids_beyond_the_limit,
);

/// The chat of the tests: `{"to": user, "text": …}` is relayed to `to` on the sender's behalf
/// and acknowledged once stored; a queue that is full is a final error, a storage failure is
/// not (the layer makes it a retry).
async fn relay(msg: Incoming) -> Result<Reply, BoxError> {
    match msg.event.as_str() {
        "echo" => Ok(Reply::from(msg.data)),
        "deep_reply" => Ok(Reply::from(serde_json::value::RawValue::from_string(
            "[".repeat(100) + &"]".repeat(100),
        )?)),
        "chat" => {
            let line: Value = msg.json()?;
            let to = line["to"].as_str().unwrap_or_default().to_owned();
            match msg.io.to_user(to).emit("chat", &line).stored().await {
                Ok(_) => Ok(Reply::json(&json!({"ok": true}))?),
                Err(SendError::QueueFull { .. }) => {
                    Err(HandlerError::new("queue_full", "their queue is full").into())
                }
                Err(e) => Err(e.into()),
            }
        }
        other => Err(HandlerError::new("unknown_event", other).into()),
    }
}

/// Every message `tab` receives until a poll brings nothing, in order.
async fn drain(tab: &mut Tab) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let batch = tab.receive().await;
        if batch.messages.is_empty() {
            return got;
        }
        got.extend(batch.data());
    }
}

/// An honest user beside an attack: `count` messages sent to them while it runs all arrive,
/// once each, in order.
async fn assert_honest_user_gets(io: &SimpleIo, tab: &mut Tab, count: usize) {
    for i in 0..count {
        // Stored is enough: the confirmation is the drain below.
        drop(
            io.to_user(tab.user.as_str())
                .emit("news", &i)
                .stored()
                .await
                .expect("stored for the honest user"),
        );
    }
    let got = drain(tab).await;
    let expected: Vec<Value> = (0..count).map(|i| json!(i)).collect();
    assert_eq!(
        got, expected,
        "the honest user lost, doubled or reordered messages"
    );
}

async fn a_flood_of_message_ids_is_remembered_only_up_to_the_limit(backend: Backend) {
    let Some(builder) = on(backend).await else {
        return;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let server = TestServer::start(
        builder
            .max_dedup_per_client(50)
            .max_dedup_per_user(80)
            .max_reply_bytes(256)
            .handler(service_fn(move |msg: Incoming| {
                counted.fetch_add(1, Ordering::Relaxed);
                relay(msg)
            })),
    )
    .await;
    let wire = Wire::new(&server);
    let mut ann = wire.tab("ann", "ann-tab");
    ann.receive().await;

    // eve sends 300 echoes with fresh ids from one client, then 100 from each of two more.
    let eve = wire.tab("eve", "eve-1");
    for batch in 0..30 {
        let messages: Vec<Value> = (0..10)
            .map(|i| json!({"id": format!("m{}", batch * 10 + i), "event": "echo", "data": i}))
            .collect();
        let acks = eve.send(json!(messages)).await;
        assert!(acks.iter().all(|a| a.get("reply").is_some()), "{acks:?}");
    }
    assert_eq!(calls.load(Ordering::Relaxed), 300);
    // The latest ids are remembered: a retry gets the stored reply, not a second call.
    let again = eve
        .send(json!([{"id": "m299", "event": "echo", "data": 9}]))
        .await;
    assert_eq!(again[0]["reply"], json!(9));
    assert_eq!(
        calls.load(Ordering::Relaxed),
        300,
        "a remembered id was handled again"
    );
    // The oldest were forgotten to stay within 50 per client: a retry of one is handled again.
    eve.send(json!([{"id": "m0", "event": "echo", "data": 0}]))
        .await;
    assert_eq!(
        calls.load(Ordering::Relaxed),
        301,
        "more than 50 ids of one client were remembered"
    );
    // Over several clients, the user keeps at most 80: the first client's latest are forgotten
    // once two more clients added 100 each.
    for c in ["eve-2", "eve-3"] {
        let tab = wire.tab("eve", c);
        for batch in 0..10 {
            let messages: Vec<Value> = (0..10)
                .map(|i| json!({"id": format!("n{}", batch * 10 + i), "event": "echo", "data": i}))
                .collect();
            tab.send(json!(messages)).await;
        }
    }
    let before = calls.load(Ordering::Relaxed);
    eve.send(json!([{"id": "m299", "event": "echo", "data": 9}]))
        .await;
    assert_eq!(
        calls.load(Ordering::Relaxed),
        before + 1,
        "more than 80 ids of one user were remembered"
    );

    // A reply too large to remember is a final error, and the message was handled once.
    let big = "x".repeat(1_000);
    let acks = eve
        .send(json!([{"id": "big", "event": "echo", "data": big}]))
        .await;
    assert_eq!(acks[0]["error"]["code"], "reply_too_large", "{acks:?}");

    assert_honest_user_gets(&server.io, &mut ann, 5).await;
}

async fn one_sender_fills_only_its_share_of_an_offline_users_queue(backend: Backend) {
    let Some(builder) = on(backend).await else {
        return;
    };
    let server = TestServer::start(
        builder
            .max_queue(12)
            .max_queue_per_sender(4)
            .handler(service_fn(relay)),
    )
    .await;
    let wire = Wire::new(&server);
    let mut bob = wire.tab("bob", "bob-tab");
    bob.receive().await;

    // bob is offline (not polling). eve floods him: four lines get in, the rest are refused,
    // each with a final error at once.
    let eve = wire.tab("eve", "eve-tab");
    let mut refused = 0;
    for i in 0..10 {
        let acks = eve
            .send(json!([{"id": format!("e{i}"), "event": "chat",
                "data": {"to": "bob", "text": format!("spam {i}")}}]))
            .await;
        if acks[0]["error"]["code"] == "queue_full" {
            refused += 1;
        } else {
            assert_eq!(acks[0]["reply"], json!({"ok": true}), "{acks:?}");
        }
    }
    assert_eq!(
        refused, 6,
        "a sender got more than its share of bob's queue"
    );
    // carol still gets through, and so does the server's own message.
    let carol = wire.tab("carol", "carol-tab");
    let acks = carol
        .send(json!([{"id": "c0", "event": "chat", "data": {"to": "bob", "text": "hi bob"}}]))
        .await;
    assert_eq!(acks[0]["reply"], json!({"ok": true}), "{acks:?}");
    drop(
        server
            .io
            .to_user("bob")
            .emit("chat", &json!({"text": "from the server"}))
            .stored()
            .await
            .expect("the server's own message still fits"),
    );

    // bob comes back: he reads exactly what was acknowledged, once each, in order.
    let got: Vec<String> = drain(&mut bob)
        .await
        .iter()
        .map(|d| d["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        got,
        [
            "spam 0",
            "spam 1",
            "spam 2",
            "spam 3",
            "hi bob",
            "from the server"
        ]
    );

    // The whole queue is bounded too: a server send that does not fit fails at once.
    let server_io = server.io.clone();
    for i in 0..12 {
        drop(
            server_io
                .to_user("dave")
                .emit("fill", &i)
                .stored()
                .await
                .expect("below the queue limit"),
        );
    }
    match server_io.to_user("dave").emit("fill", &12).stored().await {
        Err(SendError::QueueFull { failed, stored }) => {
            assert_eq!(stored, 0);
            assert_eq!(failed.len(), 1);
        }
        other => panic!("a send to a full queue gave {other:?}"),
    }
}

async fn a_user_gets_no_client_ids_beyond_the_limit(backend: Backend) {
    let Some(builder) = on(backend).await else {
        return;
    };
    let server = TestServer::start(
        builder
            .max_clients_per_user(3)
            .presence_ttl(Duration::from_millis(800)),
    )
    .await;
    let wire = Wire::new(&server);
    let mut ann = wire.tab("ann", "ann-tab");
    ann.receive().await;
    for i in 0..3 {
        wire.tab("eve", &format!("eve-{i}")).receive().await;
    }
    let refused = wire.get(Some("eve"), "client=eve-new").await;
    refused.assert_error(429, "too_many_clients");
    assert!(
        refused.headers.contains_key("retry-after"),
        "a 429 without Retry-After"
    );
    // eve's known clients are still served, and others are not limited by her.
    wire.tab("eve", "eve-0").receive().await;
    wire.tab("carol", "carol-tab").receive().await;
    assert_honest_user_gets(&server.io, &mut ann, 3).await;

    // Once her clients have been gone for the presence TTL (and reaped), she may use new ids.
    let mut accepted = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // ann keeps polling: she stays live.
        ann.receive().await;
        let answer = wire.get(Some("eve"), "client=eve-new").await;
        if answer.status == 200 {
            accepted = true;
            break;
        }
        answer.assert_error(429, "too_many_clients");
    }
    assert!(accepted, "lapsed clients never made room for a new one");
}

#[tokio::test]
async fn a_poll_may_name_only_so_many_namespaces() {
    let server = TestServer::start(
        SimpleIoLayer::builder()
            .hold_time(Duration::from_millis(300))
            .max_namespaces_per_poll(4),
    )
    .await;
    let wire = Wire::new(&server);
    let list: Vec<String> = (0..5).map(|i| format!("/n{i}")).collect();
    wire.get(Some("eve"), &format!("client=eve&ns={}", list.join(",")))
        .await
        .assert_error(400, "too_many_namespaces");
    // The attack that once cost 130 ms of CPU: 12,900 names in one 64 KB query, refused at the
    // limit without looking at the rest.
    let many: Vec<String> = (0..12_900).map(|i| format!("/{}", i % 1000)).collect();
    wire.get(Some("eve"), &format!("client=eve&ns={}", many.join(",")))
        .await
        .assert_error(400, "too_many_namespaces");
    let mut ann = wire.tab("ann", "ann-tab");
    ann.receive().await;
    assert_honest_user_gets(&server.io, &mut ann, 3).await;
}

#[tokio::test]
async fn waiting_polls_are_bounded_per_user_and_per_node() {
    let server = TestServer::start(
        SimpleIoLayer::builder()
            .hold_time(Duration::from_secs(2))
            .max_polls_per_user(2)
            .max_polls(4),
    )
    .await;
    let wire = Wire::new(&server);
    // Two first polls answer at once (a handshake); then each holds its cursor and waits.
    let mut waiting = Vec::new();
    for c in ["eve-0", "eve-1"] {
        let mut tab = wire.tab("eve", c);
        tab.receive().await;
        let query = tab.query();
        let wire = wire.clone();
        waiting.push(tokio::spawn(
            async move { wire.get(Some("eve"), &query).await },
        ));
    }
    let server_io = server.io.clone();
    support::wire::eventually("eve's two polls wait", || server_io.waiting_polls() == 2).await;
    wire.get(Some("eve"), "client=eve-2")
        .await
        .assert_error(429, "too_many_polls");

    // The node's bound: two more users' polls fill it, and the next is told the node is busy.
    for user in ["carol", "dave"] {
        let mut tab = wire.tab(user, "tab");
        tab.receive().await;
        let query = tab.query();
        let wire = wire.clone();
        let user = user.to_owned();
        waiting.push(tokio::spawn(
            async move { wire.get(Some(&user), &query).await },
        ));
    }
    support::wire::eventually("four polls wait", || server_io.waiting_polls() == 4).await;
    let busy = wire.get(Some("frank"), "client=frank").await;
    busy.assert_error(503, "server_busy");
    assert!(busy.headers.contains_key("retry-after"));

    // A message still wakes the waiting ones, which answer as usual.
    drop(
        server
            .io
            .to_user("carol")
            .emit("hi", &1)
            .stored()
            .await
            .expect("stored"),
    );
    for task in waiting {
        assert_eq!(task.await.expect("poll").status, 200);
    }
}

#[tokio::test]
async fn slow_and_oversized_bodies_are_cut_off() {
    let server = TestServer::start(
        SimpleIoLayer::builder()
            .hold_time(Duration::from_millis(300))
            .max_body(1_000)
            .body_timeout(Duration::from_millis(400))
            .handler(service_fn(relay)),
    )
    .await;
    let path = "/simpleio";
    // A body that stops halfway: answered 408 with the protocol's error body.
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\nx-user: eve\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{{\"client\":"
    );
    let mut stream = raw_request(server.addr, &head).await;
    let started = tokio::time::Instant::now();
    let answer = String::from_utf8_lossy(&read_at_least(&mut stream, 100).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"body_timeout\""), "{answer}");
    assert!(started.elapsed() < SOON);

    // A chunked body that never ends: the same.
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\nx-user: eve\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n1\r\n{{\r\n"
    );
    let mut stream = raw_request(server.addr, &head).await;
    let answer = String::from_utf8_lossy(&read_at_least(&mut stream, 100).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // A declared length over the limit is refused before reading: with `Expect: 100-continue`
    // the client is never told to go on, and gets 413 at once.
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\nx-user: eve\r\ncontent-type: application/json\r\ncontent-length: 5000000\r\nexpect: 100-continue\r\n\r\n"
    );
    let mut stream = raw_request(server.addr, &head).await;
    let answer = String::from_utf8_lossy(&read_at_least(&mut stream, 100).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    assert!(answer.contains("\"body_too_large\""), "{answer}");
    let _ = stream.shutdown().await;

    let wire = Wire::new(&server);
    let mut ann = wire.tab("ann", "ann-tab");
    ann.receive().await;
    assert_honest_user_gets(&server.io, &mut ann, 3).await;
}

#[tokio::test]
async fn deep_or_large_data_is_refused_both_ways_and_backlogs_come_in_bounded_responses() {
    let server = TestServer::start(
        SimpleIoLayer::builder()
            .hold_time(Duration::from_millis(300))
            .max_data_depth(16)
            .max_message_bytes(300_000)
            .max_batch_bytes(700_000)
            .max_body(2_000_000)
            .handler(service_fn(relay)),
    )
    .await;
    let wire = Wire::new(&server);
    let eve = wire.tab("eve", "eve-tab");
    let deep = "[".repeat(200) + &"]".repeat(200);
    let body = format!(
        r#"{{"client":"eve-tab","messages":[{{"id":"d1","event":"echo","data":{deep}}}]}}"#
    );
    wire.post_raw(Some("eve"), Some("application/json"), body)
        .await
        .assert_error(400, "data_too_deep");
    let large = "x".repeat(400_000);
    eve.post(json!([{"id": "l1", "event": "echo", "data": large}]))
        .await
        .assert_error(413, "message_too_large");

    // So do the handler's replies.
    let acks = eve.send(json!([{"id": "r1", "event": "deep_reply"}])).await;
    assert_eq!(acks[0]["error"]["code"], "reply_too_deep", "{acks:?}");

    // The server's own sends hold to the same bounds.
    let deep_value: Value =
        serde_json::from_str(&("[".repeat(20) + &"]".repeat(20))).expect("json");
    assert!(matches!(
        server.io.to_user("bob").emit("deep", &deep_value).await,
        Err(SendError::TooDeep { max: 16 })
    ));
    assert!(matches!(
        server
            .io
            .to_user("bob")
            .emit("large", &"y".repeat(400_000))
            .await,
        Err(SendError::TooLarge { .. })
    ));

    // bob was offline while eve relayed 8 messages of 250 KB: he reads them all, in order, in
    // responses of at most 700 KB of data (two messages each).
    let mut bob = wire.tab("bob", "bob-tab");
    bob.receive().await;
    for i in 0..8 {
        let acks = eve
            .send(json!([{"id": format!("b{i}"), "event": "chat",
                "data": {"to": "bob", "text": format!("{i}{}", "z".repeat(250_000))}}]))
            .await;
        assert_eq!(acks[0]["reply"], json!({"ok": true}), "{acks:?}");
    }
    let mut got = Vec::new();
    loop {
        let answer = wire.get(Some("bob"), &bob.query()).await;
        assert!(
            answer.text.len() < 800_000,
            "a response of {} bytes",
            answer.text.len()
        );
        let batch = bob.take(answer.batch());
        if batch.messages.is_empty() {
            break;
        }
        assert!(
            batch.messages.len() <= 2,
            "{} messages in one response",
            batch.messages.len()
        );
        got.extend(
            batch
                .data()
                .iter()
                .map(|d| d["text"].as_str().unwrap_or_default()[..1].to_owned()),
        );
    }
    assert_eq!(got, ["0", "1", "2", "3", "4", "5", "6", "7"]);
}

#[tokio::test]
async fn a_handler_failing_on_the_storage_gets_a_retry_not_a_final_error() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let server = TestServer::start(
        SimpleIoLayer::builder()
            .hold_time(Duration::from_millis(300))
            .handler(service_fn(move |_msg: Incoming| {
                let call = counted.fetch_add(1, Ordering::Relaxed);
                async move {
                    if call == 0 {
                        // What a send that timed out on the storage returns: its effect is
                        // not known.
                        let unknown =
                            simpleio::storage::StorageError::Unavailable("timed out".into());
                        return Err::<Reply, BoxError>(SendError::Storage(unknown).into());
                    }
                    Ok(Reply::json(&json!({"ok": true}))?)
                }
            })),
    )
    .await;
    let wire = Wire::new(&server);
    let eve = wire.tab("eve", "eve-tab");
    let first = eve
        .send(json!([{"id": "m1", "event": "chat"}, {"id": "m2", "event": "chat"}]))
        .await;
    assert_eq!(first[0]["pending"], json!(true), "{first:?}");
    assert_eq!(
        first[1]["pending"],
        json!(true),
        "a later message ran before m1: {first:?}"
    );
    let again = eve
        .send(json!([{"id": "m1", "event": "chat"}, {"id": "m2", "event": "chat"}]))
        .await;
    assert_eq!(again[0]["reply"], json!({"ok": true}), "{again:?}");
    assert_eq!(again[1]["reply"], json!({"ok": true}), "{again:?}");
    assert_eq!(calls.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_slow_presence_handler_queues_only_so_many_changes() {
    let handled = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (counted, held) = (handled.clone(), gate.clone());
    let server = TestServer::start(
        SimpleIoLayer::builder()
            .hold_time(Duration::from_millis(300))
            .max_presence_queue(10)
            .on_presence(move |_change: Presence, _io: SimpleIo| {
                let (counted, held) = (counted.clone(), held.clone());
                async move {
                    if let Ok(permit) = held.acquire().await {
                        permit.forget();
                    }
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            }),
    )
    .await;
    let wire = Wire::new(&server);
    // 50 new clients: 50 connections and one user coming online, behind a handler that waits.
    for i in 0..50 {
        wire.tab("eve", &format!("eve-{i}")).receive().await;
    }
    gate.add_permits(1_000);
    let counter = handled.clone();
    support::wire::eventually("the queued changes are handled", || {
        counter.load(Ordering::Relaxed) >= 10
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let total = handled.load(Ordering::Relaxed);
    // The one being handled when the gate opened, and the 10 queued behind it.
    assert!(
        total <= 11,
        "{total} changes were handled: the queue was not bounded"
    );
    // New changes are reported again once the handler caught up.
    wire.tab("carol", "carol-tab").receive().await;
    let counter = handled.clone();
    support::wire::eventually("a later change is handled", || {
        counter.load(Ordering::Relaxed) > total
    })
    .await;
}

#[tokio::test]
async fn volatile_messages_stay_within_a_responses_byte_limit() {
    let server = TestServer::start(
        SimpleIoLayer::builder()
            .hold_time(Duration::from_secs(5))
            .max_message_bytes(300_000)
            .max_batch_bytes(700_000),
    )
    .await;
    let wire = Wire::new(&server);
    let mut ann = wire.tab("ann", "ann-tab");
    ann.receive().await;
    // Ten volatile messages of 250 KB come while ann's poll is being answered; the response
    // carries what fits in 700 KB.
    let query = ann.query();
    let poll = tokio::spawn({
        let wire = wire.clone();
        async move { wire.get(Some("ann"), &query).await }
    });
    let io = server.io.clone();
    support::wire::eventually("ann's poll waits", || io.waiting_polls() == 1).await;
    let big = "v".repeat(250_000);
    for _ in 0..10 {
        server
            .io
            .to_user("ann")
            .volatile()
            .emit("big", &big)
            .await
            .expect("published");
    }
    let answer = poll.await.expect("poll");
    assert!(
        answer.text.len() < 800_000,
        "a response of {} bytes",
        answer.text.len()
    );
    let batch = answer.batch();
    assert!(
        !batch.volatile.is_empty() && batch.volatile.len() <= 2,
        "{}",
        batch.volatile.len()
    );
}
