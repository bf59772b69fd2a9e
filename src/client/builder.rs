//! [`ClientBuilder`]: the settings of a client, and starting it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::{Mutex, mpsc, watch};

use super::error::ConnectError;
use super::event::Events;
use super::{Client, Inner, receive, send};
use crate::protocol::check_namespace;
use crate::storage::DEFAULT_NAMESPACE;

/// The settings both loops read; fixed once the client is started.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) url: reqwest::Url,
    pub(crate) client_id: String,
    /// The `ns` query of every `GET`: the subscribed namespaces, comma-separated.
    pub(crate) namespaces: String,
    pub(crate) poll_timeout: Duration,
    pub(crate) send_timeout: Duration,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) pending_delay: Duration,
    pub(crate) batch_limit: usize,
    pub(crate) retry_window: Duration,
    pub(crate) max_response: usize,
}

/// Configures a [`Client`] and starts it. Made by [`Client::builder`]; every setting but the
/// URL has a default that suits the server's defaults.
///
/// ```no_run
/// use std::time::Duration;
/// use simpleio::client::Client;
///
/// # fn demo() -> Result<(), simpleio::client::ConnectError> {
/// let (client, events) = Client::builder("http://127.0.0.1:3000/simpleio")
///     .header("cookie", "user=ann")
///     .backoff(Duration::from_millis(250), Duration::from_secs(10))
///     .event_buffer(64)
///     .connect()?;
/// # drop((client, events)); Ok(()) }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
#[must_use = "call `connect` to start the client"]
pub struct ClientBuilder {
    url: String,
    headers: HeaderMap,
    /// The first invalid header, reported by `connect` so the chain of calls stays simple.
    header_error: Option<ConnectError>,
    http: Option<reqwest::Client>,
    namespaces: Vec<String>,
    poll_timeout: Duration,
    send_timeout: Duration,
    backoff_base: Duration,
    backoff_max: Duration,
    pending_delay: Duration,
    batch_limit: usize,
    retry_window: Duration,
    max_event_len: usize,
    max_response: usize,
    event_buffer: usize,
    outbox_capacity: usize,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values are credentials: name them, never print them.
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("namespaces", &self.namespaces)
            .field("poll_timeout", &self.poll_timeout)
            .field("send_timeout", &self.send_timeout)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_max", &self.backoff_max)
            .field("batch_limit", &self.batch_limit)
            .field("retry_window", &self.retry_window)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    pub(crate) fn new(url: impl Into<String>) -> Self {
        ClientBuilder {
            url: url.into(),
            headers: HeaderMap::new(),
            header_error: None,
            http: None,
            namespaces: vec![DEFAULT_NAMESPACE.to_owned()],
            poll_timeout: Duration::from_secs(35),
            send_timeout: Duration::from_secs(30),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            pending_delay: Duration::from_millis(250),
            batch_limit: 100,
            retry_window: Duration::from_secs(9 * 60),
            max_event_len: 128,
            max_response: 32 * 1024 * 1024,
            event_buffer: 256,
            outbox_capacity: 1024,
        }
    }

