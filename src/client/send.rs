//! The sending loop (spec §4): the outbox, sent one `POST` at a time, each carrying what queued
//! meanwhile, resent with the same ids until acknowledged.

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep};

use super::backoff::Backoff;
use super::error::{ConnectionError, EmitError};
use super::wire::{AcksBody, Failed, OutMessage, SendBody, WireAck, exchange};
use super::{Transport, stopped};

/// A message in the outbox.
#[derive(Debug)]
pub(crate) struct Outgoing {
    /// `{client_id}-{counter}`; the same on every resend, so the server handles it once.
    pub(crate) id: String,
    /// Its namespace; `None` for `/`, which the wire leaves out.
    pub(crate) ns: Option<Arc<str>>,
    pub(crate) event: String,
    pub(crate) data: Box<RawValue>,
    /// For a reply: the position of the message replied to (`event` is then unused).
    pub(crate) reply_to: Option<u64>,
    /// Where its outcome goes; the `emit` future waits on the other end.
    pub(crate) reply: oneshot::Sender<Result<Value, EmitError>>,
    /// When it was first sent; the retry window counts from there.
    pub(crate) first_try: Option<Instant>,
    /// The client id it was first sent with: it is resent with the same one, since the server
    /// tells messages apart by client id and message id (spec §4).
    pub(crate) sent_as: Option<Arc<str>>,
}

impl Outgoing {
    fn resolve(self, outcome: Result<Value, EmitError>) {
        // The caller may have stopped waiting; the outcome then has nowhere to go.
        let _ = self.reply.send(outcome);
    }
}

/// What to do after a `POST` failed, by the spec's §5.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Send the same messages again after the backoff.
    Retry,
    /// Send them again after the longest backoff (`401`, `403`).
    RetryLongest,
    /// Send fewer at a time: the batch was too large, or one of it is invalid and must be
    /// singled out so the others still go.
    Split,
    /// Fail the batch (a single message the server refuses; a client bug such as `415`).
    Fail,
}

fn next_after(error: &ConnectionError, batch: usize) -> Next {
    match error {
        ConnectionError::Http(_)
        | ConnectionError::Server { .. }
        | ConnectionError::InvalidResponse(_) => Next::Retry,
        ConnectionError::Rejected {
            status: 401 | 403, ..
        } => Next::RetryLongest,
        // A proxy's timeout or rate limit, or an upload that broke: nothing wrong with the
        // request itself.
        ConnectionError::Rejected {
            status: 408 | 425 | 429,
            ..
        } => Next::Retry,
        ConnectionError::Rejected {
            status: 400, code, ..
        } if code == "body_unreadable" => Next::Retry,
        // Never split (spec §5): the halves would carry one id with two contents. The client's
        // ids are unique, so this is a bug; the batch fails loudly.
        ConnectionError::Rejected {
            status: 400, code, ..
        } if code == "duplicate_id" => Next::Fail,
        // The server validates the whole batch before handling any of it, so none of these
        // messages were handled: sending them in smaller groups is safe.
        ConnectionError::Rejected {
            status: 400 | 413, ..
        } if batch > 1 => Next::Split,
        ConnectionError::Rejected { .. } => Next::Fail,
    }
}

