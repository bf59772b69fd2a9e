//! The simpleio layer among an application's other layers, in the orders the guide's
//! "Composing with other layers" recommends and in the orders it warns of: timeouts, login
//! sessions (`examples/sessions.rs`), gRPC-Web (`examples/tonic_web.rs`), compression and body
//! limits. Every case over real HTTP on loopback.

mod support;

#[path = "../examples/sessions.rs"]
#[allow(dead_code)]
mod sessions;

#[path = "../examples/tonic_web.rs"]
#[allow(dead_code)]
mod tonic_web;

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use http::StatusCode;
use serde_json::{Value, json};
use simpleio::{SimpleIo, SimpleIoLayer};
use support::server::{RunningApp, header_identity};
use support::wire::{SOON, Wire, answer, raw_request, read_at_least};
use tokio::io::AsyncWriteExt;
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

/// Shorter than the hold, as a proxy's or an app-wide timeout often is.
const APP_TIMEOUT: Duration = Duration::from_millis(400);
const HOLD: Duration = Duration::from_millis(1500);

fn simpleio() -> (SimpleIoLayer, SimpleIo) {
    SimpleIoLayer::builder()
        .identity(header_identity)
        .hold_time(HOLD)
        .handler(tower::service_fn(|msg: simpleio::Incoming| async move {
            Ok::<_, tower::BoxError>(simpleio::Reply::from(json!({"echo": msg.json::<Value>()?})))
        }))
        .build()
}

/// The app's own routes: a slow one, and one that takes a body.
fn routes() -> Router {
    Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                "slow"
            }),
        )
        .route(
            "/upload",
            post(|body: axum::body::Bytes| async move { body.len().to_string() }),
        )
}

fn timeout() -> TimeoutLayer {
    TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, APP_TIMEOUT)
}

#[tokio::test]
async fn a_timeout_inside_the_simpleio_layer_bounds_the_app_and_leaves_held_polls_alone() {
    let (layer, io) = simpleio();
    let app = RunningApp::start(routes().layer(timeout()).layer(layer)).await;
    let mut tab = Wire::at(app.url("/simpleio")).tab("ann", "tab1");
    tab.receive().await;

    // A held poll outlives the app's timeout and ends with the hold.
    let started = Instant::now();
    let held = tab.receive().await;
    assert!(held.messages.is_empty());
    assert!(
        started.elapsed() >= HOLD - Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );

    // The app's own routes are still bounded by it.
    let slow = reqwest::get(app.url("/slow")).await.expect("a response");
    assert_eq!(slow.status(), StatusCode::REQUEST_TIMEOUT);
    drop(io);
}

#[tokio::test]
async fn a_timeout_around_the_simpleio_layer_cuts_held_polls_with_408_and_loses_nothing() {
    let (layer, io) = simpleio();
    let app = RunningApp::start(routes().layer(layer).layer(timeout())).await;
    let mut tab = Wire::at(app.url("/simpleio")).tab("ann", "tab1");
    tab.receive().await;

    // The outer timeout answers the held poll before the hold ends: what the guide warns of.
    let started = Instant::now();
    let cut = tab.wire.get(Some("ann"), &tab.query()).await;
    assert_eq!(cut.status, StatusCode::REQUEST_TIMEOUT, "{}", cut.text);
    assert!(started.elapsed() < HOLD, "{:?}", started.elapsed());

    // A message sent meanwhile waits for the next poll: the cut poll confirmed nothing new.
    let stored = io
        .to_user("ann")
        .emit("news", &1)
        .stored()
        .await
        .expect("stored");
    let sending = tokio::spawn(stored);
    let got = tab.receive().await;
    assert_eq!(got.data(), [json!(1)]);
    // The next poll confirms it as it starts, though the timeout cuts its hold again.
    let confirming = tab.wire.get(Some("ann"), &tab.query()).await;
    assert_eq!(confirming.status, StatusCode::REQUEST_TIMEOUT);
    assert!(
        tokio::time::timeout(SOON, sending)
            .await
            .expect("in time")
            .expect("join")
            .is_ok()
    );
}

