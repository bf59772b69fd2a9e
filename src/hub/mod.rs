//! The in-process fan-out of storage signals to the requests and senders waiting on this node.
//!
//! The storage delivers every signal once per process ([`Storage::subscribe`]); the hub hands
//! each to the waiters of the users it concerns, so a new message wakes its waiting poll at once
//! and no waiter ever blocks on the storage itself.
//!
//! * Waiting requests (polls, POSTs waiting for a retried message) each hold a [`Watch`]: a small
//!   [`mailbox`] registered under their user.
//! * Senders waiting for confirmations hold an [`Expectation`]: their messages are indexed under
//!   each recipient by position ([`confirm`]), and a confirmation settles exactly the ones its
//!   cursor covers.
//!
//! Users are spread over shards, each behind its own lock, so that a signal naming thousands
//! of users (a broadcast) holds no lock for all of them at once, and waiters of different users
//! rarely meet on a lock.

mod confirm;
mod mailbox;
mod queue;
mod replies;

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::broadcast;

use confirm::Confirmations;
pub(crate) use confirm::{Status, Tracker};
use mailbox::Mailbox;
pub(crate) use mailbox::{Inbox, PollInfo};
pub(crate) use replies::Arrived;

use crate::hash::{HashMap, RandomState};
use crate::id::UserId;
use crate::observe::Signals;
use crate::protocol::WireVolatile;
use crate::sharded::ByShard;
use crate::storage::{DeliveryTarget, Epoch, FANOUT_CHUNK, Member, Position, Signal, Storage};

/// How many shards the users are spread over: enough that a broadcast's dispatch holds each
/// lock for a small part of it, few enough that a `Resync` visiting all is cheap.
const SHARDS: usize = 32;

#[derive(Debug, Default)]
struct UserEntry {
    /// Polls and POSTs of this user waiting on this node.
    mailboxes: Vec<Arc<Mailbox>>,
    /// Messages to this user whose senders on this node wait for confirmation.
    confirmations: Option<Box<Confirmations>>,
    /// Senders on this node waiting for replies of this user's clients.
    replies: Vec<Arc<replies::Inbox>>,
}

impl UserEntry {
    fn is_unused(&self) -> bool {
        self.mailboxes.is_empty() && self.confirmations.is_none() && self.replies.is_empty()
    }
}

type Shard = HashMap<UserId, UserEntry>;

#[derive(Debug)]
pub(crate) struct Hub {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// The storage's signal stream, taken by the pump task when it starts.
    receiver: Mutex<Option<broadcast::Receiver<Signal>>>,
    started: AtomicBool,
    /// Counts the signals received and missed (metrics).
    signals: Arc<Signals>,
}

impl Hub {
    #[cfg(test)]
    pub(crate) fn new(storage: &dyn Storage) -> Arc<Hub> {
        Self::counting(storage, Arc::new(Signals::new()))
    }

