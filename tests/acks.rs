//! Server → client acknowledgements with data (spec §4c): an `emit_with_ack` stores the message
//! with `"ack": true`, each receiving client posts a reply message (`reply_to` its position),
//! and the emit resolves with the replies — or, at its timeout, with those that came and who
//! did not reply. Replies are checked (only a client the message was for may reply), recorded
//! once, and reach the sender from any node.

mod support;

#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
mod redis_server;

use std::time::Duration;

use serde_json::{Value, json};
use simpleio::{AckError, Member, NoReply, SimpleIoLayer};
use support::server::TestServer;
use support::wire::{Tab, Wire, finish};

fn builder() -> simpleio::Builder {
    SimpleIoLayer::builder()
        .hold_time(Duration::from_millis(300))
        // A safety net too slow to stand in for a missed reply signal.
        .recheck_interval(Duration::from_secs(20))
}

/// Receives until a message asking for a reply comes; returns its position and data.
async fn receive_ask(tab: &mut Tab) -> (u64, Value) {
    for _ in 0..20 {
        let batch = tab.receive().await;
        if let Some(m) = batch.messages.iter().find(|m| m.ack) {
            return (m.pos, m.data.clone());
        }
    }
    panic!("no message asking for a reply came");
}

/// Posts `data` as the reply of `tab` to the message at `pos`, under message id `id`.
async fn reply(tab: &Tab, id: &str, pos: u64, data: Value) -> Value {
    let acks = tab
        .send(json!([{"id": id, "reply_to": pos, "data": data}]))
        .await;
    acks[0].clone()
}

#[tokio::test]
async fn a_client_reply_reaches_the_emit_that_asked_for_it() {
    let server = TestServer::start(builder()).await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    tab.receive().await;

    let asking = tokio::spawn(
        server
            .io
            .to_user("ann")
            .timeout(Duration::from_secs(10))
            .emit_with_ack("confirm", &json!({"q": "delete?"})),
    );
    let (pos, data) = receive_ask(&mut tab).await;
    assert_eq!(data, json!({"q": "delete?"}));
    let ack = reply(&tab, "r1", pos, json!({"yes": true})).await;
    assert_eq!(ack, json!({"id": "r1", "reply": null}));

    let replies = finish(asking, "the emit after the reply")
        .await
        .expect("replies");
    assert_eq!(replies.replies.len(), 1);
    let only = &replies.replies[0];
    assert_eq!(only.user().as_str(), "ann");
    assert_eq!(only.client().as_str(), "tab1");
    #[derive(serde::Deserialize)]
    struct Answer {
        yes: bool,
    }
    assert!(only.parse::<Answer>().expect("typed reply").yes);
}

#[tokio::test]
async fn two_clients_of_one_user_both_reply_before_the_emit_resolves() {
    let server = TestServer::start(builder()).await;
    let wire = Wire::new(&server);
    let mut one = wire.tab("ann", "tab1");
    let mut two = wire.tab("ann", "tab2");
    one.receive().await;
    two.receive().await;

    let mut asking = tokio::spawn(
        server
            .io
            .to_user("ann")
            .timeout(Duration::from_secs(10))
            .emit_with_ack("count", &1),
    );
    let (pos, _) = receive_ask(&mut one).await;
    let (pos2, _) = receive_ask(&mut two).await;
    assert_eq!(pos, pos2, "the tabs got different messages");
    reply(&one, "r1", pos, json!(1)).await;
    // One of two live clients replied: still waiting for the other.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut asking)
            .await
            .is_err(),
        "the emit resolved before every live client replied"
    );
    reply(&two, "r2", pos, json!(2)).await;
    let replies = finish(asking, "the emit after both replies")
        .await
        .expect("replies");
    let mut got: Vec<(String, i64)> = replies
        .replies
        .iter()
        .map(|r| (r.client().to_string(), r.parse().expect("a number")))
        .collect();
    got.sort();
    assert_eq!(got, [("tab1".to_owned(), 1), ("tab2".to_owned(), 2)]);
}

