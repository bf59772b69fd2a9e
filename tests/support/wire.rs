//! A small client that speaks the protocol of `docs/spec.md` over real HTTP, so that each test
//! reads as the exchange it checks.
//!
//! [`Wire`] sends single requests and returns whatever came back ([`Answer`]); [`Tab`] is one
//! client of one user that keeps its epoch and cursor and follows the spec's receiving rules
//! (§3: drop every message at or below the cursor). The free functions help with the sender's
//! side (emits that run in the background) and with raw TCP, for dropping a connection.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::task::Poll;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use simpleio::{Delivered, SendError, Sending};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::server::TestServer;

/// The longest any request may take: a hung server fails the test instead of hanging it.
/// Above the longest hold time the tests use (20 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A generous bound for "this happens soon" (a wakeup, a resolution): far above what it takes,
/// far below what a missed wakeup waiting for a timer would take.
pub const SOON: Duration = Duration::from_secs(5);

/// How long a negative check ("still pending") gives the thing to (wrongly) happen.
pub const GRACE: Duration = Duration::from_millis(300);

/// One response from the server, whatever its status.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body parsed as JSON, or `Value::Null` if it is not JSON (see `text`).
    pub body: Value,
    pub text: String,
}

impl Answer {
    /// The body of a `200` to a `GET`, checked against the spec's shape.
    pub fn batch(&self) -> Batch {
        assert_eq!(self.status, StatusCode::OK, "a poll failed: {}", self.text);
        self.assert_json();
        serde_json::from_value(self.body.clone())
            .unwrap_or_else(|e| panic!("not a poll response ({e}): {}", self.text))
    }

    /// The acks of a `200` to a `POST`.
    pub fn acks(&self) -> Vec<Value> {
        assert_eq!(self.status, StatusCode::OK, "a send failed: {}", self.text);
        self.assert_json();
        let acks = self.body["acks"]
            .as_array()
            .unwrap_or_else(|| panic!("no `acks` array: {}", self.text));
        acks.clone()
    }

    /// Checks this is the protocol's error response (§5): `status`, JSON, and a body of exactly
    /// `{"error": {"code": code, "message": <non-empty>}}`.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "wrong status: {}", self.text);
        self.assert_json();
        let error = self.body["error"]
            .as_object()
            .unwrap_or_else(|| panic!("no `error` object: {}", self.text));
        assert_eq!(
            self.body.as_object().map(|o| o.len()),
            Some(1),
            "{}",
            self.text
        );
        assert_eq!(
            error.len(),
            2,
            "`error` has exactly code and message: {}",
            self.text
        );
        assert_eq!(error["code"], code, "wrong code: {}", self.text);
        let message = error["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "an empty message: {}", self.text);
    }

    fn assert_json(&self) {
        let content_type = self
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            content_type.starts_with("application/json"),
            "not JSON ({content_type:?}): {}",
            self.text
        );
    }
}

/// A `GET` response (§3).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    pub epoch: String,
    pub cursor: u64,
    pub messages: Vec<Message>,
    pub volatile: Vec<Volatile>,
    /// In the answer to a first poll: the server's limits (§6).
    #[serde(default)]
    pub limits: Option<Value>,
    /// A newer poll of this client id ended this one.
    #[serde(default)]
    pub taken_over: bool,
}

impl Batch {
    /// The positions of the messages, in order.
    pub fn positions(&self) -> Vec<u64> {
        self.messages.iter().map(|m| m.pos).collect()
    }

    /// The `data` of the messages, in order.
    pub fn data(&self) -> Vec<Value> {
        self.messages.iter().map(|m| m.data.clone()).collect()
    }
}

/// A stored message as a client receives it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub pos: u64,
    pub event: String,
    pub data: Value,
    /// The sender waits for this client's reply (§4c).
    #[serde(default)]
    pub ack: bool,
}

/// A volatile message as a client receives it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volatile {
    pub event: String,
    pub data: Value,
}

/// Single requests to one simpleio route.
#[derive(Debug, Clone)]
pub struct Wire {
    http: reqwest::Client,
    url: String,
}

impl Wire {
    /// Requests to `server`'s route.
    pub fn new(server: &TestServer) -> Wire {
        Wire::at(server.url())
    }

    /// Requests to the route at `url`.
    pub fn at(url: impl Into<String>) -> Wire {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("an HTTP client");
        Wire {
            http,
            url: url.into(),
        }
    }

