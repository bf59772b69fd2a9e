//! Limits and timings, with their defaults and the reasons for them.

use std::time::Duration;

/// Every tunable of a layer. Set through [`Builder`](crate::Builder); each default is documented
/// on the builder method that changes it.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) path: String,
    pub(crate) hold: Duration,
    pub(crate) batch_limit: usize,
    pub(crate) max_body: usize,
    pub(crate) max_messages: usize,
    pub(crate) max_event_len: usize,
    pub(crate) dedup_window: Duration,
    pub(crate) handler_lease: Duration,
    pub(crate) pending_wait: Duration,
    pub(crate) message_ttl: Duration,
    pub(crate) max_queue: usize,
    pub(crate) max_queue_per_sender: usize,
    pub(crate) max_queue_bytes: usize,
    pub(crate) max_queue_bytes_per_sender: usize,
    pub(crate) presence_ttl: Duration,
    pub(crate) recheck: Duration,
    pub(crate) max_dedup_per_client: usize,
    pub(crate) max_dedup_per_user: usize,
    pub(crate) max_reply_bytes: usize,
    pub(crate) max_clients_per_user: usize,
    pub(crate) max_polls_per_user: usize,
    pub(crate) max_polls: usize,
    pub(crate) max_namespaces: usize,
    pub(crate) max_batch_bytes: usize,
    pub(crate) max_message_bytes: usize,
    pub(crate) max_data_depth: usize,
    pub(crate) body_timeout: Duration,
    pub(crate) max_presence_queue: usize,
}

/// The longest hold the builder accepts: common proxies and PaaS routers cut idle requests at
/// 30 s (Heroku's router does), and a cut poll looks like a network failure to the client.
pub(crate) const MAX_HOLD: Duration = Duration::from_secs(29);

/// The shortest dedup window: a client resends an unanswered message for up to 9 minutes after
/// it first sent it, each attempt given 30 s (spec §4), so its id must be remembered for longer.
/// A shorter window would have a spec-following client's late resend handled twice.
pub(crate) const MIN_DEDUP_WINDOW: Duration = Duration::from_secs(10 * 60);

/// The longest pending wait: a client gives a `POST` 30 s (spec §4), and a resend of a message
/// still being handled must be answered `pending` within it, with time to spare for the rest of
/// the request.
pub(crate) const MAX_PENDING_WAIT: Duration = Duration::from_secs(20);

impl Default for Config {
    fn default() -> Self {
        Config {
            path: "/simpleio".to_owned(),
            hold: Duration::from_secs(25),
            batch_limit: 100,
            max_body: 1024 * 1024,
            max_messages: 100,
            max_event_len: 128,
            dedup_window: Duration::from_secs(10 * 60),
            handler_lease: Duration::from_secs(10),
            pending_wait: Duration::from_secs(5),
            message_ttl: Duration::from_secs(5 * 60),
            max_queue: 10_000,
            max_queue_per_sender: 1_000,
            max_queue_bytes: 64 * 1024 * 1024,
            max_queue_bytes_per_sender: 8 * 1024 * 1024,
            presence_ttl: Duration::from_secs(60),
            recheck: Duration::from_secs(10),
            max_dedup_per_client: 1_000,
            max_dedup_per_user: 4_000,
            max_reply_bytes: 8 * 1024,
            max_clients_per_user: 64,
            max_polls_per_user: 64,
            max_polls: 100_000,
            max_namespaces: 32,
            max_batch_bytes: 4 * 1024 * 1024,
            max_message_bytes: 1024 * 1024,
            max_data_depth: 64,
            body_timeout: Duration::from_secs(10),
            max_presence_queue: 10_000,
        }
    }
}

/// A configuration the builder refuses, with the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The path does not start with `/`, or ends with one.
    #[error("the path must start with '/' and not end with one (got {0:?})")]
    Path(String),
    /// The hold time is zero or not below 30 s.
    #[error(
        "the hold time must be between 1 ms and 29 s, below the 30 s at which proxies cut requests (got {0:?})"
    )]
    Hold(Duration),
    /// The dedup window is shorter than the time a client keeps resending a message.
    #[error(
        "the dedup window must be at least 10 minutes: clients resend an unanswered message for up to 9 minutes, and a resend past the window would be handled twice (got {0:?})"
    )]
    DedupWindow(Duration),
    /// The pending wait is zero or longer than a client waits for a `POST`'s answer.
    #[error(
        "the pending wait must be between 1 ms and 20 s: clients give a POST 30 s, and a resend must be answered `pending` within it (got {0:?})"
    )]
    PendingWait(Duration),
    /// A limit is zero.
    #[error("the limit `{0}` must be at least 1")]
    ZeroLimit(&'static str),
    /// The admin page's path does not start with `/`, ends with one, or is the route's own.
    #[error(
        "the admin path must start with '/', not end with one, and differ from the route's (got {0:?})"
    )]
    AdminPath(String),
    /// A namespace name is malformed.
    #[error("{0}")]
    Namespace(String),
    /// Two namespaces have the same name (`/` is always there).
    #[error("the namespace {0:?} is added twice")]
    DuplicateNamespace(String),
    /// The presence TTL is not longer than the hold time, so waiting clients would look gone.
    #[error("the presence ttl ({presence:?}) must be longer than the hold time ({hold:?})")]
    PresenceTtl {
        /// The presence TTL given.
        presence: Duration,
        /// The hold time given.
        hold: Duration,
    },
}