    /// A header sent with every request: the credentials the server's identity function reads
    /// (a `cookie`, an `authorization`). Repeating a name adds another value. An invalid name or
    /// value makes [`connect`](Self::connect) fail.
    ///
    /// ```
    /// let builder = simpleio::client::Client::builder("http://127.0.0.1:3000/simpleio")
    ///     .header("authorization", "Bearer eyJhbGciOi…");
    /// # let _ = builder;
    /// ```
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let parsed = HeaderName::try_from(name)
            .map_err(|e| e.to_string())
            .and_then(|n| {
                HeaderValue::try_from(value)
                    .map(|v| (n, v))
                    .map_err(|e| e.to_string())
            });
        match parsed {
            Ok((name, mut value)) => {
                value.set_sensitive(true);
                self.headers.append(name, value);
            }
            Err(reason) => {
                self.header_error.get_or_insert(ConnectError::Header {
                    name: name.to_owned(),
                    reason,
                });
            }
        }
        self
    }

    /// The HTTP client to use, for TLS settings, proxies or a cookie store (default: a plain
    /// `reqwest::Client`). Its own timeouts apply on top of the client's.
    ///
    /// `https` URLs need a TLS backend: simpleio enables none, so add `reqwest` with, say, the
    /// `rustls-tls` feature to your own dependencies.
    ///
    /// ```
    /// let http = reqwest::Client::builder().user_agent("my-app/1.0").build().unwrap();
    /// let builder = simpleio::client::Client::builder("http://127.0.0.1:3000/simpleio").http_client(http);
    /// # let _ = builder;
    /// ```
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// The namespaces to receive (spec §4a), replacing the default, which is `/` alone.
    ///
    /// **The list is exact: `/` is received only if it is in it.** A client receives, and
    /// confirms to their senders, the messages of these namespaces only, so a process that
    /// never looks at `/` does not tell the server's `emit` that `/` messages were delivered.
    /// List `/` too to keep receiving what the server sends without
    /// [`SimpleIo::of`](crate::SimpleIo::of). Repeats are ignored.
    ///
    /// The list is fixed for the client's lifetime and sent with every poll. Each namespace must
    /// exist on the server (otherwise every poll fails with `400 unknown_namespace`) and the user
    /// must be allowed in it (otherwise every poll fails with the server's rejection, typically
    /// `403`): both show as [`Event::Disconnected`](super::Event::Disconnected) with the server's
    /// code, and the client keeps retrying at the longest backoff. A malformed name (not
    /// starting with `/`, containing `,`, longer than 64 bytes) makes [`connect`](Self::connect)
    /// fail.
    ///
    /// Sending does not depend on this list: [`Client::of`] sends into any namespace.
    ///
    /// ```
    /// let builder = simpleio::client::Client::builder("http://127.0.0.1:3000/simpleio")
    ///     .namespaces(["/", "/chat"]); // the default namespace and /chat; not /news
    /// # let _ = builder;
    /// ```
    pub fn namespaces<I>(mut self, namespaces: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.namespaces = Vec::new();
        for ns in namespaces {
            let ns = ns.into();
            if !self.namespaces.contains(&ns) {
                self.namespaces.push(ns);
            }
        }
        self
    }

    /// How long a receiving `GET` may take before it counts as failed (default 35 s). Keep it a
    /// little above the server's hold time (default 25 s), which answers an idle poll.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = simpleio::client::Client::builder("http://127.0.0.1:3000/simpleio")
    ///     .poll_timeout(Duration::from_secs(20)); // the server holds for 15 s
    /// # let _ = builder;
    /// ```
    pub fn poll_timeout(mut self, timeout: Duration) -> Self {
        self.poll_timeout = timeout;
        self
    }

    /// How long a sending `POST` may take before it is retried (default 30 s). It includes the
    /// server's handler running every message of the batch.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = simpleio::client::Client::builder("http://127.0.0.1:3000/simpleio")
    ///     .send_timeout(Duration::from_secs(10));
    /// # let _ = builder;
    /// ```
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = timeout;
        self
    }

    /// The backoff after failed requests (default 500 ms, 30 s): the n-th failure in a row
    /// waits `min(max, base × 2^(n-1)) × random(0.5, 1.0)`; a success starts over. A refused
    /// sign-in (`401`, `403`) waits `max × random(0.5, 1.0)`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = simpleio::client::Client::builder("http://127.0.0.1:3000/simpleio")
    ///     .backoff(Duration::from_millis(100), Duration::from_secs(5));
    /// # let _ = builder;
    /// ```
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }

    /// How long to wait before asking again about a message the server acknowledged as
    /// `pending`, when the server does not say (its `retry_after_ms`, which is used when given;
    /// default 250 ms, as the spec's §4).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = simpleio::client::Client::builder("http://127.0.0.1:3000/simpleio")
    ///     .pending_delay(Duration::from_millis(200));
    /// # let _ = builder;
    /// ```
    pub fn pending_delay(mut self, delay: Duration) -> Self {
        self.pending_delay = delay;
        self
    }

    /// The most messages in one `POST` (default 100, the server's default limit). Messages
    /// emitted while a `POST` is in flight go together in the next one, up to this many.
    ///
    /// ```
    /// let builder = simpleio::client::Client::builder("http://127.0.0.1:3000/simpleio").batch_limit(20);
    /// # let _ = builder;
    /// ```
    pub fn batch_limit(mut self, limit: usize) -> Self {
        self.batch_limit = limit;
        self
    }

    /// How long to keep resending a message the server does not acknowledge (it is down, or
    /// answers `5xx`) before [`emit`](Client::emit) fails with
    /// [`EmitError::Unacknowledged`](super::EmitError::Unacknowledged) (default 9 minutes). Keep
    /// it below the server's dedup window (default 10 minutes): within it a resend is never
    /// handled twice.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = simpleio::client::Client::builder("http://127.0.0.1:3000/simpleio")
    ///     .retry_window(Duration::from_secs(60));
    /// # let _ = builder;
    /// ```
    pub fn retry_window(mut self, window: Duration) -> Self {
        self.retry_window = window;
        self
    }

    /// The longest event name [`emit`](Client::emit) accepts, in bytes, until the server's
    /// handshake tells its own limit, which then takes its place (default 128, the server's
    /// default limit). Longer names fail at once instead of at the server.
    ///
    /// ```
    /// let builder = simpleio::client::Client::builder("http://127.0.0.1:3000/simpleio").max_event_len(64);
    /// # let _ = builder;
    /// ```
    pub fn max_event_len(mut self, bytes: usize) -> Self {
        self.max_event_len = bytes;
        self
    }

    /// The largest response body the client reads, in bytes (default 32 MiB); a larger one
    /// counts as a failed request.
    ///
    /// ```
    /// let builder = simpleio::client::Client::builder("http://127.0.0.1:3000/simpleio").max_response(4 << 20);
    /// # let _ = builder;
    /// ```
    pub fn max_response(mut self, bytes: usize) -> Self {
        self.max_response = bytes;
        self
    }

    /// How many events wait in [`Events`] for the application (default 256). While it is full,
    /// the client stops polling: backpressure instead of unbounded memory.
    ///
    /// ```
    /// let builder = simpleio::client::Client::builder("http://127.0.0.1:3000/simpleio").event_buffer(16);
    /// # let _ = builder;
    /// ```
    pub fn event_buffer(mut self, capacity: usize) -> Self {
        self.event_buffer = capacity;
        self
    }

    /// How many emitted messages may wait to be sent (default 1024). While the outbox is full,
    /// [`emit`](Client::emit) waits for room.
    ///
    /// ```
    /// let builder = simpleio::client::Client::builder("http://127.0.0.1:3000/simpleio").outbox_capacity(100);
    /// # let _ = builder;
    /// ```
    pub fn outbox_capacity(mut self, capacity: usize) -> Self {
        self.outbox_capacity = capacity;
        self
    }

    /// Starts the client: spawns its receiving and sending tasks on the current Tokio runtime
    /// and returns at once, with the handle for sending and the stream of [`Events`]. The
    /// first successful poll shows as [`Event::Connected`](super::Event::Connected).
    ///
    /// Fails if a setting is invalid or there is no Tokio runtime; never because the server is
    /// unreachable (the client keeps retrying).
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (client, mut events) = simpleio::client::Client::builder("http://127.0.0.1:3000/simpleio")
    ///     .header("cookie", "user=ann")
    ///     .connect()?;
    /// while let Some(event) = events.recv().await {
    ///     println!("{event:?}");
    /// }
    /// # drop(client); Ok(()) }
    /// ```
    pub fn connect(self) -> Result<(Client, Events), ConnectError> {
        if let Some(e) = self.header_error {
            return Err(e);
        }
        let url = parse_url(&self.url)?;
        let namespaces = ns_query(&self.namespaces)?;
        for (name, zero) in [
            ("poll_timeout", self.poll_timeout.is_zero()),
            ("send_timeout", self.send_timeout.is_zero()),
            (
                "backoff",
                self.backoff_base.is_zero() || self.backoff_base > self.backoff_max,
            ),
            ("batch_limit", self.batch_limit == 0),
            ("retry_window", self.retry_window.is_zero()),
            ("max_event_len", self.max_event_len == 0),
            ("max_response", self.max_response == 0),
            ("event_buffer", self.event_buffer == 0),
            ("outbox_capacity", self.outbox_capacity == 0),
        ] {
            if zero {
                return Err(ConnectError::Setting(name));
            }
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConnectError::NoRuntime)?;
        let http = match self.http {
            Some(http) => http,
            None => reqwest::Client::builder()
                .build()
                .map_err(ConnectError::Http)?,
        };

        let config = Arc::new(Config {
            url,
            client_id: new_client_id(),
            namespaces,
            poll_timeout: self.poll_timeout,
            send_timeout: self.send_timeout,
            backoff_base: self.backoff_base,
            backoff_max: self.backoff_max,
            pending_delay: self.pending_delay,
            batch_limit: self.batch_limit,
            retry_window: self.retry_window,
            max_response: self.max_response,
        });
        let server_max_event_len = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let transport = super::Transport {
            http,
            headers: self.headers,
            config: config.clone(),
            server_max_messages: Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX)),
            server_max_event_len: server_max_event_len.clone(),
            current_id: Arc::new(std::sync::Mutex::new(Arc::from(config.client_id.as_str()))),
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let (events_tx, events_rx) = mpsc::channel(self.event_buffer);
        let (outbox_tx, outbox_rx) = mpsc::channel(self.outbox_capacity);
        let span = tracing::debug_span!("simpleio_client", client = %config.client_id);
        let receiving = runtime.spawn(tracing::Instrument::instrument(
            receive::run(transport.clone(), events_tx, stop_rx.clone()),
            span.clone(),
        ));
        let sending = runtime.spawn(tracing::Instrument::instrument(
            send::run(transport, outbox_rx, stop_rx),
            span,
        ));
        let client = Client {
            namespace: DEFAULT_NAMESPACE.into(),
            inner: Arc::new(Inner {
                config,
                counter: AtomicU64::new(0),
                max_event_len: self.max_event_len,
                server_max_event_len,
                outbox: outbox_tx,
                stop: stop_tx,
                tasks: Mutex::new(vec![receiving, sending]),
            }),
        };
        Ok((client, Events { rx: events_rx }))
    }
}

