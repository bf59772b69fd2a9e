//! A chat server: an axum app with simpleio, on a durable local file, in memory, or on Redis.
//!
//! ```text
//! cargo run --example chat
//! ```
//!
//! It keeps its data in the folder `simpleio-data` (`DurableStorage`): stop the server mid-chat
//! (even with `kill -9`), start it again, and every page reconnects with nothing lost. To start
//! afresh, stop it and delete the folder: `rm -r simpleio-data`.
//!
//! Then open <http://127.0.0.1:3000/?user=ann> and <http://127.0.0.1:3000/?user=bob> in two
//! windows, or chat from a terminal with the Rust client:
//!
//! ```text
//! cargo run --features client --example chat_client -- --url http://127.0.0.1:3000 --name carol
//! ```
//!
//! **Several processes on one Redis** (see `examples/cluster/` for three of them behind
//! HAProxy): build with the `redis` feature and set `REDIS_URL`; every process then serves every
//! user, whichever process a request lands on.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379/ PORT=3001 cargo run --features redis --example chat
//! ```
//!
//! **Several processes on one PostgreSQL**: build with the `postgres` feature and set
//! `DATABASE_URL`; the tables go in the schema `simpleio` (made on first start).
//!
//! ```text
//! DATABASE_URL=postgres://app:secret@127.0.0.1/app PORT=3001 cargo run --features postgres --example chat
//! ```
//!
//! **On a Redis Cluster** (`examples/cluster/run.sh --redis-cluster` starts one): build with the
//! `redis-cluster` feature and set `REDIS_CLUSTER_URLS` to some of its nodes.
//!
//! ```text
//! REDIS_CLUSTER_URLS=redis://127.0.0.1:7000/,redis://127.0.0.1:7001/ PORT=3001 \
//!   cargo run --features redis-cluster --example chat
//! ```
//!
//! # Events
//!
//! | client → server | what happens | reply |
//! |---|---|---|
//! | `chat` `{"text": "hi"}` | every user online and the sender get `chat` `{from, text, at}` | `{"ok": true}` |
//! | `chat` `{"text": "hi", "to": "bob"}` | only `bob` and the sender get `chat` `{from, to, text, at}` | `{"ok": true}` |
//! | `join` `{"room": "club"}` | the sender (every client of theirs) is in the room from now on | `{"ok": true}` |
//! | `chat` `{"text": "hi", "room": "club"}` | the room's members and the sender get `chat` `{from, room, text, at}` | `{"ok": true}` |
//! | either, when some recipients' queues are full | the others get it | `{"ok": true, "not_sent_to": [...]}`, or the error `queue_full` if it reached nobody |
//! | `echo` any JSON | nothing is sent | the same JSON (for health checks and tests) |
//! | a payload of the wrong shape (`{"text": 3}`) | nothing is sent | the error `invalid_data`, naming the field |
//! | any other event | nothing is sent | the error `unknown_event` |
//!
//! Each event is an async function of the extractors it needs (`Data`, `State`, the user, the
//! `SimpleIo` handle), routed by a `simpleio::Events` router: see `events` below.
//!
//! A `chat` is acknowledged once it is stored for its recipients, so a process that crashes
//! after the acknowledgement has lost nothing; delivery failures (a recipient that never
//! confirmed it within the message TTL) are logged. A storage failure while storing it is
//! not answered as a final error: the client is told to send the line again.
//!
//! The server sets the timeouts a deployment needs (see `serve`): headers must arrive, and idle
//! keep-alive connections close, within 10 s; the layer reads a body for at most its
//! `body_timeout`.
//!
//! # Settings (environment variables)
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `PORT` | `3000` | the port on 127.0.0.1; `0` picks a free one (the log names it) |
//! | `REDIS_URL` | unset | use `RedisStorage` at this URL (feature `redis`), for several processes |
//! | `DATABASE_URL` | unset | use `PostgresStorage` on this PostgreSQL (feature `postgres`), for several processes |
//! | `REDIS_CLUSTER_URLS` | unset | use `RedisClusterStorage` on the cluster of these nodes, comma-separated (feature `redis-cluster`) |
//! | `REDIS_REPLICA_ACKS` | 0 | with `REDIS_CLUSTER_URLS`: how many replicas must hold each acknowledged write before it returns (`replica_acks`, 500 ms timeout) |
//! | `SIMPLEIO_DATA` | `simpleio-data` | without `REDIS_URL` or `DATABASE_URL`: the folder of the storage file (feature `durable`, on by default); `memory` keeps everything in memory instead |
//! | `SIMPLEIO_NODE` | `chat-PORT` | this process's name, sent in an `x-simpleio-node` header on every response, so you can see which process answered |
//! | `SIMPLEIO_HOLD_MS` | 25000 | how long a poll waits for a message |
//! | `SIMPLEIO_RECHECK_MS` | 10000 | how often a waiting poll looks at storage without a wakeup |
//! | `SIMPLEIO_LEASE_MS` | 10000 | how long a crashed request's claim on a message blocks its retries |
//! | `RUST_LOG` | `info` | log filter (tracing's `EnvFilter`) |
//!
//! **Identity here is demo-only**: the user is whatever the `user` query parameter or cookie
//! says, so anyone can be anyone. A real application names the user from its session or a
//! verified token in the identity function; simpleio never takes a user from the request itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::response::{Html, Response};
use axum::routing::get;
use http::HeaderValue;
use http::request::Parts;
use serde::Deserialize;
use serde_json::{Value, json};
use simpleio::events::{Data, Events, Json, State};
use simpleio::{
    Builder, HandlerError, MemoryStorage, Rejection, SendError, SimpleIo, SimpleIoLayer, UserId,
};
use tower::BoxError;
use tracing_subscriber::EnvFilter;

