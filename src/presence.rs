//! Presence: which clients and users are online, and the events when that changes.
//!
//! A client is online while it polls. Its first poll (or its first after it was gone) reports
//! [`Presence::Connected`]; when it has not polled for the presence TTL, the reaper reports
//! [`Presence::Disconnected`]. Every node reaps, but [`Storage::reap`](crate::Storage::reap) hands
//! each departure to one node only, so in a cluster each event is reported once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::id::{ClientId, UserId};
use crate::io::SimpleIo;
use crate::shared::Shared;
use crate::storage::{Arrival, Departure};

/// A change of who is online; see [`Builder::on_presence`](crate::Builder::on_presence).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Presence {
    /// A client polled for the first time, or for the first time since it was gone.
    Connected {
        /// Its user.
        user: UserId,
        /// The client.
        client: ClientId,
    },
    /// A client has not polled for the presence TTL: it is gone (closed tab, lost network).
    Disconnected {
        /// Its user.
        user: UserId,
        /// The client.
        client: ClientId,
    },
    /// A user's first online client connected (reported after its `Connected`).
    Online {
        /// The user.
        user: UserId,
    },
    /// A user's last online client disconnected (reported after its `Disconnected`).
    Offline {
        /// The user.
        user: UserId,
    },
}

/// The boxed future a presence handler returns.
pub type PresenceFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Receives presence changes. Implemented for every
/// `Fn(Presence, SimpleIo) -> impl Future<Output = ()>`.
pub trait OnPresence: Send + Sync + 'static {
    /// Handles one change. Changes on one node are handled one after another, in order.
    fn on_presence(&self, presence: Presence, io: SimpleIo) -> PresenceFuture;
}

impl<F, Fut> OnPresence for F
where
    F: Fn(Presence, SimpleIo) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn on_presence(&self, presence: Presence, io: SimpleIo) -> PresenceFuture {
        Box::pin(self(presence, io))
    }
}

/// Presence events of one node, handled in order by one task.
pub(crate) struct PresenceQueue {
    sender: mpsc::Sender<Presence>,
    receiver: std::sync::Mutex<Option<mpsc::Receiver<Presence>>>,
    /// Changes dropped because the queue was full, for the warning.
    dropped: AtomicU64,
}

impl std::fmt::Debug for PresenceQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceQueue").finish_non_exhaustive()
    }
}

impl PresenceQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        let (sender, receiver) = mpsc::channel(capacity);
        PresenceQueue {
            sender,
            receiver: std::sync::Mutex::new(Some(receiver)),
            dropped: AtomicU64::new(0),
        }
    }

    /// How many changes wait for the handler now.
    pub(crate) fn depth(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }

    fn push(&self, presence: Presence) {
        // Bounded: a handler slower than the arrivals and departures it is told of would
        // otherwise grow this queue without end. A change it never gets is logged instead.
        if let Err(mpsc::error::TrySendError::Full(presence)) = self.sender.try_send(presence) {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // One line per power of two: a flood does not become a flood of logs too.
            if dropped.is_power_of_two() {
                tracing::warn!(
                    ?presence,
                    dropped,
                    "the presence handler is behind and its queue is full; changes are dropped"
                );
            }
        }
    }
}

/// Reports a client's arrival, from the poll that made it live.
pub(crate) fn arrived(shared: &Shared, user: &UserId, client: &ClientId, arrival: Arrival) {
    shared.observe.presence(true);
    shared.presence.push(Presence::Connected {
        user: user.clone(),
        client: client.clone(),
    });
    if arrival.user_came_online {
        shared
            .presence
            .push(Presence::Online { user: user.clone() });
    }
}

fn departed(shared: &Shared, departure: Departure) {
    let Departure {
        user,
        client,
        user_went_offline,
    } = departure;
    shared.observe.presence(false);
    shared.presence.push(Presence::Disconnected {
        user: user.clone(),
        client,
    });
    if user_went_offline {
        shared.presence.push(Presence::Offline { user });
    }
}

/// Starts this node's reaper and presence task, once: the layer is built outside any runtime,
/// so they start with the first request or send.
pub(crate) fn ensure_started(shared: &Arc<Shared>) {
    let receiver = {
        let mut slot = shared
            .presence
            .receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match slot.take() {
            Some(receiver) => receiver,
            None => return,
        }
    };
    tokio::spawn(report(Arc::downgrade(shared), receiver));
    tokio::spawn(reap(Arc::downgrade(shared)));
    #[cfg(feature = "metrics")]
    tokio::spawn(count(Arc::downgrade(shared)));
}

/// Runs `work` every quarter of the presence TTL (the reaper's period), a run at a time, until
/// the layer is gone.
async fn every_reap_period<F, Fut>(shared: Weak<Shared>, mut work: F)
where
    F: FnMut(Arc<Shared>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let every = match shared.upgrade() {
        Some(shared) => (shared.config.presence_ttl / 4).max(Duration::from_millis(100)),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        work(shared).await;
    }
}

/// Hands presence changes to the application's handler, one at a time.
async fn report(shared: Weak<Shared>, mut receiver: mpsc::Receiver<Presence>) {
    while let Some(presence) = receiver.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        tracing::debug!(?presence, "presence changed");
        if let Some(handler) = &shared.on_presence {
            let io = SimpleIo::new(shared.clone());
            handler.on_presence(presence, io).await;
        }
    }
}

/// Every quarter of the presence TTL, removes clients that stopped polling and reports them.
async fn reap(shared: Weak<Shared>) {
    every_reap_period(shared, |shared| async move {
        match shared.storage.reap().await {
            Ok(departures) => {
                for departure in departures {
                    departed(&shared, departure);
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not reap departed clients; will retry"),
        }
        shared.observe.presence_queue(shared.presence.depth());
    })
    .await;
}

/// The census of live users and clients for the metrics, at the reaper's period but in a task
/// of its own: it asks the storage once per live user, and on a networked storage under load
/// each ask waits its turn for a connection, so in the reaper's loop it held up reaping and the
/// sweeps of expired rows for as long as it took (a minute and more at 200 users).
#[cfg(feature = "metrics")]
async fn count(shared: Weak<Shared>) {
    every_reap_period(shared, |shared| async move {
        crate::observe::census(&*shared.storage, &shared.observe).await;
    })
    .await;
}
