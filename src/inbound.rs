//! The sending `POST`: read and check the body, then hand each message to the handler exactly
//! once, however often the client retries.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{Extensions, Response, header};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::error::Category;
use tokio::time::{Instant, sleep, timeout_at};
use tower::{BoxError, Service, ServiceExt};

use crate::delivery::SendError;
use crate::handler::{HandlerError, Incoming, null};
use crate::id::{ClientId, UserId};
use crate::io::SimpleIo;
use crate::namespace::authorize;
use crate::origin::Origins;
use crate::protocol::check_namespace;
use crate::protocol::{
    Ack, AckOutcome, ClientMessage, ErrorBody, ProtocolError, SendRequest, SendResponse,
    json_response,
};
use crate::shared::Shared;
use crate::storage::{Claim, DEFAULT_NAMESPACE, DedupKey, DedupLimits, Storage, StorageError};

pub(crate) async fn respond<B>(
    shared: &Shared,
    io: SimpleIo,
    user: UserId,
    parts: &Parts,
    body: B,
) -> Result<Response<Full<Bytes>>, ProtocolError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let config = &shared.config;
    if !is_json(parts) {
        return Err(ProtocolError::UnsupportedMediaType);
    }
    // Refused before reading when the client says it is too large: nothing is read, and a
    // client that sent `Expect: 100-continue` is not told to go on.
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > config.max_body as u64) {
        return Err(ProtocolError::BodyTooLarge(config.max_body));
    }
    // A body must arrive in time: a slow or never-ending one would hold its connection (and
    // a file descriptor) for as long as the client likes.
    let body = tokio::time::timeout(config.body_timeout, read_body(body, config.max_body))
        .await
        .map_err(|_| ProtocolError::BodyTimeout(config.body_timeout.as_millis()))??;
    let request = parse(body)?;
    if request.messages.is_empty() {
        return Err(ProtocolError::InvalidField(
            "`messages` must hold at least one message".to_owned(),
        ));
    }
    if request.messages.len() > config.max_messages {
        return Err(ProtocolError::TooManyMessages {
            limit: config.max_messages,
            got: request.messages.len(),
        });
    }
    // Two messages with one id would be one message to the dedup records: the second's data
    // would be silently dropped. A client that does this has a bug; say so.
    if request.messages.len() > 1 {
        let mut ids = crate::hash::HashSet::default();
        for m in &request.messages {
            if !ids.insert(m.id.as_str()) {
                return Err(ProtocolError::DuplicateId(m.id.to_string()));
            }
        }
    }
    let mut namespaces: Vec<Arc<str>> = Vec::new();
    for m in &request.messages {
        let event = match (&m.event, m.reply_to) {
            (Some(_), Some(_)) => {
                return Err(ProtocolError::InvalidField(format!(
                    "a reply has `reply_to` and no `event` (message {:?})",
                    m.id.as_str()
                )));
            }
            (None, None) => {
                return Err(ProtocolError::InvalidField(format!(
                    "a message needs an `event`, or a `reply_to` if it is a reply (message {:?})",
                    m.id.as_str()
                )));
            }
            (Some(event), None) => Some(event),
            (None, Some(pos)) => {
                if pos == 0 || pos > crate::protocol::MAX_POSITION {
                    return Err(ProtocolError::InvalidField(format!(
                        "`reply_to` must be a position, 1 to 2^53 - 1 (message {:?})",
                        m.id.as_str()
                    )));
                }
                None
            }
        };
        if event.is_some_and(|e| e.is_empty() || e.len() > config.max_event_len) {
            return Err(ProtocolError::InvalidField(format!(
                "`event` must be 1 to {} bytes (message {:?})",
                config.max_event_len,
                m.id.as_str()
            )));
        }
        if let Some(data) = &m.data {
            let size = data.get().len();
            if size > config.max_message_bytes {
                return Err(ProtocolError::MessageTooLarge {
                    id: m.id.to_string(),
                    size,
                    limit: config.max_message_bytes,
                });
            }
            if crate::json::depth_exceeds(data.get().as_bytes(), config.max_data_depth) {
                return Err(ProtocolError::DataTooDeep {
                    id: m.id.to_string(),
                    limit: config.max_data_depth,
                });
            }
        }
        let ns = m.ns.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        check_namespace(ns).map_err(ProtocolError::InvalidField)?;
        // A reply names its message by position alone: no namespace of its own to authorize.
        if m.reply_to.is_none() && !namespaces.iter().any(|n| &**n == ns) {
            namespaces.push(ns.into());
        }
    }
    // Every namespace is checked before any message is handled. One the user may not use
    // refuses its own messages, each with an error acknowledgement, and nothing else: the
    // others of the batch go on. Refusals are not recorded, so a retry after the user gained
    // the right is handled.
    let mut refused: Vec<(Arc<str>, ErrorBody)> = Vec::new();
    for ns in &namespaces {
        if let Err(rejection) = authorize(shared, parts, &user, ns).await? {
            let error = rejection.ack_error();
            refused.push((ns.clone(), error_body(&error.code, &error.message)));
        }
    }

    let mut acks = Vec::with_capacity(request.messages.len());
    // One after another: the handler sees a client's messages in the order it sent them. So a
    // batch stops at a message still in progress elsewhere: the ones after it are not handled
    // before it, and answer `pending` too, to be sent again after it.
    let mut blocked: Option<Duration> = None;
    for message in request.messages {
        let id = message.id.clone();
        let ns = message.ns.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        let refusal = match message.reply_to {
            Some(_) => None,
            None => refused.iter().find(|(n, _)| &**n == ns),
        };
        let handled = match refusal {
            Some((_, error)) => Handled::Done(AckOutcome::Error(error.clone())),
            None => match blocked {
                Some(wait) => Handled::Pending(wait),
                None => {
                    handle_once(
                        shared,
                        &io,
                        &user,
                        &parts.extensions,
                        &request.client,
                        message,
                    )
                    .await?
                }
            },
        };
        acks.push(match handled {
            Handled::Done(outcome) => Ack {
                id,
                outcome,
                retry_after_ms: None,
            },
            Handled::Pending(wait) => {
                blocked = Some(wait);
                Ack {
                    id,
                    outcome: AckOutcome::Pending(true),
                    retry_after_ms: Some(wait.as_millis() as u64),
                }
            }
        });
    }
    // After the messages: if the storage lost its data meanwhile, the client learns it here.
    let epoch = shared.storage.epoch().await?;
    Ok(json_response(&SendResponse { epoch, acks }))
}

