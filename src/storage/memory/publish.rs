//! Publishing the storage's signals, without a burst of appends overflowing the channel.
//!
//! Each append call signals the users it appended to. Thousands of senders emitting at once
//! each run several appends before the hub's task runs once (it reads on the same threads, and
//! yields every 128 signals): 2,000 senders with 32 messages each in flight made 64,000 signals
//! at the start of a run, four times what the channel holds, and every overflow makes each
//! waiting poll and send read the storage again (`Signal::Resync`). So once the channel is half
//! full, further appends are gathered instead (a fan-out's chunks only past three quarters),
//! and a task tells them every millisecond while the burst goes on: the small appends' users
//! each once, in signals of [`FANOUT_CHUNK`] users, as many as the channel has room for. A few
//! signals for the whole burst; the rest once it has room, or after [`ROOM_WAIT`] with nobody
//! reading. Appends are hints to re-read a user's log, so one told later, or together with
//! others, is still right; every other signal goes out at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use super::SIGNAL_CAPACITY;
use crate::hash::HashSet;
use crate::id::UserId;
use crate::storage::{FANOUT_CHUNK, Signal};

/// From this many unread signals, appends' users are gathered.
const GATHER_FROM: usize = SIGNAL_CAPACITY / 2;

/// An append to this many users or more is published at once until the channel is three
/// quarters full ([`Publisher::publish`]).
const LARGE: usize = FANOUT_CHUNK / 2;

/// The gathered users are told in signals that keep the channel below this: at once, unless a
/// burst filled it further meanwhile. The gathering is what keeps it from overflowing, not the
/// wait, which only makes the users' polls wake later.
const TELL_BELOW: usize = SIGNAL_CAPACITY * 3 / 4;

/// How long the users wait for room while no subscriber reads: past it, one that stopped
/// reading is left to lag.
const ROOM_WAIT: Duration = Duration::from_secs(1);

/// How long the task gathers between two tellings, and how often it looks whether the channel
/// has room (it tells no one when it is read). A burst's users wait this much longer, and are
/// told in about one signal per [`FANOUT_CHUNK`] of them per this time.
const ROOM_POLL: Duration = Duration::from_millis(1);

/// The storage's signal channel, and the appends gathered while it is too full.
#[derive(Debug)]
pub(super) struct Publisher {
    sender: broadcast::Sender<Signal>,
    gathered: Mutex<Gathered>,
    /// Set while users are gathered (and a task will tell them): every append's users are then
    /// gathered too, so that none is told before those gathered before it.
    gathering: AtomicBool,
    /// Set when a subscriber read nothing for [`ROOM_WAIT`] (one that stopped, or one whose
    /// reader has not started yet keeps the channel full for good): nothing is gathered until
    /// the channel is below half again, so that it lags alone and the others hear at once.
    unread: AtomicBool,
}

impl Publisher {
    pub(super) fn new() -> Self {
        let (sender, _) = broadcast::channel(SIGNAL_CAPACITY);
        Publisher {
            sender,
            gathered: Mutex::default(),
            gathering: AtomicBool::new(false),
            unread: AtomicBool::new(false),
        }
    }

    pub(super) fn sender(&self) -> &broadcast::Sender<Signal> {
        &self.sender
    }

    fn lock(&self) -> MutexGuard<'_, Gathered> {
        self.gathered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `signal`; an append's users are gathered instead while the channel is half
    /// full. An append to [`LARGE`] users or more (a fan-out's chunk) is one signal worth its
    /// place, and is gathered only once the channel is three quarters full: before, gathering
    /// it would merge nothing and only wake its users a millisecond later.
    pub(super) fn publish(self: &Arc<Self>, signal: Signal) {
        if let Signal::Appended { users } = &signal {
            let large = users.len() >= LARGE;
            let gather = (!large && self.gathering.load(Ordering::Acquire)) || {
                // The channel's length takes its lock: asked only for appends.
                let queued = self.sender.len();
                if queued < GATHER_FROM && self.unread.load(Ordering::Relaxed) {
                    self.unread.store(false, Ordering::Relaxed);
                }
                let from = if large { TELL_BELOW } else { GATHER_FROM };
                queued >= from && !self.unread.load(Ordering::Relaxed)
            };
            if gather && self.gather(users.clone()) {
                return;
            }
        }
        // No subscriber yet is fine: nobody is waiting.
        let _ = self.sender.send(signal);
    }

