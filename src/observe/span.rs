//! The request span: one per request on the route, `info` level, named `simpleio`, with the
//! fields `method`, `user`, `client`, `namespace`, `outcome` and `status`. The fields are filled
//! in as the request learns them, so an event logged while it runs (a warning about the storage,
//! a handler's failure) carries all of them. Nothing is logged at `info` in normal operation:
//! the span only gives context.
//!
//! Storage calls are its children (`storage`, `debug` level, field `op`; see
//! [`Observed`](super::Observed)).

use std::fmt;
use std::sync::Arc;

use tracing::Span;
use tracing::field::{Empty, display};

use crate::id::{ClientId, UserId};

/// The span of one request on the route, with its fields yet to be filled.
pub(crate) fn request(method: &http::Method) -> Span {
    tracing::info_span!(
        "simpleio",
        method = %method,
        user = Empty,
        client = Empty,
        namespace = Empty,
        outcome = Empty,
        status = Empty,
    )
}

/// Whether any subscriber may want the request span: a static check of the level filters, so
/// that at `warn` (as in production) filling in the fields costs no lookup of the current span.
#[inline]
fn wanted() -> bool {
    tracing::level_enabled!(tracing::Level::INFO)
}

/// The request's user, once the identity function said who it is.
pub(crate) fn user(user: &UserId) {
    if wanted() {
        Span::current().record("user", display(user));
    }
}

/// The request's client, and the namespaces it reads or writes (comma-separated).
pub(crate) fn client(client: &ClientId, namespaces: &[Arc<str>]) {
    if !wanted() {
        return;
    }
    let span = Span::current();
    if span.is_disabled() {
        return;
    }
    span.record("client", display(client));
    span.record("namespace", display(Joined(namespaces)));
}

/// How a poll ended: `handshake`, `taken_over`, `messages` or `empty` (its hold ran out).
pub(crate) fn poll_outcome(handshake: bool, taken_over: bool, messages: usize) {
    if !wanted() {
        return;
    }
    let outcome = if handshake {
        "handshake"
    } else if taken_over {
        "taken_over"
    } else if messages > 0 {
        "messages"
    } else {
        "empty"
    };
    Span::current().record("outcome", outcome);
}

/// The response's status, and for an error its body's `code` as the outcome.
pub(crate) fn answered(status: http::StatusCode, code: Option<&'static str>) {
    if !wanted() {
        return;
    }
    let span = Span::current();
    if span.is_disabled() {
        return;
    }
    span.record("status", status.as_u16());
    if let Some(code) = code {
        span.record("outcome", code);
    }
}

/// Namespaces, written as `"/,/chat"` only if a subscriber asks for the field.
struct Joined<'a>(&'a [Arc<str>]);

impl fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, ns) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(ns)?;
        }
        Ok(())
    }
}
