mod support;

use std::time::Duration;

use serde_json::{Value, json};
use simpleio::{Incoming, Reply, SimpleIoLayer};
use support::server::TestServer;
use tower::service_fn;

#[tokio::test]
async fn a_message_goes_both_ways() {
    let server = TestServer::start(SimpleIoLayer::builder().handler(service_fn(
        |m: Incoming| async move {
            Ok::<_, tower::BoxError>(Reply::json(&format!("echo {}", m.data.get()))?)
        },
    )))
    .await;
    let http = reqwest::Client::new();
    let first: Value = http
        .get(format!("{}?client=tab1", server.url()))
        .header("x-user", "ann")
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!("{first}");
    let io = server.io.clone();
    let send = tokio::spawn(async move { io.to("ann").emit("news", &json!({"n": 1})).await });
    let got: Value = http
        .get(format!(
            "{}?client=tab1&cursor={}&epoch={}",
            server.url(),
            first["cursor"],
            first["epoch"].as_str().unwrap()
        ))
        .header("x-user", "ann")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!("{got}");
    let confirm: Value = http
        .get(format!(
            "{}?client=tab1&cursor={}&epoch={}",
            server.url(),
            got["cursor"],
            got["epoch"].as_str().unwrap()
        ))
        .header("x-user", "ann")
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map(|s| json!(s))
        .unwrap_or(json!("timeout"));
    println!("{confirm}");
    let delivered = send.await.unwrap();
    println!("{delivered:?}");
    let acks: Value = http
        .post(server.url())
        .header("x-user", "ann")
        .json(&json!({"client": "tab1", "messages": [{"id": "m1", "event": "hi", "data": [1]}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!("{acks}");
}
