//! `server simpleio`: an axum app with the simpleio layer, on `MemoryStorage`, `DurableStorage`
//! (`--storage durable:PATH`, the file at `PATH`), `RedisStorage` (`--storage redis://..`),
//! `RedisClusterStorage` (`--storage redis-cluster://HOST:PORT,HOST:PORT?acks=N`, N replicas
//! acknowledging each write) or `PostgresStorage` (`--storage postgres://..`, its default
//! settings: schema `simpleio`, a pool of 16).
//!
//! The user is the `user` query parameter or the `x-user` header (benchmark only: anyone can be
//! anyone). Messages clients send are answered with `"ok"`; the benchmark only receives. Beside
//! the shared control routes it has the `room` scenario's ([`super::room`]) and the direct-message
//! load's ([`super::dm`]). On `DurableStorage`, `GET /bench/stats` also tells its commits and its
//! file's size.

use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;
use http::request::Parts;
use simpleio::{
    DurableStorage, Incoming, MemoryStorage, Rejection, Reply, SimpleIo, SimpleIoLayer, UserId,
};
use tower::{BoxError, ServiceExt, service_fn};

use super::{BoxFuture, Broadcast, Control, Http, Mode, Tick};

/// Runs the server until the process is stopped; with `metrics`, with a Prometheus recorder
/// installed first (never rendered: what is measured is what counting costs).
pub async fn run(port: u16, storage: &str, metrics: bool, http: Http) -> Result<()> {
    super::init_tracing();
    if metrics {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .context("installing the Prometheus recorder")?;
    }
    let builder = SimpleIoLayer::builder();
    let mut durable = None;
    let builder = if storage == "memory" {
        builder.storage(MemoryStorage::new())
    } else if let Some(path) = storage.strip_prefix("durable:") {
        let store = DurableStorage::open(path)
            .await
            .with_context(|| format!("opening the durable storage at {path}"))?;
        durable = Some(store.clone());
        builder.storage(store)
    } else if let Some(cluster) = storage.strip_prefix("redis-cluster://") {
        // `redis-cluster://HOST:PORT,HOST:PORT?acks=N`: N replicas acknowledge each write.
        let (nodes, acks) = cluster.split_once("?acks=").unwrap_or((cluster, "0"));
        let acks: u32 = acks.parse().context("`acks` is a number")?;
        let urls = nodes.split(',').map(|n| format!("redis://{n}/"));
        let redis = simpleio::RedisClusterStorage::builder(urls)
            .replica_acks(acks, std::time::Duration::from_millis(500))
            .connect()
            .await
            .with_context(|| format!("connecting to the Redis Cluster at {nodes}"))?;
        builder.storage(redis)
    } else if storage.starts_with("postgres://") {
        let pg = simpleio::PostgresStorage::connect(storage.to_owned())
            .await
            .with_context(|| format!("connecting to PostgreSQL at {storage}"))?;
        builder.storage(pg)
    } else if storage.starts_with("redis://") {
        let redis = simpleio::RedisStorage::connect(storage.to_owned())
            .await
            .with_context(|| format!("connecting to Redis at {storage}"))?;
        builder.storage(redis)
    } else {
        anyhow::bail!(
            "--storage is `memory`, `durable:PATH`, a redis:// URL, \
             redis-cluster://HOST:PORT,..[?acks=N] or a postgres:// URL, not {storage:?}"
        );
    };
    let (layer, io) = builder
        .identity(identity)
        .handler(service_fn(|_msg: Incoming| async {
            Ok::<_, BoxError>(Reply::json(&"ok")?)
        }))
        .try_build()
        .context("building the simpleio layer")?;
    let app: Router = super::control_routes(Arc::new(Sender {
        io: io.clone(),
        durable,
    }))
    .merge(super::room::routes(io.clone()))
    .merge(super::dm::routes(io));
    // Around the router, as the guide advises for the lowest cost per request (socketioxide's
    // layer goes the same way).
    let service = ServiceExt::<http::Request<axum::body::Body>>::map_response(
        tower::Layer::layer(&layer, app),
        |response| response.map(axum::body::Body::new),
    );
    super::serve(port, http, service).await
}

/// The `user` query parameter (or `x-user` header), taken as is: a benchmark identity as cheap
/// as an application's cookie lookup, so that the figures are simpleio's, not a query parser's.
fn identity(parts: &Parts) -> std::future::Ready<Result<UserId, Rejection>> {
    let from_query = parts.uri.query().and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("user="))
            .map(UserId::from)
    });
    let user = from_query.or_else(|| {
        parts
            .headers
            .get("x-user")
            .and_then(|v| v.to_str().ok())
            .map(UserId::from)
    });
    std::future::ready(
        user.filter(|u| !u.as_str().is_empty())
            .ok_or_else(|| Rejection::unauthorized("add ?user=NAME")),
    )
}

struct Sender {
    io: SimpleIo,
    durable: Option<DurableStorage>,
}

impl Broadcast for Sender {
    fn broadcast(&self, mode: Mode, tick: Tick, control: Arc<Control>) -> BoxFuture {
        let io = self.io.clone();
        Box::pin(async move {
            match mode {
                Mode::Confirmed => {
                    let confirmation = io.everyone().emit("tick", &tick).stored().await?;
                    tokio::spawn(async move {
                        let counter = match confirmation.await {
                            Ok(_) => &control.delivered,
                            Err(_) => &control.not_delivered,
                        };
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    });
                }
                Mode::Volatile => io.everyone().volatile().emit("tick", &tick).await?,
            }
            Ok(())
        })
    }

    fn waiting_polls(&self) -> u64 {
        self.io.waiting_polls() as u64
    }

    fn durable(&self) -> Option<(u64, u64)> {
        let store = self.durable.as_ref()?;
        let size = |path: &std::path::Path| std::fs::metadata(path).map_or(0, |m| m.len());
        let bytes = size(store.path()) + size(&store.log_path());
        Some((store.commits(), bytes))
    }
}
