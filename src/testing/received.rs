//! What a test client receives, and how its requests fail.

use http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// One message a [`TestClient`](super::TestClient) received.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Received {
    /// Its namespace (`/` by default).
    pub namespace: String,
    /// The event name.
    pub event: String,
    /// The payload (`null` if none).
    pub data: Value,
    /// Its position in the user's log; `None` for a volatile message.
    pub pos: Option<u64>,
}

impl Received {
    /// Whether it was sent volatile (never stored, never confirmed).
    pub fn is_volatile(&self) -> bool {
        self.pos.is_none()
    }

    /// The payload, deserialized.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.data)
    }
}

/// A test client's request was refused, or its answer was not the protocol's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestError {
    /// The server answered with an error status: the identity function's rejection, a bound,
    /// bad input.
    #[error("refused with {status}: {code}: {message}")]
    Refused {
        /// The status.
        status: StatusCode,
        /// The error body's code (`unauthorized`, `too_many_clients`, …), or `"none"` if the
        /// body was not the protocol's error (an application's own rejection may not be).
        code: String,
        /// The error body's message, or the body as text.
        message: String,
    },
    /// The answer was not what the protocol says (a defect worth a bug report).
    #[error("the answer is not the protocol's: {0}")]
    Protocol(String),
}

impl TestError {
    /// The error code of a refused request.
    pub fn code(&self) -> Option<&str> {
        match self {
            TestError::Refused { code, .. } => Some(code),
            TestError::Protocol(_) => None,
        }
    }
}

/// An emit of a test client failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmitError {
    /// The message was handled, or refused, and failed: its error acknowledgement (the
    /// handler's `HandlerError`, `handler_error`, `no_handler`, a namespace's rejection, …).
    #[error("the message failed: {code}: {message}")]
    Failed {
        /// The acknowledgement's error code.
        code: String,
        /// Its message.
        message: String,
    },
    /// The request itself was refused.
    #[error(transparent)]
    Request(#[from] TestError),
}

impl EmitError {
    /// The error code, of a failed message or a refused request.
    pub fn code(&self) -> Option<&str> {
        match self {
            EmitError::Failed { code, .. } => Some(code),
            EmitError::Request(e) => e.code(),
        }
    }
}