#[tokio::test]
async fn a_client_that_never_replies_times_the_emit_out_naming_it() {
    let server = TestServer::start(builder()).await;
    let wire = Wire::new(&server);
    let mut one = wire.tab("ann", "tab1");
    let mut silent = wire.tab("ann", "tab2");
    one.receive().await;
    silent.receive().await;

    let asking = tokio::spawn(
        server
            .io
            .to_user("ann")
            .timeout(Duration::from_millis(1500))
            .emit_with_ack("count", &1),
    );
    let (pos, _) = receive_ask(&mut one).await;
    // The silent tab receives and confirms the message, but has no handler: no reply.
    receive_ask(&mut silent).await;
    silent.receive().await;
    reply(&one, "r1", pos, json!("here")).await;

    let outcome = finish(asking, "the emit at its timeout").await;
    let Err(AckError::Timeout(unanswered)) = outcome else {
        panic!("the emit did not time out: {outcome:?}");
    };
    assert_eq!(unanswered.replies.len(), 1);
    assert_eq!(unanswered.replies[0].client().as_str(), "tab1");
    assert_eq!(
        unanswered.missing,
        [(
            Member::client("ann", simpleio::ClientId::new("tab2").expect("id")),
            NoReply::NotAnswered
        )]
    );
}

#[tokio::test]
async fn a_reply_to_another_users_message_or_to_no_message_is_refused() {
    let server = TestServer::start(builder()).await;
    let wire = Wire::new(&server);
    let mut ann = wire.tab("ann", "tab1");
    let mallory = wire.tab("mallory", "tab1");
    ann.receive().await;

    let asking = tokio::spawn(
        server
            .io
            .to_user("ann")
            .timeout(Duration::from_millis(1500))
            .emit_with_ack("confirm", &"pay?"),
    );
    let (pos, _) = receive_ask(&mut ann).await;
    // Mallory knows the position and even uses ann's client id: the identity says mallory.
    let forged = reply(&mallory, "f1", pos, json!(true)).await;
    assert_eq!(forged["id"], "f1");
    assert_eq!(forged["error"]["code"], "unknown_message", "{forged}");
    let unknown = reply(&ann, "f2", pos + 1_000_000, json!(true)).await;
    assert_eq!(unknown["error"]["code"], "unknown_message", "{unknown}");
    // A message that asked for no reply takes none either.
    let plain = tokio::spawn(server.io.to_user("ann").emit("plain", &1));
    let batch = ann.receive().await;
    let plain_pos = batch
        .messages
        .iter()
        .find(|m| !m.ack)
        .expect("the plain message")
        .pos;
    let not_asked = reply(&ann, "f3", plain_pos, json!(true)).await;
    assert_eq!(not_asked["error"]["code"], "unknown_message", "{not_asked}");
    ann.receive().await;
    finish(plain, "the plain emit").await.expect("delivered");

    let outcome = finish(asking, "the emit at its timeout").await;
    let Err(AckError::Timeout(unanswered)) = outcome else {
        panic!("a forged reply completed the emit: {outcome:?}");
    };
    assert!(unanswered.replies.is_empty(), "a forged reply was taken");
}

#[tokio::test]
async fn a_reply_with_an_event_is_refused_as_a_whole_request() {
    let server = TestServer::start(builder()).await;
    let tab = Wire::new(&server).tab("ann", "tab1");
    tab.post(json!([{"id": "x", "reply_to": 5, "event": "e"}]))
        .await
        .assert_error(400, "invalid_field");
    tab.post(json!([{"id": "x", "reply_to": 0}]))
        .await
        .assert_error(400, "invalid_field");
}

#[tokio::test]
async fn a_retried_reply_post_is_recorded_once_and_a_second_reply_is_ignored() {
    let server = TestServer::start(builder()).await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    tab.receive().await;
    let asking = tokio::spawn(
        server
            .io
            .to_client("ann", simpleio::ClientId::new("tab1").expect("id"))
            .timeout(Duration::from_secs(10))
            .emit_with_ack("confirm", &1),
    );
    let (pos, _) = receive_ask(&mut tab).await;
    // The same POST twice (its answer was lost), then a second reply under a new id.
    let first = reply(&tab, "r1", pos, json!("first")).await;
    let again = reply(&tab, "r1", pos, json!("first")).await;
    let second = reply(&tab, "r2", pos, json!("second")).await;
    for ack in [&first, &again, &second] {
        assert_eq!(ack["reply"], Value::Null, "{ack}");
        assert!(ack.get("error").is_none(), "{ack}");
    }
    let replies = finish(asking, "the emit").await.expect("replies");
    let data: Vec<String> = replies.parse().expect("strings");
    assert_eq!(
        data,
        ["first"],
        "a reply was recorded twice, or the first did not win"
    );
}

