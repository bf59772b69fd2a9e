//! The in-process client: the protocol's receive and send loops, one call at a time.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::future::Ready;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Extensions, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use serde_json::{Value, json};
use tower::{Layer, Service, ServiceExt};

use super::received::{EmitError, Received, TestError};
use crate::layer::{SimpleIoLayer, SimpleIoService};
use crate::poll::AnswerAtOnce;

/// Where the test client's requests would go if they missed the route: nowhere.
#[derive(Debug, Clone, Copy)]
struct Unrouted;

impl Service<Request<Full<Bytes>>> for Unrouted {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<Full<Bytes>>) -> Self::Future {
        let mut response = Response::new(Full::default());
        *response.status_mut() = StatusCode::NOT_FOUND;
        std::future::ready(Ok(response))
    }
}

/// Sets up a [`TestClient`]: what its requests carry for the identity function, and which
/// namespaces it reads.
#[derive(Debug)]
#[must_use = "nothing connects until `connect` is awaited"]
pub struct TestClientBuilder {
    service: SimpleIoService<Unrouted>,
    path: String,
    headers: HeaderMap,
    extensions: Extensions,
    namespaces: Vec<String>,
    client: Option<String>,
}

impl TestClientBuilder {
    /// A header on every request (a cookie, `authorization`, whatever the identity function
    /// reads). Panics if `name` or `value` is not a valid header: a mistake in the test.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::try_from(name).expect("a valid header name");
        let value = HeaderValue::try_from(value).expect("a valid header value");
        self.headers.append(name, value);
        self
    }

    /// A request extension on every request, as an outer layer (a session, an authenticated
    /// principal) would have put it there for the identity function.
    pub fn extension<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.extensions.insert(value);
        self
    }

    /// The namespaces to receive (default `/` alone).
    pub fn namespaces<I, S>(mut self, namespaces: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.namespaces = namespaces.into_iter().map(Into::into).collect();
        self
    }

    /// The client id (default: a random one), to act as a known client again.
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client = Some(id.into());
        self
    }

    /// Makes the client's handshake: from here it is a live client of its user.
    ///
    /// # Errors
    ///
    /// [`TestError::Refused`] if the identity function (or a bound) refuses the handshake.
    pub async fn connect(self) -> Result<TestClient, TestError> {
        let mut client = TestClient {
            service: self.service,
            path: self.path,
            headers: self.headers,
            extensions: self.extensions,
            namespaces: self.namespaces.join(","),
            client: self.client.unwrap_or_else(random_id),
            epoch: None,
            cursor: None,
            next_cursor: None,
            inbox: VecDeque::new(),
            next_message: 1,
        };
        client.poll(true).await?;
        Ok(client)
    }
}

/// One client of one user, in the test's process: it connects through the layer as a client
/// on the network would, and [`emit`](Self::emit)s, [`recv`](Self::recv)s and
/// [`confirm`](Self::confirm)s one call at a time. See [the module](super).
///
/// Like a real client it confirms a message only once the test took it with `recv`: a
/// message received and not taken is not confirmed.
pub struct TestClient {
    service: SimpleIoService<Unrouted>,
    path: String,
    headers: HeaderMap,
    extensions: Extensions,
    namespaces: String,
    client: String,
    epoch: Option<String>,
    /// What the next poll confirms: past every stored message the test has taken.
    cursor: Option<u64>,
    /// The cursor of the answer that brought the messages still in the inbox, which becomes
    /// `cursor` once the last of them is taken.
    next_cursor: Option<u64>,
    inbox: VecDeque<Received>,
    next_message: u64,
}

impl fmt::Debug for TestClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestClient")
            .field("client", &self.client)
            .field("namespaces", &self.namespaces)
            .field("epoch", &self.epoch)
            .field("cursor", &self.cursor)
            .field("inbox", &self.inbox.len())
            .finish_non_exhaustive()
    }
}

