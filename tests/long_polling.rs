//! The long poll (guarantee 5 and 6): a waiting poll wakes at once on a new message, not on a
//! timer; an idle one answers empty after the hold time; a newer poll of the same client ends the
//! older; a client that goes away leaves nothing waiting; a response carries at most the batch
//! limit.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use simpleio::storage::{
    Appended, Claim, DedupKey, DedupLimits, DeliveryState, DeliveryTarget, Departure, Epoch,
    FetchBatch, FetchRequest, NewMessage, QueueLimits, Signal, StorageError,
};
use simpleio::{ClientId, Member, MemoryStorage, SimpleIoLayer, Storage, UserId};
use support::server::TestServer;
use support::wire::{
    SOON, Wire, assert_pending, eventually, finish, get_request, raw_request, start,
};
use tokio::sync::broadcast;
use tokio::time::{Instant, timeout};

/// Polls held long, and no timer that could stand in for a wakeup within the tests' bounds.
fn long_holds() -> simpleio::Builder {
    SimpleIoLayer::builder()
        .hold_time(Duration::from_secs(20))
        .recheck_interval(Duration::from_secs(20))
}

#[tokio::test]
async fn a_waiting_poll_wakes_at_once_on_a_new_message() {
    let server = TestServer::start(long_holds()).await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    let io = server.io.clone();
    tab.receive().await; // the handshake, answered at once

    // A poll with the handshake's cursor waits, and wakes for the first message.
    let poll = tokio::spawn({
        let tab = tab.clone();
        async move { tab.peek().await }
    });
    eventually("the first poll waits", || io.waiting_polls() == 1).await;
    let first = start(io.to("ann").emit("n", &1)).await;
    let got = tab.take(finish(poll, "the first poll, woken").await);
    assert_eq!(got.data(), [json!(1)]);

    // A poll with a cursor (confirming the first message) waits, and wakes for the second.
    let poll = tokio::spawn({
        let tab = tab.clone();
        async move { tab.peek().await }
    });
    assert!(finish(first, "the first emit").await.is_ok());
    eventually("the second poll waits", || io.waiting_polls() == 1).await;
    let second = start(io.to("ann").emit("n", &2)).await;
    let got = tab.take(finish(poll, "the second poll, woken").await);
    assert_eq!(got.data(), [json!(2)]);
    drop(second);
}

#[tokio::test]
async fn an_idle_poll_answers_empty_after_the_hold_time_with_the_same_cursor() {
    let hold = Duration::from_millis(400);
    let server = TestServer::start(SimpleIoLayer::builder().hold_time(hold)).await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    let sending = start(server.io.to("ann").emit("n", &1)).await;
    tab.receive().await;
    let (epoch, cursor) = (tab.epoch.clone(), tab.cursor);

    let asked = Instant::now();
    let idle = tab.receive().await;
    assert!(
        asked.elapsed() >= hold,
        "answered after {:?}, before the hold time",
        asked.elapsed()
    );
    assert!(
        idle.messages.is_empty() && idle.volatile.is_empty(),
        "{idle:?}"
    );
    assert_eq!((Some(idle.epoch), Some(idle.cursor)), (epoch, cursor));
    assert!(finish(sending, "the emit").await.is_ok());
}

#[tokio::test]
async fn a_newer_poll_of_the_same_client_ends_the_older_one() {
    let server = TestServer::start(long_holds()).await;
    let wire = Wire::new(&server);
    let io = server.io.clone();
    let mut tab = wire.tab("ann", "tab1");
    let first = start(io.to("ann").emit("n", &0)).await;
    tab.receive().await;

    let mut older = tokio::spawn({
        let tab = tab.clone();
        async move { tab.peek().await }
    });
    eventually("the older poll waits", || io.waiting_polls() == 1).await;

    // Another client's poll, or another user's with the same client id, ends nothing.
    let others: Vec<_> = [("ann", "tab2"), ("bob", "tab1")]
        .into_iter()
        .map(|(user, client)| wire.tab(user, client))
        .collect::<Vec<_>>();
    let mut handshaken = Vec::new();
    for mut tab in others {
        tab.receive().await; // the handshake, answered at once
        handshaken.push(tab);
    }
    let others: Vec<_> = handshaken
        .into_iter()
        .map(|tab| tokio::spawn(async move { tab.peek().await }))
        .collect();
    eventually("three polls wait", || io.waiting_polls() == 3).await;
    assert_pending(&mut older, "the older poll after other clients polled").await;

    // The same client polls again: the older poll answers at once, empty, with its cursor.
    let newer = tokio::spawn({
        let tab = tab.clone();
        async move { tab.peek().await }
    });
    let ended = finish(older, "the older poll").await;
    assert!(ended.messages.is_empty(), "{ended:?}");
    assert_eq!(Some(ended.cursor), tab.cursor);
    assert!(
        ended.taken_over,
        "the ended poll does not say a newer one took over"
    );
    assert_eq!(
        io.waiting_polls(),
        3,
        "the newer poll and the others still wait"
    );

    // The newer poll is the one that gets the next message.
    let second = start(io.to("ann").emit("n", &1)).await;
    let got = tab.take(finish(newer, "the newer poll").await);
    assert_eq!(got.data(), [json!(1)]);
    assert!(finish(first, "the first emit").await.is_ok());
    drop((second, others));
}