    /// [`new`](Self::new), counting signals into `signals`.
    pub(crate) fn counting(storage: &dyn Storage, signals: Arc<Signals>) -> Arc<Hub> {
        Arc::new(Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::default(),
            // Subscribed now, not when the pump starts, so nothing published meanwhile is missed.
            receiver: Mutex::new(Some(storage.subscribe())),
            started: AtomicBool::new(false),
            signals,
        })
    }

    fn shard_of(&self, user: &UserId) -> usize {
        (self.hasher.hash_one(user) as usize) % SHARDS
    }

    fn shard(&self, index: usize) -> MutexGuard<'_, Shard> {
        self.shards[index].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shard_for(&self, user: &UserId) -> MutexGuard<'_, Shard> {
        self.shard(self.shard_of(user))
    }

    /// Groups `items` by the shard of their user, so that each shard is locked once for all
    /// of its users.
    fn by_shard<T: Copy>(
        &self,
        items: impl IntoIterator<Item = T>,
        user: impl Fn(&T) -> &UserId,
    ) -> ByShard<T, SHARDS> {
        ByShard::new(items, |item| self.shard_of(user(item)))
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

    /// Subscribes a request of `user` to news of its user (a poll also to its announcements and
    /// volatile messages); dropping the watch unsubscribes. Without a bound: for tests; requests
    /// use [`watch_bounded`](Self::watch_bounded).
    #[cfg(test)]
    pub(crate) fn watch(self: &Arc<Self>, user: &UserId, poll: Option<PollInfo>) -> Watch {
        self.watch_bounded(user, poll, usize::MAX)
            .unwrap_or_else(|| unreachable!("no bound"))
    }

    /// [`watch`](Self::watch), unless `user` has `most` requests watching on this node already.
    pub(crate) fn watch_bounded(
        self: &Arc<Self>,
        user: &UserId,
        poll: Option<PollInfo>,
        most: usize,
    ) -> Option<Watch> {
        self.ensure_started();
        let mut shard = self.shard_for(user);
        let entry = shard.entry(user.clone()).or_default();
        if entry.mailboxes.len() >= most {
            return None;
        }
        let mailbox = Arc::new(Mailbox::new(poll));
        entry.mailboxes.push(mailbox.clone());
        drop(shard);
        Some(Watch {
            hub: self.clone(),
            user: user.clone(),
            mailbox,
        })
    }

    /// Starts noting the confirmations of `users`' clients, before a message to them is
    /// appended: a confirmation that lands between the append and [`Expectation::track`] is
    /// then not missed.
    pub(crate) fn expect<'a>(
        self: &Arc<Self>,
        recipients: impl IntoIterator<Item = &'a Member>,
    ) -> Expectation {
        self.ensure_started();
        let mut expectation = Expectation {
            in_task: false,
            hub: self.clone(),
            users: Vec::new(),
            tracker: Tracker::new(),
            targets: Vec::new(),
            last: None,
        };
        expectation.expect(recipients);
        expectation
    }

    /// Starts collecting the replies of `users`' clients, before a message asking for them is
    /// appended; dropping the watch stops it.
    pub(crate) fn watch_replies(self: &Arc<Self>, users: Vec<UserId>) -> ReplyWatch {
        self.ensure_started();
        let inbox = Arc::new(replies::Inbox::default());
        let mut users = users;
        users.sort();
        users.dedup();
        for (shard, group) in self.by_shard(users.iter(), |u| u).groups() {
            // A chunk per lock: an ask to a big room never holds a shard for all of it.
            for chunk in group.chunks(FANOUT_CHUNK) {
                let mut map = self.shard(shard);
                for user in chunk {
                    map.entry((*user).clone())
                        .or_default()
                        .replies
                        .push(inbox.clone());
                }
            }
        }
        ReplyWatch {
            hub: self.clone(),
            users,
            inbox,
        }
    }

    fn dispatch(&self, signal: Signal) {
        match signal {
            Signal::Replied {
                epoch,
                user,
                pos,
                client,
                data,
            } => {
                if let Some(entry) = self.shard_for(&user).get(&user) {
                    for inbox in &entry.replies {
                        inbox.replied(Arrived {
                            epoch: epoch.clone(),
                            user: user.clone(),
                            pos,
                            client: client.clone(),
                            data: data.clone(),
                        });
                    }
                }
            }
            Signal::Appended { users } => {
                for (shard, group) in self.by_shard(users.iter(), |u| u).groups() {
                    let map = self.shard(shard);
                    for user in group {
                        for mailbox in map.get(user).into_iter().flat_map(|e| &e.mailboxes) {
                            mailbox.appended();
                        }
                    }
                }
            }
            Signal::Completed { user } => {
                self.each_mailbox(&user, Mailbox::completed);
            }
            Signal::PollStarted { user, client, poll } => {
                self.each_mailbox(&user, |m| m.poll_started(&client, poll));
            }
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
                let groups = self.by_shard(recipients.iter(), |m| m.user());
                for (shard, group) in groups.groups() {
                    let map = self.shard(shard);
                    for &member in group {
                        let to = match member {
                            Member::User(_) => None,
                            Member::Client(_, client) => Some(client),
                        };
                        for mailbox in map
                            .get(member.user())
                            .into_iter()
                            .flat_map(|e| &e.mailboxes)
                        {
                            mailbox.volatile(to, &message);
                        }
                    }
                }
            }
            Signal::Confirmed {
                epoch,
                user,
                client,
                cursor,
                namespaces,
            } => {
                let mut map = self.shard_for(&user);
                if let Some(confirmations) = map
                    .get_mut(&user)
                    .and_then(|e| e.confirmations.as_deref_mut())
                {
                    confirmations.confirmed(&epoch, &client, cursor, &namespaces);
                }
            }
            Signal::Resync => {
                for shard in 0..SHARDS {
                    let map = self.shard(shard);
                    for entry in map.values() {
                        for mailbox in &entry.mailboxes {
                            mailbox.appended();
                        }
                        if let Some(confirmations) = &entry.confirmations {
                            confirmations.ask_recheck();
                        }
                        for inbox in &entry.replies {
                            inbox.resync();
                        }
                    }
                }
            }
        }
    }

    /// Up to `most` users whose messages senders on this node wait for: each with how many,
    /// and the position of the oldest (for the admin page).
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) fn pending(&self, most: usize) -> Vec<(UserId, usize, Position)> {
        let mut found = Vec::new();
        for shard in 0..SHARDS {
            let map = self.shard(shard);
            let waiting = map.iter().filter_map(|(user, entry)| {
                let (count, oldest) = entry.confirmations.as_deref()?.pending()?;
                Some((user.clone(), count, oldest))
            });
            found.extend(waiting.take(most - found.len()));
            if found.len() == most {
                break;
            }
        }
        found
    }

    fn each_mailbox(&self, user: &UserId, f: impl Fn(&Mailbox)) {
        if let Some(entry) = self.shard_for(user).get(user) {
            for mailbox in &entry.mailboxes {
                f(mailbox);
            }
        }
    }
}

