//! `server hyper-hold`: bare hyper holding every request to `/hold` for `--hold` seconds, then
//! answering an empty `200`; `/hello` it answers at once with a body of the size of simpleio's
//! handshake answer. Its clients ask `/hello` once, then `/hold` on the same connection, as a
//! simpleio client handshakes before it polls: a connection that has answered a request holds
//! more than one that has not (hyper's write buffer has been written to). One waiting request
//! per connection costs what this server's RSS grows by: the floor under any long-polling
//! server on this stack. It is served as the simpleio server is (`--http`, [`super::serve`]).
//!
//! `GET /bench/stats` answers at once with `waiting_polls` (requests being held).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::Request;

use super::{Http, Stats};

/// The body `/hello` answers with: as long as a simpleio handshake answer to a new client
/// (`{"epoch":...,"cursor":0,"messages":[],"volatile":[],"limits":{...}}`, 357 bytes with the
/// default limits), so that both servers write as much.
pub const HELLO: &[u8] = &[b'x'; 357];

/// Runs the server until the process is stopped.
pub async fn run(port: u16, hold: Duration, http: Http) -> Result<()> {
    let waiting = Arc::new(AtomicU64::new(0));
    let service = tower::service_fn(move |req| handle(req, hold, waiting.clone()));
    super::serve(port, http, service).await
}

async fn handle(
    req: Request<Body>,
    hold: Duration,
    waiting: Arc<AtomicU64>,
) -> Result<Response, Infallible> {
    match req.uri().path() {
        "/bench/stats" => {
            let stats = Stats {
                waiting_polls: waiting.load(Ordering::Relaxed),
                ..Stats::default()
            };
            let body = serde_json::to_vec(&stats).unwrap_or_default();
            return Ok(Response::new(Body::from(body)));
        }
        "/hello" => return Ok(Response::new(Body::from(Bytes::from_static(HELLO)))),
        _ => {}
    }
    // Not kept while it waits, as simpleio's poll keeps nothing of its request: held, its
    // headers would count against the floor.
    drop(req);
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
    Ok(Response::new(Body::empty()))
}