#[tokio::test]
async fn a_client_that_disconnects_mid_wait_leaks_nothing() {
    let server = TestServer::start(
        SimpleIoLayer::builder()
            .hold_time(Duration::from_millis(500))
            .recheck_interval(Duration::from_millis(100)),
    )
    .await;
    let io = server.io.clone();
    let mut streams = Vec::new();
    for n in 0..10 {
        // After its handshake a client's poll waits; that is the one dropped.
        let mut tab = Wire::new(&server).tab("ann", &format!("tab{n}"));
        tab.receive().await;
        let request = get_request(&format!("/simpleio?{}", tab.query()), "ann");
        streams.push(raw_request(server.addr, &request).await);
    }
    eventually("ten polls wait", || io.waiting_polls() == 10).await;
    drop(streams);
    eventually("no poll is left waiting", || io.waiting_polls() == 0).await;

    // The server still serves, and the user's messages still arrive.
    let sending = start(io.to("ann").emit("n", &1)).await;
    let mut tab = Wire::new(&server).tab("ann", "tab0");
    assert_eq!(tab.receive().await.data(), [json!(1)]);
    tab.receive().await;
    assert!(finish(sending, "the emit").await.is_ok());
    assert_eq!(io.waiting_polls(), 0);
}

#[tokio::test]
async fn a_response_carries_at_most_the_batch_limit_and_the_rest_follow() {
    let server = TestServer::start(
        SimpleIoLayer::builder()
            .hold_time(Duration::from_millis(300))
            .batch_limit(3),
    )
    .await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    let mut sends = Vec::new();
    for n in 0..7 {
        sends.push(start(server.io.to("ann").emit("n", &n)).await);
    }

    let mut batches = Vec::new();
    for _ in 0..3 {
        batches.push(tab.receive().await);
    }
    let sizes: Vec<usize> = batches.iter().map(|b| b.messages.len()).collect();
    assert_eq!(sizes, [3, 3, 1]);
    for batch in &batches {
        assert_eq!(batch.cursor, batch.messages.last().expect("a message").pos);
    }
    let data: Vec<Value> = batches.iter().flat_map(|b| b.data()).collect();
    assert_eq!(data, (0..7).map(|n| json!(n)).collect::<Vec<_>>());

    // The first three were confirmed by the second poll, the next three by the third.
    for send in sends.drain(..6) {
        assert!(finish(send, "a confirmed emit").await.is_ok());
    }
    tab.receive().await;
    assert!(finish(sends.remove(0), "the last emit").await.is_ok());
}

/// A storage whose next `fetch` takes a while to come back after reading, as a networked
/// store's answer does: signals published meanwhile reach the poll before the answer.
#[derive(Debug, Clone)]
struct SlowAnswers {
    inner: MemoryStorage,
    slow_next: Arc<AtomicBool>,
    read_done: Arc<AtomicBool>,
}

