//! Confirmation tracking: which sent messages a user's clients have confirmed, learnt from the
//! [`Signal::Confirmed`](crate::storage::Signal::Confirmed) signals alone.
//!
//! A confirmation carries its cursor, so each user keeps its waiting messages ordered by
//! namespace and position and a confirmation resolves exactly the ones at or below its cursor:
//! O(log n) per delivered message, whatever the number of recipients or of other senders. No
//! sender re-reads the storage on every confirmation of any recipient.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::hash::HashMap;
use crate::id::ClientId;
use crate::storage::{DeliveryTarget, Epoch, Position};

/// Where one tracked message stands, as far as its sender knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Not confirmed yet, as far as anyone told us.
    Pending,
    /// Confirmed.
    Delivered,
    /// The storage said it expired unconfirmed.
    Expired,
    /// The storage lost it with its data (a new epoch).
    Lost,
}

/// The state of one send's recipients, shared by its waiter and the hub.
#[derive(Debug)]
pub(crate) struct Tracker {
    state: Mutex<TrackerState>,
    /// Woken when the last pending target is resolved, or when a re-read from storage is asked.
    notify: Notify,
}

#[derive(Debug)]
pub(crate) struct TrackerState {
    /// One per target, in the order they were tracked.
    pub(crate) statuses: Vec<Status>,
    /// How many are still [`Status::Pending`].
    pub(crate) pending: usize,
    /// Signals may have been lost: the waiter should ask the storage.
    pub(crate) recheck: bool,
}

impl Tracker {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Tracker {
            state: Mutex::new(TrackerState {
                statuses: Vec::new(),
                pending: 0,
                recheck: false,
            }),
            notify: Notify::new(),
        })
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, TrackerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Settles target `index`, if still pending; wakes the waiter when none is left.
    pub(crate) fn settle(&self, index: usize, status: Status) {
        let mut state = self.state();
        if state.statuses.get(index) != Some(&Status::Pending) {
            return;
        }
        state.statuses[index] = status;
        state.pending -= 1;
        let done = state.pending == 0;
        drop(state);
        if done {
            self.notify.notify_one();
        }
    }

    pub(super) fn ask_recheck(&self) {
        self.state().recheck = true;
        self.notify.notify_one();
    }

    /// Waits until the last pending target is settled or a recheck is asked (a permit is kept,
    /// so a wakeup between a look at the state and this wait is not missed).
    pub(crate) async fn notified(&self) {
        self.notify.notified().await;
    }
}

/// A tracked message, as the hub holds it until a confirmation resolves it.
#[derive(Debug)]
struct Slot {
    tracker: Arc<Tracker>,
    index: usize,
    epoch: Epoch,
}

/// Waiting messages of one namespace (or one client in one namespace), in position order.
/// Messages are usually tracked in the order they were appended, so they go at the back, and
/// confirmations settle them from the front: each costs O(1), with no allocation for the first
/// (and usually only) one of a user, not a tree node per message.
type Queue = super::queue::Queue<Slot>;

/// The queues of a user's messages, one per namespace. Nearly every user reads one namespace,
/// so its queue lives in the record itself: a fan-out makes a queue for each recipient, and a
/// list to hold it would be one more allocation each.
#[derive(Debug, Default)]
struct NsQueues {
    first: Option<(Arc<str>, Queue)>,
    rest: Vec<(Arc<str>, Queue)>,
}