pub(crate) async fn run(
    transport: Transport,
    mut outbox: mpsc::Receiver<Outgoing>,
    mut stop: watch::Receiver<bool>,
) {
    let config = &transport.config;
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_max);
    // Taken from the outbox, not yet acknowledged; in emit order.
    let mut queue: VecDeque<Outgoing> = VecDeque::new();
    // Lowered while the server refuses batches as too large or invalid; back up on success.
    let mut limit = config.batch_limit;
    // Whether the last `POST` succeeded: the first failure after one is logged loudly.
    let mut healthy = true;
    loop {
        if queue.is_empty() {
            tokio::select! {
                biased;
                () = stopped(&mut stop) => break,
                next = outbox.recv() => match next {
                    Some(message) => queue.push_back(message),
                    None => break,
                },
            }
        }
        // What was emitted while the last `POST` was in flight goes along with this one.
        while queue.len() < config.batch_limit {
            match outbox.try_recv() {
                Ok(message) => queue.push_back(message),
                Err(_) => break,
            }
        }
        // Within what the server's handshake allows, too (spec §6).
        let allowed = transport
            .server_max_messages
            .load(std::sync::atomic::Ordering::Relaxed);
        let n = queue.len().min(limit).min(allowed);
        let (client, n) = next_batch(&queue, n, transport.current_id());
        let now = Instant::now();
        for message in queue.iter_mut().take(n) {
            message.first_try.get_or_insert(now);
            message.sent_as.get_or_insert_with(|| client.clone());
        }
        let result = tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            result = post(&transport, &client, queue.range(..n)) => result,
        };
        let wait = match result {
            Ok(acks) => {
                backoff.reset();
                healthy = true;
                limit = config.batch_limit;
                // The server says how long to wait; `pending_delay` if it does not.
                let asked = acks
                    .acks
                    .iter()
                    .filter(|a| a.pending)
                    .filter_map(|a| a.retry_after_ms)
                    .max()
                    .map(std::time::Duration::from_millis);
                let pending = settle(&mut queue, n, acks.acks);
                // Asked again every round, but not past the retry window (spec §8).
                give_up_overdue(&mut queue, pending, config.retry_window, |after| {
                    EmitError::StillPending { after }
                });
                if pending > 0 {
                    tracing::debug!(
                        pending,
                        "the server is still handling messages; asking again"
                    );
                    Some(asked.unwrap_or(config.pending_delay))
                } else {
                    None
                }
            }
            Err(Failed { error, retry_after }) => match next_after(&error, n) {
                next @ (Next::Retry | Next::RetryLongest) => {
                    let delay = if next == Next::Retry {
                        backoff.next_delay()
                    } else {
                        backoff.longest_delay()
                    };
                    // The server's `Retry-After` is a floor (spec §5).
                    let delay = retry_after.map_or(delay, |asked| delay.max(asked));
                    if healthy {
                        tracing::warn!(%error, ?delay, messages = n, "sending failed; retrying");
                    } else {
                        tracing::debug!(%error, ?delay, messages = n, "sending failed again; retrying");
                    }
                    healthy = false;
                    give_up_overdue(&mut queue, n, config.retry_window, |after| {
                        EmitError::Unacknowledged {
                            after,
                            last: error.clone(),
                        }
                    });
                    Some(delay)
                }
                Next::Split => {
                    limit = (n / 2).max(1);
                    // The server's own limit, learned the hard way: kept for later batches.
                    if matches!(&error, ConnectionError::Rejected { code, .. } if code == "too_many_messages")
                    {
                        transport
                            .server_max_messages
                            .fetch_min(limit, std::sync::atomic::Ordering::Relaxed);
                    }
                    tracing::debug!(%error, limit, "the server refused a batch; sending fewer at once");
                    None
                }
                Next::Fail => {
                    tracing::warn!(%error, messages = n, "the server refused messages; failing them");
                    fail(&mut queue, n, &error);
                    None
                }
            },
        };
        if let Some(wait) = wait {
            tokio::select! {
                biased;
                () = stopped(&mut stop) => break,
                () = sleep(wait) => {}
            }
        }
    }
    // Stopping: nothing more will be sent or acknowledged.
    outbox.close();
    while let Ok(message) = outbox.try_recv() {
        queue.push_back(message);
    }
    for message in queue {
        message.resolve(Err(EmitError::Closed));
    }
    tracing::debug!("sending stopped");
}

async fn post(
    transport: &Transport,
    client: &str,
    batch: std::collections::vec_deque::Iter<'_, Outgoing>,
) -> Result<AcksBody, Failed> {
    let config = &transport.config;
    let body = SendBody {
        client,
        messages: batch
            .map(|m| OutMessage {
                id: &m.id,
                ns: m.ns.as_deref(),
                event: m.reply_to.is_none().then_some(m.event.as_str()),
                data: &m.data,
                reply_to: m.reply_to,
            })
            .collect(),
    };
    let request = transport
        .http
        .post(config.url.clone())
        .headers(transport.headers.clone())
        .json(&body)
        .timeout(config.send_timeout);
    exchange(request, config.max_response).await
}