impl TestClient {
    /// A client of the app that `layer` serves.
    pub fn builder(layer: &SimpleIoLayer) -> TestClientBuilder {
        TestClientBuilder {
            service: layer.layer(Unrouted),
            path: layer.shared.config.path.clone(),
            headers: HeaderMap::new(),
            extensions: Extensions::new(),
            namespaces: vec!["/".to_owned()],
            client: None,
        }
    }

    /// Its client id.
    pub fn client_id(&self) -> &str {
        &self.client
    }

    /// Sends one message in the default namespace and returns the handler's reply.
    ///
    /// # Errors
    ///
    /// [`EmitError::Failed`] with the acknowledgement's error; [`EmitError::Request`] if the
    /// request was refused.
    pub async fn emit<T: Serialize + ?Sized>(
        &mut self,
        event: &str,
        data: &T,
    ) -> Result<Value, EmitError> {
        self.emit_in("/", event, data).await
    }

    /// Sends one message in namespace `ns` and returns the handler's reply. A `pending`
    /// acknowledgement is sent again, with the same id, after its `retry_after_ms`, as the
    /// protocol says.
    ///
    /// # Errors
    ///
    /// As [`emit`](Self::emit).
    pub async fn emit_in<T: Serialize + ?Sized>(
        &mut self,
        ns: &str,
        event: &str,
        data: &T,
    ) -> Result<Value, EmitError> {
        let data = serde_json::to_value(data)
            .map_err(|e| TestError::Protocol(format!("the data is not JSON: {e}")))?;
        let id = format!("{}-{}", self.client, self.next_message);
        self.next_message += 1;
        let body = json!({
            "client": self.client,
            "messages": [{"id": id, "ns": ns, "event": event, "data": data}],
        });
        loop {
            let answer = self
                .send(Method::POST, &self.path.clone(), Some(&body), false)
                .await?;
            let ack = answer["acks"]
                .get(0)
                .ok_or_else(|| TestError::Protocol(format!("no ack: {answer}")))?;
            if let Some(error) = ack.get("error") {
                return Err(EmitError::Failed {
                    code: text(&error["code"]),
                    message: text(&error["message"]),
                });
            }
            if ack.get("pending").is_some_and(|p| p == true) {
                let wait = ack["retry_after_ms"].as_u64().unwrap_or(250);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                continue;
            }
            return Ok(ack.get("reply").cloned().unwrap_or(Value::Null));
        }
    }

    /// The next message, waiting for one as long as it takes (a held poll, then another).
    /// Taking it means it is handed to the application: the next poll confirms it.
    ///
    /// # Errors
    ///
    /// [`TestError::Refused`] if a poll is refused.
    pub async fn recv(&mut self) -> Result<Received, TestError> {
        loop {
            if let Some(message) = self.take() {
                return Ok(message);
            }
            self.poll(false).await?;
        }
    }

    /// The next message if one comes within `within`, else `None`. A poll still held when
    /// the time runs out is dropped, as a client that went away would drop it.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv).
    pub async fn recv_within(&mut self, within: Duration) -> Result<Option<Received>, TestError> {
        match tokio::time::timeout(within, self.recv()).await {
            Ok(result) => result.map(Some),
            Err(_elapsed) => Ok(None),
        }
    }