/// Moves signals from the storage to the hub until either is gone.
async fn pump(hub: Weak<Hub>, mut receiver: broadcast::Receiver<Signal>) {
    loop {
        let signal = match receiver.recv().await {
            Ok(signal) => signal,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                if let Some(hub) = hub.upgrade() {
                    hub.signals.lagged(missed);
                }
                tracing::warn!(
                    missed,
                    "fell behind the storage's signals; every waiter re-reads"
                );
                Signal::Resync
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(hub) = hub.upgrade() else { return };
        hub.signals.received(&signal);
        hub.dispatch(signal);
    }
}

/// The signals of one user, for as long as it lives.
#[derive(Debug)]
pub(crate) struct Watch {
    hub: Arc<Hub>,
    user: UserId,
    mailbox: Arc<Mailbox>,
}

impl Watch {
    /// What came since the last look, emptied.
    pub(crate) fn take(&self) -> Inbox {
        self.mailbox.take()
    }

    /// Waits until something may have come (a wakeup may find nothing new: look with
    /// [`take`](Self::take)).
    pub(crate) async fn changed(&self) {
        self.mailbox.changed().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut map = self.hub.shard_for(&self.user);
        if let Some(entry) = map.get_mut(&self.user) {
            entry.mailboxes.retain(|m| !Arc::ptr_eq(m, &self.mailbox));
            if entry.is_unused() {
                map.remove(&self.user);
            }
        }
    }
}

/// A sender's registration for the replies of its recipients' clients (see
/// [`Hub::watch_replies`]).
#[derive(Debug)]
pub(crate) struct ReplyWatch {
    hub: Arc<Hub>,
    users: Vec<UserId>,
    inbox: Arc<replies::Inbox>,
}

impl ReplyWatch {
    /// What came since the last look, emptied.
    pub(crate) fn take(&self) -> replies::Taken {
        self.inbox.take()
    }

    /// Waits until something may have come.
    pub(crate) async fn changed(&self) {
        self.inbox.changed().await
    }
}

impl Drop for ReplyWatch {
    fn drop(&mut self) {
        let users = std::mem::take(&mut self.users);
        for (shard, group) in self.hub.by_shard(users.iter(), |u| u).groups() {
            // A chunk per lock, as when the watch was made.
            for chunk in group.chunks(FANOUT_CHUNK) {
                let mut map = self.hub.shard(shard);
                for user in chunk {
                    if let Some(entry) = map.get_mut(user) {
                        entry.replies.retain(|i| !Arc::ptr_eq(i, &self.inbox));
                        if entry.is_unused() {
                            map.remove(user);
                        }
                    }
                }
            }
        }
    }
}

/// A send's registration for the confirmations of its recipients; made by [`Hub::expect`]
/// before the append, given the appended messages by [`track`](Self::track). Dropping it
/// unregisters everything.
#[derive(Debug)]
pub(crate) struct Expectation {
    hub: Arc<Hub>,
    /// The recipients it expects confirmations of, as many times as they were given.
    users: Vec<Member>,
    tracker: Arc<Tracker>,
    /// Every tracked message, with the epoch it was appended in; the index is the tracker's.
    targets: Vec<(Epoch, DeliveryTarget)>,
    /// The recipients last given to [`expect`](Self::expect) (from this index of `users`),
    /// grouped by shard: [`track`](Self::track), given exactly their messages (the usual
    /// case), groups them by these again instead of hashing every user once more.
    last: Option<(usize, ByShard<usize, SHARDS>)>,
    /// It is the rest of a large send being let go of in a task: dropped (the task was, by a
    /// runtime shutting down), it lets go of what is left at once, rather than spawn again.
    in_task: bool,
}

impl Expectation {
    /// Makes room for `recipients` more recipients and their messages at once: a fan-out in
    /// chunks would otherwise grow (and copy) its lists as each chunk comes.
    pub(crate) fn reserve(&mut self, recipients: usize) {
        self.users.reserve_exact(recipients);
        self.targets.reserve_exact(recipients);
        self.tracker.state().statuses.reserve_exact(recipients);
    }

    /// Notes the confirmations of more recipients, before a message to them is appended (a
    /// fan-out in chunks expects each chunk's recipients just before it appends them).
    pub(crate) fn expect<'a>(&mut self, recipients: impl IntoIterator<Item = &'a Member>) {
        // A user named twice (two of their clients) counts twice, and is released twice.
        let first = self.users.len();
        self.users.extend(recipients.into_iter().cloned());
        let added = &self.users[first..];
        let grouped = ByShard::new(0..added.len(), |&i| self.hub.shard_of(added[i].user()));
        for (shard, group) in grouped.groups() {
            let mut map = self.hub.shard(shard);
            for member in group.iter().map(|&i| &added[i]) {
                let entry = match map.get_mut(member.user()) {
                    Some(entry) => entry,
                    None => map.entry(member.user().clone()).or_default(),
                };
                let confirmations = entry.confirmations.get_or_insert_with(Box::default);
                confirmations.expecting += 1;
                if matches!(member, Member::Client(..)) {
                    confirmations.expecting_clients += 1;
                }
            }
        }
        self.last = Some((first, grouped));
    }

    /// Waits for `targets`, appended in `epoch`, to be confirmed. Each recipient's user must be
    /// one that [`Hub::expect`] was given.
    pub(crate) fn track(&mut self, epoch: &Epoch, targets: Vec<DeliveryTarget>) {
        let first = self.targets.len();
        {
            let mut state = self.tracker.state();
            state
                .statuses
                .extend(std::iter::repeat_n(Status::Pending, targets.len()));
            state.pending += targets.len();
        }
        // The same users in the same order: the same groups. A user id compares its pointer
        // first, and each target's was cloned from its recipient's.
        let last = self.last.take().filter(|(from, _)| {
            let expected = &self.users[*from..];
            expected.len() == targets.len()
                && expected
                    .iter()
                    .zip(&targets)
                    .all(|(m, t)| *m.user() == t.user)
        });
        let grouped = match last {
            Some((_, grouped)) => grouped,
            None => ByShard::new(0..targets.len(), |&i| self.hub.shard_of(&targets[i].user)),
        };
        for (shard, group) in grouped.groups() {
            let mut map = self.hub.shard(shard);
            for (index, target) in group.iter().map(|&i| (first + i, &targets[i])) {
                let entry = match map.get_mut(&target.user) {
                    Some(entry) => entry,
                    None => map.entry(target.user.clone()).or_default(),
                };
                let confirmations = entry.confirmations.get_or_insert_with(Box::default);
                confirmations.track(&self.tracker, index, epoch, target);
            }
        }
        self.targets
            .extend(targets.into_iter().map(|t| (epoch.clone(), t)));
    }

    /// The shared state: statuses per tracked message, in the order tracked.
    pub(crate) fn tracker(&self) -> &Arc<Tracker> {
        &self.tracker
    }

    /// Every tracked message with its epoch, in the order tracked.
    pub(crate) fn targets(&self) -> &[(Epoch, DeliveryTarget)] {
        &self.targets
    }
}

