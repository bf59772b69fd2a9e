//! What a node tells its operator: metrics through the `metrics` facade (feature `metrics`),
//! tracing spans, and the node's own tallies that the admin page shows (feature `admin`).
//!
//! Each instrumentation point elsewhere is one call to a method of [`Observe`], so the code
//! that serves requests stays about serving them. Handles are registered once, when the layer
//! is built, so that counting on the hot path is an atomic add, not a registry look-up.

mod events;
pub(crate) mod handles;
pub(crate) mod names;
pub(crate) mod span;
mod storage;
mod tally;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use handles::{Counter, Gauge, Histogram, counter, gauge, histogram};
pub(crate) use storage::Observed;
#[cfg(feature = "admin")]
pub(crate) use tally::TimingReading;
pub(crate) use tally::{Expiration, Tally};

use crate::config::Config;
use crate::protocol::ProtocolError;
use crate::storage::{Claim, Signal, StorageError};
use events::EventMetrics;
use names::*;

/// Every metric handle of one layer, and its tallies.
#[derive(Debug)]
pub(crate) struct Observe {
    polls_waiting: Gauge,
    /// `ok` answers, for GET and POST; errors are counted by code, registered when they happen.
    requests_ok: [Counter; 2],
    arrived: Counter,
    departed: Counter,
    // Set by the census, which asks the storage only with the `metrics` feature.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    live_users: Gauge,
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    live_clients: Gauge,
    stored: Counter,
    delivered: Counter,
    expired: Counter,
    lost: Counter,
    volatile: Counter,
    delivery_seconds: Histogram,
    dedup_done: Counter,
    dedup_in_progress: Counter,
    /// Counted by the hub, which receives them.
    pub(crate) signals: Arc<Signals>,
    presence_queue: Gauge,
    queue_depth: Histogram,
    events: EventMetrics,
    /// Shared with the storage wrapper, which counts into it too.
    pub(crate) tally: Arc<Tally>,
}

impl Observe {
    /// Registers every handle with the recorder installed now, and the bounds of `config`.
    pub(crate) fn new(config: &Config) -> Self {
        for (bound, value) in [
            ("max_polls", config.max_polls),
            ("max_polls_per_user", config.max_polls_per_user),
            ("max_queue", config.max_queue),
            ("max_queue_per_sender", config.max_queue_per_sender),
            ("max_clients_per_user", config.max_clients_per_user),
            ("max_dedup_per_client", config.max_dedup_per_client),
            ("max_dedup_per_user", config.max_dedup_per_user),
            ("max_presence_queue", config.max_presence_queue),
        ] {
            gauge(BOUND, &[("bound", bound)]).set(value as f64);
        }
        Observe {
            polls_waiting: gauge(POLLS_WAITING, &[]),
            requests_ok: [
                counter(REQUESTS, &[("method", "GET"), ("outcome", "ok")]),
                counter(REQUESTS, &[("method", "POST"), ("outcome", "ok")]),
            ],
            arrived: counter(CLIENTS_ARRIVED, &[]),
            departed: counter(CLIENTS_DEPARTED, &[]),
            live_users: gauge(LIVE_USERS, &[]),
            live_clients: gauge(LIVE_CLIENTS, &[]),
            stored: counter(MESSAGES_STORED, &[]),
            delivered: counter(MESSAGES_DELIVERED, &[]),
            expired: counter(MESSAGES_EXPIRED, &[]),
            lost: counter(MESSAGES_LOST, &[]),
            volatile: counter(MESSAGES_VOLATILE, &[]),
            delivery_seconds: histogram(DELIVERY_SECONDS, &[]),
            dedup_done: counter(DEDUP_HITS, &[("state", "done")]),
            dedup_in_progress: counter(DEDUP_HITS, &[("state", "in_progress")]),
            signals: Arc::new(Signals::new()),
            presence_queue: gauge(PRESENCE_QUEUE, &[]),
            queue_depth: histogram(QUEUE_DEPTH, &[]),
            events: EventMetrics::default(),
            tally: Arc::new(Tally::default()),
        }
    }

    /// A poll starts (`true`) or ends (`false`) waiting.
    pub(crate) fn poll_waiting(&self, waiting: bool) {
        if waiting {
            self.polls_waiting.increment(1.0);
        } else {
            self.polls_waiting.decrement(1.0);
        }
    }

