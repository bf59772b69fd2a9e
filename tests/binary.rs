//! Binary payloads (issue 5, item 5; spec §4b): bytes travel as `{"$bytes": "<base64>"}` and
//! the application never base64-encodes by hand — a handler reads them into a
//! [`simpleio::Binary`] field and replies with one, and an emitted `Binary` arrives as
//! `$bytes`. Every byte value survives both ways.

mod support;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::json;
use simpleio::{Binary, Incoming, Reply, SimpleIoLayer};
use support::server::TestServer;
use support::wire::{Wire, finish, start};
use tower::{BoxError, service_fn};

#[derive(Deserialize)]
struct Upload {
    name: String,
    content: Binary,
}

#[derive(Serialize)]
struct Stored {
    name: String,
    size: usize,
    content: Binary,
}

#[derive(Serialize)]
struct File {
    name: &'static str,
    content: Binary,
}

/// `upload` `{name, content}`: replies `{name, size, content}` with the same bytes.
fn builder() -> simpleio::Builder {
    SimpleIoLayer::builder()
        .hold_time(Duration::from_millis(300))
        .recheck_interval(Duration::from_secs(20))
        .handler(service_fn(|msg: Incoming| async move {
            let upload: Upload = msg.json()?;
            let stored = Stored {
                name: upload.name,
                size: upload.content.len(),
                content: upload.content,
            };
            Ok::<_, BoxError>(Reply::json(&stored)?)
        }))
}

fn every_byte() -> Vec<u8> {
    (0..=255).collect()
}

#[tokio::test]
async fn a_handler_reads_bytes_a_client_sent_and_replies_with_bytes() {
    let server = TestServer::start(builder()).await;
    let tab = Wire::new(&server).tab("ann", "tab1");
    let acks = tab
        .send(json!([{
            "id": "m1",
            "event": "upload",
            "data": {"name": "a.bin", "content": {"$bytes": "AJ+Slg=="}},
        }]))
        .await;
    assert_eq!(
        acks,
        [json!({
            "id": "m1",
            "reply": {"name": "a.bin", "size": 4, "content": {"$bytes": "AJ+Slg=="}},
        })]
    );
}

#[tokio::test]
async fn an_emitted_binary_field_arrives_as_dollar_bytes() {
    let server = TestServer::start(builder()).await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    tab.receive().await;

    let file = File {
        name: "avatar.png",
        content: Binary::from(&b"\x89PNG\r\n\x1a\n"[..]),
    };
    let sending = start(server.io.to_user("ann").emit("file", &file)).await;
    let got = tab.receive().await;
    assert_eq!(
        got.data(),
        [json!({"name": "avatar.png", "content": {"$bytes": "iVBORw0KGgo="}})]
    );
    tab.receive().await;
    assert!(finish(sending, "the emit").await.is_ok());
}

#[tokio::test]
async fn all_256_byte_values_round_trip_both_ways() {
    let server = TestServer::start(builder()).await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    tab.receive().await;
    let all = every_byte();
    let encoded = STANDARD.encode(&all);

    // Client to handler and back in the ack.
    let acks = tab
        .send(json!([{
            "id": "m1",
            "event": "upload",
            "data": {"name": "all", "content": {"$bytes": encoded}},
        }]))
        .await;
    let reply = &acks[0]["reply"];
    assert_eq!(reply["size"], 256);
    let back = STANDARD
        .decode(reply["content"]["$bytes"].as_str().expect("$bytes"))
        .expect("base64");
    assert_eq!(back, all);

    // Server to client.
    let _sending = start(server.io.to_user("ann").emit(
        "file",
        &File {
            name: "all",
            content: Binary::from(all.clone()),
        },
    ))
    .await;
    let got = tab.receive().await;
    let text = got.messages[0].data["content"]["$bytes"]
        .as_str()
        .expect("$bytes")
        .to_owned();
    assert_eq!(text, encoded, "standard base64, with padding");
    assert_eq!(STANDARD.decode(text).expect("base64"), all);
}
