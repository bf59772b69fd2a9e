//! One waiting request's inbox: what happened to its user since it last looked.
//!
//! Not a queue of signals: a poll only needs to know *that* its user's log grew (read again),
//! *whether* a newer poll of its client took over, and which volatile messages came for it. So
//! most signals set a flag, and a mailbox costs one small allocation and no channel.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::id::ClientId;
use crate::protocol::WireVolatile;

/// The most volatile messages a mailbox keeps for a poll that has not answered yet; a poll
/// answers as soon as one arrives, so only a burst in the same instant comes near it. Past it,
/// volatile messages are dropped, as they would be for a client between two polls.
const VOLATILE_CAPACITY: usize = 64;

/// The poll a mailbox belongs to: its client, its announcement and the namespaces it reads.
#[derive(Debug)]
pub(crate) struct PollInfo {
    pub(crate) client: ClientId,
    pub(crate) poll: u64,
    pub(crate) namespaces: Arc<[Arc<str>]>,
}

/// What came since the last look.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    /// The user's log grew, or signals may have been lost: read it again.
    pub(crate) read_again: bool,
    /// A dedup record of the user was completed.
    pub(crate) completed: bool,
    /// A newer poll of this client started: this one should answer now.
    pub(crate) taken_over: bool,
    /// Volatile messages for this poll, in the order they came.
    pub(crate) volatile: Vec<WireVolatile>,
}

#[derive(Debug, Default)]
struct State {
    inbox: Inbox,
    /// This poll's own announcement has come by. Every node receives the storage's signals in
    /// the order they were published, and a client starts a poll only after its previous one
    /// answered, so the announcements of this client that come before our own are of older
    /// polls (say, the previous poll's, slower than its answer); those after it, of newer ones.
    /// If our own is lost (a lagging subscription), no other can end this poll: it lasts its
    /// hold.
    seen_own: bool,
}

#[derive(Debug)]
pub(crate) struct Mailbox {
    /// Set for a poll; a mailbox without one (a POST waiting for a record) takes no volatile
    /// messages or announcements.
    poll: Option<PollInfo>,
    state: Mutex<State>,
    /// `notify_one` keeps a permit when nobody waits, so news that comes between a look at the
    /// inbox and the wait is not missed.
    notify: Notify,
}

impl Mailbox {
    pub(super) fn new(poll: Option<PollInfo>) -> Self {
        Mailbox {
            poll,
            state: Mutex::default(),
            notify: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn appended(&self) {
        self.state().inbox.read_again = true;
        self.notify.notify_one();
    }

    pub(super) fn completed(&self) {
        self.state().inbox.completed = true;
        self.notify.notify_one();
    }

    pub(super) fn poll_started(&self, client: &ClientId, poll: u64) {
        let Some(mine) = &self.poll else { return };
        if mine.client != *client {
            return;
        }
        let mut state = self.state();
        if poll == mine.poll {
            state.seen_own = true;
        } else if state.seen_own {
            state.inbox.taken_over = true;
            drop(state);
            self.notify.notify_one();
        }
    }

    /// A volatile message for the user, or only for `to`.
    pub(super) fn volatile(&self, to: Option<&ClientId>, message: &WireVolatile) {
        let Some(mine) = &self.poll else { return };
        if to.is_some_and(|to| *to != mine.client) || !mine.namespaces.contains(&message.ns) {
            return;
        }
        let mut state = self.state();
        if state.inbox.volatile.len() < VOLATILE_CAPACITY {
            state.inbox.volatile.push(message.clone());
            drop(state);
            self.notify.notify_one();
        }
    }

    /// Empties the inbox and returns what it held.
    pub(super) fn take(&self) -> Inbox {
        std::mem::take(&mut self.state().inbox)
    }

    /// Waits until something may have come; a wakeup may find the inbox empty.
    pub(super) async fn changed(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_mailbox(client: &str, poll: u64) -> Mailbox {
        Mailbox::new(Some(PollInfo {
            client: ClientId::new(client).expect("id"),
            poll,
            namespaces: Arc::from([Arc::<str>::from("/")]),
        }))
    }

    #[test]
    fn announcements_before_our_own_are_of_older_polls() {
        let mailbox = poll_mailbox("tab", 7);
        let tab = ClientId::new("tab").expect("id");
        mailbox.poll_started(&tab, 3);
        assert!(
            !mailbox.take().taken_over,
            "an older poll's late announcement"
        );
        mailbox.poll_started(&tab, 7);
        mailbox.poll_started(&ClientId::new("other").expect("id"), 9);
        assert!(!mailbox.take().taken_over, "another client's poll");
        mailbox.poll_started(&tab, 8);
        assert!(mailbox.take().taken_over, "a newer poll of this client");
    }

    #[test]
    fn volatile_messages_are_kept_for_their_client_and_namespaces() {
        let mailbox = poll_mailbox("tab", 1);
        let message = |ns: &str| WireVolatile {
            ns: ns.into(),
            event: "typing".into(),
            data: serde_json::value::to_raw_value(&1).expect("json").into(),
        };
        mailbox.volatile(None, &message("/"));
        mailbox.volatile(Some(&ClientId::new("other").expect("id")), &message("/"));
        mailbox.volatile(None, &message("/chat"));
        assert_eq!(mailbox.take().volatile.len(), 1);
    }

    #[tokio::test]
    async fn news_before_the_wait_is_not_missed() {
        let mailbox = poll_mailbox("tab", 1);
        mailbox.appended();
        mailbox.changed().await;
        assert!(mailbox.take().read_again);
    }
}
