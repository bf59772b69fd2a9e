//! The receiving loop (spec §3): one long poll after another, each confirming what the one
//! before delivered.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::time::{Duration, sleep};

use super::backoff::Backoff;
use super::error::ConnectionError;
use super::event::{Event, Message, MessageKind};
use super::wire::{Failed, PollBody, exchange};
use super::{Transport, stopped};

/// Where the loop stands, for telling the application about changes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Connected,
    Down,
}

/// What the client holds between polls: the epoch and cursor of the last response whose
/// messages reached the application.
#[derive(Debug, Default)]
struct Position {
    held: Option<(String, u64)>,
    /// The latest response's, until its messages are handed over.
    pending: Option<(String, u64)>,
}

impl Position {
    /// Applies a response: whether the epoch changed (the storage was reset), and the messages
    /// to hand over — only those past the cursor, which are new (spec §3, steps 1–2).
    fn take(&mut self, body: PollBody) -> (bool, Vec<Message>) {
        let resynced = self
            .held
            .as_ref()
            .is_some_and(|(epoch, _)| *epoch != body.epoch);
        let cursor = match &self.held {
            Some((epoch, cursor)) if *epoch == body.epoch => Some(*cursor),
            _ => None,
        };
        let stored = body
            .messages
            .into_iter()
            .filter(|m| cursor.is_none_or(|c| m.pos > c))
            .map(|m| Message {
                namespace: m.ns,
                event: m.event,
                data: m.data,
                kind: MessageKind::Stored { pos: m.pos },
                asks_reply: m.ack,
            });
        let volatile = body.volatile.into_iter().map(|v| Message {
            namespace: v.ns,
            event: v.event,
            data: v.data,
            kind: MessageKind::Volatile,
            asks_reply: false,
        });
        let messages = stored.chain(volatile).collect();
        // Stored only once the messages are handed over: see `run`.
        self.pending = Some((body.epoch, body.cursor));
        (resynced, messages)
    }

    /// The latest response's messages reached the application (spec §3, step 4).
    fn commit(&mut self) {
        if let Some(next) = self.pending.take() {
            self.held = Some(next);
        }
    }
}

pub(crate) async fn run(
    transport: Transport,
    events: mpsc::Sender<Event>,
    mut stop: watch::Receiver<bool>,
) {
    let config = &transport.config;
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_max);
    let mut position = Position::default();
    let mut state = State::Starting;
    loop {
        let id = transport.current_id();
        let mut request = transport
            .http
            .get(config.url.clone())
            .headers(transport.headers.clone())
            .query(&[("client", &*id), ("ns", config.namespaces.as_str())])
            .timeout(config.poll_timeout);
        if let Some((epoch, cursor)) = &position.held {
            request = request.query(&[("cursor", cursor.to_string().as_str()), ("epoch", epoch)]);
        }
        let sent_at = tokio::time::Instant::now();
        // Stopping drops the request, which closes its connection: the server sees the poll end.
        let result = tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            () = events.closed() => break,
            result = exchange::<PollBody>(request, config.max_response) => result,
        };
        match result {
            Ok(body) => {
                backoff.reset();
                if let Some(most) = body.limits.as_ref().and_then(|l| l.max_messages) {
                    transport
                        .server_max_messages
                        .store(most.max(1), std::sync::atomic::Ordering::Relaxed);
                }
                if let Some(longest) = body.limits.as_ref().and_then(|l| l.max_event_len) {
                    transport
                        .server_max_event_len
                        .store(longest.max(1), std::sync::atomic::Ordering::Relaxed);
                }
                // Another instance polls with this id: take a new one, keeping the cursor, or
                // the two end each other's polls without end (spec §3 step 6).
                if body.taken_over {
                    let fresh: Arc<str> = super::builder::new_client_id().into();
                    tracing::warn!(old = %id, new = %fresh, "another instance polls with this client id; taking a new one");
                    transport.replace_id(fresh);
                }
                let epoch = body.epoch.clone();
                let (resynced, messages) = position.take(body);
                let mut out = Vec::with_capacity(messages.len() + 2);
                if state != State::Connected {
                    tracing::debug!("connected");
                    out.push(Event::Connected);
                    state = State::Connected;
                }
                if resynced {
                    tracing::warn!(%epoch, "the server's storage was reset; starting over");
                    out.push(Event::Resynced);
                }
                out.extend(messages.into_iter().map(Event::Message));
                if !deliver(&events, &mut stop, out).await {
                    break;
                }
                // Everything is with the application: the next poll may confirm it.
                position.commit();
            }
            // A held poll cut on the way (a proxy or timeout layer shorter than the hold): it
            // confirmed its cursor as it began, so poll again at once, connected as before
            // (spec §5). One that came back sooner is a plain failure, so it cannot spin.
            Err(Failed { error, .. })
                if is_cut_hold(&error) && sent_at.elapsed() >= CUT_HOLD_AFTER =>
            {
                tracing::debug!(%error, "a held poll was cut on the way; polling again");
            }
            Err(Failed { error, retry_after }) => {
                // A refused sign-in or request will not clear up soon (spec §5): wait longest.
                let delay = if is_permanent(&error) {
                    backoff.longest_delay()
                } else {
                    backoff.next_delay()
                };
                // The server's `Retry-After` is a floor (spec §5).
                let delay = retry_after.map_or(delay, |asked| delay.max(asked));
                // Loud once per outage; the retries that follow are routine.
                if state == State::Down {
                    tracing::debug!(%error, ?delay, "a poll failed again; retrying");
                } else {
                    tracing::warn!(%error, ?delay, "a poll failed; retrying");
                    state = State::Down;
                    if !deliver(&events, &mut stop, vec![Event::Disconnected(error)]).await {
                        break;
                    }
                }
                tokio::select! {
                    biased;
                    () = stopped(&mut stop) => break,
                    () = events.closed() => break,
                    () = sleep(delay) => {}
                }
            }
        }
    }
    tracing::debug!("receiving stopped");
}

