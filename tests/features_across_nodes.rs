//! Issue 5's features on `RedisStorage`, across nodes: every test runs two nodes — separate
//! layers and servers, each with its own `RedisStorage` (so its own command and pub/sub
//! connections) on one test `redis-server` and one key prefix — and clients whose requests go to
//! one node, then the other, as behind a round-robin balancer.
//!
//! A missed cross-node wakeup is never covered up: the recheck timer (20 s) and the holds of the
//! waiting polls (20 s) are far above [`SOON`], the bound every "this happens now" waits for.
#![cfg(feature = "redis")]

mod support;

#[path = "support/redis.rs"]
mod redis_server;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use simpleio::{
    Binary, ClientId, Delivered, Incoming, Member, Namespace, Presence, RedisStorage, Reply,
    SendError, Sending, SimpleIo, SimpleIoLayer, UserId,
};
use support::server::TestServer;
use support::wire::{
    Answer, Batch, GRACE, SOON, Tab, Wire, assert_pending, events, eventually, eventually_async,
    finish, without_pos,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tower::{BoxError, service_fn};

/// Long enough that a poll answering within [`SOON`] was woken, not timed out.
const LONG_HOLD: Duration = Duration::from_secs(20);

/// Presence changes as the nodes report them: (the reporting node, the change).
type Reports = mpsc::UnboundedReceiver<(&'static str, Presence)>;

/// The application every node runs. `join` a room; `say` to everyone else (Socket.IO's
/// `socket.broadcast.emit`), acknowledged once stored; `remember` a nickname on the sending
/// client and `recall` it. `/chat` is a second namespace.
fn app(hold: Duration, presence_ttl: Duration) -> simpleio::Builder {
    SimpleIoLayer::builder()
        .hold_time(hold)
        .presence_ttl(presence_ttl)
        // A safety net far too slow to stand in for a missed wakeup.
        .recheck_interval(Duration::from_secs(20))
        .handler(service_fn(|msg: Incoming| async move {
            let reply = match msg.event.as_str() {
                "join" => {
                    msg.join(&msg.json::<String>()?).await?;
                    Value::Null
                }
                "say" => {
                    let said = json!({"from": msg.user.as_str(), "text": msg.json::<Value>()?});
                    drop(msg.broadcast().emit("said", &said).stored().await?);
                    Value::Null
                }
                "remember" => {
                    msg.set("nick", &msg.json::<String>()?).await?;
                    Value::Null
                }
                "recall" => json!(msg.get::<String>("nick").await?),
                _ => Value::Null,
            };
            Ok::<_, BoxError>(Reply::from(reply))
        }))
        .namespace(Namespace::new("/chat"))
}

/// Polls held [`LONG_HOLD`]: for tests that prove a poll is woken.
fn waking_app() -> simpleio::Builder {
    app(LONG_HOLD, Duration::from_secs(30))
}

/// Short polls and a short presence TTL: a client that stops polling is reaped within about a
/// second.
fn reaping_app() -> simpleio::Builder {
    app(Duration::from_millis(100), Duration::from_millis(800))
}

/// Nodes over one Redis and one fresh key prefix, each built by `builder` with its own
/// `RedisStorage`; `None` (after a loud warning) when `redis-server` is missing outside CI.
async fn nodes(n: usize, builder: impl Fn(usize) -> simpleio::Builder) -> Option<Vec<TestServer>> {
    let redis = redis_server::RedisServer::shared()?;
    let prefix = format!("across-{}:", ClientId::random());
    let mut nodes = Vec::new();
    for i in 0..n {
        let storage = RedisStorage::builder(redis.url())
            .key_prefix(prefix.clone())
            .connect()
            .await
            .expect("connect to the test Redis");
        nodes.push(TestServer::start(builder(i).storage(storage)).await);
    }
    Some(nodes)
}

/// Two nodes running `builder()`.
async fn two_nodes(builder: fn() -> simpleio::Builder) -> Option<(TestServer, TestServer)> {
    let mut nodes = nodes(2, |_| builder()).await?;
    let b = nodes.pop().expect("node b");
    let a = nodes.pop().expect("node a");
    Some((a, b))
}

/// Two nodes running `builder()`, both reporting presence changes to the returned receiver.
async fn two_reporting_nodes(
    builder: fn() -> simpleio::Builder,
) -> Option<(TestServer, TestServer, Reports)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut nodes = nodes(2, |i| {
        let tx = tx.clone();
        let node = ["a", "b"][i];
        builder().on_presence(move |change: Presence, _io: SimpleIo| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((node, change));
            }
        })
    })
    .await?;
    let b = nodes.pop().expect("node b");
    let a = nodes.pop().expect("node a");
    Some((a, b, rx))
}