impl Expectation {
    /// Removes the hub's slots of the messages at `indices` (settled from a storage check, so
    /// no confirmation removed them).
    pub(crate) fn untrack(&self, indices: impl IntoIterator<Item = usize>) {
        let targets = indices.into_iter().filter_map(|i| self.targets.get(i));
        self.untrack_targets(targets.map(|(_, t)| t), &[]);
    }

    fn untrack_targets<'a>(
        &'a self,
        targets: impl IntoIterator<Item = &'a DeliveryTarget>,
        users: &'a [Member],
    ) {
        let untrack = self.hub.by_shard(targets, |t| &t.user);
        let users = self.hub.by_shard(users.iter(), |m| m.user());
        for shard in 0..SHARDS {
            let (targets, users) = (untrack.group(shard), users.group(shard));
            if targets.is_empty() && users.is_empty() {
                continue;
            }
            let mut map = self.hub.shard(shard);
            for &target in targets {
                if let Some(c) = map
                    .get_mut(&target.user)
                    .and_then(|e| e.confirmations.as_deref_mut())
                {
                    c.untrack(&self.tracker, target);
                }
            }
            for &member in users {
                let user = member.user();
                let Some(entry) = map.get_mut(user) else {
                    continue;
                };
                if let Some(c) = entry.confirmations.as_deref_mut() {
                    c.expecting = c.expecting.saturating_sub(1);
                    if matches!(member, Member::Client(..)) {
                        c.expecting_clients = c.expecting_clients.saturating_sub(1);
                    }
                    if c.is_unused() {
                        entry.confirmations = None;
                    }
                }
                if entry.is_unused() {
                    map.remove(user);
                }
            }
        }
    }
}

