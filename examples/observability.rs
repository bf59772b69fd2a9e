//! Observability: Prometheus metrics through the `metrics` facade, `tracing-subscriber` logs
//! with tower-http's `TraceLayer` around the simpleio layer.
//!
//! ```text
//! RUST_LOG=info,simpleio=debug cargo run --example observability --features metrics
//! ```
//!
//! Then poll as a user (`curl 'http://127.0.0.1:3000/simpleio?client=tab1' -H 'x-user: ann'`),
//! send one a message (`curl -X POST 'http://127.0.0.1:3000/send?to=ann'`), and read the figures
//! at <http://127.0.0.1:3000/metrics>. `PORT` changes the port.
//!
//! What makes it work:
//!
//! * **The recorder first.** The Prometheus recorder is installed before the layer is built:
//!   the layer takes its metric handles when it is built.
//! * **Layer order.** `TraceLayer` is outside the simpleio layer, so its span (method, URI,
//!   status, latency) is the parent of simpleio's (`user`, `client`, `namespace`, `outcome`),
//!   and each storage call is a child of that (`RUST_LOG=simpleio=debug` shows them).
//! * **Quiet at `info`.** simpleio logs nothing at `info` in normal operation; `TraceLayer`
//!   logs at `debug` by default, so `RUST_LOG=info` shows warnings and errors only.
//!
//! **Identity here is demo-only**: the `x-user` header names the user, and `/metrics` is open.
//! A real application serves metrics on a port of its own or behind its authorization.

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use http::request::Parts;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use simpleio::{Rejection, SimpleIo, SimpleIoLayer, UserId};
use tower_http::trace::TraceLayer;
use tracing_subscriber::EnvFilter;

fn identity(parts: &Parts) -> std::future::Ready<Result<UserId, Rejection>> {
    let user = parts.headers.get("x-user").and_then(|v| v.to_str().ok());
    std::future::ready(
        user.map(UserId::from)
            .ok_or_else(|| Rejection::unauthorized("send an x-user header")),
    )
}

#[derive(Clone)]
struct App {
    io: SimpleIo,
    metrics: PrometheusHandle,
}

#[derive(Deserialize)]
struct To {
    to: String,
}

/// Sends one message and answers once it is stored; its outcome shows in the metrics.
async fn send(State(app): State<App>, Query(q): Query<To>) -> String {
    match app
        .io
        .to_user(q.to.as_str())
        .emit("news", &"hello")
        .stored()
        .await
    {
        Ok(confirmation) => {
            tokio::spawn(confirmation);
            format!("stored for {}\n", q.to)
        }
        Err(e) => format!("not stored: {e}\n"),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let (layer, io) = SimpleIoLayer::builder().identity(identity).build();
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(app): State<App>| async move { app.metrics.render() }),
        )
        .route("/send", post(send))
        .with_state(App { io, metrics })
        .layer(layer)
        .layer(TraceLayer::new_for_http());
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tracing::info!("listening on http://127.0.0.1:{port}");
    axum::serve(listener, app).await?;
    Ok(())
}