    /// A request on the route was answered: `Err` with the error it was refused with.
    pub(crate) fn answered(&self, post: bool, error: Option<&ProtocolError>) {
        self.tally.requests.fetch_add(1, Ordering::Relaxed);
        let Some(error) = error else {
            self.requests_ok[usize::from(post)].increment(1);
            return;
        };
        let method = if post { "POST" } else { "GET" };
        counter(REQUESTS, &[("method", method), ("outcome", error.code())]).increment(1);
        if let Some(bound) = bound_of(error) {
            self.bound_hit(bound);
        }
    }

    /// A bound (named as its builder setting) refused something.
    pub(crate) fn bound_hit(&self, bound: &'static str) {
        self.tally.bounds_hit.fetch_add(1, Ordering::Relaxed);
        counter(BOUNDS_HIT, &[("bound", bound)]).increment(1);
    }

    /// A client became live with a poll here (`true`), or this node reaped one (`false`).
    pub(crate) fn presence(&self, arrived: bool) {
        if arrived {
            self.arrived.increment(1);
        } else {
            self.departed.increment(1);
        }
    }

    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    /// The census: how many users and (if counted) clients are live, storage-wide.
    pub(crate) fn census(&self, users: usize, clients: Option<usize>) {
        self.live_users.set(users as f64);
        if let Some(clients) = clients {
            self.live_clients.set(clients as f64);
        }
    }

    /// The presence queue holds `depth` changes.
    pub(crate) fn presence_queue(&self, depth: usize) {
        self.presence_queue.set(depth as f64);
    }

    /// A send stored `n` messages (one per recipient).
    pub(crate) fn stored(&self, n: usize) {
        self.stored.increment(n as u64);
        self.tally.stored.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// An append's fullest recipient queue, if the storage told.
    pub(crate) fn queue_depth(&self, deepest: Option<usize>) {
        if let Some(deepest) = deepest {
            self.queue_depth.record(deepest as f64);
        }
    }

    /// A volatile message was published.
    pub(crate) fn volatile(&self) {
        self.volatile.increment(1);
        self.tally.volatile.fetch_add(1, Ordering::Relaxed);
    }

    /// A send's outcome: how many recipients confirmed, let it expire, or lost it, and how long
    /// after its store the last confirmation came (when every recipient confirmed).
    pub(crate) fn settled(&self, delivered: usize, expired: usize, lost: usize, took: Duration) {
        let t = &self.tally;
        if delivered > 0 {
            self.delivered.increment(delivered as u64);
            t.delivered.fetch_add(delivered as u64, Ordering::Relaxed);
        }
        if expired > 0 {
            self.expired.increment(expired as u64);
            t.expired.fetch_add(expired as u64, Ordering::Relaxed);
        }
        if lost > 0 {
            self.lost.increment(lost as u64);
            t.lost.fetch_add(lost as u64, Ordering::Relaxed);
        }
        if expired == 0 && lost == 0 && delivered > 0 {
            self.delivery_seconds.record(took.as_secs_f64());
            t.delivery.record(took);
        }
    }

    /// A client message was met again within the dedup window: done (`true`) or in progress.
    pub(crate) fn dedup_hit(&self, done: bool) {
        self.tally.dedup_hits.fetch_add(1, Ordering::Relaxed);
        if done {
            self.dedup_done.increment(1);
        } else {
            self.dedup_in_progress.increment(1);
        }
    }

    /// A claim found a dedup record: `Done` or, the first time this request met it, in
    /// progress is a hit (the message is not handled again).
    pub(crate) fn claimed(&self, claim: &Claim, first: bool) {
        match claim {
            Claim::Done(_) => self.dedup_hit(true),
            Claim::InProgress { .. } if first => self.dedup_hit(false),
            _ => {}
        }
    }

    /// The handler took `took` over `event`; if it failed, whether with a [`HandlerError`] of
    /// its choosing and whether on the storage.
    ///
    /// [`HandlerError`]: crate::HandlerError
    pub(crate) fn handled(&self, event: &str, took: Duration, failed: Option<(bool, bool)>) {
        let error = failed.map(|(refused, storage)| match (refused, storage) {
            (_, true) => "storage",
            (true, false) => "refused",
            (false, false) => "failed",
        });
        self.tally.handler.record(took);
        if error.is_some() {
            self.tally.handler_errors.fetch_add(1, Ordering::Relaxed);
        }
        self.events.handled(event, took, error);
    }
}

/// The signals a node received from its storage, and missed.
#[derive(Debug)]
pub(crate) struct Signals {
    /// Indexed as [`signal_index`].
    received: [Counter; 7],
    lagged: Counter,
}

impl Signals {
    pub(crate) fn new() -> Self {
        let signal = |kind| counter(SIGNALS_RECEIVED, &[("kind", kind)]);
        Signals {
            received: [
                signal("appended"),
                signal("confirmed"),
                signal("completed"),
                signal("volatile"),
                signal("poll_started"),
                signal("resync"),
                signal("replied"),
            ],
            lagged: counter(SIGNALS_LAGGED, &[]),
        }
    }

