//! Bad input is bounded and explained (guarantee 6): each malformed, oversized or misdirected
//! request gets a 4xx with the protocol's JSON error body and the right code, never reaches the
//! handler, and disturbs no other client.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::Method;
use reqwest::header::ALLOW;
use serde_json::{Value, json};
use simpleio::{Incoming, Reply, SimpleIoLayer};
use support::server::TestServer;
use support::wire::{Answer, Wire, eventually, finish, raw_request, read_at_least, start};
use tower::{BoxError, service_fn};

const MAX_BODY: usize = 1024;
const MAX_MESSAGES: usize = 3;

struct Setup {
    server: TestServer,
    wire: Wire,
    calls: Arc<AtomicUsize>,
}

async fn setup() -> Setup {
    setup_with_hold(Duration::from_millis(300)).await
}

async fn setup_with_hold(hold: Duration) -> Setup {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let server = TestServer::start(
        SimpleIoLayer::builder()
            .hold_time(hold)
            .max_body(MAX_BODY)
            .max_messages_per_request(MAX_MESSAGES)
            .max_event_len(16)
            .handler(service_fn(move |_: Incoming| {
                counted.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, BoxError>(Reply::none()) }
            })),
    )
    .await;
    let wire = Wire::new(&server);
    Setup {
        server,
        wire,
        calls,
    }
}

impl Setup {
    async fn post_text(&self, content_type: Option<&str>, body: &str) -> Answer {
        self.wire
            .post_raw(Some("ann"), content_type, body.as_bytes())
            .await
    }

    async fn post_messages(&self, messages: Value) -> Answer {
        self.wire
            .post(
                Some("ann"),
                &json!({"client": "tab1", "messages": messages}),
            )
            .await
    }

    fn handler_calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn message(n: usize) -> Value {
    json!({"id": format!("tab1-{n}"), "event": "e", "data": n})
}

#[tokio::test]
async fn malformed_json_is_refused() {
    let s = setup().await;
    s.post_text(
        Some("application/json"),
        r#"{"client":"tab1","messages":[{"id":"a""#,
    )
    .await
    .assert_error(400, "malformed_json");
    s.post_text(Some("application/json"), "")
        .await
        .assert_error(400, "malformed_json");
    s.post_text(Some("application/json"), "not json at all")
        .await
        .assert_error(400, "malformed_json");
    assert_eq!(s.handler_calls(), 0);
}

#[tokio::test]
async fn json_of_the_wrong_shape_is_refused() {
    let s = setup().await;
    let bad_bodies = [
        json!([1, 2]),
        json!({"client": "tab1"}),
        json!({"client": "tab1", "messages": 3}),
        json!({"client": "tab1", "messages": []}),
        json!({"client": "tab1", "messages": [{"event": "e"}]}),
        json!({"client": "tab1", "messages": [{"id": "bad id", "event": "e"}]}),
        json!({"client": "tab1", "messages": [{"id": "m-1", "event": ""}]}),
        json!({"client": "tab1", "messages": [{"id": "m-1", "event": "e".repeat(17)}]}),
        json!({"client": "bad id", "messages": [message(1)]}),
        json!({"client": "c".repeat(65), "messages": [message(1)]}),
    ];
    for body in bad_bodies {
        let answer = s.wire.post(Some("ann"), &body).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.text);
        answer.assert_error(400, "invalid_field");
    }
    assert_eq!(s.handler_calls(), 0);
}

