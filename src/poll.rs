//! The receiving `GET`: confirm the client's cursor, then answer with what is new, waiting for it
//! up to the hold time.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use tokio::time::{Instant, sleep_until};

use http::request::Parts;

use crate::hub::PollInfo;
use crate::id::UserId;
use crate::namespace::authorize_all;
use crate::presence;
use crate::protocol::{
    Limits, Poll, PollQuery, PollResponse, ProtocolError, WireVolatile, json_body_response,
};
use crate::shared::Shared;
use crate::storage::{FetchBatch, FetchRequest};

/// Counts this poll as waiting for as long as it lives, however it ends (answered, or dropped
/// because the client went away).
struct Waiting<'a>(&'a Shared);

impl<'a> Waiting<'a> {
    fn enter(shared: &'a Shared) -> Self {
        shared.waiting.fetch_add(1, Ordering::Relaxed);
        shared.observe.poll_waiting(true);
        Waiting(shared)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
        self.0.observe.poll_waiting(false);
    }
}

/// Makes a `GET` answer after its first read, without holding, as a handshake does: for the
/// in-process test client ([`crate::testing`]), whose confirming polls must not wait out a hold.
/// Only code in the process can put it in a request's extensions; nothing from the network can.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AnswerAtOnce;

pub(crate) async fn respond(
    shared: &Shared,
    user: UserId,
    parts: Box<Parts>,
) -> Result<Response<Full<Bytes>>, ProtocolError> {
    // Bound once: a second binding of the same value would take a second slot in the future,
    // which every waiting poll holds.
    let Poll {
        client,
        mut cursor,
        namespaces,
    } = PollQuery::parse_with(parts.uri.query(), shared.config.max_namespaces, |ns| {
        shared
            .namespaces
            .get_key_value(ns)
            .map(|(name, _)| name.clone())
    })?;
    crate::observe::span::client(&client, &namespaces);
    authorize_all(shared, &parts, &user, &namespaces).await?;
    let at_once = parts.extensions.get::<AnswerAtOnce>().is_some();
    // The headers (cookies and all) are not needed while the poll waits, which may be long.
    drop(parts);
    let config = &shared.config;
    let deadline = Instant::now() + config.hold;

    // Announced with the first read, so that an older poll of this client, on any node, ends.
    let poll_id = fastrand::u64(..);
    // Bounded per node and per user: each waiting poll holds a connection and memory.
    if shared.waiting.load(Ordering::Relaxed) >= config.max_polls {
        return Err(ProtocolError::ServerBusy(config.max_polls));
    }
    // Watch before the first read, so a message appended in between still wakes us.
    let watch = shared
        .hub
        .watch_bounded(
            &user,
            Some(PollInfo {
                client: client.clone(),
                poll: poll_id,
                namespaces: namespaces.clone(),
            }),
            config.max_polls_per_user,
        )
        .ok_or(ProtocolError::TooManyPolls(config.max_polls_per_user))?;
    let _waiting = Waiting::enter(shared);
    let mut announce = Some(poll_id);

    // A client without a cursor is new (or lost its state): answer at once, so it learns its
    // epoch and cursor — and that it is connected — without waiting out a hold.
    let handshake = cursor.is_none();
    let mut sent_epoch = cursor.as_ref().map(|(epoch, _)| epoch.clone());
    let mut volatile: Vec<WireVolatile> = Vec::new();
    let mut next_recheck = Instant::now() + config.recheck;
    loop {
        let batch = shared
            .observed
            .fetch_inline(FetchRequest {
                user: user.clone(),
                client: client.clone(),
                cursor: cursor.clone(),
                namespaces: namespaces.clone(),
                limit: config.batch_limit,
                presence_ttl: config.presence_ttl,
                announce: announce.take(),
                max_clients: config.max_clients_per_user,
            })
            .await?;
        let batch = fit_bytes(batch, config.max_batch_bytes);
        if let Some(arrival) = batch.arrival {
            presence::arrived(shared, &user, &client, arrival);
        }
        // What came during the read. Volatile messages go out with it. An append may have
        // landed after the read (a networked store's answer takes a while to come back), so it
        // means read again, not wait. A newer poll of this client ends this one, as it would
        // while waiting.
        // Only its flags are kept: the inbox itself would otherwise be held through the wait.
        let (taken_over, read_again) = {
            let mut inbox = watch.take();
            volatile.append(&mut inbox.volatile);
            (inbox.taken_over, inbox.read_again)
        };
        // A cursor of another epoch: the storage lost its data, which the client learns now,
        // not after a hold.
        let new_epoch = sent_epoch.take().is_some_and(|e| e != batch.epoch);
        if handshake
            || at_once
            || new_epoch
            || !batch.messages.is_empty()
            || !volatile.is_empty()
            || taken_over
        {
            if taken_over {
                tracing::debug!(?user, %client, "a newer poll of this client took over");
            }
            let limits = handshake.then_some(&shared.limits);
            return Ok(answer(
                batch,
                &volatile,
                config.max_batch_bytes,
                limits,
                taken_over,
            ));
        }
        // From here on the cursor the client holds is the batch's (the epoch may have changed).
        cursor = Some((batch.epoch.clone(), batch.cursor));
        if read_again {
            continue;
        }

        // One timer: the hold's end, or before it the recheck, a safety net for a lost wakeup
        // (never the way messages normally arrive).
        loop {
            let recheck = next_recheck < deadline;
            tokio::select! {
                () = watch.changed() => {
                    let mut inbox = watch.take();
                    volatile.append(&mut inbox.volatile);
                    if inbox.taken_over {
                        tracing::debug!(?user, %client, "a newer poll of this client took over");
                        return Ok(answer(batch, &volatile, config.max_batch_bytes, None, true));
                    }
                    if !volatile.is_empty() {
                        return Ok(answer(batch, &volatile, config.max_batch_bytes, None, false));
                    }
                    if inbox.read_again {
                        break;
                    }
                }
                () = sleep_until(next_recheck.min(deadline)) => {
                    if !recheck {
                        return Ok(answer(batch, &volatile, config.max_batch_bytes, None, false));
                    }
                    next_recheck = Instant::now() + config.recheck;
                    break;
                }
            }
        }
    }
}