fn parse_url(url: &str) -> Result<reqwest::Url, ConnectError> {
    let invalid = |reason: String| ConnectError::Url {
        url: url.to_owned(),
        reason,
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "the scheme `{}` is not http or https",
            parsed.scheme()
        )));
    }
    if parsed.query().is_some() {
        return Err(invalid(
            "the route's URL must not carry a query; the client adds its own".to_owned(),
        ));
    }
    Ok(parsed)
}

/// The `ns` query for `namespaces`, each checked as the server checks it.
fn ns_query(namespaces: &[String]) -> Result<String, ConnectError> {
    if namespaces.is_empty() {
        return Err(ConnectError::Setting("namespaces"));
    }
    for ns in namespaces {
        check_namespace(ns).map_err(|reason| ConnectError::Namespace {
            name: ns.clone(),
            reason,
        })?;
    }
    Ok(namespaces.join(","))
}

/// 22 random characters from `A–Z a–z 0–9` (about 131 bits), as the spec's §2 asks.
pub(crate) fn new_client_id() -> String {
    (0..22).map(|_| fastrand::alphanumeric()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_follow_the_spec() {
        let id = new_client_id();
        assert_eq!(id.len(), 22);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(id, new_client_id());
    }

    #[test]
    fn only_http_urls_without_a_query_are_taken() {
        assert!(parse_url("http://127.0.0.1:3000/simpleio").is_ok());
        assert!(parse_url("https://example.com/simpleio").is_ok());
        assert!(parse_url("ws://example.com/simpleio").is_err());
        assert!(parse_url("http://example.com/simpleio?x=1").is_err());
        assert!(parse_url("/simpleio").is_err());
    }

    #[test]
    fn namespaces_are_checked_and_joined_for_the_query() {
        let ns = |list: &[&str]| ns_query(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(ns(&["/"]).ok().as_deref(), Some("/"));
        assert_eq!(ns(&["/", "/chat"]).ok().as_deref(), Some("/,/chat"));
        assert!(matches!(ns(&[]), Err(ConnectError::Setting("namespaces"))));
        assert!(
            matches!(ns(&["chat"]), Err(ConnectError::Namespace { name, .. }) if name == "chat")
        );
        assert!(matches!(
            ns(&["/a,/b"]),
            Err(ConnectError::Namespace { .. })
        ));
        let builder =
            ClientBuilder::new("http://127.0.0.1:1/simpleio").namespaces(["/chat", "/", "/chat"]);
        assert_eq!(builder.namespaces, ["/chat", "/"]);
    }

    #[test]
    fn an_invalid_namespace_is_reported_by_connect() {
        let err = ClientBuilder::new("http://127.0.0.1:1/simpleio")
            .namespaces(["/ok", "not-a-namespace"])
            .connect()
            .err();
        assert!(
            matches!(err, Some(ConnectError::Namespace { name, .. }) if name == "not-a-namespace")
        );
    }

    #[test]
    fn an_invalid_header_is_reported_by_connect() {
        let err = ClientBuilder::new("http://127.0.0.1:1/simpleio")
            .header("bad header", "x")
            .connect()
            .err();
        assert!(matches!(err, Some(ConnectError::Header { .. })));
    }

    #[test]
    fn connect_needs_a_runtime() {
        let err = ClientBuilder::new("http://127.0.0.1:1/simpleio")
            .connect()
            .err();
        assert!(matches!(err, Some(ConnectError::NoRuntime)));
    }
}