impl Drop for Expectation {
    fn drop(&mut self) {
        let statuses = self.tracker.state().statuses.clone();
        // A large fan-out's registrations are let go of in a task, a chunk at a time, so that
        // the end of a send to a big room does not hold the thread that drops it.
        if !self.in_task
            && self.users.len() > FANOUT_CHUNK
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let mut rest = Expectation {
                hub: self.hub.clone(),
                users: std::mem::take(&mut self.users),
                tracker: self.tracker.clone(),
                targets: std::mem::take(&mut self.targets),
                last: None,
                in_task: true,
            };
            runtime.spawn(async move {
                // From the end, each chunk taken off the lists once let go of: dropped between
                // two, `rest` lets go of exactly what is left.
                while !rest.users.is_empty() || !rest.targets.is_empty() {
                    let users = rest.users.len().saturating_sub(FANOUT_CHUNK);
                    let targets = rest.targets.len().saturating_sub(FANOUT_CHUNK);
                    rest.release(
                        &rest.targets[targets..],
                        &statuses[targets..rest.targets.len()],
                        &rest.users[users..],
                    );
                    rest.users.truncate(users);
                    rest.targets.truncate(targets);
                    tokio::task::yield_now().await;
                }
            });
            return;
        }
        self.release(&self.targets, &statuses, &self.users);
    }
}

