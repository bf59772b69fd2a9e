//! A `MemoryStorage` with faults a networked store has, switched on by the test: an answer that
//! comes back late (the read is done, the reply still on its way), or an answer that is lost
//! (the command ran, the reply timed out). Every other call goes straight through.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use simpleio::storage::{
    Appended, Claim, DedupKey, DedupLimits, DeliveryState, DeliveryTarget, Departure, Epoch,
    FetchBatch, FetchRequest, NewMessage, NewReply, QueueLimits, RecordedReply, ReplyLimits,
    ReplyOutcome, Signal, StorageError,
};
use simpleio::{ClientId, Member, MemoryStorage, Storage, UserId};
use tokio::sync::broadcast;

#[derive(Debug, Clone, Default)]
pub struct FaultyStorage {
    pub inner: MemoryStorage,
    slow_next_fetch: Arc<AtomicBool>,
    /// Turns true once a fetch made slow by [`slow_down_next_fetch`](Self::slow_down_next_fetch)
    /// has read.
    pub read_done: Arc<AtomicBool>,
    lose_claim_answers: Arc<AtomicUsize>,
    stall_live_clients: Arc<AtomicBool>,
}

impl FaultyStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next fetch come back 300 ms after it read.
    pub fn slow_down_next_fetch(&self) {
        self.read_done.store(false, Ordering::SeqCst);
        self.slow_next_fetch.store(true, Ordering::SeqCst);
    }

    /// From now on `live_clients` never answers, as a store whose every connection is busy.
    pub fn stall_live_clients(&self) {
        self.stall_live_clients.store(true, Ordering::SeqCst);
    }

    /// The next `n` claims run, but answer `Unavailable`, as a reply that timed out.
    pub fn lose_claim_answers(&self, n: usize) {
        self.lose_claim_answers.store(n, Ordering::SeqCst);
    }
}

#[async_trait]
impl Storage for FaultyStorage {
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
        if self.slow_next_fetch.swap(false, Ordering::SeqCst) {
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
    async fn reply(
        &self,
        reply: NewReply,
        limits: ReplyLimits,
    ) -> Result<ReplyOutcome, StorageError> {
        self.inner.reply(reply, limits).await
    }
    async fn replies(
        &self,
        epoch: &Epoch,
        targets: &[DeliveryTarget],
    ) -> Result<Vec<Vec<RecordedReply>>, StorageError> {
        self.inner.replies(epoch, targets).await
    }
    async fn claim(
        &self,
        key: &DedupKey,
        owner: u64,
        limits: DedupLimits,
    ) -> Result<Claim, StorageError> {
        let claim = self.inner.claim(key, owner, limits).await;
        let lost = self
            .lose_claim_answers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lost {
            return Err(StorageError::Unavailable("the answer timed out".into()));
        }
        claim
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
        if self.stall_live_clients.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
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