#[tokio::test]
async fn a_session_layer_around_simpleio_gives_the_identity_function_the_signed_in_user() {
    let (app, io) = sessions::app();
    let app = RunningApp::start(app).await;
    let http = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .expect("client");
    let poll = |http: &reqwest::Client| http.get(app.url("/simpleio?client=cli1")).send();

    let before = answer(poll(&http).await.expect("a response")).await;
    before.assert_error(401, "unauthorized");

    let login = http
        .post(app.url("/login"))
        .json(&json!({"name": "ann"}))
        .send()
        .await
        .expect("a response");
    assert_eq!(login.status(), StatusCode::NO_CONTENT);

    let handshake = answer(poll(&http).await.expect("a response")).await;
    assert_eq!(handshake.status, StatusCode::OK, "{}", handshake.text);
    let acks = answer(
        http.post(app.url("/simpleio"))
            .json(&json!({"client": "cli1", "messages": [{"id": "m1", "event": "hi"}]}))
            .send()
            .await
            .expect("a response"),
    )
    .await
    .acks();
    assert_eq!(
        acks[0]["reply"],
        json!({"hello": "ann"}),
        "the session's user"
    );
    assert_eq!(io.clients_of("ann").await.expect("clients").len(), 1);

    let logout = http
        .post(app.url("/logout"))
        .send()
        .await
        .expect("a response");
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    answer(poll(&http).await.expect("a response"))
        .await
        .assert_error(401, "unauthorized");
}

#[tokio::test]
async fn a_session_layer_inside_simpleio_is_reported_as_a_setup_error() {
    let (layer, _io) = SimpleIoLayer::builder()
        .identity(sessions::identity)
        .build();
    let wrong = Router::new()
        .route("/", get(|| async { "page" }))
        .layer(tower_sessions::SessionManagerLayer::new(
            tower_sessions::MemoryStore::default(),
        ))
        .layer(layer);
    let app = RunningApp::start(wrong).await;
    let got = answer(
        reqwest::get(app.url("/simpleio?client=cli1"))
            .await
            .expect("a response"),
    )
    .await;
    got.assert_error(500, "no_session");
    assert!(got.text.contains("must wrap"), "{}", got.text);
}

