//! gRPC-Web and simpleio in one server: a tonic service behind tonic-web's `GrpcWebLayer`, and
//! simpleio on its route, in one axum router.
//!
//! ```text
//! cargo run --example tonic_web
//! ```
//!
//! The gRPC service here is tonic's standard health check (`grpc.health.v1.Health`), which
//! needs no code generation; an application's own services, built with `tonic-build`, go in
//! the same place. A gRPC-Web call: `POST /grpc.health.v1.Health/Check` with
//! `content-type: application/grpc-web+proto`. simpleio answers on `/simpleio` as usual.
//!
//! **Layer order.** `GrpcWebLayer` goes on the gRPC routes only, and the simpleio layer outside
//! the whole router: simpleio takes its own route before any gRPC-Web translation sees it, and
//! passes every other request through untouched. Wrapping simpleio's route in `GrpcWebLayer`
//! (for example one `ServiceBuilder` over everything, with the gRPC-Web layer first) hands it
//! translated requests it does not speak.

use std::net::SocketAddr;

use axum::Router;
use http::request::Parts;
use simpleio::{Incoming, Rejection, Reply, SimpleIo, SimpleIoLayer, UserId};
use tonic_web::GrpcWebLayer;
use tower::{BoxError, service_fn};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let (app, _io) = app();
    let addr = SocketAddr::from(([127, 0, 0, 1], 3000));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("listening on http://{addr}: gRPC-Web and /simpleio");
    axum::serve(listener, app).await?;
    Ok(())
}

/// The app: the gRPC-Web routes, and simpleio around the whole router.
pub fn app() -> (Router, SimpleIo) {
    let (layer, io) = SimpleIoLayer::builder()
        // Demo only: the `x-user` header names the user.
        .identity(|parts: &Parts| {
            let user = parts
                .headers
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .map(UserId::from);
            async move { user.ok_or_else(|| Rejection::unauthorized("sign in first")) }
        })
        .handler(service_fn(|_msg: Incoming| async move {
            Ok::<_, BoxError>(Reply::none())
        }))
        .build();
    let (_health, health_service) = tonic_health::server::health_reporter();
    let grpc = tonic::service::Routes::new(health_service)
        .into_axum_router()
        .layer(GrpcWebLayer::new());
    (grpc.layer(layer), io)
}