/// Fields this server does not know are ignored, in the body and in each message: a client of
/// a later protocol version still talks to it.
#[tokio::test]
async fn unknown_fields_are_ignored() {
    let s = setup().await;
    let body = json!({"client": "tab1", "v": 2, "messages": [
        {"id": "m-1", "event": "e", "data": 1, "extra": {"later": true}}
    ]});
    let acks = s.wire.post(Some("ann"), &body).await.acks();
    assert!(acks[0].get("reply").is_some(), "{acks:?}");
    assert_eq!(s.handler_calls(), 1);
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused() {
    let s = setup().await;
    let big = json!([{"id": "tab1-1", "event": "e", "data": "x".repeat(MAX_BODY)}]);
    s.post_messages(big)
        .await
        .assert_error(413, "body_too_large");

    // The same without a declared length: a chunked body is cut at the limit too.
    let body = json!({"client": "tab1", "messages": [{"id": "tab1-1", "event": "e", "data": "x".repeat(4 * MAX_BODY)}]})
        .to_string();
    let request = format!(
        "POST /simpleio HTTP/1.1\r\nhost: localhost\r\nx-user: ann\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n\
         {:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let mut stream = raw_request(s.server.addr, &request).await;
    let head = String::from_utf8_lossy(&read_at_least(&mut stream, 12).await).into_owned();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert_eq!(s.handler_calls(), 0);
}

#[tokio::test]
async fn too_many_messages_are_refused() {
    let s = setup().await;
    let messages: Vec<Value> = (0..=MAX_MESSAGES).map(message).collect();
    s.post_messages(Value::Array(messages))
        .await
        .assert_error(413, "too_many_messages");
    assert_eq!(s.handler_calls(), 0);

    // At the limit is fine.
    let messages: Vec<Value> = (0..MAX_MESSAGES).map(message).collect();
    assert_eq!(
        s.post_messages(Value::Array(messages)).await.acks().len(),
        3
    );
}

#[tokio::test]
async fn a_post_that_is_not_json_is_refused() {
    let s = setup().await;
    let body = json!({"client": "tab1", "messages": [message(1)]}).to_string();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        s.post_text(content_type, &body)
            .await
            .assert_error(415, "unsupported_media_type");
    }
    assert_eq!(s.handler_calls(), 0);
    // With parameters it is still JSON.
    let answer = s
        .post_text(Some("application/json; charset=utf-8"), &body)
        .await;
    assert_eq!(answer.acks().len(), 1);
}

#[tokio::test]
async fn a_poll_with_a_bad_query_is_refused() {
    let s = setup().await;
    for query in [
        "",
        "cursor=0&epoch=e",
        "client=",
        "client=bad%20id",
        "client=tab%2F1",
        &format!("client={}", "c".repeat(65)),
        "client=tab1&cursor=5",
        "client=tab1&epoch=abc",
        "client=tab1&cursor=-1&epoch=abc",
        "client=tab1&cursor=abc&epoch=abc",
        "client=tab1&cursor=1.5&epoch=abc",
        "client=tab1&cursor=99999999999999999999999&epoch=abc",
        "client=tab1&cursor=1&epoch=",
    ] {
        let answer = s.wire.get(Some("ann"), query).await;
        assert_eq!(answer.status, 400, "?{query}: {}", answer.text);
        answer.assert_error(400, "invalid_query");
    }
}

#[tokio::test]
async fn a_wrong_method_is_refused_with_allow() {
    let s = setup().await;
    for method in [
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::HEAD,
    ] {
        let answer = s
            .wire
            .request(method.clone(), Some("ann"), "client=tab1", None, Vec::new())
            .await;
        assert_eq!(answer.status, 405, "{method}");
        assert_eq!(answer.headers[ALLOW], "GET, POST", "{method}");
        if method != Method::HEAD {
            answer.assert_error(405, "method_not_allowed");
        }
    }
}

#[tokio::test]
async fn bad_requests_do_not_disturb_a_poll_in_flight() {
    // A hold long enough that bob's poll is still waiting when the message comes.
    let s = setup_with_hold(Duration::from_secs(20)).await;
    let mut tab = s.wire.tab("bob", "tab1");
    // A first message gives bob his cursor without waiting out the hold.
    let first = start(s.server.io.to_user("bob").emit("hello", &0)).await;
    assert_eq!(tab.receive().await.data(), [json!(0)]);
    // bob's poll waits while ann sends every kind of bad request.
    let poll = tokio::spawn({
        let tab = tab.clone();
        async move { tab.peek().await }
    });
    let io = s.server.io.clone();
    eventually("bob's poll is waiting", || io.waiting_polls() == 1).await;

    s.post_text(Some("application/json"), "{")
        .await
        .assert_error(400, "malformed_json");
    s.post_messages(json!([{"id": "tab1-1", "event": "e", "data": "x".repeat(MAX_BODY)}]))
        .await
        .assert_error(413, "body_too_large");
    s.post_messages(Value::Array((0..=MAX_MESSAGES).map(message).collect()))
        .await
        .assert_error(413, "too_many_messages");
    s.post_text(Some("text/plain"), "{}")
        .await
        .assert_error(415, "unsupported_media_type");
    s.wire
        .get(Some("ann"), "client=bad%20id")
        .await
        .assert_error(400, "invalid_query");
    s.wire
        .get(Some("ann"), "client=tab1&cursor=1")
        .await
        .assert_error(400, "invalid_query");
    s.wire
        .request(Method::PUT, Some("ann"), "", None, Vec::new())
        .await
        .assert_error(405, "method_not_allowed");

    // bob's poll is still there and completes normally with what is sent to him.
    let sending = start(s.server.io.to_user("bob").emit("news", &"still here")).await;
    let got = tab.take(finish(poll, "bob's poll").await);
    assert_eq!(got.data(), [json!("still here")]);
    assert!(finish(first, "the first emit to bob").await.is_ok());
    // Confirm with a poll that is not held: a message follows it.
    let last = start(s.server.io.to_user("bob").emit("bye", &1)).await;
    assert_eq!(tab.receive().await.data(), [json!(1)]);
    assert!(finish(sending, "the emit to bob").await.is_ok());
    drop(last);
    assert_eq!(s.handler_calls(), 0);

    // And ann, after all that, can send normally.
    let acks = s.post_messages(json!([message(1)])).await.acks();
    assert_eq!(acks, [json!({"id": "tab1-1", "reply": null})]);
}
