//! The in-process fan-out of storage signals to the requests and senders waiting on this node.
//!
//! The storage delivers every signal once per process ([`Storage::subscribe`]); the hub hands
//! each to the waiters of the user it concerns, so a new message wakes its waiting poll at once
//! and no waiter ever blocks on the storage itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::{Notify, broadcast};

use crate::id::{ClientId, UserId};
use crate::protocol::WireVolatile;
use crate::storage::{Signal, Storage};

/// How many signals one user's waiters may fall behind before they are told to re-read.
const USER_CAPACITY: usize = 64;

/// A signal as the waiters of one user see it.
#[derive(Debug, Clone)]
pub(crate) enum UserSignal {
    /// New messages in the user's log.
    Appended,
    /// A dedup record of the user was completed.
    Completed,
    /// A volatile message for the user, or only for `client`.
    Volatile {
        client: Option<ClientId>,
        message: WireVolatile,
    },
    /// A client of the user started a new poll.
    PollStarted { client: ClientId, poll: u64 },
    /// Signals may have been lost: look at storage again.
    Resync,
}

#[derive(Debug, Default)]
struct UserEntry {
    /// For polls and POSTs of this user waiting on this node; created on first use.
    signals: Option<broadcast::Sender<UserSignal>>,
    /// Senders waiting for this user's confirmations.
    confirm_waiters: Vec<(u64, Arc<Notify>)>,
}

impl UserEntry {
    fn is_unused(&self) -> bool {
        self.signals
            .as_ref()
            .is_none_or(|s| s.receiver_count() == 0)
            && self.confirm_waiters.is_empty()
    }
}

#[derive(Debug)]
pub(crate) struct Hub {
    users: Mutex<HashMap<UserId, UserEntry>>,
    /// The storage's signal stream, taken by the pump task when it starts.
    receiver: Mutex<Option<broadcast::Receiver<Signal>>>,
    started: AtomicBool,
    next_waiter: AtomicU64,
}

impl Hub {
    pub(crate) fn new(storage: &dyn Storage) -> Arc<Hub> {
        Arc::new(Hub {
            users: Mutex::new(HashMap::new()),
            // Subscribed now, not when the pump starts, so nothing published meanwhile is missed.
            receiver: Mutex::new(Some(storage.subscribe())),
            started: AtomicBool::new(false),
            next_waiter: AtomicU64::new(0),
        })
    }

    fn users(&self) -> MutexGuard<'_, HashMap<UserId, UserEntry>> {
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the task that moves storage signals to waiters, once, on first use: the layer is
    /// built outside any runtime, but every waiter runs inside one.
    fn ensure_started(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let receiver = self
            .receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(receiver) = receiver {
            tokio::spawn(pump(Arc::downgrade(self), receiver));
        }
    }

    /// Subscribes to the signals of `user`; dropping the watch unsubscribes.
    pub(crate) fn watch(self: &Arc<Self>, user: &UserId) -> Watch {
        self.ensure_started();
        let mut users = self.users();
        let entry = users.entry(user.clone()).or_default();
        let receiver = entry
            .signals
            .get_or_insert_with(|| broadcast::channel(USER_CAPACITY).0)
            .subscribe();
        Watch {
            hub: self.clone(),
            user: user.clone(),
            receiver,
        }
    }

    /// Registers `notify` to be woken on every confirmation by a client of one of `users`.
    pub(crate) fn on_confirm(
        self: &Arc<Self>,
        users: impl IntoIterator<Item = UserId>,
    ) -> ConfirmWatch {
        self.ensure_started();
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        let users: Vec<UserId> = users.into_iter().collect();
        let mut map = self.users();
        for user in &users {
            map.entry(user.clone())
                .or_default()
                .confirm_waiters
                .push((id, notify.clone()));
        }
        drop(map);
        ConfirmWatch {
            hub: self.clone(),
            id,
            users,
            notify,
        }
    }

