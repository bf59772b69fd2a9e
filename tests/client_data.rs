//! Per-client data (issue 5, item 6; Socket.IO's `socket.set/get`): a handler keeps small data
//! on the client that sent the message, visible to that client's later messages on every node
//! and to no other client or user; user-scoped data is shared by the user's clients; a
//! client's data goes when the client is reaped, a user's with their last client.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use simpleio::{ClientId, Incoming, Member, MemoryStorage, Reply, SimpleIoLayer};
use support::server::TestServer;
use support::wire::{Tab, Wire, eventually_async};
use tower::{BoxError, service_fn};

/// `remember` a nickname on the client, `recall` it, `forget` it; `theme` reads the user's
/// `theme`.
fn builder() -> simpleio::Builder {
    SimpleIoLayer::builder()
        .hold_time(Duration::from_millis(100))
        .recheck_interval(Duration::from_secs(20))
        .handler(service_fn(|msg: Incoming| async move {
            let reply = match msg.event.as_str() {
                "remember" => {
                    msg.set("nick", &msg.json::<String>()?).await?;
                    Value::Null
                }
                "recall" => json!(msg.get::<String>("nick").await?),
                "forget" => {
                    msg.io.remove_data(msg.sender(), "nick").await?;
                    Value::Null
                }
                "theme" => {
                    let user = Member::User(msg.user.clone());
                    json!(msg.io.data::<String>(user, "theme").await?)
                }
                _ => Value::Null,
            };
            Ok::<_, BoxError>(Reply::from(reply))
        }))
}

/// Sends one message and returns its reply.
async fn ask(tab: &Tab, id: &str, event: &str, data: Value) -> Value {
    let acks = tab
        .send(json!([{"id": id, "event": event, "data": data}]))
        .await;
    assert_eq!(acks.len(), 1);
    assert!(acks[0].get("error").is_none(), "an error ack: {acks:?}");
    acks[0]["reply"].clone()
}

fn id(client: &str) -> ClientId {
    ClientId::new(client).expect("a client id")
}

#[tokio::test]
async fn data_set_by_a_handler_persists_across_messages_of_the_same_client() {
    let server = TestServer::start(builder()).await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    tab.receive().await;

    assert_eq!(ask(&tab, "m1", "recall", Value::Null).await, Value::Null);
    ask(&tab, "m2", "remember", json!("annie")).await;
    assert_eq!(ask(&tab, "m3", "recall", Value::Null).await, "annie");
    ask(&tab, "m4", "remember", json!("ann")).await;
    assert_eq!(ask(&tab, "m5", "recall", Value::Null).await, "ann");
    // The application sees it too, outside any handler.
    let nick: Option<String> = server
        .io
        .data(Member::client("ann", id("tab1")), "nick")
        .await
        .expect("data");
    assert_eq!(nick.as_deref(), Some("ann"));

    ask(&tab, "m6", "forget", Value::Null).await;
    assert_eq!(ask(&tab, "m7", "recall", Value::Null).await, Value::Null);
}

#[tokio::test]
async fn a_clients_data_is_not_visible_to_another_client_or_user() {
    let server = TestServer::start(builder()).await;
    let wire = Wire::new(&server);
    let mut ann1 = wire.tab("ann", "tab1");
    let mut ann2 = wire.tab("ann", "tab2");
    // bob's client has the same id as ann's: ids are scoped to their user.
    let mut bob1 = wire.tab("bob", "tab1");
    for tab in [&mut ann1, &mut ann2, &mut bob1] {
        tab.receive().await;
    }

    ask(&ann1, "m1", "remember", json!("annie")).await;
    assert_eq!(ask(&ann2, "m1", "recall", Value::Null).await, Value::Null);
    assert_eq!(ask(&bob1, "m1", "recall", Value::Null).await, Value::Null);
    assert_eq!(ask(&ann1, "m2", "recall", Value::Null).await, "annie");
}

#[tokio::test]
async fn a_clients_data_is_visible_from_every_node() {
    let storage = MemoryStorage::new();
    let node_a = TestServer::start(builder().storage(storage.clone())).await;
    let node_b = TestServer::start(builder().storage(storage.clone())).await;
    let mut on_a = Wire::new(&node_a).tab("ann", "tab1");
    on_a.receive().await;
    // The same client, its requests landing on the other node.
    let mut on_b = on_a.clone();
    on_b.wire = Wire::new(&node_b);

    ask(&on_a, "m1", "remember", json!("annie")).await;
    assert_eq!(ask(&on_b, "m2", "recall", Value::Null).await, "annie");
    ask(&on_b, "m3", "remember", json!("ann")).await;
    assert_eq!(ask(&on_a, "m4", "recall", Value::Null).await, "ann");
}

#[tokio::test]
async fn user_data_is_shared_by_every_client_of_the_user_only() {
    let server = TestServer::start(builder()).await;
    let io = server.io.clone();
    let wire = Wire::new(&server);
    let (ann1, ann2, bob) = (
        wire.tab("ann", "tab1"),
        wire.tab("ann", "tab2"),
        wire.tab("bob", "tab1"),
    );

    io.set_data(Member::User("ann".into()), "theme", &"dark")
        .await
        .expect("set");
    assert_eq!(ask(&ann1, "m1", "theme", Value::Null).await, "dark");
    assert_eq!(ask(&ann2, "m1", "theme", Value::Null).await, "dark");
    assert_eq!(ask(&bob, "m1", "theme", Value::Null).await, Value::Null);

    io.remove_data(Member::User("ann".into()), "theme")
        .await
        .expect("remove");
    assert_eq!(ask(&ann1, "m2", "theme", Value::Null).await, Value::Null);
}

#[tokio::test]
async fn a_clients_data_is_gone_after_the_client_is_reaped_and_a_users_with_their_last_client() {
    let server = TestServer::start(builder().presence_ttl(Duration::from_millis(400))).await;
    let io = server.io.clone();
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    tab.receive().await;
    ask(&tab, "m1", "remember", json!("annie")).await;
    io.set_data(Member::User("ann".into()), "theme", &"dark")
        .await
        .expect("set");

    // The tab stops polling; past the presence TTL it is reaped, with its data and, as ann's
    // last client, hers.
    let client = Member::client("ann", id("tab1"));
    eventually_async("the client's data is gone", || async {
        io.data::<String>(client.clone(), "nick")
            .await
            .expect("data")
            .is_none()
    })
    .await;
    let theme: Option<String> = io
        .data(Member::User("ann".into()), "theme")
        .await
        .expect("data");
    assert_eq!(theme, None);

    // Coming back, the client starts afresh.
    tab.receive().await;
    assert_eq!(ask(&tab, "m2", "recall", Value::Null).await, Value::Null);
}
