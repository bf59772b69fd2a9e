//! What can go wrong, split by operation: a request to the server ([`ConnectionError`]), sending
//! one message ([`EmitError`]), and starting the client ([`ConnectError`]).

use std::sync::Arc;
use std::time::Duration;

/// Why one request to the server failed.
///
/// The client handles every one of these itself (it retries with backoff); you see them in
/// [`Event::Disconnected`](super::Event::Disconnected), and inside
/// [`EmitError::Unacknowledged`] when a message could not be sent in time.
///
/// ```no_run
/// # async fn demo(mut events: simpleio::client::Events) {
/// use simpleio::client::{ConnectionError, Event};
///
/// while let Some(event) = events.recv().await {
///     if let Event::Disconnected(ConnectionError::Rejected { status: 401 | 403, .. }) = event {
///         eprintln!("signed out; the client keeps retrying until you sign in again");
///     }
/// }
/// # }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The request did not get a response: the server is unreachable, the connection dropped, or
    /// the request timed out. (Shared, so that the error can be cloned.)
    #[error("the request failed: {}", with_causes(.0))]
    Http(#[source] Arc<reqwest::Error>),
    /// The server refused the request with a `4xx` status. A `401` or `403` comes from the
    /// server's identity function (the credentials are missing or no longer valid) or from a
    /// namespace's authorization (the user may not use one of the namespaces the client
    /// subscribed to); a `400 unknown_namespace` means the server has no such namespace.
    #[error("the server refused the request ({status} {code}): {message}")]
    Rejected {
        /// The HTTP status, `400..=499`.
        status: u16,
        /// The error's stable code (see the spec's §5), or `http_<status>` if the body had none.
        code: String,
        /// The error's message, for people.
        message: String,
    },
    /// The server failed with a `5xx` status (`503 storage_unavailable`, a proxy's `502`, …).
    #[error("the server failed ({status} {code}): {message}")]
    Server {
        /// The HTTP status, `500..=599`.
        status: u16,
        /// The error's stable code, or `http_<status>` if the body had none.
        code: String,
        /// The error's message, for people.
        message: String,
    },
    /// The server answered something that is not the protocol: an unexpected status, a body that
    /// does not parse, or one larger than the client's limit.
    #[error("the server's response is not valid simpleio: {0}")]
    InvalidResponse(String),
}

/// `reqwest`'s message names the URL but not why (`connection refused`): add the causes.
fn with_causes(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl From<reqwest::Error> for ConnectionError {
    fn from(error: reqwest::Error) -> Self {
        ConnectionError::Http(Arc::new(error))
    }
}

impl ConnectionError {
    /// The HTTP status of a [`Rejected`](Self::Rejected) or [`Server`](Self::Server) error.
    ///
    /// ```
    /// use simpleio::client::ConnectionError;
    /// let e = ConnectionError::Rejected { status: 401, code: "unauthorized".into(), message: "sign in".into() };
    /// assert_eq!(e.status(), Some(401));
    /// ```
    pub fn status(&self) -> Option<u16> {
        match self {
            ConnectionError::Rejected { status, .. } | ConnectionError::Server { status, .. } => {
                Some(*status)
            }
            ConnectionError::Http(e) => e.status().map(|s| s.as_u16()),
            ConnectionError::InvalidResponse(_) => None,
        }
    }
}

/// Why [`Client::emit`](super::Client::emit) did not resolve with a reply.
///
/// ```no_run
/// # async fn demo(client: simpleio::client::Client) {
/// use simpleio::client::EmitError;
///
/// match client.emit("chat", &serde_json::json!({"text": "hi"})).await {
///     Ok(reply) => println!("stored: {reply}"),
///     Err(EmitError::Ack { code, message }) => eprintln!("refused ({code}): {message}"),
///     Err(other) => eprintln!("not sent: {other}"),
/// }
/// # }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmitError {
    /// The server's handler handled the message and failed. Final: the message is not resent.
    #[error("the server's handler failed the message ({code}): {message}")]
    Ack {
        /// The error's stable code (`handler_error`, or one the application chose).
        code: String,
        /// The error's message, for people.
        message: String,
    },
    /// The server refused the message itself (`400` an invalid field or an
    /// `unknown_namespace`, `413` too large, `415`, `405`): sending it again would not help.
    /// The handler did not see it.
    #[error("the server refused the message ({status} {code}): {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The error's stable code, e.g. `invalid_field` or `body_too_large`.
        code: String,
        /// The error's message, for people.
        message: String,
    },
    /// The server did not acknowledge the message within the retry window (see
    /// [`ClientBuilder::retry_window`](super::ClientBuilder::retry_window)). The handler may or
    /// may not have seen it.
    #[error("no acknowledgement within {after:?}; the last attempt failed: {last}")]
    Unacknowledged {
        /// How long the client tried.
        after: Duration,
        /// Why the last attempt failed.
        last: ConnectionError,
    },
    /// The server still answered `pending` (another request of it is being handled) when the
    /// retry window ended (see
    /// [`ClientBuilder::retry_window`](super::ClientBuilder::retry_window)): the handler may
    /// or may not finish it, and past the server's dedup window a resend could be handled
    /// twice, so the client stops asking (spec §8).
    #[error("still pending after {after:?}: the server had not finished handling it")]
    StillPending {
        /// How long the client tried.
        after: Duration,
    },
    /// The event name is empty or longer than the limit: the server's, once its handshake
    /// told it, else [`ClientBuilder::max_event_len`](super::ClientBuilder::max_event_len).
    /// Nothing was sent.
    #[error("the event name must be 1 to {max} bytes")]
    InvalidEvent {
        /// The limit in bytes.
        max: usize,
    },
    /// The namespace given to [`Client::of`](super::Client::of) is not a valid name (it must
    /// start with `/`, have no `,`, and be at most 64 visible ASCII characters). Nothing was sent.
    #[error("`{namespace}` is not a valid namespace: {reason}")]
    InvalidNamespace {
        /// The namespace, as given.
        namespace: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The data could not be serialized to JSON. Nothing was sent.
    #[error("the data could not be serialized to JSON: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The client was closed (or every handle to it dropped) before the message was
    /// acknowledged. If it had been sent already, the handler may or may not have seen it.
    #[error("the client is closed")]
    Closed,
}

/// Why [`ClientBuilder::connect`](super::ClientBuilder::connect) could not start a client.
///
/// ```
/// let err = simpleio::client::Client::builder("not a url").connect().unwrap_err();
/// assert!(matches!(err, simpleio::client::ConnectError::Url { .. }));
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL does not parse, or is not `http` or `https`.
    #[error("`{url}` is not an http(s) URL: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A header given to [`ClientBuilder::header`](super::ClientBuilder::header) has an invalid
    /// name or value.
    #[error("the header `{name}` is invalid: {reason}")]
    Header {
        /// The header's name, as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A namespace given to [`ClientBuilder::namespaces`](super::ClientBuilder::namespaces) is
    /// not a valid name.
    #[error("`{name}` is not a valid namespace: {reason}")]
    Namespace {
        /// The namespace, as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting is out of range (a zero limit or duration, a backoff whose base exceeds its
    /// maximum, no namespace to receive).
    #[error("the setting `{0}` is out of range")]
    Setting(&'static str),
    /// `connect` was called outside a Tokio runtime; the client's tasks need one.
    #[error("`connect` must be called within a Tokio runtime")]
    NoRuntime,
    /// The HTTP client could not be built (for example, no TLS backend is available).
    #[error("the HTTP client could not be built: {0}")]
    Http(#[source] reqwest::Error),
}