/// How long a poll must have been out for a `408`/`504` to be taken for a cut hold (spec §5).
const CUT_HOLD_AFTER: Duration = Duration::from_secs(1);

/// A `408` or `504`: what a proxy or timeout layer answers when it cuts a held poll.
fn is_cut_hold(error: &ConnectionError) -> bool {
    matches!(
        error,
        ConnectionError::Rejected { status: 408, .. } | ConnectionError::Server { status: 504, .. }
    )
}

/// A `4xx` other than a timeout or rate limit (a refused sign-in, a client bug): repeating the
/// request soon will not help.
fn is_permanent(error: &ConnectionError) -> bool {
    matches!(error, ConnectionError::Rejected { status, .. } if !matches!(status, 408 | 425 | 429))
}

/// Hands `out` to the application, waiting while its buffer is full. False if the client is
/// stopping or nobody reads events any more.
async fn deliver(
    events: &mpsc::Sender<Event>,
    stop: &mut watch::Receiver<bool>,
    out: Vec<Event>,
) -> bool {
    for event in out {
        let sent = tokio::select! {
            biased;
            () = stopped(stop) => return false,
            sent = events.send(event) => sent,
        };
        if sent.is_err() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> PollBody {
        serde_json::from_str(json).expect("a valid poll body")
    }

    fn positions(messages: &[Message]) -> Vec<Option<u64>> {
        messages
            .iter()
            .map(|m| match m.kind {
                MessageKind::Stored { pos } => Some(pos),
                MessageKind::Volatile => None,
            })
            .collect()
    }

    #[test]
    fn messages_at_or_below_the_cursor_are_dropped_as_duplicates() {
        let mut p = Position {
            held: Some(("e1".into(), 5)),
            pending: None,
        };
        let (resynced, messages) = p.take(body(
            r#"{"epoch":"e1","cursor":6,"messages":[{"pos":4,"event":"a"},{"pos":5,"event":"b"},{"pos":6,"event":"c"}],"volatile":[{"event":"v"}]}"#,
        ));
        assert!(!resynced);
        assert_eq!(positions(&messages), [Some(6), None]);
    }

    #[test]
    fn a_first_poll_delivers_everything() {
        let mut p = Position::default();
        let (resynced, messages) = p.take(body(
            r#"{"epoch":"e1","cursor":2,"messages":[{"pos":1,"event":"a"},{"pos":2,"event":"b"}]}"#,
        ));
        assert!(!resynced);
        assert_eq!(positions(&messages), [Some(1), Some(2)]);
    }

    #[test]
    fn a_new_epoch_forgets_the_cursor() {
        let mut p = Position {
            held: Some(("e1".into(), 500)),
            pending: None,
        };
        let (resynced, messages) = p.take(body(
            r#"{"epoch":"e2","cursor":2,"messages":[{"pos":1,"event":"a"},{"pos":2,"event":"b"}]}"#,
        ));
        assert!(resynced);
        assert_eq!(positions(&messages), [Some(1), Some(2)]);
        p.commit();
        assert_eq!(p.held, Some(("e2".into(), 2)));
    }

    #[test]
    fn the_cursor_moves_only_once_the_messages_are_handed_over() {
        let mut p = Position {
            held: Some(("e1".into(), 1)),
            pending: None,
        };
        let _ = p.take(body(
            r#"{"epoch":"e1","cursor":3,"messages":[{"pos":3,"event":"a"}]}"#,
        ));
        assert_eq!(p.held, Some(("e1".into(), 1)));
        p.commit();
        assert_eq!(p.held, Some(("e1".into(), 3)));
    }

    #[test]
    fn only_client_errors_other_than_timeouts_are_permanent() {
        let rejected = |status| ConnectionError::Rejected {
            status,
            code: String::new(),
            message: String::new(),
        };
        assert!(is_permanent(&rejected(400)));
        assert!(!is_permanent(&rejected(429)));
        assert!(!is_permanent(&ConnectionError::Server {
            status: 503,
            code: String::new(),
            message: String::new(),
        }));
    }
}
