//! The fan-out probe: K waiting polls in process (the layer called as a Tower service, no
//! HTTP, each poll a task), then R confirmed `everyone()` emits, each timed to `stored()` and
//! answered polls checked; between emits every client polls again with its new cursor, which
//! confirms the last one. The timed call is `Probe::poll`, so that
//!
//! ```text
//! valgrind --tool=callgrind '--toggle-collect=*Probe*poll*' fanout_probe 10000 1
//! ```
//!
//! counts the instructions of storing one fan-out alone (`docs/benchmarks.md`, "Fan-out").
//! Arguments: K (10,000), R (3).
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// Polls the future it wraps, in a function of its own for callgrind to toggle on.
struct Probe<F>(Pin<Box<F>>);
impl<F: Future> Future for Probe<F> {
    type Output = F::Output;
    #[inline(never)]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.0.as_mut().poll(cx)
    }
}

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use simpleio::{SimpleIoLayer, UserId};
use tower::{Layer, ServiceExt};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let k: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
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
    let service = layer.layer(tower::service_fn(|_: Request<Full<Bytes>>| async {
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
            .unwrap()
    };
    let mut cursors = Vec::new();
    for i in 0..k {
        let answer = service.clone().oneshot(request(i, None)).await.unwrap();
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        cursors.push((
            v["epoch"].as_str().unwrap().to_owned(),
            v["cursor"].as_u64().unwrap(),
        ));
    }
    let rounds: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    for round in 0..rounds {
        let mut tasks = Vec::new();
        for (i, (epoch, cursor)) in cursors.iter().enumerate() {
            let req = request(i, Some((epoch, *cursor)));
            tasks.push(tokio::spawn(service.clone().oneshot(req)));
        }
        while io.waiting_polls() < k {
            tokio::task::yield_now().await;
        }
        let started = Instant::now();
        let sending = Probe(Box::pin(
            io.everyone()
                .emit(
                    "tick",
                    &serde_json::json!({"seq": round, "t": 12345678901234u64}),
                )
                .stored(),
        ))
        .await
        .unwrap();
        let took = started.elapsed();
        let answered_from = Instant::now();
        for (i, t) in tasks.into_iter().enumerate() {
            let answer = t.await.unwrap().unwrap();
            let body = answer.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            cursors[i] = (
                v["epoch"].as_str().unwrap().to_owned(),
                v["cursor"].as_u64().unwrap(),
            );
            assert_eq!(v["messages"].as_array().map(|m| m.len()), Some(1));
        }
        println!(
            "round {round}: stored in {:.2} ms, answered {:.2} ms later",
            took.as_secs_f64() * 1e3,
            answered_from.elapsed().as_secs_f64() * 1e3
        );
        tokio::spawn(sending);
    }
    std::process::exit(0);
}