    /// Adds `users` to those gathered, starting the task that tells them if none is running.
    /// False outside a runtime, where there is no task to tell them: the caller publishes.
    fn gather(self: &Arc<Self>, users: Arc<[UserId]>) -> bool {
        let start = {
            let mut gathered = self.lock();
            let start = if self.gathering.load(Ordering::Acquire) {
                None
            } else {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return false;
                };
                self.gathering.store(true, Ordering::Release);
                Some(runtime)
            };
            gathered.add(users);
            start
        };
        // Spawned once the lock is released: a runtime that is shutting down drops the task at
        // once, and the task tells what is gathered when dropped.
        if let Some(runtime) = start {
            runtime.spawn(tell(Telling {
                publisher: Arc::downgrade(self),
                done: false,
            }));
        }
        true
    }

    /// Publishes up to `room` signals of the users gathered ([`merged`]), if any; once there
    /// are none, stops gathering. Whether there were any.
    fn tell_gathered(&self, room: usize) -> bool {
        let lists = {
            let mut gathered = self.lock();
            if gathered.lists.is_empty() {
                self.gathering.store(false, Ordering::Release);
                return false;
            }
            std::mem::take(&mut *gathered).lists
        };
        let mut lists = merged(lists, false);
        let later = lists.split_off(room.max(1).min(lists.len()));
        if !later.is_empty() {
            let mut gathered = self.lock();
            for list in later {
                gathered.add(list);
            }
        }
        for users in lists {
            let _ = self.sender.send(Signal::Appended { users });
        }
        true
    }

    /// Tells every user gathered and stops gathering: a subscriber read nothing for
    /// [`ROOM_WAIT`], and is left to lag.
    fn tell_all_unread(&self) {
        self.unread.store(true, Ordering::Relaxed);
        tracing::debug!(
            "simpleio: a subscriber to the storage's signals reads none; appends are not \
             gathered for it"
        );
        while self.tell_gathered(usize::MAX) {}
    }
}

/// How many signals may be published once the channel holds fewer than [`TELL_BELOW`]; `None`
/// once no subscriber has read one for [`ROOM_WAIT`] (or the storage is gone).
async fn room(publisher: &Weak<Publisher>) -> Option<usize> {
    let mut queued = publisher.upgrade()?.sender.len();
    let mut since_read = Instant::now();
    while queued >= TELL_BELOW {
        if since_read.elapsed() >= ROOM_WAIT {
            return None;
        }
        tokio::time::sleep(ROOM_POLL).await;
        let now = publisher.upgrade()?.sender.len();
        if now < queued {
            since_read = Instant::now();
        }
        queued = now;
    }
    Some(TELL_BELOW - queued)
}

/// What is gathered: the appends' lists of users, as they came (taking one costs no more
/// than its `Arc`), merged when told, or once they hold twice as many users as after the last
/// merge, so that a long wait holds each user about once.
#[derive(Debug, Default)]
struct Gathered {
    lists: Vec<Arc<[UserId]>>,
    users: usize,
    merged_at: usize,
}

/// The gathered lists are merged in place once they hold this many users, and twice as many as
/// after the last merge.
const MERGE_FROM: usize = 65_536;

impl Gathered {
    fn add(&mut self, users: Arc<[UserId]>) {
        self.users += users.len();
        self.lists.push(users);
        if self.users >= MERGE_FROM.max(2 * self.merged_at) {
            self.lists = merged(std::mem::take(&mut self.lists), true);
            self.users = self.lists.iter().map(|l| l.len()).sum();
            self.merged_at = self.users;
        }
    }
}

/// Gathered lists as the lists of signals: one of [`LARGE`] users or more as it is (a fan-out's
/// chunk, a signal already), unless `all`; the users of the others each once, in chunks of
/// [`FANOUT_CHUNK`].
fn merged(lists: Vec<Arc<[UserId]>>, all: bool) -> Vec<Arc<[UserId]>> {
    let mut out = Vec::new();
    let mut seen = HashSet::default();
    let mut users = Vec::new();
    for list in lists {
        if list.len() >= LARGE && !all {
            out.push(list);
        } else {
            users.extend(list.iter().filter(|u| seen.insert((*u).clone())).cloned());
        }
    }
    out.extend(users.chunks(FANOUT_CHUNK).map(Arc::from));
    out
}