/// Stores the message for every recipient (one Redis round trip, awaited), then waits for its
/// confirmations in the background.
async fn stored(sending: Sending) -> JoinHandle<Result<Delivered, SendError>> {
    let confirmation = sending.stored().await.expect("the message is stored");
    tokio::spawn(confirmation)
}

/// `tab`'s next poll, in the background; its result is taken in with [`Tab::take`].
fn poll(tab: &Tab) -> JoinHandle<Batch> {
    let tab = tab.clone();
    tokio::spawn(async move { tab.peek().await })
}

/// `tab`'s next poll in the namespaces `ns`, in the background.
fn poll_in(tab: &Tab, ns: &str) -> JoinHandle<Answer> {
    let (wire, user, query) = (tab.wire.clone(), tab.user.clone(), tab.query_in(ns));
    tokio::spawn(async move { wire.get(Some(&user), &query).await })
}

/// Waits until `n` polls wait on `node`, then a little longer, so that their first read is
/// done and only a wakeup can answer them.
async fn parked(node: &TestServer, n: usize) {
    eventually("the polls wait", || node.io.waiting_polls() == n).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// The same client, its next requests going to `node`.
fn via(tab: &Tab, node: &TestServer) -> Tab {
    let mut tab = tab.clone();
    tab.wire = Wire::new(node);
    tab
}

/// Sends one message and returns its reply.
async fn ask(tab: &Tab, id: &str, event: &str, data: Value) -> Value {
    let acks = tab
        .send(json!([{"id": id, "event": event, "data": data}]))
        .await;
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert!(acks[0].get("error").is_none(), "an error ack: {acks:?}");
    acks[0]["reply"].clone()
}

fn id(client: &str) -> ClientId {
    ClientId::new(client).expect("a client id")
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fn users(names: &[&str]) -> Vec<UserId> {
    names.iter().map(|n| UserId::from(*n)).collect()
}

#[tokio::test]
async fn a_room_joined_through_one_node_gets_a_message_sent_on_the_other_at_once_and_each_member_confirms_for_itself()
 {
    let Some((a, b)) = two_nodes(waking_app).await else {
        return;
    };
    let mut ann = Wire::new(&a).tab("ann", "tab1");
    let mut bob = Wire::new(&a).tab("bob", "tab1");
    let mut carol = Wire::new(&a).tab("carol", "tab1");
    for tab in [&mut ann, &mut bob, &mut carol] {
        tab.receive().await;
    }
    // Through node a: ann as a user, by the application; bob's tab1 by itself, from a handler.
    a.io.join("ann", "lobby").await.expect("join");
    let acks = bob
        .send(json!([{"id": "j1", "event": "join", "data": "lobby"}]))
        .await;
    assert_eq!(acks, [json!({"id": "j1", "reply": null})]);
    let bob_tab = Member::client("bob", id("tab1"));
    let members = [Member::from("ann"), bob_tab.clone()];
    assert_eq!(
        sorted(b.io.members_of("lobby").await.expect("members")),
        members,
        "node b sees the room node a made"
    );

    // The members wait on node a; node b sends to the room, and their polls answer at once.
    let (ann_poll, bob_poll, carol_poll) = (poll(&ann), poll(&bob), poll(&carol));
    parked(&a, 3).await;
    let mut sending = stored(b.io.to_room("lobby").emit("hello", &"room")).await;
    for (tab, waiting) in [(&mut ann, ann_poll), (&mut bob, bob_poll)] {
        let got = tab.take(finish(waiting, "a member's poll on node a, woken").await);
        assert_eq!(got.data(), [json!("room")], "{}", tab.user);
    }
    // carol is no member: her poll is answered by a marker, sent afterwards, alone.
    let _marker = stored(b.io.to_user("carol").emit("marker", &0)).await;
    let got = carol.take(finish(carol_poll, "carol's poll").await);
    assert_eq!(events(&got), ["marker"]);

    // Each member confirms through node b (the next polls stay open: nothing more comes).
    let _ann_next = poll(&via(&ann, &b));
    assert_pending(&mut sending, "the room message before bob's tab confirmed").await;
    let _bob_next = poll(&via(&bob, &b));
    let delivered = finish(sending, "the room message, confirmed by both members")
        .await
        .expect("delivered");
    assert_eq!(sorted(delivered.recipients), members);
}

#[tokio::test]
async fn a_room_message_to_an_offline_member_waits_and_arrives_when_they_come_back_through_the_other_node()
 {
    let Some((a, b)) = two_nodes(reaping_app).await else {
        return;
    };
    // dave joins through node a, polls node b once, and goes: he is reaped, offline everywhere.
    a.io.join("dave", "lobby").await.expect("join");
    let mut dave = Wire::new(&b).tab("dave", "laptop");
    dave.receive().await;
    eventually_async("dave goes offline on both nodes", || async {
        !a.io.online("dave").await.expect("online") && !b.io.online("dave").await.expect("online")
    })
    .await;
    assert_eq!(
        a.io.members_of("lobby").await.expect("members"),
        [Member::from("dave")],
        "a user stays a member while offline"
    );

    let mut sending = stored(b.io.to_room("lobby").emit("missed", &"while you were out")).await;
    assert_pending(&mut sending, "the room message to an offline member").await;

    // He comes back through node a, from where he left off.
    dave.wire = Wire::new(&a);
    let got = dave.receive().await;
    assert_eq!(got.data(), [json!("while you were out")]);
    assert_pending(&mut sending, "the room message before dave confirmed").await;
    dave.wire = Wire::new(&b);
    let confirming = poll(&dave);
    let delivered = finish(sending, "the room message, confirmed through node b")
        .await
        .expect("delivered");
    assert_eq!(delivered.recipients, [Member::from("dave")]);
    let rest = finish(confirming, "dave's next poll").await;
    assert!(rest.messages.is_empty(), "came again: {rest:?}");
}

#[tokio::test]
async fn a_broadcast_from_a_handler_on_one_node_reaches_the_senders_other_tab_on_the_other_node_but_not_the_sending_tab()
 {
    let Some((a, b)) = two_nodes(waking_app).await else {
        return;
    };
    let mut ann1 = Wire::new(&a).tab("ann", "tab1");
    let mut ann2 = Wire::new(&b).tab("ann", "tab2");
    let mut bob = Wire::new(&b).tab("bob", "tab1");
    for tab in [&mut ann1, &mut ann2, &mut bob] {
        tab.receive().await;
    }

    // ann's other tab and bob wait on node b; ann's tab1 says something through node a.
    let (ann2_poll, bob_poll) = (poll(&ann2), poll(&bob));
    parked(&b, 2).await;
    let acks = ann1
        .send(json!([{"id": "m1", "event": "say", "data": "hi all"}]))
        .await;
    assert_eq!(acks, [json!({"id": "m1", "reply": null})]);
    let said = json!({"from": "ann", "text": "hi all"});
    for (tab, waiting) in [(&mut ann2, ann2_poll), (&mut bob, bob_poll)] {
        let got = tab.take(finish(waiting, "a poll on node b, woken").await);
        assert_eq!(
            got.data(),
            std::slice::from_ref(&said),
            "{}/{}",
            tab.user,
            tab.client
        );
    }

    // The sending tab, on either node: a marker sent afterwards is the first thing it gets.
    let _marker = stored(a.io.to_client("ann", id("tab1")).emit("marker", &0)).await;
    ann1.wire = Wire::new(&b);
    assert_eq!(events(&ann1.receive().await), ["marker"]);
}

#[tokio::test]
async fn a_chat_namespace_message_sent_on_one_node_reaches_a_chat_reader_on_the_other_node_and_no_one_else()
 {
    let Some((a, b)) = two_nodes(waking_app).await else {
        return;
    };
    // ann reads `/` and `/chat`, bob only `/`; both on node b.
    let mut ann = Wire::new(&b).tab("ann", "tab1");
    let mut bob = Wire::new(&b).tab("bob", "tab1");
    ann.receive_in("/,/chat").await;
    bob.receive_in("/").await;
    let (ann_poll, bob_poll) = (poll_in(&ann, "/,/chat"), poll_in(&bob, "/"));
    parked(&b, 2).await;

    let chat = a.io.of("/chat");
    let _said = stored(chat.recipients(["ann", "bob"]).emit("said", &"hi chat")).await;
    let answer = finish(ann_poll, "ann's poll on node b, woken").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        without_pos(&answer.body),
        [json!({"ns": "/chat", "event": "said", "data": "hi chat"})]
    );

    // bob does not read `/chat`: his poll is answered by a marker in `/`, sent afterwards, alone.
    let _marker = stored(a.io.to_user("bob").emit("marker", &0)).await;
    let answer = finish(bob_poll, "bob's poll on node b").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        without_pos(&answer.body),
        [json!({"event": "marker", "data": 0})]
    );
}