    fn dispatch(&self, signal: Signal) {
        let users = self.users();
        let send = |user: &UserId, signal: UserSignal| {
            if let Some(sender) = users.get(user).and_then(|e| e.signals.as_ref()) {
                // No receiver left means nobody waits; nothing to do.
                let _ = sender.send(signal);
            }
        };
        match signal {
            Signal::Appended { users: appended } => {
                for user in appended.iter() {
                    send(user, UserSignal::Appended);
                }
            }
            Signal::Completed { user } => send(&user, UserSignal::Completed),
            Signal::Volatile {
                recipients,
                namespace,
                event,
                data,
            } => {
                let message = WireVolatile {
                    ns: namespace,
                    event,
                    data,
                };
                for member in recipients.iter() {
                    let client = match member {
                        crate::storage::Member::User(_) => None,
                        crate::storage::Member::Client(_, c) => Some(c.clone()),
                    };
                    send(
                        member.user(),
                        UserSignal::Volatile {
                            client,
                            message: message.clone(),
                        },
                    );
                }
            }
            Signal::PollStarted { user, client, poll } => {
                send(&user, UserSignal::PollStarted { client, poll })
            }
            Signal::Confirmed { user, .. } => {
                if let Some(entry) = users.get(&user) {
                    for (_, notify) in &entry.confirm_waiters {
                        notify.notify_one();
                    }
                }
            }
            Signal::Resync => {
                for entry in users.values() {
                    wake_all(entry);
                }
            }
        }
    }

    fn forget_if_unused(&self, user: &UserId) {
        let mut users = self.users();
        if users.get(user).is_some_and(UserEntry::is_unused) {
            users.remove(user);
        }
    }
}

fn wake_all(entry: &UserEntry) {
    if let Some(sender) = &entry.signals {
        let _ = sender.send(UserSignal::Resync);
    }
    for (_, notify) in &entry.confirm_waiters {
        notify.notify_one();
    }
}

/// Moves signals from the storage to the hub until either is gone.
async fn pump(hub: Weak<Hub>, mut receiver: broadcast::Receiver<Signal>) {
    loop {
        let signal = match receiver.recv().await {
            Ok(signal) => signal,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "fell behind the storage's signals; every waiter re-reads"
                );
                Signal::Resync
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(hub) = hub.upgrade() else { return };
        hub.dispatch(signal);
    }
}

/// The signals of one user, for as long as it lives.
#[derive(Debug)]
pub(crate) struct Watch {
    hub: Arc<Hub>,
    user: UserId,
    receiver: broadcast::Receiver<UserSignal>,
}

impl Watch {
    /// The next signal; a lag becomes [`UserSignal::Resync`].
    pub(crate) async fn recv(&mut self) -> UserSignal {
        match self.receiver.recv().await {
            Ok(signal) => signal,
            Err(broadcast::error::RecvError::Lagged(_)) => UserSignal::Resync,
            // The hub holds the sender while any watch exists; treat the impossible as a re-read.
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }

    /// A signal already queued, without waiting.
    pub(crate) fn try_recv(&mut self) -> Option<UserSignal> {
        match self.receiver.try_recv() {
            Ok(signal) => Some(signal),
            Err(broadcast::error::TryRecvError::Lagged(_)) => Some(UserSignal::Resync),
            Err(_) => None,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut users = self.hub.users();
        if let Some(entry) = users.get_mut(&self.user) {
            // Our own receiver still counts here: one left means we are the last.
            if entry
                .signals
                .as_ref()
                .is_some_and(|s| s.receiver_count() <= 1)
            {
                entry.signals = None;
            }
            if entry.is_unused() {
                users.remove(&self.user);
            }
        }
    }
}

/// A sender's registration for confirmations of some users.
#[derive(Debug)]
pub(crate) struct ConfirmWatch {
    hub: Arc<Hub>,
    id: u64,
    users: Vec<UserId>,
    notify: Arc<Notify>,
}

impl ConfirmWatch {
    /// Waits for the next confirmation (or a resync). A confirmation that came since the last
    /// call is not lost: it is stored as a permit.
    pub(crate) async fn notified(&self) {
        self.notify.notified().await;
    }
}

impl Drop for ConfirmWatch {
    fn drop(&mut self) {
        {
            let mut users = self.hub.users();
            for user in &self.users {
                if let Some(entry) = users.get_mut(user) {
                    entry.confirm_waiters.retain(|(id, _)| *id != self.id);
                }
            }
        }
        for user in &self.users {
            self.hub.forget_if_unused(user);
        }
    }
}
