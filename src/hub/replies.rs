//! Replies to messages that asked for them, on their way to the senders waiting on this node.
//!
//! A sender registers an [`Inbox`] under each recipient user before its message is appended
//! (so a reply that comes before the sender learned the message's position is not missed),
//! and the hub puts there every [`Replied`](crate::storage::Signal::Replied) signal of those
//! users; the sender keeps the ones for its own positions.

use std::sync::{Mutex, MutexGuard};

use serde_json::value::RawValue;
use std::sync::Arc;
use tokio::sync::Notify;

use crate::id::{ClientId, UserId};
use crate::storage::{Epoch, Position};

/// The most replies an inbox holds between two looks: past it, the inbox asks its sender to
/// read the storage instead of keeping more (one sender's fan-out cannot grow it without end).
const CAPACITY: usize = 4_096;

/// One reply, as a signal brought it.
#[derive(Debug, Clone)]
pub(crate) struct Arrived {
    pub(crate) epoch: Epoch,
    pub(crate) user: UserId,
    pub(crate) pos: Position,
    pub(crate) client: ClientId,
    pub(crate) data: Arc<RawValue>,
}

/// What came since the last look.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    pub(crate) replies: Vec<Arrived>,
    /// Signals may have been lost, or the inbox overflowed: read the storage.
    pub(crate) read_again: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Inbox {
    state: Mutex<Taken>,
    notify: Notify,
}

impl Inbox {
    fn state(&self) -> MutexGuard<'_, Taken> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn replied(&self, reply: Arrived) {
        let mut state = self.state();
        if state.replies.len() < CAPACITY {
            state.replies.push(reply);
        } else {
            state.read_again = true;
        }
        drop(state);
        self.notify.notify_one();
    }

    pub(super) fn resync(&self) {
        self.state().read_again = true;
        self.notify.notify_one();
    }

    /// What came since the last look, emptied.
    pub(crate) fn take(&self) -> Taken {
        std::mem::take(&mut *self.state())
    }

    /// Waits until something may have come (a permit is kept, so a reply between a look and
    /// this wait is not missed).
    pub(crate) async fn changed(&self) {
        self.notify.notified().await
    }
}
