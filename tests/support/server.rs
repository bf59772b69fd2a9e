//! A real HTTP server on loopback with the simpleio layer, for integration tests.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use http::request::Parts;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use simpleio::{Builder, Rejection, SimpleIo, SimpleIoLayer, UserId};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// The identity tests use: the `x-user` header names the user. Test-only; a real application
/// derives the user from a session or a verified token.
pub fn header_identity(parts: &Parts) -> std::future::Ready<Result<UserId, Rejection>> {
    let user = parts
        .headers
        .get("x-user")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(UserId::from);
    std::future::ready(user.ok_or_else(|| Rejection::unauthorized("missing x-user header")))
}

/// A running server; stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub io: SimpleIo,
    layer: SimpleIoLayer,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl TestServer {
    /// Starts an axum app with a `/` route and the layer built from `builder` (whose identity is
    /// set to [`header_identity`] unless the builder set one... it always is here).
    pub async fn start(builder: Builder) -> TestServer {
        let (layer, io) = builder.identity(header_identity).build();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let running = Some(serve(listener, layer.clone()));
        TestServer {
            addr,
            io,
            layer,
            running,
        }
    }

    /// The simpleio route's URL.
    pub fn url(&self) -> String {
        format!("http://{}/simpleio", self.addr)
    }

    /// The server's base URL.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting and drops every open connection; the storage is kept.
    pub async fn stop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            let _ = stop.send(());
            task.abort();
            let _ = task.await;
        }
    }

    /// Serves again on the same address, with the same layer and storage.
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("could not re-bind {}: {e}", self.addr),
            }
        };
        self.running = Some(serve(listener, self.layer.clone()));
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some((_, task)) = self.running.take() {
            task.abort();
        }
    }
}

fn app(layer: SimpleIoLayer) -> Router {
    Router::new()
        .route("/", get(|| async { "the app's own page" }))
        .layer(layer)
}

fn serve(listener: TcpListener, layer: SimpleIoLayer) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_app(listener, app(layer), async {
        let _ = stopped.await;
    }));
    (stop, task)
}

/// Serves `app` on `listener` until `shutdown` completes or the task is aborted. Connections are
/// tasks of a JoinSet owned by this loop, so stopping also drops every open connection, held
/// polls included, as a crashed process would (`axum::serve`'s connections would outlive it).
pub async fn serve_app(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>) {
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let service = TowerToHyperService::new(app.clone());
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => return,
        }
    }
}

/// Any app (a `Router` with its own layers, such as an example's) served on a free loopback
/// port; stops when dropped.
pub struct RunningApp {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl RunningApp {
    /// Serves `app` on `127.0.0.1:0`.
    pub async fn start(app: Router) -> RunningApp {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        RunningApp { addr, task }
    }

    /// The URL of `path` on this app.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}