/// Resolves the first `n` messages of `queue` by their acks. Those acknowledged as `pending`,
/// or not acknowledged at all, stay at the front, in order, to be sent again. Returns how many
/// stayed.
fn settle(queue: &mut VecDeque<Outgoing>, n: usize, acks: Vec<WireAck>) -> usize {
    let batch: Vec<Outgoing> = queue.drain(..n).collect();
    let mut acks: Vec<Option<WireAck>> = acks.into_iter().map(Some).collect();
    let mut kept = Vec::new();
    for message in batch {
        // Acks come in request order; looking each up by id also survives a server that
        // reorders or leaves some out.
        let ack = acks
            .iter_mut()
            .find(|a| a.as_ref().is_some_and(|a| a.id == message.id))
            .and_then(Option::take);
        match ack {
            Some(WireAck {
                reply: Some(reply), ..
            }) => message.resolve(Ok(reply)),
            Some(WireAck {
                error: Some(error), ..
            }) => message.resolve(Err(EmitError::Ack {
                code: error.code,
                message: error.message,
            })),
            Some(WireAck { pending: true, .. }) => kept.push(message),
            Some(_) | None => {
                tracing::warn!(id = %message.id, "the server's response has no usable acknowledgement for a message; resending it");
                kept.push(message);
            }
        }
    }
    let stayed = kept.len();
    for message in kept.into_iter().rev() {
        queue.push_front(message);
    }
    stayed
}

/// The client id of the next `POST` and how many of the first `n` messages go in it: the first
/// message's id (once sent, always the same), and the messages after it sent with it. One not
/// sent yet goes out under the `current` id only, never under one a take-over left to another
/// instance (spec §3 step 6).
fn next_batch(queue: &VecDeque<Outgoing>, n: usize, current: Arc<str>) -> (Arc<str>, usize) {
    let client = queue
        .front()
        .and_then(|m| m.sent_as.clone())
        .unwrap_or_else(|| current.clone());
    let n = queue
        .iter()
        .take(n)
        .take_while(|m| *m.sent_as.as_ref().unwrap_or(&current) == client)
        .count();
    (client, n)
}

/// Fails those of the first `n` messages that were first sent longer than `window` ago: past
/// the server's dedup window a resend could be handled twice, so the spec says to stop.
/// `failure` makes each one's error from how long it was tried.
fn give_up_overdue(
    queue: &mut VecDeque<Outgoing>,
    n: usize,
    window: std::time::Duration,
    failure: impl Fn(std::time::Duration) -> EmitError,
) {
    let batch: Vec<Outgoing> = queue.drain(..n).collect();
    let mut kept = Vec::new();
    for message in batch {
        let elapsed = message.first_try.map(|t| t.elapsed()).unwrap_or_default();
        if elapsed >= window {
            tracing::warn!(id = %message.id, ?elapsed, "giving up on a message the server never acknowledged");
            message.resolve(Err(failure(elapsed)));
        } else {
            kept.push(message);
        }
    }
    for message in kept.into_iter().rev() {
        queue.push_front(message);
    }
}

