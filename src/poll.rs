//! The receiving `GET`: confirm the client's cursor, then answer with what is new, waiting for it
//! up to the hold time.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use tokio::time::{Instant, sleep, sleep_until};

use std::sync::Arc;

use http::request::Parts;

use crate::hub::UserSignal;
use crate::id::{ClientId, UserId};
use crate::namespace::authorize_all;
use crate::presence;
use crate::protocol::{PollQuery, PollResponse, ProtocolError, WireVolatile, json_response};
use crate::shared::Shared;
use crate::storage::{FetchBatch, FetchRequest};

/// Counts this poll as waiting for as long as it lives, however it ends (answered, or dropped
/// because the client went away).
struct Waiting<'a>(&'a Shared);

impl<'a> Waiting<'a> {
    fn enter(shared: &'a Shared) -> Self {
        shared.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(shared)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) async fn respond(
    shared: &Shared,
    user: UserId,
    parts: &Parts,
) -> Result<Response<Full<Bytes>>, ProtocolError> {
    let poll = PollQuery::parse(parts.uri.query())?;
    authorize_all(shared, parts, &user, &poll.namespaces).await?;
    let client = poll.client;
    let namespaces = poll.namespaces;
    let config = &shared.config;
    let deadline = Instant::now() + config.hold;

    // Watch before the first read, so a message appended in between still wakes us.
    let mut watch = shared.hub.watch(&user);
    let _waiting = Waiting::enter(shared);
    // Announced with the first read, so that an older poll of this client, on any node, ends.
    let poll_id = fastrand::u64(..);
    let mut announce = Some(poll_id);

    // A client without a cursor is new (or lost its state): answer at once, so it learns its
    // epoch and cursor — and that it is connected — without waiting out a hold.
    let handshake = poll.cursor.is_none();
    let mut announcements = Announcements {
        own: poll_id,
        seen_own: false,
    };
    let mut cursor = poll.cursor;
    let mut volatile: Vec<WireVolatile> = Vec::new();
    loop {
        let batch = shared
            .storage
            .fetch(FetchRequest {
                user: user.clone(),
                client: client.clone(),
                cursor: cursor.clone(),
                namespaces: namespaces.clone(),
                limit: config.batch_limit,
                presence_ttl: config.presence_ttl,
                announce: announce.take(),
            })
            .await?;
        if let Some(arrival) = batch.arrival {
            presence::arrived(shared, &user, &client, arrival);
        }
        // Signals that came during the read. Volatile messages go out with it. An append may
        // have landed after the read (a networked store's answer takes a while to come back),
        // so it means read again, not wait: its wakeup is used up. A newer poll of this client
        // ends this one, as it would while waiting.
        let mut read_again = false;
        let mut taken_over = false;
        while let Some(signal) = watch.try_recv() {
            match signal {
                UserSignal::Appended | UserSignal::Resync => read_again = true,
                UserSignal::PollStarted { client: c, poll } if c == client => {
                    taken_over |= announcements.taken_over_by(poll);
                }
                other => take_volatile(other, &client, &namespaces, &mut volatile),
            }
        }
        if handshake || !batch.messages.is_empty() || !volatile.is_empty() || taken_over {
            if taken_over {
                tracing::debug!(%user, %client, "a newer poll of this client took over");
            }
            return Ok(answer(batch, &volatile));
        }
        // From here on the cursor the client holds is the batch's (the epoch may have changed).
        cursor = Some((batch.epoch.clone(), batch.cursor));
        if read_again {
            continue;
        }

        let recheck = sleep(config.recheck);
        tokio::pin!(recheck);
        loop {
            tokio::select! {
                signal = watch.recv() => match signal {
                    UserSignal::Appended | UserSignal::Resync => break,
                    UserSignal::PollStarted { client: c, poll } if c == client => {
                        if announcements.taken_over_by(poll) {
                            tracing::debug!(%user, %client, "a newer poll of this client took over");
                            return Ok(answer(batch, &volatile));
                        }
                    }
                    other => {
                        take_volatile(other, &client, &namespaces, &mut volatile);
                        if !volatile.is_empty() {
                            return Ok(answer(batch, &volatile));
                        }
                    }
                },
                () = sleep_until(deadline) => return Ok(answer(batch, &volatile)),
                // A safety net for a lost wakeup; never the way messages normally arrive.
                () = &mut recheck => break,
            }
        }
    }
}

/// Tells a newer poll of this client from an older one. Every node receives the storage's
/// signals in the order they were published, and a client starts a poll only after its previous
/// one answered, so the announcements that reach us before our own are of older polls (say, the
/// previous poll's, slower over the network than its answer); those after it, of newer ones. If
/// our own is lost (a lagging subscription), no other can end this poll: it lasts its hold.
struct Announcements {
    own: u64,
    seen_own: bool,
}

impl Announcements {
    /// Whether the announcement of poll `poll`, of this client, means a newer poll took over.
    fn taken_over_by(&mut self, poll: u64) -> bool {
        if poll == self.own {
            self.seen_own = true;
            false
        } else {
            self.seen_own
        }
    }
}

fn take_volatile(
    signal: UserSignal,
    client: &ClientId,
    namespaces: &[Arc<str>],
    into: &mut Vec<WireVolatile>,
) {
    if let UserSignal::Volatile {
        client: to,
        message,
    } = signal
        && to.as_ref().is_none_or(|to| to == client)
        && namespaces.contains(&message.ns)
    {
        into.push(message);
    }
}

fn answer(batch: FetchBatch, volatile: &[WireVolatile]) -> Response<Full<Bytes>> {
    json_response(&PollResponse {
        epoch: &batch.epoch,
        cursor: batch.cursor,
        messages: &batch.messages,
        volatile,
    })
}