impl Expectation {
    /// Unregisters `targets` (with their `statuses`) and `users`: the slots of messages still
    /// pending, and one expectation of each user.
    fn release(&self, targets: &[(Epoch, DeliveryTarget)], statuses: &[Status], users: &[Member]) {
        // A settled message has no slot any more: a confirmation removed it, or it never had
        // one, or the storage check that settled it removed it (`untrack`).
        let pending = targets
            .iter()
            .zip(statuses)
            .filter(|(_, status)| **status == Status::Pending)
            .map(|((_, target), _)| target);
        self.untrack_targets(pending, users);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ClientId;
    use crate::storage::MemoryStorage;

    fn target(user: &str, pos: u64) -> DeliveryTarget {
        DeliveryTarget {
            user: UserId::from(user),
            client: None,
            namespace: "/".into(),
            pos,
        }
    }

    fn entries(hub: &Hub) -> usize {
        (0..SHARDS).map(|s| hub.shard(s).len()).sum()
    }

    #[tokio::test]
    async fn a_confirmation_settles_only_its_users_messages() {
        let storage = MemoryStorage::new();
        let hub = Hub::new(&storage);
        let epoch = Epoch::new("e");
        let users = [Member::from("ann"), Member::from("bob")];
        let mut expectation = hub.expect(users.iter());
        expectation.track(&epoch, vec![target("ann", 10), target("bob", 10)]);
        hub.dispatch(Signal::Confirmed {
            epoch: epoch.clone(),
            user: UserId::from("ann"),
            client: ClientId::new("tab").expect("id"),
            cursor: 10,
            namespaces: Arc::from([Arc::<str>::from("/")]),
        });
        let state = expectation.tracker().state();
        assert_eq!(state.statuses, [Status::Delivered, Status::Pending]);
        assert_eq!(state.pending, 1);
    }

    #[tokio::test]
    async fn dropping_waiters_leaves_nothing_behind() {
        let storage = MemoryStorage::new();
        let hub = Hub::new(&storage);
        let users: Vec<Member> = (0..100).map(|i| Member::from(format!("u{i}"))).collect();
        let mut expectation = hub.expect(users.iter());
        expectation.track(
            &Epoch::new("e"),
            users.iter().map(|u| target(u.user().as_str(), 5)).collect(),
        );
        let watch = hub.watch(users[0].user(), None);
        assert_eq!(entries(&hub), 100);
        drop(expectation);
        assert_eq!(entries(&hub), 1);
        drop(watch);
        assert_eq!(entries(&hub), 0);
    }

    #[tokio::test]
    async fn one_appended_signal_wakes_every_named_user() {
        let storage = MemoryStorage::new();
        let hub = Hub::new(&storage);
        let ann = hub.watch(&UserId::from("ann"), None);
        let bob = hub.watch(&UserId::from("bob"), None);
        let cat = hub.watch(&UserId::from("cat"), None);
        hub.dispatch(Signal::Appended {
            users: Arc::from([UserId::from("ann"), UserId::from("bob")]),
        });
        assert!(ann.take().read_again);
        assert!(bob.take().read_again);
        assert!(!cat.take().read_again);
    }
}
