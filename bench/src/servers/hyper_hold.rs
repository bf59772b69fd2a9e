//! `server hyper-hold`: bare hyper (hyper-util's auto HTTP/1 + HTTP/2 connection builder, the one
//! `axum::serve` uses) holding every request to `/hold` for `--hold` seconds, then answering an
//! empty `200`. One waiting request per connection costs what this server's RSS grows by: the
//! floor under any long-polling server on this stack.
//!
//! `GET /bench/stats` answers at once with `waiting_polls` (requests being held).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

use super::Stats;

/// Runs the server until the process is stopped.
pub async fn run(port: u16, hold: Duration) -> Result<()> {
    let listener = super::bind(port).await?;
    let waiting = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = listener.accept().await?;
        let waiting = waiting.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(req, hold, waiting.clone()));
            // A client that goes away mid-request is its business, not an error here.
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    hold: Duration,
    waiting: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/bench/stats" {
        let stats = Stats {
            waiting_polls: waiting.load(Ordering::Relaxed),
            ..Stats::default()
        };
        let body = serde_json::to_vec(&stats).unwrap_or_default();
        return Ok(Response::new(Full::new(Bytes::from(body))));
    }
    // Counted down even if the client drops the connection and the future with it.
    struct Held(Arc<AtomicU64>);
    impl Drop for Held {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    waiting.fetch_add(1, Ordering::Relaxed);
    let _held = Held(waiting);
    tokio::time::sleep(hold).await;
    Ok(Response::new(Full::new(Bytes::new())))
}
