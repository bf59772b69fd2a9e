//! `server socketioxide`: axum with `SocketIo::new_layer()`, the default namespace `/`, clients
//! on the polling transport (they never upgrade). The comparison point for simpleio.

use std::sync::Arc;

use anyhow::Result;
use axum::Router;
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;
use tower::ServiceExt;

use super::{BoxFuture, Broadcast, Control, Mode, Tick};

/// Runs the server until the process is stopped.
pub async fn run(port: u16) -> Result<()> {
    super::init_tracing();
    let (layer, io) = SocketIo::new_layer();
    io.ns("/", async |_s: SocketRef| {});
    let app: Router = super::control_routes(Arc::new(Sender { io }));
    // Around the router, as simpleio's layer goes.
    let service = ServiceExt::<http::Request<axum::body::Body>>::map_response(
        tower::Layer::layer(&layer, app),
        |response| response.map(axum::body::Body::new),
    );
    super::serve(port, super::Http::Axum, service).await
}

struct Sender {
    io: SocketIo,
}

impl Broadcast for Sender {
    fn broadcast(&self, mode: Mode, tick: Tick, _control: Arc<Control>) -> BoxFuture {
        let io = self.io.clone();
        Box::pin(async move {
            anyhow::ensure!(
                mode == Mode::Confirmed,
                "socketioxide has no volatile broadcast here"
            );
            // Socket.IO has no delivery confirmation: handed to every socket's buffer is all.
            io.emit("tick", &tick)
                .await
                .map_err(|e| anyhow::anyhow!("socketioxide broadcast: {e}"))?;
            Ok(())
        })
    }
}