impl Config {
    /// The limits a handshake tells clients.
    pub(crate) fn advertised(&self) -> crate::protocol::Limits {
        crate::protocol::Limits {
            hold_ms: self.hold.as_millis() as u64,
            max_body: self.max_body,
            max_messages: self.max_messages,
            max_event_len: self.max_event_len,
            max_message_bytes: self.max_message_bytes,
            max_data_depth: self.max_data_depth,
            batch_limit: self.batch_limit,
            max_batch_bytes: self.max_batch_bytes,
            max_namespaces: self.max_namespaces,
            dedup_window_ms: self.dedup_window.as_millis() as u64,
            pending_wait_ms: self.pending_wait.as_millis() as u64,
            handler_lease_ms: self.handler_lease.as_millis() as u64,
            presence_ttl_ms: self.presence_ttl.as_millis() as u64,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        if !self.path.starts_with('/') || (self.path.len() > 1 && self.path.ends_with('/')) {
            return Err(BuildError::Path(self.path.clone()));
        }
        if self.hold.is_zero() || self.hold > MAX_HOLD {
            return Err(BuildError::Hold(self.hold));
        }
        for (name, value) in [
            ("batch_limit", self.batch_limit),
            ("max_body", self.max_body),
            ("max_messages", self.max_messages),
            ("max_event_len", self.max_event_len),
            ("max_queue", self.max_queue),
            ("max_queue_per_sender", self.max_queue_per_sender),
            ("max_queue_bytes", self.max_queue_bytes),
            (
                "max_queue_bytes_per_sender",
                self.max_queue_bytes_per_sender,
            ),
            ("max_dedup_per_client", self.max_dedup_per_client),
            ("max_dedup_per_user", self.max_dedup_per_user),
            ("max_reply_bytes", self.max_reply_bytes),
            ("max_clients_per_user", self.max_clients_per_user),
            ("max_polls_per_user", self.max_polls_per_user),
            ("max_polls", self.max_polls),
            ("max_namespaces", self.max_namespaces),
            ("max_batch_bytes", self.max_batch_bytes),
            ("max_message_bytes", self.max_message_bytes),
            ("max_data_depth", self.max_data_depth),
            ("max_presence_queue", self.max_presence_queue),
        ] {
            if value == 0 {
                return Err(BuildError::ZeroLimit(name));
            }
        }
        if self.body_timeout.is_zero() {
            return Err(BuildError::ZeroLimit("body_timeout"));
        }
        if self.dedup_window < MIN_DEDUP_WINDOW {
            return Err(BuildError::DedupWindow(self.dedup_window));
        }
        if self.pending_wait.is_zero() || self.pending_wait > MAX_PENDING_WAIT {
            return Err(BuildError::PendingWait(self.pending_wait));
        }
        if self.presence_ttl <= self.hold {
            return Err(BuildError::PresenceTtl {
                presence: self.presence_ttl,
                hold: self.hold,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    /// A window shorter than a client's resends, or a pending wait past its timeout, would
    /// have a spec-following client's message handled twice, or resent for nothing.
    #[test]
    fn a_dedup_window_and_pending_wait_outside_the_clients_timing_are_refused() {
        let window = |dedup_window| Config {
            dedup_window,
            ..Config::default()
        };
        assert_eq!(window(MIN_DEDUP_WINDOW).validate(), Ok(()));
        assert_eq!(
            window(Duration::from_secs(9 * 60)).validate(),
            Err(BuildError::DedupWindow(Duration::from_secs(9 * 60)))
        );
        let wait = |pending_wait| Config {
            pending_wait,
            ..Config::default()
        };
        assert_eq!(wait(MAX_PENDING_WAIT).validate(), Ok(()));
        assert_eq!(wait(Duration::from_millis(1)).validate(), Ok(()));
        for refused in [Duration::ZERO, Duration::from_secs(21)] {
            assert_eq!(
                wait(refused).validate(),
                Err(BuildError::PendingWait(refused))
            );
        }
    }

    #[test]
    fn a_hold_of_thirty_seconds_is_refused() {
        let c = Config {
            hold: Duration::from_secs(30),
            ..Config::default()
        };
        assert!(matches!(c.validate(), Err(BuildError::Hold(_))));
    }

    #[test]
    fn a_path_must_be_absolute() {
        let c = Config {
            path: "simpleio".into(),
            ..Config::default()
        };
        assert!(matches!(c.validate(), Err(BuildError::Path(_))));
    }
}