/// `application/json`, with or without parameters. Requiring it makes a cross-site form or a
/// "simple" `fetch` unable to post as a signed-in user: browsers preflight this content type.
fn is_json(parts: &Parts) -> bool {
    parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, ProtocolError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ProtocolError::BodyTooLarge(limit))
        }
        // A body limit outside the layer (tower-http's `RequestBodyLimitLayer`, say) ends a body
        // sent without a `Content-Length` the same way, under whatever wraps the body between
        // it and here (axum's `Body` does): still too large, not unreadable.
        Err(e) if limited_outside(&*e) => Err(ProtocolError::BodyLimitedOutside),
        Err(e) => Err(ProtocolError::BodyRead(e.to_string())),
    }
}

/// Whether a length limit anywhere in the error's chain ended the body.
fn limited_outside(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

fn parse(body: Bytes) -> Result<SendRequest, ProtocolError> {
    serde_json::from_slice(&body).map_err(|e| match e.classify() {
        Category::Data => ProtocolError::InvalidField(format!(
            "the request body is not a valid message batch: {e}"
        )),
        Category::Io | Category::Syntax | Category::Eof => {
            ProtocolError::MalformedJson(e.to_string())
        }
    })
}

/// Handles `message` unless its id was handled already, and returns its outcome.
async fn handle_once(
    shared: &Shared,
    io: &SimpleIo,
    user: &UserId,
    extensions: &Extensions,
    client: &ClientId,
    message: ClientMessage,
) -> Result<Handled, ProtocolError> {
    let config = &shared.config;
    let key = DedupKey {
        user: user.clone(),
        client: client.clone(),
        id: message.id.clone(),
    };
    let limits = DedupLimits {
        lease: config.handler_lease,
        per_client: config.max_dedup_per_client,
        per_user: config.max_dedup_per_user,
    };
    // This request's claim: asked again with the same owner, a claim that ran but whose answer
    // was lost is resumed, not left in progress until its lease ends.
    let owner = fastrand::u64(..);
    let give_up = Instant::now() + config.pending_wait;
    // Watched only once a claim finds the id in progress (rare: a retry raced the original);
    // the claim right after the watch starts catches a completion in between.
    let mut watch = None;
    loop {
        let claim = match shared.storage.claim(&key, owner, limits).await {
            Ok(claim) => claim,
            Err(StorageError::Unavailable(e)) if Instant::now() + CLAIM_RETRY < give_up => {
                tracing::warn!(error = %e, "a claim failed; asking again, as the same owner");
                sleep(CLAIM_RETRY).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        shared.observe.claimed(&claim, watch.is_none());
        match claim {
            Claim::Acquired => break,
            Claim::Done(stored) => return Ok(Handled::Done(decode_stored(&stored))),
            Claim::InProgress { retry_after } => match &watch {
                // Bounded as polls are, per user and node (with them): each resend of an id in
                // progress would otherwise hold a mailbox for the pending wait. Past it, the
                // resend is told to ask again.
                None => match shared
                    .hub
                    .watch_bounded(user, None, config.max_polls_per_user)
                {
                    Some(watching) => watch = Some(watching),
                    None => {
                        let asked = retry_after.min(Duration::from_secs(1));
                        return Ok(Handled::Pending(asked.max(MIN_RETRY_AFTER)));
                    }
                },
                // Another request is handling this id now. Wait for it to complete, or for its
                // lease to end (its request died: this one takes over), within the pending
                // wait; then tell the client when to ask again.
                Some(watch) => {
                    let lease_ends = Instant::now() + retry_after;
                    let completed = async {
                        loop {
                            let inbox = watch.take();
                            // A resync may have lost the completion: look again then too.
                            if inbox.completed || inbox.read_again {
                                break;
                            }
                            watch.changed().await;
                        }
                    };
                    if timeout_at(lease_ends.min(give_up), completed)
                        .await
                        .is_err()
                        && lease_ends >= give_up
                    {
                        let left = lease_ends.saturating_duration_since(Instant::now());
                        return Ok(Handled::Pending(left.max(MIN_RETRY_AFTER)));
                    }
                }
            },
        }
    }
    drop(watch);

    // The call and the record of its outcome run in a task of their own. If the client goes
    // away mid-call, hyper drops this request's future; the call must still run to its end and
    // be recorded, or its retry would be told `pending` until the lease ends and then run the
    // handler a second time, after a first call that may have done its work.
    let recorded_key = key.clone();
    let task = tokio::spawn({
        let io = io.clone();
        let (user, client) = (user.clone(), client.clone());
        let extensions = extensions.clone();
        async move {
            let shared = &io.shared;
            let work = async {
                let outcome = match message.reply_to {
                    Some(pos) => crate::reply::record(shared, &user, &client, pos, message).await,
                    None => call_handler(shared, &io, &user, extensions, &client, message).await,
                };
                let Some(outcome) = outcome else {
                    // Not known whether the handler's work was done: the message is forgotten,
                    // so that the client's retry is handled again rather than told a final error.
                    complete(shared, &key, "null", Duration::ZERO).await?;
                    return Ok(Handled::Pending(MIN_RETRY_AFTER));
                };
                let stored = serde_json::to_string(&outcome).unwrap_or_else(|_| "null".to_owned());
                complete(shared, &key, &stored, shared.config.dedup_window).await?;
                Ok::<_, StorageError>(Handled::Done(outcome))
            };
            // The lease is kept while the handler runs and its outcome is recorded, however
            // long: it only has to outlast the time a request that died blocks its retries.
            // Renewed beside the work, in the same task, so a quick handler costs no more than
            // a timer, and a panic stops both.
            let renewing = renew(&*shared.storage, &key, owner, shared.config.handler_lease);
            tokio::select! {
                biased;
                result = work => result,
                never = renewing => match never {},
            }
        }
    });
    match task.await {
        Ok(result) => Ok(result?),
        Err(e) => {
            // The handler panicked: a final error, recorded like any other, so that a resend
            // gets it again rather than a second run.
            tracing::error!(?user, %client, error = %e, "the handler panicked");
            let outcome = AckOutcome::Error(ErrorBody {
                code: "handler_error".to_owned(),
                message: "the server failed to handle this message".to_owned(),
            });
            let stored = serde_json::to_string(&outcome).unwrap_or_else(|_| "null".to_owned());
            complete(shared, &recorded_key, &stored, config.dedup_window).await?;
            Ok(Handled::Done(outcome))
        }
    }
}

/// How a message of a `POST` ended in this request.
#[derive(Debug)]
enum Handled {
    /// Handled (now or before): its acknowledgement.
    Done(AckOutcome),
    /// Not handled yet: the client sends it again after this long.
    Pending(Duration),
}

/// How soon a claim that failed on the storage is asked again, within the pending wait.
const CLAIM_RETRY: Duration = Duration::from_millis(200);

/// The least delay a `pending` acknowledgement asks for.
const MIN_RETRY_AFTER: Duration = Duration::from_millis(100);

/// Renews a claim's lease every third of it, for as long as it is polled: it never ends.
async fn renew(
    storage: &dyn Storage,
    key: &DedupKey,
    owner: u64,
    lease: Duration,
) -> std::convert::Infallible {
    let every = (lease / 3).max(Duration::from_millis(10));
    loop {
        sleep(every).await;
        match storage.renew(key, owner, lease).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(user = ?key.user, client = %key.client, id = %key.id,
                    "a handler outlived its claim (its lease lapsed while the storage was out of reach); a retry may handle the message again");
                // Nothing left to renew: wait for the work to end.
                std::future::pending::<()>().await;
            }
            Err(e) => tracing::warn!(error = %e, "could not renew a claim; will retry"),
        }
    }
}

/// Calls the handler, and gives its outcome; `None` when the handler failed on the storage, so
/// that whether its work was done is not known.
async fn call_handler(
    shared: &Shared,
    io: &SimpleIo,
    user: &UserId,
    extensions: Extensions,
    client: &ClientId,
    message: ClientMessage,
) -> Option<AckOutcome> {
    let namespace: Arc<str> = message.ns.as_deref().unwrap_or(DEFAULT_NAMESPACE).into();
    let Some(entry) = shared.namespaces.get(&namespace) else {
        // Checked before any message was handled; kept as an answer rather than a panic.
        return Some(AckOutcome::Error(ErrorBody {
            code: "unknown_namespace".to_owned(),
            message: format!("no namespace {namespace:?} on this server"),
        }));
    };
    let mut handler = entry.handler.clone();
    let origins = Origins::new(user, client, &message.id);
    let incoming = Incoming {
        user: user.clone(),
        client: client.clone(),
        id: message.id,
        event: message.event.unwrap_or_default(),
        data: message.data.unwrap_or_else(null),
        extensions,
        // The handler's sends are on behalf of this user: they fill only the user's share of
        // each recipient's queue.
        io: io
            .of(namespace.clone())
            .on_behalf_of(user.clone())
            .for_handler(origins),
        namespace,
    };
    let event = incoming.event.clone();
    let started = Instant::now();
    let result = match handler.ready().await {
        Ok(ready) => ready.call(incoming).await,
        Err(e) => Err(e),
    };
    let failed = result
        .as_ref()
        .err()
        .map(|e| (e.is::<HandlerError>(), failed_on_storage(&**e)));
    shared.observe.handled(&event, started.elapsed(), failed);
    Some(match result {
        Ok(reply) => {
            let reply = reply.into_raw();
            let max = shared.config.max_reply_bytes;
            let depth = shared.config.max_data_depth;
            if crate::json::depth_exceeds(reply.get().as_bytes(), depth) {
                tracing::warn!(?user, %client, ?event, depth,
                    "a handler reply nests deeper than max_data_depth; answering an error");
                AckOutcome::Error(ErrorBody {
                    code: "reply_too_deep".to_owned(),
                    message: format!("the server's reply nests deeper than {depth} levels"),
                })
            } else if reply.get().len() > max {
                tracing::warn!(?user, %client, ?event, size = reply.get().len(), max,
                    "a handler reply is larger than max_reply_bytes; answering an error");
                AckOutcome::Error(ErrorBody {
                    code: "reply_too_large".to_owned(),
                    message: format!("the server's reply is larger than its limit of {max} bytes"),
                })
            } else {
                AckOutcome::Reply(reply)
            }
        }
        Err(e) if failed_on_storage(&*e) => {
            tracing::warn!(?user, %client, ?event, error = %e,
                "the handler failed on the storage; the client will send the message again");
            return None;
        }
        Err(e) => {
            if let Some(chosen) = e.downcast_ref::<HandlerError>() {
                tracing::debug!(?user, %client, ?event, error = %chosen, "the handler refused a message");
                AckOutcome::Error(error_body(&chosen.code, &chosen.message))
            } else {
                tracing::error!(?user, %client, ?event, error = %e, "the handler failed");
                AckOutcome::Error(ErrorBody {
                    code: "handler_error".to_owned(),
                    message: "the server failed to handle this message".to_owned(),
                })
            }
        }
    })
}

/// Whether a handler's error is a storage failure, whose effect is unknown: a send that timed
/// out may have been stored all the same. Such an outcome is not final.
fn failed_on_storage(e: &(dyn std::error::Error + 'static)) -> bool {
    match e.downcast_ref::<SendError>() {
        Some(SendError::Storage(StorageError::Limit(_))) => false,
        Some(SendError::Storage(_)) => true,
        Some(_) => false,
        None => {
            matches!(
                e.downcast_ref::<StorageError>(),
                Some(StorageError::Unavailable(_) | StorageError::Corrupt(_))
            ) || matches!(
                e.downcast_ref::<crate::DataError>(),
                Some(crate::DataError::Storage(_))
            )
        }
    }
}

/// Records the outcome. The handler already ran, so this is worth retrying for as long as the
/// claim's lease leaves room (half of it): while the record stays in progress, a retried POST is
/// told `pending`; once the lease is over, a retry runs the handler a second time. A storage
/// outage shorter than that costs a delay, not a duplicate.
async fn complete(
    shared: &Shared,
    key: &DedupKey,
    stored: &str,
    keep: Duration,
) -> Result<(), StorageError> {
    let give_up = Instant::now() + shared.config.handler_lease / 2;
    let mut delay = Duration::from_millis(50);
    for attempt in 1.. {
        match shared.storage.complete(key, stored, keep).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() + delay < give_up => {
                tracing::warn!(error = %e, attempt, "could not record a handled message; retrying");
                sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                tracing::error!(error = %e, user = ?key.user, client = %key.client, id = %key.id,
                    "could not record a handled message; a retry after the lease may handle it again");
                return Err(e);
            }
        }
    }
    unreachable!("the loop returns")
}

fn decode_stored(stored: &str) -> AckOutcome {
    serde_json::from_str(stored).unwrap_or_else(|e| {
        tracing::error!(error = %e, "a stored acknowledgement could not be read");
        AckOutcome::Error(ErrorBody {
            code: "storage_corrupt".to_owned(),
            message: "the outcome of this message was recorded but cannot be read".to_owned(),
        })
    })
}

/// The longest error code an ack carries, in bytes: codes are for programs, and short.
const MAX_ERROR_CODE: usize = 64;

/// The longest error message an ack carries, in bytes. A handler's message may quote what the
/// client sent (`invalid_data` quotes the value that did not fit), and the ack is kept for the
/// dedup window: unbounded, a client could make the server keep any amount of its own text.
const MAX_ERROR_MESSAGE: usize = 1024;

/// An ack's error from the application's code and message (a handler's error, a namespace's
/// rejection), within the spec's bounds (§6).
fn error_body(code: &str, message: &str) -> ErrorBody {
    ErrorBody {
        code: cut(code, MAX_ERROR_CODE),
        message: cut(message, MAX_ERROR_MESSAGE),
    }
}

/// `text`, cut to at most `max` bytes on a character boundary, ending in `…` if it was cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let ellipsis = '…';
    let mut end = max - ellipsis.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut cut = text[..end].to_owned();
    cut.push(ellipsis);
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts_are_cut_on_a_character_boundary() {
        assert_eq!(cut("short", 64), "short");
        let long = "é".repeat(100);
        let out = cut(&long, 64);
        assert!(out.len() <= 64, "{}", out.len());
        assert!(out.ends_with('…'));
        assert!(out.starts_with("éé"));
        assert_eq!(
            cut(&"a".repeat(2000), MAX_ERROR_MESSAGE).len(),
            MAX_ERROR_MESSAGE
        );
    }

    #[test]
    fn syntax_errors_and_shape_errors_are_told_apart() {
        assert!(matches!(
            parse(Bytes::from_static(b"{\"client\":")),
            Err(ProtocolError::MalformedJson(_))
        ));
        assert!(matches!(
            parse(Bytes::from_static(b"{\"client\":\"c\",\"messages\":3}")),
            Err(ProtocolError::InvalidField(_))
        ));
        assert!(matches!(
            parse(Bytes::from_static(
                b"{\"client\":\"bad id\",\"messages\":[]}"
            )),
            Err(ProtocolError::InvalidField(_))
        ));
    }

    #[test]
    fn stored_outcomes_round_trip() {
        let outcome = AckOutcome::Reply(serde_json::value::to_raw_value(&[1, 2]).expect("json"));
        let stored = serde_json::to_string(&outcome).expect("json");
        assert!(matches!(decode_stored(&stored), AckOutcome::Reply(r) if r.get() == "[1,2]"));
    }
}