#[tokio::test]
async fn presence_across_nodes_reports_each_change_exactly_once_and_both_nodes_agree_on_who_is_online()
 {
    let Some((a, b, mut reports)) = two_reporting_nodes(reaping_app).await else {
        return;
    };
    // ann polls node a, bob node b, carol both in turn; all keep polling for a while.
    let (wire_a, wire_b) = (Wire::new(&a), Wire::new(&b));
    let keep_polling = |tab: Tab, wires: Vec<Wire>| {
        tokio::spawn(async move {
            let mut tab = tab;
            for turn in 0.. {
                tab.wire = wires[turn % wires.len()].clone();
                tab.receive().await;
            }
        })
    };
    let mut polling = Vec::new();
    for (user, wires) in [
        ("ann", vec![wire_a.clone()]),
        ("bob", vec![wire_b.clone()]),
        ("carol", vec![wire_a.clone(), wire_b.clone()]),
    ] {
        let mut tab = wires[0].tab(user, "tab1");
        tab.receive().await;
        polling.push(keep_polling(tab, wires));
    }
    for node in [&a, &b] {
        assert_eq!(
            sorted(node.io.online_users().await.expect("online users")),
            users(&["ann", "bob", "carol"])
        );
        for user in ["ann", "bob", "carol"] {
            assert!(node.io.online(user).await.expect("online"), "{user}");
        }
        assert!(!node.io.online("dave").await.expect("online"));
    }

    // Everyone stops: 3 × (Connected, Online, Disconnected, Offline), each reported once.
    for task in polling {
        task.abort();
    }
    let mut all = Vec::new();
    let deadline = tokio::time::Instant::now() + SOON;
    while all.len() < 12 {
        match tokio::time::timeout_at(deadline, reports.recv()).await {
            Ok(Some(report)) => all.push(report),
            Ok(None) => panic!("the presence channel closed"),
            Err(_) => panic!(
                "only {} presence changes within {SOON:?}: {all:?}",
                all.len()
            ),
        }
    }
    // Give a duplicate, if any, the time of a few more reaps (every 200 ms on each node).
    tokio::time::sleep(GRACE + GRACE).await;
    while let Ok(report) = reports.try_recv() {
        all.push(report);
    }

    let mut expected = Vec::new();
    for user in ["ann", "bob", "carol"] {
        let (u, c) = (UserId::from(user), id("tab1"));
        expected.extend([
            Presence::Connected {
                user: u.clone(),
                client: c.clone(),
            },
            Presence::Online { user: u.clone() },
            Presence::Disconnected {
                user: u.clone(),
                client: c,
            },
            Presence::Offline { user: u },
        ]);
    }
    let as_text = |v: Vec<Presence>| sorted(v.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>());
    let changes: Vec<Presence> = all.iter().map(|(_, c)| c.clone()).collect();
    assert_eq!(as_text(changes), as_text(expected), "reported: {all:?}");
    // Arrivals come from the node that served the first poll.
    for (user, node) in [("ann", "a"), ("bob", "b"), ("carol", "a")] {
        let connected = Presence::Connected {
            user: user.into(),
            client: id("tab1"),
        };
        assert!(all.contains(&(node, connected)), "{user}: {all:?}");
    }

    for node in [&a, &b] {
        assert!(
            node.io
                .online_users()
                .await
                .expect("online users")
                .is_empty()
        );
        for user in ["ann", "bob", "carol"] {
            assert!(!node.io.online(user).await.expect("online"), "{user}");
        }
    }
}