impl NsQueues {
    fn iter(&self) -> impl Iterator<Item = &(Arc<str>, Queue)> {
        self.first.iter().chain(&self.rest)
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn get_mut(&mut self, ns: &str) -> Option<&mut Queue> {
        match &mut self.first {
            Some((n, queue)) if &**n == ns => Some(queue),
            _ => self
                .rest
                .iter_mut()
                .find(|(n, _)| &**n == ns)
                .map(|(_, q)| q),
        }
    }

    fn get_or_insert(&mut self, ns: &Arc<str>) -> &mut Queue {
        if self.first.is_none() {
            return &mut self.first.insert((ns.clone(), Queue::default())).1;
        }
        if self.first.as_ref().is_some_and(|(n, _)| n == ns) {
            return &mut self.first.as_mut().expect("just checked").1;
        }
        let at = match self.rest.iter().position(|(n, _)| n == ns) {
            Some(at) => at,
            None => {
                self.rest.push((ns.clone(), Queue::default()));
                self.rest.len() - 1
            }
        };
        &mut self.rest[at].1
    }

    /// Drops the queue of `ns` if it is empty.
    fn remove_if_empty(&mut self, ns: &str) {
        if let Some((n, queue)) = &self.first
            && &**n == ns
        {
            if queue.is_empty() {
                self.first = self.rest.pop();
            }
            return;
        }
        if let Some(at) = self.rest.iter().position(|(n, _)| &**n == ns)
            && self.rest[at].1.is_empty()
        {
            self.rest.swap_remove(at);
        }
    }
}

/// The confirmations of one user that senders on this node wait for.
#[derive(Debug, Default)]
pub(super) struct Confirmations {
    /// How many sends expect confirmations of this user (tracked or about to be).
    pub(super) expecting: usize,
    /// How many of those expect a message to one client of the user.
    pub(super) expecting_clients: usize,
    /// The epoch of the cursors below; a confirmation of another epoch starts them over.
    epoch: Option<Epoch>,
    /// The highest cursor confirmed in each namespace since this record was made. A send
    /// registers before it appends, so a confirmation that lands between its append and its
    /// tracking is found here. Namespaces are the application's, so the list is short.
    seen_watermarks: Vec<(Arc<str>, Position)>,
    /// Messages to the user, per namespace.
    user_targets: NsQueues,
    /// What messages addressed to one client need, made with the first: a fan-out to users
    /// makes a record per recipient, which then needs no room for these maps.
    clients: Option<Box<ClientSide>>,
}

#[derive(Debug, Default)]
struct ClientSide {
    /// As `seen_watermarks`, per client and namespace (kept only while such a message is
    /// expected).
    seen: HashMap<(ClientId, Arc<str>), Position>,
    /// Messages to one client of the user, per client and namespace.
    targets: HashMap<(ClientId, Arc<str>), Queue>,
}

impl Confirmations {
    /// Starts waiting for `target`, tracked as `index` of `tracker`. Settles it at once if a
    /// confirmation already covered it.
    pub(super) fn track(
        &mut self,
        tracker: &Arc<Tracker>,
        index: usize,
        epoch: &Epoch,
        target: &DeliveryTarget,
    ) {
        let same_epoch = self.epoch.as_ref() == Some(epoch);
        let seen = match &target.client {
            None => self
                .seen_watermarks
                .iter()
                .find(|(ns, _)| *ns == target.namespace)
                .map(|(_, cursor)| *cursor),
            Some(c) => self
                .clients
                .as_ref()
                .and_then(|side| side.seen.get(&(c.clone(), target.namespace.clone())))
                .copied(),
        };
        if same_epoch && seen.is_some_and(|cursor| cursor >= target.pos) {
            tracker.settle(index, Status::Delivered);
            return;
        }
        let slot = Slot {
            tracker: tracker.clone(),
            index,
            epoch: epoch.clone(),
        };
        let queue = match &target.client {
            None => self.user_queue(&target.namespace),
            Some(c) => self
                .clients
                .get_or_insert_with(Box::default)
                .targets
                .entry((c.clone(), target.namespace.clone()))
                .or_default(),
        };
        // Positions are unique within a user's log, so one is taken only if two epochs gave
        // the same, or a send repeated by a handler run again was answered the first one's
        // (`NewMessage::origin`); the later send then learns its outcome from its rechecks.
        queue.insert(target.pos, slot);
    }

