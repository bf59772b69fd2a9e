//! The admin page (feature `admin`) over HTTP: refused without the application's authorization,
//! absent unless set up, and its figures: live users and clients, rooms and their members,
//! messages pending confirmation with their age, recent expirations; on two nodes over one
//! Redis, the storage's figures agree and the nodes' tallies add up.

#![cfg(feature = "admin")]

mod support;

#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
mod redis_server;

use std::time::Duration;

use http::request::Parts;
use serde_json::Value;
use simpleio::{Rejection, SimpleIoLayer, UserId};
use support::server::TestServer;
use support::wire::{Wire, eventually_async, finish, start};

const KEY: &str = "operator-key";

/// Lets in requests with `x-admin-key: operator-key`.
fn operators(parts: &Parts) -> std::future::Ready<Result<UserId, Rejection>> {
    let key = parts.headers.get("x-admin-key");
    std::future::ready(if key.is_some_and(|k| k == KEY) {
        Ok(UserId::from("operator"))
    } else {
        Err(Rejection::forbidden("operators only"))
    })
}

fn builder() -> simpleio::Builder {
    SimpleIoLayer::builder()
        .hold_time(Duration::from_millis(300))
        .admin("/admin", operators)
}

async fn get(server: &TestServer, path: &str, key: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(format!("{}{path}", server.base()));
    if let Some(key) = key {
        request = request.header("x-admin-key", key);
    }
    request.send().await.expect("the server answers")
}

async fn snapshot(server: &TestServer) -> Value {
    let response = get(server, "/admin/snapshot", Some(KEY)).await;
    assert_eq!(response.status(), 200);
    response.json().await.expect("a JSON snapshot")
}

#[tokio::test]
async fn the_admin_page_and_its_snapshot_are_refused_without_the_applications_authorization() {
    let server = TestServer::start(builder()).await;
    for path in ["/admin", "/admin/snapshot"] {
        let refused = get(&server, path, None).await;
        assert_eq!(refused.status(), 403, "{path} without a key");
        let wrong = get(&server, path, Some("guess")).await;
        assert_eq!(wrong.status(), 403, "{path} with a wrong key");
        let body = refused.text().await.expect("a body");
        assert!(
            !body.contains("live_users"),
            "a refusal shows no figures: {body}"
        );
    }
    let page = get(&server, "/admin", Some(KEY)).await;
    assert_eq!(page.status(), 200);
    let kind = page.headers()[http::header::CONTENT_TYPE]
        .to_str()
        .expect("ascii");
    assert!(kind.starts_with("text/html"), "{kind}");
    assert!(
        page.headers()
            .contains_key(http::header::CONTENT_SECURITY_POLICY)
    );
    assert!(
        page.text()
            .await
            .expect("the page")
            .contains("<title>simpleio admin</title>")
    );
}

#[tokio::test]
async fn without_an_admin_call_there_is_no_admin_page() {
    let server = TestServer::start(SimpleIoLayer::builder()).await;
    for path in ["/admin", "/admin/snapshot"] {
        let response = get(&server, path, Some(KEY)).await;
        assert_eq!(
            response.status(),
            404,
            "{path} goes to the application, which has none"
        );
    }
}

#[test]
fn an_admin_path_on_the_route_itself_is_refused_when_building() {
    let built = SimpleIoLayer::builder()
        .admin("/simpleio", operators)
        .try_build();
    assert!(
        matches!(built, Err(simpleio::BuildError::AdminPath(_))),
        "{built:?}"
    );
}

#[tokio::test]
async fn the_snapshot_shows_live_users_their_rooms_pending_messages_and_expirations() {
    let server = TestServer::start(builder()).await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    tab.receive().await;
    server.io.join("ann", "lobby").await.expect("joined");
    // To bob, who never connects: pending until it expires.
    let unconfirmed = start(
        server
            .io
            .to_user("bob")
            .ttl(Duration::from_millis(400))
            .emit("news", &1),
    )
    .await;

    let s = snapshot(&server).await;
    assert_eq!(s["storage"]["live_users"], 1);
    assert_eq!(s["storage"]["live_clients"], 1);
    assert_eq!(s["storage"]["users"][0]["user"], "ann");
    assert_eq!(s["storage"]["users"][0]["clients"][0], "tab1");
    assert_eq!(s["storage"]["rooms"][0]["room"], "lobby");
    assert_eq!(s["storage"]["rooms"][0]["members"][0], "ann");
    let pending = &s["node"]["pending"];
    assert_eq!(pending[0]["user"], "bob", "{pending}");
    assert_eq!(pending[0]["messages"], 1);
    assert!(
        pending[0]["oldest_ms"].as_u64().expect("an age") < 5_000,
        "{pending}"
    );
    assert_eq!(s["node"]["stored"], 1);

    let outcome = finish(unconfirmed, "the message to bob").await;
    assert!(outcome.is_err(), "nobody confirmed it: {outcome:?}");
    let s = snapshot(&server).await;
    assert_eq!(s["node"]["pending"], Value::Array(vec![]));
    assert_eq!(s["node"]["expired"], 1);
    assert_eq!(s["node"]["expired_recently"][0]["user"], "bob");
    assert_eq!(s["node"]["expired_recently"][0]["namespace"], "/");
}

