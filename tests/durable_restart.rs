//! The chat example on `DurableStorage` (its default: a file in `SIMPLEIO_DATA`), killed with
//! SIGKILL mid-load and started again on the same file and port: clients that were polling and
//! sending carry on with nothing lost, nothing duplicated, nothing out of order, no resync, room
//! memberships kept, and a message sent before the kill and retried after it not handled twice.
#![cfg(all(feature = "durable", feature = "client"))]

#[path = "support/cluster.rs"]
mod cluster;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::Node;
use serde_json::{Value, json};
use simpleio::client::{Client, EmitError, Event, MessageKind};
use tokio::task::JoinSet;

/// How long everything may take before the test fails with what is missing.
const TIMEOUT: Duration = Duration::from_secs(90);

struct Folder(PathBuf);

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn node_env(data: &str, port: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SIMPLEIO_DATA", data.to_owned()),
        ("PORT", port.to_owned()),
        ("SIMPLEIO_HOLD_MS", "3000".to_owned()),
        ("SIMPLEIO_RECHECK_MS", "2000".to_owned()),
        // A process killed mid-message blocks that message's retries this long.
        ("SIMPLEIO_LEASE_MS", "1000".to_owned()),
    ]
}

fn start(name: &str, env: &[(&'static str, String)]) -> Node {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Node::start(name, "", &env)
}

/// What one user's client received.
#[derive(Debug, Default)]
struct Inbox {
    /// `(pos, from, text)` of every chat line, in the order the client handed them over.
    lines: Vec<(u64, String, u64)>,
    resynced: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_restarted_on_its_file_loses_nothing() {
    let folder = Folder(std::env::temp_dir().join(format!(
        "simpleio-restart-{}-{}",
        std::process::id(),
        simpleio::storage::now_millis()
    )));
    std::fs::create_dir_all(&folder.0).expect("a data folder");
    let data = folder.0.display().to_string();
    let mut node = start("first", &node_env(&data, "0"));
    let port = node.addr().port().to_string();
    let url = node.url();
    let http = reqwest::Client::new();

    // A message handled before the kill, to be retried after it.
    let early = post(&http, &url, "zed", "zed-tab-0001", "early-1", "yan").await;
    assert_eq!(early, (200, json!({"ok": true})));

    const USERS: usize = 10;
    const LINES: u64 = 60;
    let names: Vec<String> = (0..USERS).map(|i| format!("u{i:02}")).collect();
    let inboxes: Vec<Arc<Mutex<Inbox>>> = (0..USERS).map(|_| Arc::default()).collect();
    let mut clients = Vec::new();
    let mut receivers = JoinSet::new();
    for (name, inbox) in names.iter().zip(&inboxes) {
        let (client, mut events) = Client::builder(&url)
            .header("cookie", &format!("user={name}"))
            .poll_timeout(Duration::from_secs(10))
            .send_timeout(Duration::from_secs(10))
            .backoff(Duration::from_millis(50), Duration::from_millis(500))
            .pending_delay(Duration::from_millis(200))
            .connect()
            .expect("a client");
        let inbox = inbox.clone();
        receivers.spawn(async move {
            while let Some(event) = events.recv().await {
                let mut inbox = inbox.lock().expect("inbox");
                match event {
                    Event::Message(m) => {
                        let MessageKind::Stored { pos } = m.kind else {
                            continue;
                        };
                        let from = m.data["from"].as_str().unwrap_or_default().to_owned();
                        if let Some(n) = m.data["text"].as_str().and_then(|t| t.parse().ok()) {
                            inbox.lines.push((pos, from, n));
                        }
                    }
                    Event::Resynced => inbox.resynced += 1,
                    _ => {}
                }
            }
        });
        clients.push(client);
    }

    // Every user is in the room `club`: memberships are the storage's, and must outlive the
    // process.
    for client in &clients {
        let reply = client
            .emit("join", &json!({"room": "club"}))
            .await
            .expect("joined");
        assert_eq!(reply, json!({"ok": true}));
    }

    // Each user sends LINES direct messages to the next, one after another; a line refused as
    // `unavailable` (the process was gone) is sent again, as an application would.
    let mut senders = JoinSet::new();
    for (i, client) in clients.iter().enumerate() {
        let client = client.clone();
        let to = names[(i + 1) % USERS].clone();
        senders.spawn(async move {
            let mut resent = 0;
            for k in 0..LINES {
                let line = json!({"text": k.to_string(), "to": to});
                loop {
                    match client.emit("chat", &line).await {
                        Ok(reply) => {
                            assert_eq!(reply, json!({"ok": true}));
                            break;
                        }
                        Err(EmitError::Ack { code, .. }) if code == "unavailable" => {
                            resent += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => panic!("line {k} to {to}: {e}"),
                    }
                }
            }
            resent
        });
    }

    let count = |inboxes: &[Arc<Mutex<Inbox>>]| -> usize {
        inboxes
            .iter()
            .map(|i| i.lock().expect("inbox").lines.len())
            .sum()
    };
    // Each line reaches its recipient and its sender.
    let expected = 2 * USERS * LINES as usize;
    let deadline = Instant::now() + TIMEOUT;
    while count(&inboxes) < expected / 3 {
        assert!(Instant::now() < deadline, "a third did not arrive in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    node.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut node = start("second", &node_env(&data, &port));
    assert_eq!(node.url(), url, "restarted on another port");

    let mut resent = 0;
    while let Some(done) = senders.join_next().await {
        resent += done.expect("a sender did not panic");
    }
    let deadline = Instant::now() + TIMEOUT;
    while count(&inboxes) < expected {
        if Instant::now() > deadline {
            let per: Vec<usize> = inboxes
                .iter()
                .map(|i| i.lock().expect("inbox").lines.len())
                .collect();
            panic!(
                "only {} of {expected} lines arrived: {per:?}",
                count(&inboxes)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A little longer: anything delivered twice would show now.
    tokio::time::sleep(Duration::from_millis(500)).await;

    for (i, inbox) in inboxes.iter().enumerate() {
        let inbox = inbox.lock().expect("inbox");
        let me = &names[i];
        let prev = &names[(i + USERS - 1) % USERS];
        assert_eq!(
            inbox.resynced, 0,
            "{me} resynced: the restart lost the epoch"
        );
        let positions: Vec<u64> = inbox.lines.iter().map(|(pos, _, _)| *pos).collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "{me}: positions not increasing: {positions:?}"
        );
        for from in [prev, me] {
            let got: Vec<u64> = inbox
                .lines
                .iter()
                .filter(|(_, f, _)| f == from)
                .map(|(_, _, n)| *n)
                .collect();
            // A line whose handler ran, stored it, and died before its outcome was recorded is
            // handled again by the retry; its send is known by its origin and not stored twice.
            assert_eq!(
                got,
                (0..LINES).collect::<Vec<_>>(),
                "{me}: lines from {from} lost, repeated or out of order"
            );
        }
        let unique: HashSet<_> = inbox.lines.iter().map(|(p, _, _)| p).collect();
        assert_eq!(
            unique.len(),
            inbox.lines.len(),
            "{me}: a position came twice"
        );
    }
    eprintln!("killed mid-run: {expected} lines, {resent} resent after `unavailable`");

    // The message handled before the kill, retried now: its stored outcome, not a second run.
    let again = post(&http, &url, "zed", "zed-tab-0001", "early-1", "yan").await;
    assert_eq!(again, (200, json!({"ok": true})));
    let res = http
        .get(format!("{url}?user=yan&client=yan-tab-0001"))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("a response");
    let body: Value = res.json().await.expect("a JSON body");
    let lines = body["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        lines.len(),
        1,
        "zed's line was handled twice, or lost: {body}"
    );
    assert_eq!(lines[0]["data"]["from"], "zed");

    // The room outlived the process: a line to it reaches every member.
    let reply = clients[0]
        .emit("chat", &json!({"text": "1000", "room": "club"}))
        .await
        .expect("a room line");
    assert_eq!(reply, json!({"ok": true}));
    let deadline = Instant::now() + TIMEOUT;
    for (i, inbox) in inboxes.iter().enumerate() {
        loop {
            let got = inbox
                .lock()
                .expect("inbox")
                .lines
                .iter()
                .any(|(_, from, n)| from == "u00" && *n == 1000);
            if got {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: the room line never came: its membership was lost",
                names[i]
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    for client in clients {
        client.close().await;
    }
    receivers.shutdown().await;
    node.stop();
}

/// One POST of a chat line with message id `id`, as `user`'s client `client`: the status and
/// the line's ack.
async fn post(
    http: &reqwest::Client,
    url: &str,
    user: &str,
    client: &str,
    id: &str,
    to: &str,
) -> (u16, Value) {
    let body = json!({"client": client, "messages": [
        {"id": id, "event": "chat", "data": {"text": "1", "to": to}}
    ]});
    let res = http
        .post(format!("{url}?user={user}"))
        .json(&body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("a response");
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    (status, body["acks"][0]["reply"].clone())
}
