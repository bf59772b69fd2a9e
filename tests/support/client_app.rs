//! The application the client tests talk to (`tests/js_client.rs`, `tests/android_client.rs`):
//! one handler whose events each make the server do one thing a client must cope with.
//!
//! - `echo`: replies with the data; `fail`: an error ack; `slow`: replies after `{"ms"}`;
//! - `count`: counts calls per user and `{"key"}` (a retried `POST` must reach it once);
//! - `send`: sends `{event, data}` to `{to}` (default: the sender) in `{ns}`, stored or
//!   `{volatile}`;
//! - `chat`: as `examples/chat.rs`, to every user online, the sender included;
//! - `ask`: an `emit_with_ack` of `{event, data}` to the sender, answered as the message
//!   `answers` (the replies, or `"timeout"`);
//! - `where`, `whoami`: the namespace, the user; `bytes`: `{name, content}` back as bytes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use simpleio::{Binary, HandlerError, Incoming, Reply, UserId};
use tower::BoxError;

/// `count` calls per (user, key).
pub type Counts = Mutex<HashMap<String, u64>>;

#[derive(Deserialize)]
struct SendArgs {
    to: Option<String>,
    /// The namespace to send in (default: the message's own).
    ns: Option<String>,
    event: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    volatile: bool,
}

#[derive(Deserialize)]
struct Blob {
    name: String,
    content: Binary,
}

#[derive(Serialize)]
struct BlobBack {
    name: String,
    len: usize,
    content: Binary,
}

/// Stores a message, then lets its delivery confirmation finish in the background: the handler
/// must not wait for it (a recipient may be offline for minutes), but must not reply before the
/// message is stored either, or two messages handled in a row could be stored in either order.
async fn store_then_detach(sending: simpleio::Sending) -> Result<(), BoxError> {
    let confirmation = sending.stored().await?;
    tokio::spawn(confirmation);
    Ok(())
}

/// Handles one message of a client under test; `ask_timeout` bounds the wait of `ask`.
pub async fn handle(
    counts: &Counts,
    ask_timeout: Duration,
    msg: Incoming,
) -> Result<Reply, BoxError> {
    match msg.event.as_str() {
        "echo" => Ok(msg.data.into()),
        "fail" => Err(HandlerError::new("handler_error", "asked to fail").into()),
        "count" => {
            let key: Value = msg.json()?;
            let key = format!("{}/{}", msg.user, key["key"]);
            let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
            let n = counts.entry(key).or_default();
            *n += 1;
            Ok(Reply::json(&*n)?)
        }
        "slow" => {
            let ms = msg.json::<Value>()?["ms"].as_u64().unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(Reply::json("slept")?)
        }
        "send" => {
            let send: SendArgs = msg.json()?;
            let to = send.to.map_or_else(|| msg.user.clone(), UserId::from);
            let io = send.ns.map_or_else(|| msg.io.clone(), |ns| msg.io.of(ns));
            let emitter = io.to_user(to);
            if send.volatile {
                emitter.volatile().emit(send.event, &send.data).await?;
            } else {
                store_then_detach(emitter.emit(send.event, &send.data)).await?;
            }
            Ok(Reply::none())
        }
        // As examples/chat.rs: to every user online, the sender included.
        "chat" => {
            let text = msg.json::<Value>()?["text"].clone();
            let at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
            let line = json!({ "from": msg.user, "text": text, "at": at });
            store_then_detach(
                msg.io
                    .everyone()
                    .to_user(msg.user.clone())
                    .emit("chat", &line),
            )
            .await?;
            Ok(Reply::none())
        }
        // An emit to the sender that asks for replies (spec §4c), in the background: the
        // client sends one POST at a time, so its reply cannot come while this one waits. The
        // outcome comes as the message `answers`: the replies, or `"timeout"`.
        "ask" => {
            let send: SendArgs = msg.json()?;
            let io = msg.io.clone();
            let user = msg.user.clone();
            tokio::spawn(async move {
                let asked = io
                    .to_user(user.clone())
                    .timeout(ask_timeout)
                    .emit_with_ack(send.event, &send.data)
                    .await;
                let outcome = match asked {
                    Ok(replies) => json!(replies.parse::<Value>().unwrap_or_default()),
                    Err(_) => json!("timeout"),
                };
                let _ = io.to_user(user).emit("answers", &outcome).await;
            });
            Ok(Reply::none())
        }
        // Which handler got the message: its namespace.
        "where" => Ok(Reply::json(&*msg.namespace)?),
        // Who the identity function says the sender is.
        "whoami" => Ok(Reply::json(msg.user.as_str())?),
        // Bytes (spec §4b) decoded into `Binary` and encoded again, in the reply and in a message
        // `bytes` to the sender: proves the client's base64 matches the server's.
        "bytes" => {
            let blob: Blob = msg.json()?;
            let back = BlobBack {
                len: blob.content.len(),
                content: blob.content,
                name: blob.name,
            };
            store_then_detach(msg.io.to_user(msg.user.clone()).emit("bytes", &back)).await?;
            Ok(Reply::json(&back)?)
        }
        other => Err(HandlerError::new("unknown_event", format!("no event {other:?}")).into()),
    }
}
