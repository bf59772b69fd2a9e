//! Publishing the storage's signals, without a burst of appends overflowing the channel.
//!
//! Each append call signals the users it appended to. Thousands of senders emitting at once
//! each run several appends before the hub's task runs once (it reads on the same threads, and
//! yields every 128 signals): 2,000 senders with 32 messages each in flight made 64,000 signals
//! at the start of a run, four times what the channel holds, and every overflow makes each
//! waiting poll and send read the storage again (`Signal::Resync`). So once the channel is half
//! full, further appends are gathered instead (a fan-out's chunks only past three quarters),
//! and a task tells them every millisecond while the burst goes on, in the order they came:
//! the small appends' users each once, in signals of [`FANOUT_CHUNK`] users, as many as the
//! channel has room for, the rest kept for the next telling in front of newer ones. A few
//! signals for the whole burst; the rest once it has room, or after [`ROOM_WAIT`] with nobody
//! reading. Appends are hints to re-read a user's log, so one told later, or together with
//! others, is still right; every other signal goes out at once.

use std::collections::VecDeque;
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
    /// Set while users are gathered (and a task will tell them): every small append's users
    /// are then gathered too, behind those gathered before them, and told in that order, so
    /// that none waits behind appends that came after it. A fan-out's chunk is gathered only
    /// past three quarters ([`Publisher::publish`]): below, it goes out at once, ahead of the
    /// small appends gathered.
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

    /// Publishes up to `room` signals of the users gathered, the oldest first ([`told`]); once
    /// there are none, stops gathering. Whether there were any. The work is what it tells, not
    /// what stays gathered: with little room and a long backlog, each telling takes the front
    /// of it and puts the rest back in front of what came meanwhile, as it was.
    fn tell_gathered(&self, room: usize) -> bool {
        let (mut lists, users) = {
            let mut gathered = self.lock();
            if gathered.lists.is_empty() {
                gathered.merged_at = 0;
                self.gathering.store(false, Ordering::Release);
                return false;
            }
            let users = std::mem::take(&mut gathered.users);
            (std::mem::take(&mut gathered.lists), users)
        };
        let (signals, taken) = told(&mut lists, room.max(1));
        if !lists.is_empty() {
            self.lock().put_back(lists, users - taken);
        }
        for users in signals {
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
/// than its `Arc`), in the order they came; each user told once per telling ([`told`]), and the
/// lists merged in place once they hold twice as many users as after the last merge, so that a
/// long wait holds each user about once.
#[derive(Debug, Default)]
struct Gathered {
    lists: VecDeque<Arc<[UserId]>>,
    users: usize,
    merged_at: usize,
}

/// The gathered lists are merged in place once they hold this many users, and twice as many as
/// after the last merge.
const MERGE_FROM: usize = 65_536;

impl Gathered {
    fn add(&mut self, users: Arc<[UserId]>) {
        self.users += users.len();
        self.lists.push_back(users);
        if self.users >= MERGE_FROM.max(2 * self.merged_at) {
            self.lists = merged(std::mem::take(&mut self.lists));
            self.users = self.lists.iter().map(|l| l.len()).sum();
            self.merged_at = self.users;
        }
    }

    /// Puts back `lists`, holding `users`, taken off the front and not told: in front of what
    /// was gathered meanwhile, as they were (merged already, or small).
    fn put_back(&mut self, mut lists: VecDeque<Arc<[UserId]>>, users: usize) {
        lists.append(&mut self.lists);
        self.lists = lists;
        self.users += users;
    }
}

/// Gathered lists merged in place: their users each once, at their first place, in lists of
/// [`FANOUT_CHUNK`].
fn merged(lists: VecDeque<Arc<[UserId]>>) -> VecDeque<Arc<[UserId]>> {
    let mut seen = HashSet::default();
    let users: Vec<UserId> = lists
        .iter()
        .flat_map(|list| list.iter())
        .filter(|u| seen.insert((*u).clone()))
        .cloned()
        .collect();
    users.chunks(FANOUT_CHUNK).map(Arc::from).collect()
}

/// Up to `room` signals (at least one) from the front of the gathered lists, in the order they
/// came, and how many users were taken off them: a list of [`LARGE`] users or more (a
/// fan-out's chunk, a signal already) as it is; the users of the smaller ones between two such
/// each once, in lists of [`FANOUT_CHUNK`]. What is left stays in `lists`, untouched.
fn told(lists: &mut VecDeque<Arc<[UserId]>>, room: usize) -> (Vec<Arc<[UserId]>>, usize) {
    let mut signals: Vec<Arc<[UserId]>> = Vec::new();
    let mut small: Vec<UserId> = Vec::new();
    let mut seen = HashSet::default();
    let mut taken = 0;
    // The small users not sent yet make one signal more.
    while signals.len() + usize::from(!small.is_empty()) < room {
        let Some(list) = lists.pop_front() else {
            break;
        };
        if list.len() >= LARGE {
            // Room for both: the loop's test counted the small users' signal.
            if !small.is_empty() {
                signals.push(Arc::from(std::mem::take(&mut small)));
            }
            taken += list.len();
            signals.push(list);
        } else {
            taken += list.len();
            small.extend(list.iter().filter(|u| seen.insert((*u).clone())).cloned());
            if small.len() >= FANOUT_CHUNK {
                signals.push(small.drain(..FANOUT_CHUNK).collect());
            }
        }
    }
    if !small.is_empty() {
        signals.push(Arc::from(small));
    }
    (signals, taken)
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

    fn names(names: &[&str]) -> Arc<[UserId]> {
        names.iter().map(|n| UserId::from(*n)).collect()
    }

    fn chunk(prefix: &str) -> Arc<[UserId]> {
        (0..FANOUT_CHUNK)
            .map(|i| UserId::from(format!("{prefix}{i}").as_str()))
            .collect()
    }

    /// Told in the order they came: a fan-out's chunks as they are, the small appends' users
    /// between two chunks together, each user once; with little room, the front only, the rest
    /// left as it was.
    #[test]
    fn gathered_lists_are_told_in_order_chunks_as_they_are() {
        let (a, b) = (chunk("a"), chunk("b"));
        let gathered = [
            names(&["x"]),
            a.clone(),
            names(&["x", "y"]),
            b.clone(),
            names(&["z"]),
        ];
        let mut lists: VecDeque<_> = gathered.iter().cloned().collect();
        let (signals, taken) = told(&mut lists, usize::MAX);
        assert_eq!(signals.len(), 5);
        assert_eq!(&*signals[0], &*names(&["x"]));
        assert!(Arc::ptr_eq(&signals[1], &a) && Arc::ptr_eq(&signals[3], &b));
        assert_eq!(&*signals[2], &*names(&["y"]), "x was told already");
        assert_eq!(&*signals[4], &*names(&["z"]));
        assert_eq!(taken, 2 * FANOUT_CHUNK + 4);
        assert!(lists.is_empty());

        let mut lists: VecDeque<_> = gathered.iter().cloned().collect();
        let (signals, taken) = told(&mut lists, 2);
        assert_eq!(signals.len(), 2);
        assert!(Arc::ptr_eq(&signals[1], &a));
        assert_eq!(taken, FANOUT_CHUNK + 1);
        assert_eq!(lists.len(), 3);
        assert!(
            Arc::ptr_eq(&lists[0], &gathered[2]),
            "the rest is left as it was"
        );
    }

    /// Merged in place, the chunks too: each user once, at its first place.
    #[test]
    fn merging_keeps_each_user_once_in_order() {
        let lists = VecDeque::from([chunk("a"), names(&["x"]), chunk("a"), names(&["x", "y"])]);
        let all = merged(lists);
        let users: Vec<&UserId> = all.iter().flat_map(|l| l.iter()).collect();
        assert_eq!(users.len(), FANOUT_CHUNK + 2);
        assert!(all.iter().all(|l| l.len() <= FANOUT_CHUNK));
        assert_eq!(users[FANOUT_CHUNK].as_str(), "x");
        assert_eq!(users[FANOUT_CHUNK + 1].as_str(), "y");
    }

    /// A small append gathered while fan-out chunks keep coming, with room for one signal per
    /// telling, is told at the first: the chunks gathered after it wait behind it.
    #[test]
    fn a_small_append_is_not_held_behind_later_chunks() {
        let publisher = Arc::new(Publisher::new());
        let mut rx = publisher.sender().subscribe();
        publisher.gathering.store(true, Ordering::Release);
        publisher.lock().add(names(&["x"]));
        publisher.lock().add(chunk("c0-"));
        assert!(publisher.tell_gathered(1));
        assert!(matches!(
            rx.try_recv(),
            Ok(Signal::Appended { users }) if *users == *names(&["x"])
        ));
        // Each chunk in turn, the oldest first, while newer ones come.
        for round in 1..10 {
            publisher.lock().add(chunk(&format!("c{round}-")));
            assert!(publisher.tell_gathered(1));
            let Ok(Signal::Appended { users }) = rx.try_recv() else {
                panic!("nothing told in round {round}");
            };
            assert_eq!(users[0].as_str(), format!("c{}-0", round - 1));
        }
    }

    /// What a telling had no room for goes back in front of what was gathered meanwhile.
    #[test]
    fn the_rest_goes_back_in_front_of_what_came_meanwhile() {
        let mut gathered = Gathered::default();
        gathered.add(names(&["new"]));
        gathered.put_back(
            VecDeque::from([chunk("a"), names(&["x", "y"])]),
            FANOUT_CHUNK + 2,
        );
        let users: Vec<&str> = gathered
            .lists
            .iter()
            .flat_map(|l| l.iter().map(UserId::as_str))
            .collect();
        assert_eq!(users[0], "a0");
        assert_eq!(&users[FANOUT_CHUNK..], ["x", "y", "new"]);
        assert_eq!(gathered.users, FANOUT_CHUNK + 3);
    }

    /// Telling a few of a large backlog takes them off its front and merges nothing again:
    /// the rest was merged when it was gathered, and is put back as it was.
    #[test]
    fn telling_a_few_leaves_the_rest_as_it_was() {
        const USERS: usize = 200_000;
        let publisher = Arc::new(Publisher::new());
        let _rx = publisher.sender().subscribe();
        publisher.gathering.store(true, Ordering::Release);
        for i in 0..USERS {
            publisher
                .lock()
                .add(Arc::from([UserId::from(format!("u{i}").as_str())]));
        }
        let (lists, merged_at) = {
            let g = publisher.lock();
            (g.lists.len(), g.merged_at)
        };
        assert!(merged_at > 0, "merged while gathered");
        assert!(publisher.tell_gathered(1));
        let g = publisher.lock();
        assert_eq!(g.merged_at, merged_at, "merged again when told");
        assert_eq!(g.lists.len(), lists - 1);
        assert_eq!(g.users, g.lists.iter().map(|l| l.len()).sum::<usize>());
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