#[tokio::test]
async fn data_a_handler_sets_on_one_node_is_read_by_a_handler_on_the_other_until_the_client_is_reaped()
 {
    let Some((a, b, mut reports)) = two_reporting_nodes(reaping_app).await else {
        return;
    };
    let mut on_a = Wire::new(&a).tab("ann", "tab1");
    on_a.receive().await;
    let on_b = via(&on_a, &b);
    let bob_on_b = Wire::new(&b).tab("bob", "tab1");

    ask(&on_a, "m1", "remember", json!("annie")).await;
    assert_eq!(ask(&on_b, "m2", "recall", Value::Null).await, "annie");
    ask(&on_b, "m3", "remember", json!("ann")).await;
    assert_eq!(ask(&on_a, "m4", "recall", Value::Null).await, "ann");
    // Another client sees none of it.
    assert_eq!(
        ask(&bob_on_b, "m1", "recall", Value::Null).await,
        Value::Null
    );

    // The client stops polling; once it is reported gone, its data is gone on both nodes.
    let gone = Presence::Disconnected {
        user: "ann".into(),
        client: id("tab1"),
    };
    tokio::time::timeout(SOON, async {
        while let Some((_, change)) = reports.recv().await {
            if change == gone {
                return;
            }
        }
    })
    .await
    .expect("ann's tab reported gone within SOON");
    let client = Member::client("ann", id("tab1"));
    for node in [&a, &b] {
        let nick: Option<String> = node.io.data(client.clone(), "nick").await.expect("data");
        assert_eq!(nick, None);
    }
    // Coming back, through either node, the client starts afresh.
    on_a.wire = Wire::new(&b);
    on_a.receive().await;
    assert_eq!(ask(&on_a, "m5", "recall", Value::Null).await, Value::Null);
}