    /// How many tracked messages wait, and the lowest position among them (the oldest: a
    /// position is its store's clock in ms × 1000), if any wait.
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(super) fn pending(&self) -> Option<(usize, Position)> {
        let queues = (self.user_targets.iter().map(|(_, q)| q))
            .chain(self.clients.iter().flat_map(|side| side.targets.values()));
        let mut count = 0;
        let mut oldest: Option<Position> = None;
        for queue in queues {
            count += queue.len();
            if let Some((pos, _)) = queue.front() {
                oldest = Some(oldest.map_or(*pos, |o| o.min(*pos)));
            }
        }
        oldest.map(|oldest| (count, oldest))
    }

    fn user_queue(&mut self, ns: &Arc<str>) -> &mut Queue {
        self.user_targets.get_or_insert(ns)
    }

    /// Stops waiting for `target` of `tracker` (its send ended or was dropped).
    pub(super) fn untrack(&mut self, tracker: &Arc<Tracker>, target: &DeliveryTarget) {
        let remove = |queue: &mut Queue| {
            queue.remove_if(target.pos, |slot| Arc::ptr_eq(&slot.tracker, tracker));
        };
        match &target.client {
            None => {
                if let Some(queue) = self.user_targets.get_mut(&target.namespace) {
                    remove(queue);
                    self.user_targets.remove_if_empty(&target.namespace);
                }
            }
            Some(c) => {
                let key = (c.clone(), target.namespace.clone());
                if let Some(side) = &mut self.clients
                    && let Some(queue) = side.targets.get_mut(&key)
                {
                    remove(queue);
                    if queue.is_empty() {
                        side.targets.remove(&key);
                    }
                }
            }
        }
    }

    /// `client` confirmed `cursor` in `namespaces`: settles every message it covers.
    pub(super) fn confirmed(
        &mut self,
        epoch: &Epoch,
        client: &ClientId,
        cursor: Position,
        namespaces: &[Arc<str>],
    ) {
        if self.epoch.as_ref() != Some(epoch) {
            self.epoch = Some(epoch.clone());
            self.seen_watermarks.clear();
            if let Some(side) = &mut self.clients {
                side.seen.clear();
            }
        }
        let clients_expected = self.expecting_clients > 0
            || (self.clients.as_ref()).is_some_and(|side| !side.targets.is_empty());
        for ns in namespaces {
            match self.seen_watermarks.iter_mut().find(|(n, _)| n == ns) {
                Some((_, seen)) => *seen = (*seen).max(cursor),
                None => self.seen_watermarks.push((ns.clone(), cursor)),
            }
            if let Some(queue) = self.user_targets.get_mut(ns) {
                settle_front(queue, cursor, epoch);
                self.user_targets.remove_if_empty(ns);
            }
            if clients_expected {
                let key = (client.clone(), ns.clone());
                let side = self.clients.get_or_insert_with(Box::default);
                let seen = side.seen.entry(key.clone()).or_insert(0);
                *seen = (*seen).max(cursor);
                if let Some(queue) = side.targets.get_mut(&key) {
                    settle_front(queue, cursor, epoch);
                    if queue.is_empty() {
                        side.targets.remove(&key);
                    }
                }
            }
        }
    }

    /// Signals may have been lost: every waiting send asks the storage.
    pub(super) fn ask_recheck(&self) {
        let queues = self
            .user_targets
            .iter()
            .map(|(_, q)| q)
            .chain(self.clients.iter().flat_map(|side| side.targets.values()));
        for (_, slot) in queues.flat_map(|q| q.iter()) {
            slot.tracker.ask_recheck();
        }
    }