/// Keeps the batch's first messages up to `max` bytes of payload (at least one, however large),
/// and moves its cursor back to the last one kept: the rest come on the next poll. So a backlog
/// of large messages reaches a client in responses it can take.
fn fit_bytes(mut batch: FetchBatch, max: usize) -> FetchBatch {
    let mut total = 0usize;
    let over = batch.messages.iter().position(|m| {
        total = total.saturating_add(m.data.get().len() + m.event.len());
        total > max
    });
    if let Some(first_over) = over {
        let keep = first_over.max(1);
        if keep < batch.messages.len() {
            batch.messages.truncate(keep);
            batch.cursor = batch.messages[keep - 1].pos;
        }
    }
    batch
}

/// The volatile messages that fit beside the batch's stored ones within `max` bytes (at least
/// one when there is no stored message): volatile messages are at most once, and a response must
/// stay one every client can take. The rest are dropped, as for a client between two polls.
fn fit_volatile<'a>(
    batch: &FetchBatch,
    volatile: &'a [WireVolatile],
    max: usize,
) -> &'a [WireVolatile] {
    let mut total: usize = batch
        .messages
        .iter()
        .map(|m| m.data.get().len() + m.event.len())
        .sum();
    let fits = volatile
        .iter()
        .position(|m| {
            total = total.saturating_add(m.data.get().len() + m.event.len());
            total > max
        })
        .unwrap_or(volatile.len());
    let keep = if batch.messages.is_empty() {
        fits.max(1).min(volatile.len())
    } else {
        fits
    };
    if keep < volatile.len() {
        tracing::debug!(
            dropped = volatile.len() - keep,
            "volatile messages over the response's byte limit were dropped"
        );
    }
    &volatile[..keep]
}

fn answer(
    batch: FetchBatch,
    volatile: &[WireVolatile],
    max_bytes: usize,
    limits: Option<&Limits>,
    taken_over: bool,
) -> Response<Full<Bytes>> {
    let volatile = fit_volatile(&batch, volatile, max_bytes);
    crate::observe::span::poll_outcome(
        limits.is_some(),
        taken_over,
        batch.messages.len() + volatile.len(),
    );
    // The envelope and each message's fields, beside the payloads themselves.
    let size = 96
        + batch
            .messages
            .iter()
            .map(|m| 48 + m.ns.len() + m.event.len() + m.data.get().len())
            .sum::<usize>()
        + volatile
            .iter()
            .map(|m| 40 + m.ns.len() + m.event.len() + m.data.get().len())
            .sum::<usize>();
    let response = PollResponse {
        epoch: &batch.epoch,
        cursor: batch.cursor,
        messages: &batch.messages,
        volatile,
        limits,
        taken_over,
    };
    json_body_response(response.to_json(size + if limits.is_some() { 256 } else { 0 }))
}