    /// A client `client` of `user`, with no cursor yet.
    pub fn tab(&self, user: &str, client: &str) -> Tab {
        Tab {
            wire: self.clone(),
            user: user.to_owned(),
            client: client.to_owned(),
            epoch: None,
            cursor: None,
        }
    }

    /// `GET {route}?{query}` as `user` (no `x-user` header if `None`).
    pub async fn get(&self, user: Option<&str>, query: &str) -> Answer {
        self.request(Method::GET, user, query, None, Vec::new())
            .await
    }

    /// `POST {route}` of `body` as JSON, as `user`.
    pub async fn post(&self, user: Option<&str>, body: &Value) -> Answer {
        let bytes = serde_json::to_vec(body).expect("json");
        self.post_raw(user, Some("application/json"), bytes).await
    }

    /// `POST {route}` of raw bytes with the given `Content-Type` (none if `None`).
    pub async fn post_raw(
        &self,
        user: Option<&str>,
        content_type: Option<&str>,
        body: impl Into<Vec<u8>>,
    ) -> Answer {
        self.request(Method::POST, user, "", content_type, body.into())
            .await
    }

    /// Any request to the route.
    pub async fn request(
        &self,
        method: Method,
        user: Option<&str>,
        query: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Answer {
        let url = if query.is_empty() {
            self.url.clone()
        } else {
            format!("{}?{query}", self.url)
        };
        let mut request = self.http.request(method, url);
        if let Some(user) = user {
            request = request.header("x-user", user);
        }
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        if !body.is_empty() {
            request = request.body(body);
        }
        let response = request.send().await.expect("the request got a response");
        answer(response).await
    }
}

/// Reads a whole response into an [`Answer`].
pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a response body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
        text,
    }
}

/// One client of one user: holds its epoch and cursor as a real client does.
#[derive(Debug, Clone)]
pub struct Tab {
    pub wire: Wire,
    pub user: String,
    pub client: String,
    pub epoch: Option<String>,
    pub cursor: Option<u64>,
}

impl Tab {
    /// The query of this client's next `GET`: its id, and its cursor and epoch once it has them.
    pub fn query(&self) -> String {
        match (&self.epoch, self.cursor) {
            (Some(epoch), Some(cursor)) => {
                format!("client={}&cursor={cursor}&epoch={epoch}", self.client)
            }
            _ => format!("client={}", self.client),
        }
    }

    /// A `GET` with the held cursor, leaving the held state alone: to the server this is the
    /// next poll (it confirms the cursor), but the client never takes the response in, as if it
    /// had been lost on the way.
    pub async fn peek(&self) -> Batch {
        self.wire.get(Some(&self.user), &self.query()).await.batch()
    }

    /// A `GET` with the given cursor (`None`: a first poll), leaving the held state alone.
    pub async fn poll_from(&self, cursor: Option<(&str, u64)>) -> Batch {
        let query = match cursor {
            Some((epoch, cursor)) => {
                format!("client={}&cursor={cursor}&epoch={epoch}", self.client)
            }
            None => format!("client={}", self.client),
        };
        self.wire.get(Some(&self.user), &query).await.batch()
    }

    /// The next poll, taken in by the spec's rules; returns what the application gets.
    pub async fn receive(&mut self) -> Batch {
        let batch = self.peek().await;
        self.take(batch)
    }

    /// Takes in a poll response by the spec (§3, steps 1–4): on a new epoch forget the cursor;
    /// keep only messages above the cursor; then hold the response's epoch and cursor. Returns
    /// the batch with only the messages handed to the application.
    pub fn take(&mut self, mut batch: Batch) -> Batch {
        if self.epoch.as_ref().is_some_and(|e| *e != batch.epoch) {
            self.cursor = None;
        }
        if let Some(cursor) = self.cursor {
            batch.messages.retain(|m| m.pos > cursor);
        }
        self.epoch = Some(batch.epoch.clone());
        self.cursor = Some(batch.cursor);
        batch
    }

    /// Sends `messages` (each `{"id", "event", "data"}`) in one `POST`; returns the acks.
    pub async fn send(&self, messages: Value) -> Vec<Value> {
        self.post(messages).await.acks()
    }

    /// Sends `messages` in one `POST`; returns the whole answer.
    pub async fn post(&self, messages: Value) -> Answer {
        self.wire
            .post(
                Some(&self.user),
                &json!({"client": self.client, "messages": messages}),
            )
            .await
    }
}

