//! What a waiting poll costs in memory, simpleio's own part: the layer is called as a plain
//! Tower service (no HTTP server, so no connection buffers), each poll by its own user, and
//! the bytes still allocated while they all wait are counted by a counting allocator.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use simpleio::{SimpleIoLayer, UserId};
use tower::{Layer, Service, ServiceExt};

#[path = "support/counting.rs"]
mod counting;

/// Polls a future once: enough for a poll to register and start waiting.
fn poll_once<F: Future + Unpin>(f: &mut F) -> bool {
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    matches!(Pin::new(f).poll(&mut cx), Poll::Ready(_))
}

#[tokio::test(flavor = "current_thread")]
async fn a_waiting_poll_costs_simpleio_under_two_kilobytes_and_its_records_under_800_bytes() {
    const POLLS: usize = 2_000;
    let (layer, io) = SimpleIoLayer::builder()
        .identity(|parts: &http::request::Parts| {
            let user = parts
                .headers
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .map(UserId::from);
            async move { user.ok_or_else(|| simpleio::Rejection::unauthorized("no user")) }
        })
        .build();
    let mut service = layer.layer(tower::service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
    }));
    let request = |i: usize, cursor: Option<(&str, u64)>| {
        let query = match cursor {
            None => format!("/simpleio?client=c{i}"),
            Some((epoch, pos)) => format!("/simpleio?client=c{i}&cursor={pos}&epoch={epoch}"),
        };
        Request::get(query)
            .header("x-user", format!("user{i}"))
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    // One handshake of another user first, so that the one-off start-up allocations are
    // behind us; then each user's handshake, so every user and client is known (as for a
    // connected client). What those records cost is counted apart.
    let warm = service.ready().await.expect("ready");
    drop(warm.call(request(POLLS, None)).await.expect("answer"));
    let unknown = counting::live();
    let unknown_blocks = counting::blocks();
    let mut handshakes = Vec::new();
    for i in 0..POLLS {
        let ready = service.ready().await.expect("ready");
        let answer = ready.call(request(i, None)).await.expect("answer");
        // Only the last answer is kept (for its epoch and cursor).
        if i + 1 == POLLS {
            handshakes.push(answer);
        }
    }
    let body = http_body_util::BodyExt::collect(handshakes.pop().expect("one").into_body())
        .await
        .expect("body")
        .to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let epoch = answer["epoch"].as_str().expect("epoch").to_owned();
    let cursor = answer["cursor"].as_u64().expect("cursor");
    drop(handshakes);
    let known = counting::live();
    let records = (known - unknown) as f64 / POLLS as f64;
    let record_blocks = (counting::blocks() - unknown_blocks) as f64 / POLLS as f64;

    // The requests are made before counting: the HTTP server allocates them, its part and not
    // simpleio's. simpleio frees a poll's headers once it has read them; that saving is not
    // counted in simpleio's favour below.
    let mut requests = Vec::with_capacity(POLLS);
    let made = counting::live();
    requests.extend((0..POLLS).map(|i| request(i, Some((&epoch, cursor)))));
    let request_bytes = (counting::live() - made) as f64 / POLLS as f64;
    let mut waiting = Vec::with_capacity(POLLS);
    let before = counting::live();
    let before_blocks = counting::blocks();
    for request in requests.drain(..) {
        let ready = service.ready().await.expect("ready");
        let mut poll = Box::pin(ready.call(request));
        assert!(!poll_once(&mut poll), "a poll with nothing new waits");
        waiting.push(poll);
    }
    // Let the hub's task handle the polls' announcements, as a server would.
    tokio::task::yield_now().await;
    assert_eq!(io.waiting_polls(), POLLS);
    let after = counting::live();
    let poll_blocks = (counting::blocks() - before_blocks) as f64 / POLLS as f64;
    // What the request held is freed while the poll waits: add it back, so that the figure is
    // what simpleio itself keeps.
    let per_poll = (after - before) as f64 / POLLS as f64 + request_bytes;
    println!(
        "simpleio's own memory per waiting poll: {per_poll:.0} bytes (the request's {request_bytes:.0} \
         bytes, freed while it waits, not counted in its favour), beside {records:.0} bytes of \
         storage records per connected user and client; in {poll_blocks:.1} and {record_blocks:.1} \
         live allocations"
    );
    assert!(
        per_poll < 2048.0,
        "a waiting poll costs simpleio {per_poll:.0} bytes"
    );
    // A user with one client: their log, the client's record (in a list sized to it, not a
    // hash table of four) and their places in the presence indexes. 1,148 bytes when the
    // record sat in a hash map and the log carried every index it might need.
    assert!(
        records < 800.0,
        "a connected user and client cost the storage {records:.0} bytes"
    );
    drop(waiting);
}