/// The longest chat line accepted.
const MAX_TEXT: usize = 2000;

/// The longest user name accepted (as the demo identity).
const MAX_NAME: usize = 32;

/// The header naming the process that answered.
const NODE_HEADER: &str = "x-simpleio-node";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        // Plain text when the log goes to a file (as in examples/cluster/run.sh).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,simpleio=info".into()),
        )
        .init();

    let port: u16 = env_parse("PORT")?.unwrap_or(3000);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let addr = listener.local_addr()?;
    let node = std::env::var("SIMPLEIO_NODE").unwrap_or_else(|_| format!("chat-{}", addr.port()));

    let mut builder = storage(SimpleIoLayer::builder()).await?;
    if let Some(ms) = env_parse("SIMPLEIO_HOLD_MS")? {
        builder = builder.hold_time(Duration::from_millis(ms));
    }
    if let Some(ms) = env_parse("SIMPLEIO_RECHECK_MS")? {
        builder = builder.recheck_interval(Duration::from_millis(ms));
    }
    if let Some(ms) = env_parse("SIMPLEIO_LEASE_MS")? {
        builder = builder.handler_lease(Duration::from_millis(ms));
    }
    let (layer, _io) = builder
        .identity(demo_identity)
        .handler(events(&node))
        .try_build()?;

    let node_value = HeaderValue::try_from(node.as_str())?;
    let app = Router::new()
        .route("/", get(|| async { Html(include_str!("chat.html")) }))
        .layer(layer)
        // Outside the simpleio layer, so its answers carry the header too.
        .layer(axum::middleware::map_response(move |mut res: Response| {
            let node_value = node_value.clone();
            async move {
                res.headers_mut().insert(NODE_HEADER, node_value);
                res
            }
        }));

    tracing::info!(%node, "chat listening on http://{addr}/ (open http://{addr}/?user=ann and http://{addr}/?user=bob)");
    serve(listener, app).await
}

/// How long a connection may take to send a request's headers, and may sit idle between
/// requests (hyper starts the same timer on an idle keep-alive connection). Above the client's
/// pause between polls, far below what lets idle sockets pile up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTP/1.1 with the timeouts a deployment needs, which `axum::serve` does not set: a
/// connection that never finishes its headers, or idles, is closed (a slow body is the simpleio
/// layer's to refuse, with its `body_timeout`), and a connection's read buffer stays small.
async fn serve(listener: tokio::net::TcpListener, app: Router) -> Result<(), BoxError> {
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let service = TowerToHyperService::new(app);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: keep serving the connections there
                // are, and try again shortly, as `axum::serve` does.
                tracing::warn!(error = %e, "could not accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = service.clone();
        tokio::spawn(async move {
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "a connection ended with an error");
            }
        });
    }
}

/// Reads an optional numeric setting; a value that does not parse is an error, not a default.
fn env_parse<T: std::str::FromStr>(name: &str) -> Result<Option<T>, BoxError> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{name}={v:?} is not a valid number").into()),
        Err(_) => Ok(None),
    }
}