    /// A signal came from the storage.
    pub(crate) fn received(&self, signal: &Signal) {
        self.received[signal_index(signal)].increment(1);
    }

    /// The node fell `missed` signals behind.
    pub(crate) fn lagged(&self, missed: u64) {
        self.lagged.increment(missed);
    }
}

/// Counts a send's outcome: each target's final status (as the hub tracks them), and records
/// the expired ones for the admin page.
pub(crate) fn settled(
    observe: &Observe,
    targets: &[(crate::storage::Epoch, crate::storage::DeliveryTarget)],
    statuses: &[crate::hub::Status],
    took: Duration,
) {
    use crate::hub::Status;
    let (mut delivered, mut expired, mut lost) = (0, 0, 0);
    for ((_, target), status) in targets.iter().zip(statuses) {
        match status {
            Status::Delivered => delivered += 1,
            Status::Lost => lost += 1,
            Status::Expired | Status::Pending => {
                expired += 1;
                observe.tally.expired(Expiration {
                    user: target.user.clone(),
                    namespace: target.namespace.to_string(),
                    stored_at: target.pos / 1000,
                    at: crate::storage::now_millis(),
                });
            }
        }
    }
    observe.settled(delivered, expired, lost, took);
}

/// Counts the live users and clients, storage-wide, into their gauges (with the `metrics`
/// feature; without it nothing runs it). Run beside each node's reaper.
#[cfg(feature = "metrics")]
pub(crate) async fn census(storage: &dyn crate::Storage, observe: &Observe) {
    let users = match storage.live_users().await {
        Ok(users) => users,
        Err(e) => {
            tracing::debug!(error = %e, "could not count the live users");
            return;
        }
    };
    let mut clients = Some(0usize);
    if users.len() <= CENSUS_MAX_USERS {
        for user in &users {
            match storage.live_clients(user).await {
                Ok(c) => clients = clients.map(|n| n + c.len()),
                Err(_) => clients = None,
            }
        }
    } else {
        clients = None;
    }
    observe.census(users.len(), clients);
}

fn signal_index(signal: &Signal) -> usize {
    match signal {
        Signal::Appended { .. } => 0,
        Signal::Confirmed { .. } => 1,
        Signal::Completed { .. } => 2,
        Signal::Volatile { .. } => 3,
        Signal::PollStarted { .. } => 4,
        Signal::Resync => 5,
        Signal::Replied { .. } => 6,
    }
}

/// The bound an error says was hit, named as the builder setting that sets it.
fn bound_of(error: &ProtocolError) -> Option<&'static str> {
    use crate::storage::Limit;
    Some(match error {
        ProtocolError::BodyTooLarge(_) | ProtocolError::BodyLimitedOutside => "max_body",
        ProtocolError::TooManyMessages { .. } => "max_messages",
        ProtocolError::TooManyNamespaces(_) => "max_namespaces",
        ProtocolError::MessageTooLarge { .. } => "max_message_bytes",
        ProtocolError::DataTooDeep { .. } => "max_data_depth",
        ProtocolError::BodyTimeout(_) => "body_timeout",
        ProtocolError::TooManyPolls(_) => "max_polls_per_user",
        ProtocolError::ServerBusy(_) => "max_polls",
        ProtocolError::Storage(StorageError::Limit(Limit::ClientsPerUser(_))) => {
            "max_clients_per_user"
        }
        ProtocolError::Storage(StorageError::Limit(_)) => "max_dedup_per_user",
        _ => return None,
    })
}