/// Starts an emit and runs it in the background; by the time this returns the message is
/// stored (the in-memory storage appends on the emit's first poll), so emits started one after
/// another are stored in that order, without waiting for each to be confirmed.
pub async fn start(sending: Sending) -> JoinHandle<Result<Delivered, SendError>> {
    let mut sending = Box::pin(sending);
    match poll_fn(|cx| Poll::Ready(sending.as_mut().poll(cx))).await {
        Poll::Ready(done) => tokio::spawn(async move { done }),
        Poll::Pending => tokio::spawn(sending),
    }
}

/// Asserts `task` has not finished, giving it [`GRACE`] to (wrongly) do so.
pub async fn assert_pending<T: std::fmt::Debug>(task: &mut JoinHandle<T>, what: &str) {
    if let Ok(done) = tokio::time::timeout(GRACE, &mut *task).await {
        panic!("{what}: expected it still pending, but it finished with {done:?}");
    }
}

/// The result of `task`, which must come [`SOON`].
pub async fn finish<T>(task: JoinHandle<T>, what: &str) -> T {
    tokio::time::timeout(SOON, task)
        .await
        .unwrap_or_else(|_| panic!("{what}: did not finish within {SOON:?}"))
        .expect("the task did not panic")
}

/// Waits until `condition` holds, checking every few milliseconds, for at most [`SOON`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + SOON;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: did not happen within {SOON:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Opens a connection and writes `request` (a whole HTTP/1.1 request) on it; the caller reads
/// from it or drops it.
pub async fn raw_request(addr: SocketAddr, request: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write the request");
    stream
}

/// The text of a `GET` of `path_and_query` as `user`.
pub fn get_request(path_and_query: &str, user: &str) -> String {
    format!("GET {path_and_query} HTTP/1.1\r\nhost: localhost\r\nx-user: {user}\r\n\r\n")
}

/// The text of a JSON `POST` to `path` as `user`.
pub fn post_request(path: &str, user: &str, body: &Value) -> String {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\nx-user: {user}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Reads from `stream` until it has at least `n` bytes (or the server closed it).
pub async fn read_at_least(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < n {
        let read = tokio::time::timeout(REQUEST_TIMEOUT, stream.read(&mut buf))
            .await
            .expect("the server answered in time")
            .expect("read");
        if read == 0 {
            break;
        }
        got.extend_from_slice(&buf[..read]);
    }
    got
}

impl Tab {
    /// The query of this client's next `GET` in the namespaces `ns` (spec §4a: `/,/chat`).
    pub fn query_in(&self, ns: &str) -> String {
        format!("{}&ns={ns}", self.query())
    }

    /// The next poll in the namespaces `ns`, taken in by the spec's rules as
    /// [`receive`](Self::receive) does, but read as loose JSON: messages outside `/` carry an
    /// `ns` field, which [`Batch`] refuses. Returns the body with only the messages handed to
    /// the application.
    pub async fn receive_in(&mut self, ns: &str) -> Value {
        let answer = self.wire.get(Some(&self.user), &self.query_in(ns)).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "a poll failed: {}",
            answer.text
        );
        let mut body = answer.body;
        let epoch = body["epoch"].as_str().expect("an epoch").to_owned();
        let cursor = body["cursor"].as_u64().expect("a cursor");
        if self.epoch.as_ref().is_some_and(|e| *e != epoch) {
            self.cursor = None;
        }
        if let (Some(held), Some(messages)) = (self.cursor, body["messages"].as_array_mut()) {
            messages.retain(|m| m["pos"].as_u64().is_some_and(|pos| pos > held));
        }
        self.epoch = Some(epoch);
        self.cursor = Some(cursor);
        body
    }
}

/// The `messages` of a loose poll body (see [`Tab::receive_in`]) without their positions:
/// `{"ns"?, "event", "data"}` each, so a test compares them with `json!` literals.
pub fn without_pos(body: &Value) -> Vec<Value> {
    body["messages"]
        .as_array()
        .expect("a `messages` array")
        .iter()
        .map(|m| {
            let mut m = m.clone();
            m.as_object_mut().expect("a message object").remove("pos");
            m
        })
        .collect()
}

/// The events of a batch's messages, in order.
pub fn events(batch: &Batch) -> Vec<String> {
    batch.messages.iter().map(|m| m.event.clone()).collect()
}

/// Waits until the async `condition` holds, checking every few milliseconds, for at most
/// [`SOON`] (as [`eventually`], for conditions that ask the server or the storage).
pub async fn eventually_async<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + SOON;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: did not happen within {SOON:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