#[tokio::test]
async fn grpc_web_and_simpleio_share_one_router() {
    let (app, _io) = tonic_web::app();
    let app = RunningApp::start(app).await;
    let http = reqwest::Client::new();

    // A gRPC-Web call: one empty `HealthCheckRequest` in a data frame (flag 0, length 0).
    let call = http
        .post(app.url("/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .expect("a response");
    assert_eq!(call.status(), StatusCode::OK);
    let content_type = call.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/grpc-web"),
        "{content_type}"
    );
    let body = call.bytes().await.expect("a body");
    // `HealthCheckResponse { status: SERVING }` (field 1 = 1), then the trailers frame.
    assert_eq!(&body[..7], &[0, 0, 0, 0, 2, 0x08, 0x01], "{body:?}");
    let trailers = String::from_utf8_lossy(&body[7..]).to_ascii_lowercase();
    assert!(trailers.contains("grpc-status:0"), "{trailers}");

    // simpleio on its route, beside it.
    let mut tab = Wire::at(app.url("/simpleio")).tab("ann", "tab1");
    let handshake = tab.receive().await;
    assert!(!handshake.epoch.is_empty());
}

#[tokio::test]
async fn compression_around_simpleio_compresses_answers_and_keeps_held_polls_prompt() {
    let (layer, io) = simpleio();
    let app = RunningApp::start(routes().layer(layer).layer(CompressionLayer::new())).await;

    // Without automatic decompression, to see what goes over the wire.
    let raw = reqwest::Client::builder()
        .no_gzip()
        .build()
        .expect("client");
    let handshake = raw
        .get(app.url("/simpleio?client=tab1"))
        .header("x-user", "ann")
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("a response");
    assert_eq!(handshake.status(), StatusCode::OK);
    assert_eq!(handshake.headers()["content-encoding"], "gzip");

    // Decompressed, a held poll still answers as soon as a message comes.
    let mut tab = Wire::at(app.url("/simpleio")).tab("ann", "tab1");
    tab.receive().await;
    let poll = tokio::spawn(async move { tab.receive().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let _sending = tokio::spawn(io.to_user("ann").emit("news", &"x".repeat(2000)));
    let got = tokio::time::timeout(SOON, poll)
        .await
        .expect("in time")
        .expect("join");
    assert_eq!(got.data(), [json!("x".repeat(2000))]);
    assert!(
        started.elapsed() < HOLD,
        "answered with the message, not the hold's end"
    );
}

/// A body limit outside the layer: a chunked body over it gets the spec's JSON `413`.
#[tokio::test]
async fn a_chunked_body_over_an_outer_body_limit_gets_the_json_413() {
    let (layer, _io) = simpleio();
    let app = RunningApp::start(
        routes()
            .layer(layer)
            .layer(RequestBodyLimitLayer::new(1024)),
    )
    .await;
    let body =
        json!({"client": "c1", "messages": [{"id": "m1", "event": "e", "data": "x".repeat(4096)}]})
            .to_string();
    let head = "POST /simpleio HTTP/1.1\r\nhost: localhost\r\nx-user: ann\r\n\
                content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    let mut stream = raw_request(app.addr, head).await;
    for chunk in body.as_bytes().chunks(512) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        // The server may answer and close before the whole body is written.
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let raw = String::from_utf8_lossy(&read_at_least(&mut stream, 12).await).into_owned();
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert!(
        raw.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{raw}"
    );
    assert!(raw.contains(r#""code":"body_too_large""#), "{raw}");
}

/// The layer's own bound is the one that applies to its route when it is outermost: an app-wide
/// limit inside it bounds the app's routes, not simpleio's.
#[tokio::test]
async fn simpleio_outside_an_app_body_limit_applies_its_own_max_body() {
    let (layer, _io) = SimpleIoLayer::builder()
        .identity(header_identity)
        .max_body(2048)
        .handler(tower::service_fn(|_msg: simpleio::Incoming| async move {
            Ok::<_, tower::BoxError>(simpleio::Reply::none())
        }))
        .build();
    let app = RunningApp::start(routes().layer(RequestBodyLimitLayer::new(512)).layer(layer)).await;
    let wire = Wire::at(app.url("/simpleio"));

    // 1 KiB: over the app's limit, within simpleio's.
    let ok = wire
        .post(
            Some("ann"),
            &json!({"client": "c1", "messages": [{"id": "m1", "event": "e", "data": "x".repeat(1024)}]}),
        )
        .await;
    assert_eq!(ok.acks().len(), 1);
    // Over simpleio's own: its JSON error.
    wire.post(
        Some("ann"),
        &json!({"client": "c1", "messages": [{"id": "m2", "event": "e", "data": "x".repeat(4096)}]}),
    )
    .await
    .assert_error(413, "body_too_large");
    // The app's route keeps its own limit.
    let upload = reqwest::Client::new()
        .post(app.url("/upload"))
        .body(vec![b'x'; 1024])
        .send()
        .await
        .expect("a response");
    assert_eq!(upload.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

/// A timeout around the layer shorter than the hold, but of a second or more: each held poll
/// it cuts is polled again at once, the client stays connected, and a message sent meanwhile
/// arrives without waiting out a backoff (spec §5).
#[cfg(feature = "client")]
#[tokio::test]
async fn a_timeout_around_the_layer_cuts_held_polls_without_disconnecting_the_rust_client() {
    use simpleio::client::{Client, Event};

    let (layer, io) = SimpleIoLayer::builder()
        .identity(header_identity)
        .hold_time(Duration::from_secs(5))
        .build();
    let cut =
        TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, Duration::from_millis(1200));
    let app = RunningApp::start(routes().layer(layer).layer(cut)).await;
    let (_client, mut events) = Client::builder(app.url("/simpleio"))
        .header("x-user", "ann")
        // Long, so that a poll waiting out a backoff would miss the deadline below.
        .backoff(Duration::from_secs(5), Duration::from_secs(10))
        .connect()
        .expect("the client starts");
    let first = tokio::time::timeout(SOON, events.recv())
        .await
        .expect("in time");
    assert!(matches!(first, Some(Event::Connected)), "{first:?}");

    // Two held polls cut: no disconnect.
    let quiet = tokio::time::timeout(Duration::from_millis(2800), events.recv()).await;
    assert!(
        quiet.is_err(),
        "an event while the polls were cut: {quiet:?}"
    );

    let sending = tokio::spawn(io.to_user("ann").emit("news", &"while cut"));
    let started = Instant::now();
    let got = tokio::time::timeout(SOON, events.recv())
        .await
        .expect("in time");
    match got {
        Some(Event::Message(m)) => assert_eq!(m.data, json!("while cut")),
        other => panic!("expected the message, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(sending);
}