/// The task that tells the gathered users. Dropped before it is done (its runtime shut down),
/// it tells them at once: no user is left gathered, and gathering stops. It holds the
/// publisher weakly, so that a storage dropped meanwhile closes its channel at once.
struct Telling {
    publisher: Weak<Publisher>,
    done: bool,
}

impl Drop for Telling {
    fn drop(&mut self) {
        if let Some(publisher) = self.publisher.upgrade().filter(|_| !self.done) {
            while publisher.tell_gathered(usize::MAX) {}
        }
    }
}

/// Tells the users gathered, every [`ROOM_POLL`] while appends come, until one passes with
/// none gathered: the burst is over, and appends are published at once again.
async fn tell(mut telling: Telling) {
    loop {
        tokio::time::sleep(ROOM_POLL).await;
        let room = room(&telling.publisher).await;
        let Some(publisher) = telling.publisher.upgrade() else {
            telling.done = true;
            return;
        };
        let Some(room) = room else {
            publisher.tell_all_unread();
            telling.done = true;
            return;
        };
        if !publisher.tell_gathered(room) {
            telling.done = true;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 50,000 appends to as many users (three times what the channel holds) before the
    /// subscriber reads one: it never lags, and learns of every user, in far fewer signals.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_appends_is_told_without_a_lag() {
        const USERS: usize = 50_000;
        let publisher = Arc::new(Publisher::new());
        let mut rx = publisher.sender().subscribe();
        for i in 0..USERS {
            publisher.publish(Signal::Appended {
                users: Arc::from([UserId::from(format!("u{i}").as_str())]),
            });
        }
        // Other signals are not held back.
        publisher.publish(Signal::Resync);
        let mut told = HashSet::default();
        let mut signals = 0;
        let mut resync = false;
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            while told.len() < USERS || !resync {
                match rx.recv().await {
                    Ok(Signal::Appended { users }) => told.extend(users.iter().cloned()),
                    Ok(Signal::Resync) => resync = true,
                    Ok(other) => panic!("a signal never published: {other:?}"),
                    Err(e) => panic!("the subscriber lagged: {e}"),
                }
                signals += 1;
            }
        })
        .await;
        assert!(read.is_ok(), "{} of {USERS} users told", told.len());
        // Those past half the channel in about one signal per chunk and per telling (one a
        // millisecond, so how many depends on how long the loop above took).
        assert!(
            signals < SIGNAL_CAPACITY,
            "{signals} signals for {USERS} appends"
        );
        // Once the burst is told, gathering stops: the next append is published at once.
        let since = Instant::now();
        while publisher.gathering.load(Ordering::Acquire) {
            assert!(since.elapsed() < Duration::from_secs(5), "still gathering");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        publisher.publish(Signal::Appended {
            users: Arc::from([UserId::from("late")]),
        });
        assert!(matches!(
            rx.try_recv(),
            Ok(Signal::Appended { users }) if *users == [UserId::from("late")]
        ));
    }

    /// With the channel three quarters full and nobody reading, the gathered users wait for
    /// room, then are told anyway once the wait is over: a subscriber that stopped reading
    /// holds nothing back for longer.
    #[tokio::test]
    async fn gathered_users_wait_for_room_while_nobody_reads_then_are_told() {
        const USERS: usize = 1_000;
        let publisher = Arc::new(Publisher::new());
        let mut rx = publisher.sender().subscribe();
        for _ in 0..TELL_BELOW {
            publisher.publish(Signal::Resync);
        }
        for i in 0..USERS {
            publisher.publish(Signal::Appended {
                users: Arc::from([UserId::from(format!("u{i}").as_str())]),
            });
        }
        assert_eq!(
            rx.len(),
            TELL_BELOW,
            "appends published past half the channel"
        );
        let since = Instant::now();
        while publisher.gathering.load(Ordering::Acquire) {
            assert!(since.elapsed() < 5 * ROOM_WAIT, "still gathering");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(since.elapsed() >= ROOM_WAIT / 2, "told before the wait");
        let mut told = 0;
        while let Ok(signal) = rx.try_recv() {
            if let Signal::Appended { users } = signal {
                told += users.len();
            }
        }
        assert_eq!(told, USERS);
    }

    /// A subscriber that never reads (a second layer whose reader has not started) keeps the
    /// channel full for good: once it has read nothing for the wait, appends are no longer
    /// gathered, and reach the others at once again.
    #[tokio::test]
    async fn a_subscriber_that_never_reads_holds_back_nothing_after_the_wait() {
        let publisher = Arc::new(Publisher::new());
        let _idle = publisher.sender().subscribe();
        let mut rx = publisher.sender().subscribe();
        for _ in 0..TELL_BELOW {
            publisher.publish(Signal::Resync);
        }
        for i in 0..1_000 {
            publisher.publish(Signal::Appended {
                users: Arc::from([UserId::from(format!("u{i}").as_str())]),
            });
        }
        let since = Instant::now();
        while publisher.gathering.load(Ordering::Acquire) {
            assert!(since.elapsed() < 5 * ROOM_WAIT, "still gathering");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(since.elapsed() >= ROOM_WAIT / 2, "told before the wait");
        while rx.try_recv().is_ok() {}
        assert!(publisher.sender().len() >= GATHER_FROM, "the idle one read");
        publisher.publish(Signal::Appended {
            users: Arc::from([UserId::from("late")]),
        });
        assert!(
            matches!(
                rx.try_recv(),
                Ok(Signal::Appended { users }) if *users == [UserId::from("late")]
            ),
            "an append was held back for a subscriber that reads nothing"
        );
        assert!(!publisher.gathering.load(Ordering::Acquire));
    }

    /// A fan-out's chunks go out at once while the channel is under three quarters full, even
    /// while smaller appends are gathered.
    #[tokio::test]
    async fn a_fan_outs_chunks_are_not_gathered_below_three_quarters() {
        let publisher = Arc::new(Publisher::new());
        let mut rx = publisher.sender().subscribe();
        for i in 0..GATHER_FROM {
            publisher.publish(Signal::Appended {
                users: Arc::from([UserId::from(format!("u{i}").as_str())]),
            });
        }
        publisher.publish(Signal::Appended {
            users: Arc::from([UserId::from("small")]),
        });
        let chunk: Arc<[UserId]> = (0..FANOUT_CHUNK)
            .map(|i| UserId::from(format!("f{i}").as_str()))
            .collect();
        publisher.publish(Signal::Appended {
            users: chunk.clone(),
        });
        assert!(publisher.gathering.load(Ordering::Acquire));
        assert_eq!(rx.len(), GATHER_FROM + 1, "the chunk was held back");
        for _ in 0..GATHER_FROM {
            rx.try_recv().expect("a signal");
        }
        assert!(matches!(
            rx.try_recv(),
            Ok(Signal::Appended { users }) if Arc::ptr_eq(&users, &chunk)
        ));
    }

    /// A fan-out's chunks are told as they came; small appends' users once each, together.
    #[test]
    fn gathered_lists_merge_small_appends_and_keep_chunks() {
        let chunk = |name: &str| -> Arc<[UserId]> {
            (0..FANOUT_CHUNK)
                .map(|i| UserId::from(format!("{name}{i}").as_str()))
                .collect()
        };
        let users =
            |names: &[&str]| -> Arc<[UserId]> { names.iter().map(|n| UserId::from(*n)).collect() };
        let (a, b) = (chunk("a"), chunk("a"));
        let lists = vec![a.clone(), users(&["x"]), users(&["x", "y"]), b.clone()];
        let told = merged(lists.clone(), false);
        assert_eq!(told.len(), 3);
        assert!(Arc::ptr_eq(&told[0], &a) && Arc::ptr_eq(&told[1], &b));
        assert_eq!(&*told[2], &*users(&["x", "y"]));
        // Merged in place, the chunks too: each user once.
        let all = merged(lists, true);
        let count: usize = all.iter().map(|l| l.len()).sum();
        assert_eq!(count, FANOUT_CHUNK + 2);
        assert!(all.iter().all(|l| l.len() <= FANOUT_CHUNK));
    }

    /// Outside a runtime nothing is gathered: nothing could tell it.
    #[test]
    fn outside_a_runtime_every_signal_is_published_at_once() {
        let publisher = Arc::new(Publisher::new());
        let mut rx = publisher.sender().subscribe();
        for i in 0..GATHER_FROM + 10 {
            publisher.publish(Signal::Appended {
                users: Arc::from([UserId::from(format!("u{i}").as_str())]),
            });
        }
        assert!(!publisher.gathering.load(Ordering::Acquire));
        assert_eq!(rx.len(), GATHER_FROM + 10);
        assert!(rx.try_recv().is_ok());
    }
}