    pub(super) fn is_unused(&self) -> bool {
        self.expecting == 0
    }
}

/// Settles and removes the messages of `epoch` at or below `cursor`, from the front: each is
/// one delivered message. One of another epoch stays, for its sender's recheck to settle.
fn settle_front(queue: &mut Queue, cursor: Position, epoch: &Epoch) {
    let mut other_epochs = Vec::new();
    while queue.front().is_some_and(|(pos, _)| *pos <= cursor) {
        let Some((pos, slot)) = queue.pop_front() else {
            break;
        };
        if slot.epoch == *epoch {
            slot.tracker.settle(slot.index, Status::Delivered);
        } else {
            other_epochs.push((pos, slot));
        }
    }
    for (pos, slot) in other_epochs.into_iter().rev() {
        queue.push_front(pos, slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::UserId;

    fn target(client: Option<&str>, ns: &str, pos: Position) -> DeliveryTarget {
        DeliveryTarget {
            user: UserId::from("ann"),
            client: client.map(|c| ClientId::new(c).expect("id")),
            namespace: ns.into(),
            pos,
        }
    }

    fn tracker_with(n: usize) -> Arc<Tracker> {
        let tracker = Tracker::new();
        let mut state = tracker.state();
        state.statuses = vec![Status::Pending; n];
        state.pending = n;
        drop(state);
        tracker
    }

    fn statuses(tracker: &Tracker) -> Vec<Status> {
        tracker.state().statuses.clone()
    }

    #[test]
    fn a_confirmation_settles_what_its_cursor_covers_in_its_namespaces() {
        let epoch = Epoch::new("e");
        let tab = ClientId::new("tab").expect("id");
        let mut c = Confirmations::default();
        let t = tracker_with(3);
        c.track(&t, 0, &epoch, &target(None, "/", 10));
        c.track(&t, 1, &epoch, &target(None, "/", 20));
        c.track(&t, 2, &epoch, &target(None, "/chat", 5));
        c.confirmed(&epoch, &tab, 15, &["/".into()]);
        assert_eq!(
            statuses(&t),
            [Status::Delivered, Status::Pending, Status::Pending]
        );
        c.confirmed(&epoch, &tab, 30, &["/".into(), "/chat".into()]);
        assert_eq!(statuses(&t), [Status::Delivered; 3]);
        assert!(c.user_targets.is_empty());
    }

    #[test]
    fn a_message_to_one_client_waits_for_that_client() {
        let epoch = Epoch::new("e");
        let mut c = Confirmations {
            expecting_clients: 1,
            ..Confirmations::default()
        };
        let t = tracker_with(1);
        c.track(&t, 0, &epoch, &target(Some("tab1"), "/", 10));
        c.confirmed(
            &epoch,
            &ClientId::new("tab2").expect("id"),
            99,
            &["/".into()],
        );
        assert_eq!(statuses(&t), [Status::Pending]);
        c.confirmed(
            &epoch,
            &ClientId::new("tab1").expect("id"),
            10,
            &["/".into()],
        );
        assert_eq!(statuses(&t), [Status::Delivered]);
    }

    #[test]
    fn a_confirmation_before_tracking_is_remembered() {
        let epoch = Epoch::new("e");
        let mut c = Confirmations::default();
        c.confirmed(
            &epoch,
            &ClientId::new("tab").expect("id"),
            50,
            &["/".into()],
        );
        let t = tracker_with(2);
        c.track(&t, 0, &epoch, &target(None, "/", 40));
        c.track(&t, 1, &epoch, &target(None, "/", 60));
        assert_eq!(statuses(&t), [Status::Delivered, Status::Pending]);
    }

    #[test]
    fn a_confirmation_of_another_epoch_settles_nothing() {
        let mut c = Confirmations::default();
        let t = tracker_with(1);
        c.track(&t, 0, &Epoch::new("old"), &target(None, "/", 10));
        c.confirmed(
            &Epoch::new("new"),
            &ClientId::new("tab").expect("id"),
            99,
            &["/".into()],
        );
        assert_eq!(statuses(&t), [Status::Pending]);
    }

    #[test]
    fn untracking_leaves_other_senders_slots() {
        let epoch = Epoch::new("e");
        let mut c = Confirmations::default();
        let (a, b) = (tracker_with(1), tracker_with(1));
        c.track(&a, 0, &epoch, &target(None, "/", 10));
        c.untrack(&b, &target(None, "/", 10));
        assert_eq!(
            c.user_targets.iter().map(|(_, q)| q.len()).sum::<usize>(),
            1
        );
        c.untrack(&a, &target(None, "/", 10));
        assert!(c.user_targets.is_empty());
    }
}