/// Fails the first `n` messages with the server's refusal.
fn fail(queue: &mut VecDeque<Outgoing>, n: usize, error: &ConnectionError) {
    for message in queue.drain(..n) {
        let rejected = match error {
            ConnectionError::Rejected {
                status,
                code,
                message,
            } => EmitError::Rejected {
                status: *status,
                code: code.clone(),
                message: message.clone(),
            },
            other => EmitError::Rejected {
                status: other.status().unwrap_or(0),
                code: "unknown".to_owned(),
                message: other.to_string(),
            },
        };
        message.resolve(Err(rejected));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing(id: &str) -> (Outgoing, oneshot::Receiver<Result<Value, EmitError>>) {
        let (reply, replied) = oneshot::channel();
        let message = Outgoing {
            id: id.to_owned(),
            ns: None,
            event: "e".to_owned(),
            reply_to: None,
            data: serde_json::value::to_raw_value(&1).expect("json"),
            reply,
            first_try: None,
            sent_as: None,
        };
        (message, replied)
    }

    /// After a take-over, the messages sent under the old id go out under it, alone: the ones
    /// not sent yet wait for the next `POST`, under the new id.
    #[test]
    fn messages_not_sent_yet_go_out_under_the_current_id() {
        let (old, _r1) = outgoing("a-1");
        let (fresh, _r2) = outgoing("b-1");
        let mut queue = VecDeque::from([old, fresh]);
        queue[0].sent_as = Some(Arc::from("a"));
        assert_eq!(next_batch(&queue, 2, Arc::from("b")), (Arc::from("a"), 1));
        queue.pop_front();
        assert_eq!(next_batch(&queue, 1, Arc::from("b")), (Arc::from("b"), 1));
        // Without a take-over, both go together.
        let (first, _r3) = outgoing("a-2");
        queue.push_front(first);
        queue[0].sent_as = Some(Arc::from("b"));
        assert_eq!(next_batch(&queue, 2, Arc::from("b")), (Arc::from("b"), 2));
    }

    fn rejected(status: u16) -> ConnectionError {
        ConnectionError::Rejected {
            status,
            code: "c".into(),
            message: "m".into(),
        }
    }

    #[test]
    fn acks_resolve_their_messages_and_pending_ones_stay_in_order() {
        let mut queue = VecDeque::new();
        let mut replies = Vec::new();
        for id in ["c-1", "c-2", "c-3", "c-4", "c-5"] {
            let (m, r) = outgoing(id);
            queue.push_back(m);
            replies.push(r);
        }
        let acks: AcksBody = serde_json::from_str(
            r#"{"acks":[{"id":"c-1","reply":null},{"id":"c-2","pending":true},{"id":"c-3","error":{"code":"x","message":"y"}}]}"#,
        )
        .expect("json");
        // c-4 was in the batch but has no ack; c-5 was not in the batch.
        let stayed = settle(&mut queue, 4, acks.acks);
        assert_eq!(stayed, 2);
        let ids: Vec<_> = queue.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["c-2", "c-4", "c-5"]);
        assert_eq!(
            replies[0].try_recv().expect("resolved").ok(),
            Some(Value::Null)
        );
        assert!(matches!(
            replies[2].try_recv(),
            Ok(Err(EmitError::Ack { code, .. })) if code == "x"
        ));
        assert!(replies[1].try_recv().is_err());
    }

    #[test]
    fn failures_are_retried_split_or_final_as_the_spec_says() {
        assert_eq!(next_after(&rejected(401), 3), Next::RetryLongest);
        assert_eq!(next_after(&rejected(403), 1), Next::RetryLongest);
        assert_eq!(next_after(&rejected(413), 3), Next::Split);
        assert_eq!(next_after(&rejected(413), 1), Next::Fail);
        assert_eq!(next_after(&rejected(400), 2), Next::Split);
        assert_eq!(next_after(&rejected(415), 2), Next::Fail);
        assert_eq!(next_after(&rejected(429), 2), Next::Retry);
        let with_code = |code: &str| ConnectionError::Rejected {
            status: 400,
            code: code.into(),
            message: String::new(),
        };
        assert_eq!(next_after(&with_code("body_unreadable"), 2), Next::Retry);
        assert_eq!(next_after(&with_code("duplicate_id"), 2), Next::Fail);
        assert_eq!(next_after(&with_code("data_too_deep"), 2), Next::Split);
        let unavailable = ConnectionError::Server {
            status: 503,
            code: "storage_unavailable".into(),
            message: String::new(),
        };
        assert_eq!(next_after(&unavailable, 5), Next::Retry);
    }

    #[tokio::test(start_paused = true)]
    async fn messages_past_the_retry_window_fail_and_the_rest_stay() {
        let window = std::time::Duration::from_secs(60);
        let (old, mut old_reply) = outgoing("c-1");
        let (new, mut new_reply) = outgoing("c-2");
        let mut queue = VecDeque::from([old]);
        queue[0].first_try = Some(Instant::now());
        tokio::time::advance(window).await;
        queue.push_back(new);
        queue[1].first_try = Some(Instant::now());
        give_up_overdue(&mut queue, 2, window, |after| EmitError::Unacknowledged {
            after,
            last: rejected(401),
        });
        assert_eq!(queue.len(), 1);
        assert!(matches!(
            old_reply.try_recv(),
            Ok(Err(EmitError::Unacknowledged { .. }))
        ));
        assert!(new_reply.try_recv().is_err());
    }
}