#[tokio::test]
async fn bytes_emitted_on_one_node_arrive_intact_at_a_client_polling_the_other() {
    let Some((a, b)) = two_nodes(waking_app).await else {
        return;
    };
    let mut tab = Wire::new(&b).tab("ann", "tab1");
    tab.receive().await;
    let waiting = poll(&tab);
    parked(&b, 1).await;

    let all: Vec<u8> = (0..=255).collect();
    let _sending = stored(a.io.to_user("ann").emit(
        "file",
        &json!({"name": "all", "content": Binary::from(all.clone())}),
    ))
    .await;
    let got = tab.take(finish(waiting, "the poll on node b, woken").await);
    assert_eq!(events(&got), ["file"]);
    let text = got.messages[0].data["content"]["$bytes"]
        .as_str()
        .unwrap_or_else(|| panic!("no $bytes: {got:?}"));
    assert_eq!(STANDARD.decode(text).expect("base64"), all);
}

#[tokio::test]
async fn a_volatile_message_sent_on_one_node_reaches_a_client_waiting_on_the_other() {
    let Some((a, b)) = two_nodes(waking_app).await else {
        return;
    };
    let mut tab = Wire::new(&b).tab("ann", "tab1");
    tab.receive().await;
    let waiting = poll(&tab);
    parked(&b, 1).await;

    a.io.to_user("ann")
        .volatile()
        .emit("typing", &json!({"from": "bob"}))
        .await
        .expect("published");
    let got = tab.take(finish(waiting, "the poll on node b, woken by the volatile message").await);
    assert!(got.messages.is_empty(), "{got:?}");
    assert_eq!(got.volatile.len(), 1, "{got:?}");
    assert_eq!(got.volatile[0].event, "typing");
    assert_eq!(got.volatile[0].data, json!({"from": "bob"}));
}