impl SlowAnswers {
    fn new() -> Self {
        SlowAnswers {
            inner: MemoryStorage::new(),
            slow_next: Arc::new(AtomicBool::new(false)),
            read_done: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Makes the next fetch slow; `read_done` turns true once it has read.
    fn slow_down_next_fetch(&self) {
        self.read_done.store(false, Ordering::SeqCst);
        self.slow_next.store(true, Ordering::SeqCst);
    }
}

#[async_trait]
impl Storage for SlowAnswers {
    async fn epoch(&self) -> Result<Epoch, StorageError> {
        self.inner.epoch().await
    }
    async fn append(
        &self,
        messages: Vec<NewMessage>,
        limits: QueueLimits,
    ) -> Result<Appended, StorageError> {
        self.inner.append(messages, limits).await
    }
    async fn fetch(&self, request: FetchRequest) -> Result<FetchBatch, StorageError> {
        let batch = self.inner.fetch(request).await;
        if self.slow_next.swap(false, Ordering::SeqCst) {
            self.read_done.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        batch
    }
    async fn delivery(
        &self,
        epoch: &Epoch,
        targets: &[DeliveryTarget],
    ) -> Result<Vec<DeliveryState>, StorageError> {
        self.inner.delivery(epoch, targets).await
    }
    async fn claim(
        &self,
        key: &DedupKey,
        owner: u64,
        limits: DedupLimits,
    ) -> Result<Claim, StorageError> {
        self.inner.claim(key, owner, limits).await
    }
    async fn renew(
        &self,
        key: &DedupKey,
        owner: u64,
        lease: Duration,
    ) -> Result<bool, StorageError> {
        self.inner.renew(key, owner, lease).await
    }
    async fn complete(
        &self,
        key: &DedupKey,
        outcome: &str,
        ttl: Duration,
    ) -> Result<(), StorageError> {
        self.inner.complete(key, outcome, ttl).await
    }
    async fn live_users(&self) -> Result<Vec<UserId>, StorageError> {
        self.inner.live_users().await
    }
    async fn live_clients(&self, user: &UserId) -> Result<Vec<ClientId>, StorageError> {
        self.inner.live_clients(user).await
    }
    async fn reap(&self) -> Result<Vec<Departure>, StorageError> {
        self.inner.reap().await
    }
    async fn join(&self, room: &str, member: &Member, ttl: Duration) -> Result<(), StorageError> {
        self.inner.join(room, member, ttl).await
    }
    async fn leave(&self, room: &str, member: &Member) -> Result<(), StorageError> {
        self.inner.leave(room, member).await
    }
    async fn members(&self, room: &str) -> Result<Vec<Member>, StorageError> {
        self.inner.members(room).await
    }
    async fn rooms(&self, member: &Member) -> Result<Vec<Arc<str>>, StorageError> {
        self.inner.rooms(member).await
    }
    async fn set_data(
        &self,
        member: &Member,
        key: &str,
        value: Option<&str>,
        ttl: Duration,
    ) -> Result<(), StorageError> {
        self.inner.set_data(member, key, value, ttl).await
    }
    async fn get_data(&self, member: &Member, key: &str) -> Result<Option<String>, StorageError> {
        self.inner.get_data(member, key).await
    }
    async fn publish(&self, signal: Signal) -> Result<(), StorageError> {
        self.inner.publish(signal).await
    }
    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.inner.subscribe()
    }
}

#[tokio::test]
async fn a_message_stored_while_the_poll_reads_still_wakes_it() {
    let storage = SlowAnswers::new();
    let server = TestServer::start(long_holds().storage(storage.clone())).await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    let first = start(server.io.to("ann").emit("n", &0)).await;
    tab.receive().await;

    // The poll reads an empty log; the message is stored, and its wakeup delivered, before
    // the read's answer is back.
    storage.slow_down_next_fetch();
    let poll = tokio::spawn({
        let tab = tab.clone();
        async move { tab.peek().await }
    });
    let read = storage.read_done.clone();
    eventually("the poll has read", || read.load(Ordering::SeqCst)).await;
    let second = start(server.io.to("ann").emit("n", &1)).await;

    let got = timeout(SOON, poll)
        .await
        .expect("the poll missed the wakeup that came during its read")
        .expect("the poll task");
    assert_eq!(tab.take(got).data(), [json!(1)]);
    assert!(finish(first, "the first emit").await.is_ok());
    drop(second);
}

#[tokio::test]
async fn a_newer_poll_that_starts_while_the_older_reads_still_ends_it() {
    let storage = SlowAnswers::new();
    let server = TestServer::start(long_holds().storage(storage.clone())).await;
    let wire = Wire::new(&server);
    let mut tab = wire.tab("ann", "tab1");
    let first = start(server.io.to("ann").emit("n", &0)).await;
    tab.receive().await;

    storage.slow_down_next_fetch();
    let older = tokio::spawn({
        let tab = tab.clone();
        async move { tab.peek().await }
    });
    let read = storage.read_done.clone();
    eventually("the older poll has read", || read.load(Ordering::SeqCst)).await;
    let newer = tokio::spawn({
        let tab = tab.clone();
        async move { tab.peek().await }
    });

    let ended = timeout(SOON, older)
        .await
        .expect("the older poll missed the newer poll's start, which came during its read")
        .expect("the poll task");
    assert!(ended.messages.is_empty());
    let io = server.io.clone();
    eventually("only the newer poll waits", || io.waiting_polls() == 1).await;
    assert!(finish(first, "the first emit").await.is_ok());
    drop(newer);
}

#[tokio::test]
async fn a_first_poll_without_a_cursor_is_answered_at_once() {
    let server = TestServer::start(long_holds()).await;
    let tab = Wire::new(&server).tab("ann", "tab1");
    let handshake = tokio::spawn({
        let tab = tab.clone();
        async move { tab.peek().await }
    });
    let batch = finish(handshake, "the handshake").await;
    assert!(batch.messages.is_empty(), "{batch:?}");
    assert!(!batch.epoch.is_empty(), "the handshake must name the epoch");
    assert_eq!(server.io.waiting_polls(), 0);
}

#[tokio::test]
async fn a_handshake_advertises_the_servers_limits() {
    let server = TestServer::start(
        long_holds()
            .batch_limit(7)
            .max_body(4_096)
            .max_messages_per_request(9),
    )
    .await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    let handshake = tab.receive().await;
    let limits = handshake.limits.expect("the handshake carries the limits");
    assert_eq!(limits["batch_limit"], 7);
    assert_eq!(limits["max_body"], 4_096);
    assert_eq!(limits["max_messages"], 9);
    assert!(limits["hold_ms"].as_u64().is_some_and(|ms| ms > 0));
    assert!(!handshake.taken_over);
    // Later polls do not repeat them.
    let io = server.io.clone();
    let sent = start(io.to("ann").emit("n", &1)).await;
    let next = tab.receive().await;
    assert!(next.limits.is_none());
    drop(sent);
}