/// Two nodes over one Redis: each answers with the same storage figures (users, clients,
/// rooms), whichever node their clients poll; each node's tallies are its own, and together
/// they count every message once.
#[cfg(feature = "redis")]
#[tokio::test]
async fn two_nodes_show_the_same_storage_figures_and_their_tallies_add_up() {
    let Some(redis) = redis_server::RedisServer::shared() else {
        return;
    };
    let prefix = format!("admin-{}:", simpleio::ClientId::random());
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let storage = simpleio::RedisStorage::builder(redis.url())
            .key_prefix(prefix.clone())
            .connect()
            .await
            .expect("connect to the test Redis");
        nodes.push(TestServer::start(builder().storage(storage)).await);
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut ann = Wire::new(a).tab("ann", "tab1");
    let mut bob = Wire::new(b).tab("bob", "tab1");
    ann.receive().await;
    bob.receive().await;
    a.io.join("ann", "lobby").await.expect("joined");
    b.io.join("bob", "lobby").await.expect("joined");

    // One message sent from each node, each confirmed by a client polling the other node.
    let to_bob = start(a.io.to_user("bob").emit("news", &1)).await;
    let to_ann = start(b.io.to_user("ann").emit("news", &2)).await;
    for tab in [&mut ann, &mut bob] {
        tab.receive().await;
        tab.receive().await;
    }
    finish(to_bob, "a's message to bob")
        .await
        .expect("delivered");
    finish(to_ann, "b's message to ann")
        .await
        .expect("delivered");

    let (sa, sb) = (snapshot(a).await, snapshot(b).await);
    assert_eq!(sa["storage"], sb["storage"], "the storage's figures agree");
    assert_eq!(sa["storage"]["live_users"], 2);
    assert_eq!(sa["storage"]["live_clients"], 2);
    assert_eq!(
        sa["storage"]["rooms"][0]["members"],
        serde_json::json!(["ann", "bob"])
    );
    let total = |field: &str| {
        sa["node"][field].as_u64().expect("a count") + sb["node"][field].as_u64().expect("a count")
    };
    assert_eq!(
        total("stored"),
        2,
        "each message counted once, by its sender's node"
    );
    assert_eq!(total("delivered"), 2);
    assert_eq!(sa["node"]["delivered"], 1);
    assert_eq!(sb["node"]["delivered"], 1);
    // Each node served its own client's polls: its requests are its own.
    eventually_async("both nodes counted requests", || async {
        snapshot(a).await["node"]["requests"].as_u64() > Some(0)
            && snapshot(b).await["node"]["requests"].as_u64() > Some(0)
    })
    .await;
}

// --- the page in headless Chromium (client/test/browser/admin.test.mjs) --------------------------

/// Whether the test must run (CI) or may skip when a tool is missing.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skips (outside CI) or fails (in CI) for a missing tool. Returns whether to go on.
fn require(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    assert!(!in_ci(), "{what} is required under CI=true");
    eprintln!("\n!!! SKIPPED: {what} is missing; the admin page was NOT tested in a browser !!!\n");
    false
}

fn client_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_shows_live_figures_and_charts_in_chromium() {
    use std::process::Command;
    let node = Command::new("node").arg("--version").output();
    if !require("node", node.is_ok_and(|o| o.status.success()))
        || !require(
            "chromium",
            std::path::Path::new("/usr/bin/chromium").exists(),
        )
    {
        return;
    }
    if !client_dir().join("node_modules").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(client_dir())
            .status()
            .expect("run npm ci");
        assert!(status.success(), "npm ci failed in client/");
    }

    let server = TestServer::start(builder()).await;
    let mut ann = Wire::new(&server).tab("ann", "tab1");
    ann.receive().await;
    server.io.join("ann", "lobby").await.expect("joined");
    // Waits for the whole test: shown as pending.
    let _unconfirmed = start(server.io.to_user("nobody").emit("news", &0)).await;
    // Traffic for the charts: a message to ann every 100 ms, which ann's polls confirm.
    let io = server.io.clone();
    let sender = tokio::spawn(async move {
        for n in 1.. {
            tokio::spawn(io.to_user("ann").emit("tick", &n));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let poller = tokio::spawn(async move {
        loop {
            ann.receive().await;
        }
    });

    let url = format!("{}/admin", server.base());
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args([
                "--test",
                "--test-timeout=60000",
                "test/browser/admin.test.mjs",
            ])
            .current_dir(client_dir())
            .env("SIMPLEIO_ADMIN", url)
            .env("SIMPLEIO_ADMIN_KEY", KEY)
            .output()
            .expect("run node --test")
    })
    .await
    .expect("node ran");
    sender.abort();
    poller.abort();
    let report = String::from_utf8_lossy(&output.stdout);
    println!("{report}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "the admin page's browser test failed: {}",
        report
            .lines()
            .filter(|l| l.starts_with("not ok") || l.trim_start().starts_with("error:"))
            .collect::<Vec<_>>()
            .join("; ")
    );
}