/// A Redis Cluster if `REDIS_CLUSTER_URLS` is set, Redis if `REDIS_URL` is, PostgreSQL if
/// `DATABASE_URL` is (and this build has the feature); else a file in the folder `SIMPLEIO_DATA` (default `simpleio-data`), or memory
/// if that is `memory` or this build has no `durable` feature.
async fn storage(builder: Builder) -> Result<Builder, BoxError> {
    if let Ok(urls) = std::env::var("REDIS_CLUSTER_URLS") {
        return cluster_storage(builder, urls).await;
    }
    let Ok(url) = std::env::var("REDIS_URL") else {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return postgres_storage(builder, url).await;
        }
        return local_storage(builder).await;
    };
    #[cfg(feature = "redis")]
    {
        // Redis may still be starting (a cluster's start script, a container): retry a while.
        let mut attempt = 0;
        let redis = loop {
            match simpleio::RedisStorage::connect(url.clone()).await {
                Ok(redis) => break redis,
                Err(e) if attempt < 20 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "cannot reach Redis yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        tracing::info!("storage: Redis");
        Ok(builder.storage(redis))
    }
    #[cfg(not(feature = "redis"))]
    {
        // Silently serving from memory would give each process its own users: refuse instead.
        let _ = (builder, url);
        Err("REDIS_URL is set, but this build has no Redis support: \
             run with `--features redis`"
            .into())
    }
}

/// `PostgresStorage` on the database at `url`.
async fn postgres_storage(builder: Builder, url: String) -> Result<Builder, BoxError> {
    #[cfg(feature = "postgres")]
    {
        // The database may still be starting (a container): retry a while.
        let mut attempt = 0;
        let postgres = loop {
            match simpleio::PostgresStorage::connect(url.clone()).await {
                Ok(postgres) => break postgres,
                Err(e) if attempt < 20 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "cannot reach PostgreSQL yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        tracing::info!("storage: PostgreSQL");
        Ok(builder.storage(postgres))
    }
    #[cfg(not(feature = "postgres"))]
    {
        // Silently serving from memory would give each process its own users: refuse instead.
        let _ = (builder, url);
        Err(
            "DATABASE_URL is set, but this build has no PostgreSQL support: \
             run with `--features postgres`"
                .into(),
        )
    }
}

/// `RedisClusterStorage` on the cluster of the nodes `urls` (comma-separated).
async fn cluster_storage(builder: Builder, urls: String) -> Result<Builder, BoxError> {
    #[cfg(feature = "redis-cluster")]
    {
        let urls: Vec<String> = urls.split(',').map(|u| u.trim().to_owned()).collect();
        let acks: u32 = match std::env::var("REDIS_REPLICA_ACKS") {
            Ok(n) => n
                .parse()
                .map_err(|_| format!("REDIS_REPLICA_ACKS is a number of replicas, not {n:?}"))?,
            Err(_) => 0,
        };
        // The cluster may still be forming (its start script): retry a while.
        let mut attempt = 0;
        let cluster = loop {
            let connecting = simpleio::RedisClusterStorage::builder(urls.clone())
                .replica_acks(acks, Duration::from_millis(500))
                .connect();
            match connecting.await {
                Ok(cluster) => break cluster,
                Err(e) if attempt < 20 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "cannot reach the Redis Cluster yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        tracing::info!(replica_acks = acks, "storage: Redis Cluster");
        Ok(builder.storage(cluster))
    }
    #[cfg(not(feature = "redis-cluster"))]
    {
        let _ = (builder, urls);
        Err(
            "REDIS_CLUSTER_URLS is set, but this build has no Redis Cluster support: \
             run with `--features redis-cluster`"
                .into(),
        )
    }
}

/// The storage of a single process: durable in a local folder unless told otherwise.
async fn local_storage(builder: Builder) -> Result<Builder, BoxError> {
    let folder = std::env::var("SIMPLEIO_DATA").unwrap_or_else(|_| "simpleio-data".to_owned());
    if folder == "memory" {
        tracing::info!("storage: in memory (SIMPLEIO_DATA=memory); a restart forgets everything");
        return Ok(builder.storage(MemoryStorage::new()));
    }
    #[cfg(feature = "durable")]
    {
        std::fs::create_dir_all(&folder)?;
        let path = std::path::Path::new(&folder).join("simpleio.redb");
        let storage = simpleio::DurableStorage::open(&path).await?;
        tracing::info!(
            path = %path.display(),
            "storage: durable file (delete the folder to start afresh; \
             set REDIS_URL to share one Redis between processes)"
        );
        Ok(builder.storage(storage))
    }
    #[cfg(not(feature = "durable"))]
    {
        tracing::info!(
            folder,
            "storage: in memory (this build has no `durable` feature); a restart forgets everything"
        );
        Ok(builder.storage(MemoryStorage::new()))
    }
}

/// Demo only: trusts the `user` query parameter, then the `user` cookie.
fn demo_identity(parts: &Parts) -> std::future::Ready<Result<UserId, Rejection>> {
    let from_query = parts.uri.query().and_then(|q| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == "user")
            .map(|(_, v)| v)
    });
    let from_cookie = || {
        parts
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == "user")
            .map(|(_, v)| v.to_owned())
    };
    let user = from_query.or_else(from_cookie).filter(|u| valid_name(u));
    std::future::ready(
        user.map(UserId::from)
            .ok_or_else(|| Rejection::unauthorized("pick a name: add ?user=NAME to the URL")),
    )
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME
}

#[derive(Deserialize)]
struct ChatLine {
    text: String,
    /// A direct message's recipient; none for everyone online.
    #[serde(default)]
    to: Option<String>,
    /// A room to send to instead.
    #[serde(default)]
    room: Option<String>,
}

#[derive(Deserialize)]
struct JoinRoom {
    room: String,
}

/// The chat's events, each an async function of what it needs from the message.
fn events(node: &str) -> Events {
    Events::new()
        .on("chat", chat)
        .on("join", join)
        .on("echo", |Data(any): Data<Value>| async move { any })
        .with_state(Chat { node: node.into() })
}

/// The handlers' state: given once to the router, cloned (an `Arc`) for each message.
#[derive(Clone)]
struct Chat {
    /// This process's name, in its logs, so a cluster's logs say which node saw what.
    node: Arc<str>,
}

/// `join {room}`: the sender's user is a member of `room` (kept by the storage, across
/// restarts on a durable one).
async fn join(
    user: UserId,
    io: SimpleIo,
    Data(JoinRoom { room }): Data<JoinRoom>,
) -> Result<Json<Value>, BoxError> {
    if !valid_name(&room) {
        return Err(
            HandlerError::new("bad_join", format!("a room name is 1 to {MAX_NAME} bytes")).into(),
        );
    }
    io.join(user, &room).await?;
    Ok(Json(json!({ "ok": true })))
}

/// `chat {text, to? | room?}`: to `to` only, to the members of `room`, or to every user online;
/// the sender always gets it too, so every window of theirs shows it in the server's order.
///
/// A line that is not `{"text": ...}` never gets here: `Data` refuses it with `invalid_data`,
/// naming the field.
async fn chat(
    user: UserId,
    io: SimpleIo,
    State(chat): State<Chat>,
    Data(line): Data<ChatLine>,
) -> Result<Json<Value>, BoxError> {
    let text = line.text.trim();
    if text.is_empty() || text.chars().count() > MAX_TEXT {
        return Err(
            HandlerError::new("bad_chat", format!("a line is 1 to {MAX_TEXT} characters")).into(),
        );
    }
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    if let Some(room) = &line.room
        && !valid_name(room)
    {
        return Err(HandlerError::new(
            "bad_chat",
            format!("`room` is a room name of 1 to {MAX_NAME} bytes"),
        )
        .into());
    }
    let sending = match (&line.to, &line.room) {
        (_, Some(room)) => io.to_room(room.as_str()).to_user(user.clone()).emit(
            "chat",
            &json!({ "from": user, "room": room, "text": text, "at": at }),
        ),
        (Some(to), None) if !valid_name(to) => {
            return Err(HandlerError::new(
                "bad_chat",
                format!("`to` is a user name of 1 to {MAX_NAME} bytes"),
            )
            .into());
        }
        (Some(to), None) => io.to_user(to.as_str()).to_user(user.clone()).emit(
            "chat",
            &json!({ "from": user, "to": to, "text": text, "at": at }),
        ),
        (None, None) => io
            .everyone()
            .to_user(user.clone())
            .emit("chat", &json!({ "from": user, "text": text, "at": at })),
    };
    // Acknowledge once the line is stored: from then on it is delivered or its failure logged,
    // even if this process dies. Waiting for every reader to confirm would hold up the POST.
    let confirmation = match sending.stored().await {
        Ok(confirmation) => confirmation,
        // Whether it was stored is not known (a timeout may hide a success): returned as it is,
        // the layer tells the client to send the line again, instead of a final error.
        Err(e @ SendError::Storage(_)) => return Err(e.into()),
        // Not stored for some recipients, whose queues are full (or this sender's share of
        // them). Said as it is: a final error only when it reached nobody.
        Err(SendError::QueueFull { failed, stored }) => {
            let names: Vec<String> = failed.iter().map(ToString::to_string).collect();
            if stored == 0 {
                return Err(HandlerError::new(
                    "queue_full",
                    format!(
                        "not sent: {} have too many unread messages",
                        names.join(", ")
                    ),
                )
                .into());
            }
            return Ok(Json(json!({ "ok": true, "not_sent_to": names })));
        }
        Err(other) => return Err(HandlerError::new("bad_chat", other.to_string()).into()),
    };
    tokio::spawn(async move {
        if let Err(e) = confirmation.await {
            tracing::info!(node = %chat.node, error = %e, "a chat line was not delivered to everyone");
        }
    });
    Ok(Json(json!({ "ok": true })))
}
