//! One waiting request's inbox: the signals of its user, queued until it looks.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::UserSignal;

/// How many signals a mailbox holds before it gives up on them and asks for a re-read: a
/// waiter that does not keep up loses nothing stored, only volatile messages.
const CAPACITY: usize = 64;

/// A small queue and a wakeup, in place of a broadcast channel per user: a waiting poll costs
/// an allocation of a hundred bytes, not a channel of 64 slots made anew for every poll.
#[derive(Debug, Default)]
pub(crate) struct Mailbox {
    queue: Mutex<VecDeque<UserSignal>>,
    /// `notify_one` keeps a permit when nobody waits, so a signal pushed between a look at the
    /// queue and the wait is not missed.
    notify: Notify,
}

impl Mailbox {
    pub(super) fn push(&self, signal: UserSignal) {
        {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            let redundant = matches!(
                (&signal, queue.back()),
                (UserSignal::Appended, Some(UserSignal::Appended))
                    | (UserSignal::Resync, Some(UserSignal::Resync))
            );
            if redundant {
                return;
            }
            if queue.len() >= CAPACITY {
                // Read again from storage instead; what is stored is not lost.
                queue.clear();
                queue.push_back(UserSignal::Resync);
            } else {
                queue.push_back(signal);
            }
        }
        self.notify.notify_one();
    }

    /// The oldest queued signal, if any.
    pub(super) fn pop(&self) -> Option<UserSignal> {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }

    /// The next signal, waiting for one if none is queued.
    pub(super) async fn recv(&self) -> UserSignal {
        loop {
            if let Some(signal) = self.pop() {
                return signal;
            }
            self.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_wakeups_are_kept_once() {
        let mailbox = Mailbox::default();
        mailbox.push(UserSignal::Appended);
        mailbox.push(UserSignal::Appended);
        assert!(matches!(mailbox.pop(), Some(UserSignal::Appended)));
        assert!(mailbox.pop().is_none());
    }

    #[test]
    fn an_overflowing_mailbox_asks_for_a_re_read() {
        let mailbox = Mailbox::default();
        for _ in 0..CAPACITY {
            mailbox.push(UserSignal::Completed);
        }
        mailbox.push(UserSignal::Completed);
        assert!(matches!(mailbox.pop(), Some(UserSignal::Resync)));
        assert!(mailbox.pop().is_none());
    }

    #[tokio::test]
    async fn a_signal_pushed_before_the_wait_is_not_missed() {
        let mailbox = Mailbox::default();
        mailbox.push(UserSignal::Completed);
        assert!(matches!(mailbox.recv().await, UserSignal::Completed));
    }
}