    /// Polls once without holding: confirms every message taken so far (their emits resolve)
    /// and keeps whatever is new for [`recv`](Self::recv).
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv).
    pub async fn confirm(&mut self) -> Result<(), TestError> {
        self.poll(true).await
    }

    /// A message already received and not yet taken, if any, after a [`confirm`](Self::confirm).
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv).
    pub async fn try_recv(&mut self) -> Result<Option<Received>, TestError> {
        if self.inbox.is_empty() {
            self.poll(true).await?;
        }
        Ok(self.take())
    }

    fn take(&mut self) -> Option<Received> {
        let message = self.inbox.pop_front()?;
        if let Some(pos) = message.pos {
            self.cursor = Some(pos);
        }
        if !self.inbox.iter().any(|m| m.pos.is_some()) {
            self.cursor = self.next_cursor.or(self.cursor);
        }
        Some(message)
    }

    /// One `GET`: with the cursor of what was taken, answered at once when `at_once`.
    async fn poll(&mut self, at_once: bool) -> Result<(), TestError> {
        let mut query = vec![
            ("client", self.client.clone()),
            ("ns", self.namespaces.clone()),
        ];
        if let (Some(epoch), Some(cursor)) = (&self.epoch, self.cursor) {
            query.push(("cursor", cursor.to_string()));
            query.push(("epoch", epoch.clone()));
        }
        let query = serde_urlencoded::to_string(&query)
            .map_err(|e| TestError::Protocol(format!("a query that cannot be encoded: {e}")))?;
        let uri = format!("{}?{query}", self.path);
        let answer = self.send(Method::GET, &uri, None, at_once).await?;
        self.read(&answer)
    }

    /// Takes in a poll's answer as the spec's §3 says.
    fn read(&mut self, answer: &Value) -> Result<(), TestError> {
        let epoch = answer["epoch"]
            .as_str()
            .ok_or_else(|| TestError::Protocol(format!("no epoch: {answer}")))?
            .to_owned();
        let cursor = answer["cursor"]
            .as_u64()
            .ok_or_else(|| TestError::Protocol(format!("no cursor: {answer}")))?;
        // Another epoch: the storage lost its data, and every message of this answer is new;
        // the old epoch's cursor means nothing in the new one.
        let known = match &self.epoch {
            Some(held) if *held == epoch => self.inbox_end(),
            _ => {
                self.cursor = None;
                None
            }
        };
        let mut stored = 0;
        for m in answer["messages"].as_array().into_iter().flatten() {
            let Some(pos) = m["pos"].as_u64() else {
                return Err(TestError::Protocol(format!("a message without pos: {m}")));
            };
            if known.is_some_and(|k| pos <= k) {
                continue; // a duplicate
            }
            stored += 1;
            self.inbox.push_back(received(m, Some(pos)));
        }
        for m in answer["volatile"].as_array().into_iter().flatten() {
            self.inbox.push_back(received(m, None));
        }
        self.epoch = Some(epoch);
        if stored == 0 && !self.inbox.iter().any(|m| m.pos.is_some()) {
            self.cursor = Some(cursor);
        }
        self.next_cursor = Some(cursor);
        if answer.get("taken_over").is_some_and(|t| t == true) {
            // Another instance polls with this id (spec §3, step 6).
            self.client = random_id();
        }
        Ok(())
    }

    /// The highest position received, taken or not.
    fn inbox_end(&self) -> Option<u64> {
        let last_in_inbox = self.inbox.iter().filter_map(|m| m.pos).max();
        last_in_inbox.max(self.cursor)
    }

    async fn send(
        &mut self,
        method: Method,
        uri: &str,
        body: Option<&Value>,
        at_once: bool,
    ) -> Result<Value, TestError> {
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri
            .parse()
            .map_err(|e| TestError::Protocol(format!("a bad request target {uri:?}: {e}")))?;
        *request.headers_mut() = self.headers.clone();
        request
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        *request.extensions_mut() = self.extensions.clone();
        if at_once {
            request.extensions_mut().insert(AnswerAtOnce);
        }
        let response = match self.service.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status();
        let bytes = match response.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        };
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status != StatusCode::OK {
            let error = &value["error"];
            return Err(TestError::Refused {
                status,
                code: error["code"].as_str().unwrap_or("none").to_owned(),
                message: error["message"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()),
            });
        }
        if value.is_null() {
            return Err(TestError::Protocol(format!(
                "a 200 that is not JSON: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        Ok(value)
    }
}

fn received(m: &Value, pos: Option<u64>) -> Received {
    Received {
        namespace: m["ns"].as_str().unwrap_or("/").to_owned(),
        event: text(&m["event"]),
        data: m.get("data").cloned().unwrap_or(Value::Null),
        pos,
    }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// A client id as the JavaScript client makes them: 16 random characters of the id alphabet.
fn random_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..16)
        .map(|_| char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]))
        .collect()
}