#[tokio::test]
async fn a_reply_larger_than_the_limit_is_refused() {
    let server = TestServer::start(builder().max_reply_bytes(16)).await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    tab.receive().await;
    let _asking = tokio::spawn(
        server
            .io
            .to_user("ann")
            .timeout(Duration::from_secs(5))
            .emit_with_ack("confirm", &1),
    );
    let (pos, _) = receive_ask(&mut tab).await;
    let ack = reply(&tab, "big", pos, json!("x".repeat(64))).await;
    assert_eq!(ack["error"]["code"], "reply_too_large", "{ack}");
}

#[tokio::test]
async fn an_emit_to_an_offline_user_says_it_was_not_delivered() {
    let server = TestServer::start(builder()).await;
    let outcome = server
        .io
        .to_user("nobody")
        .timeout(Duration::from_millis(300))
        .emit_with_ack("confirm", &1)
        .await;
    let Err(AckError::Timeout(unanswered)) = outcome else {
        panic!("expected a timeout: {outcome:?}");
    };
    assert_eq!(
        unanswered.missing,
        [(Member::from("nobody"), NoReply::NotDelivered)]
    );
}

#[cfg(feature = "redis")]
mod across_nodes {
    use super::redis_server;
    use super::*;
    use simpleio::{ClientId, RedisStorage};

    #[tokio::test]
    async fn a_reply_posted_to_another_node_reaches_the_waiting_emit() {
        let Some(redis) = redis_server::RedisServer::shared() else {
            return;
        };
        let prefix = format!("acks-{}:", ClientId::random());
        let mut nodes = Vec::new();
        for _ in 0..2 {
            let storage = RedisStorage::builder(redis.url())
                .key_prefix(prefix.clone())
                .connect()
                .await
                .expect("connect to the test Redis");
            nodes.push(TestServer::start(builder().storage(storage)).await);
        }
        let (a, b) = (&nodes[0], &nodes[1]);
        let mut on_a = Wire::new(a).tab("ann", "tab1");
        on_a.receive().await;
        let asking = tokio::spawn(
            a.io.to_user("ann")
                .timeout(Duration::from_secs(10))
                .emit_with_ack("confirm", &"sure?"),
        );
        let (pos, _) = receive_ask(&mut on_a).await;
        // The same client, its reply sent to the other node (a round-robin balancer).
        let mut on_b = on_a.clone();
        on_b.wire = Wire::new(b);
        let ack = reply(&on_b, "r1", pos, json!("yes")).await;
        assert_eq!(ack, json!({"id": "r1", "reply": null}));
        // Woken by the storage's signal: far sooner than the 20 s safety net.
        let replies = finish(asking, "the emit on node a").await.expect("replies");
        assert_eq!(replies.parse::<String>().expect("strings"), ["yes"]);
    }
}

#[cfg(feature = "client")]
#[tokio::test]
async fn the_rust_client_replies_to_a_message_that_asks_and_not_to_one_that_does_not() {
    use simpleio::client::{Client, EmitError, Event};
    let server = TestServer::start(builder()).await;
    let (client, mut events) = Client::builder(server.url())
        .header("x-user", "ann")
        .connect()
        .expect("a client");
    while !matches!(events.recv().await, Some(Event::Connected)) {}
    let asking = tokio::spawn(
        server
            .io
            .to_user("ann")
            .timeout(Duration::from_secs(10))
            .emit_with_ack("add", &[2, 3]),
    );
    let message = loop {
        if let Some(Event::Message(m)) = events.recv().await {
            break m;
        }
    };
    assert!(message.asks_reply);
    let sum: i64 = message.json::<Vec<i64>>().expect("numbers").iter().sum();
    client
        .reply(&message, &sum)
        .await
        .expect("the reply is recorded");
    let replies = finish(asking, "the emit after the Rust client's reply")
        .await
        .expect("replies");
    assert_eq!(replies.parse::<i64>().expect("a number"), [5]);

    let plain = tokio::spawn(server.io.to_user("ann").emit("plain", &1));
    let message = loop {
        if let Some(Event::Message(m)) = events.recv().await {
            break m;
        }
    };
    assert!(!message.asks_reply);
    assert!(matches!(
        client.reply(&message, &1).await,
        Err(EmitError::Ack { code, .. }) if code == "not_asked"
    ));
    finish(plain, "the plain emit").await.expect("delivered");
    client.close().await;
}
