//! Claims under faults: a client's messages reach the handler once each and in order even when
//! a claim's answer is lost, or the request holding a claim died. The lost answer is resumed
//! by its own request; a dead holder's claim is taken over once its short lease ends, within
//! the retry's own request when it ends soon enough, else `pending` says when to come back.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use simpleio::storage::{
    Appended, Claim, DedupKey, DedupLimits, DeliveryState, DeliveryTarget, Departure, Epoch,
    FetchBatch, FetchRequest, NewMessage, QueueLimits, Signal, StorageError,
};
use simpleio::{
    ClientId, Incoming, Member, MemoryStorage, MessageId, Reply, SimpleIoLayer, Storage, UserId,
};
use support::server::TestServer;
use support::wire::Wire;
use tokio::sync::broadcast;
use tower::{BoxError, service_fn};

/// A `MemoryStorage` whose next claims run but whose answers are lost, as a networked store's
/// can be (the command ran; the reply timed out).
#[derive(Debug, Clone)]
struct LosesClaimAnswers {
    inner: MemoryStorage,
    lose: Arc<AtomicUsize>,
}

#[async_trait]
impl Storage for LosesClaimAnswers {
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
        self.inner.fetch(request).await
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
        let claim = self.inner.claim(key, owner, limits).await;
        let lost = self
            .lose
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

/// Every message id the handler saw, in order.
type Seen = Arc<Mutex<Vec<String>>>;

fn recording(
    seen: &Seen,
) -> impl Fn(Incoming) -> std::future::Ready<Result<Reply, BoxError>> + Clone + use<> {
    let seen = seen.clone();
    move |msg: Incoming| {
        seen.lock().expect("lock").push(msg.id.to_string());
        std::future::ready(Ok(Reply::from(json!({"ok": msg.id.to_string()}))))
    }
}

fn seen(seen: &Seen) -> Vec<String> {
    seen.lock().expect("lock").clone()
}

#[tokio::test]
async fn a_claim_whose_answer_was_lost_is_resumed_by_its_request() {
    let storage = LosesClaimAnswers {
        inner: MemoryStorage::new(),
        lose: Arc::new(AtomicUsize::new(0)),
    };
    let handled = Seen::default();
    let server = TestServer::start(
        SimpleIoLayer::builder()
            .hold_time(Duration::from_millis(300))
            .storage(storage.clone())
            .handler(service_fn(recording(&handled))),
    )
    .await;
    let tab = Wire::new(&server).tab("ann", "tab1");
    // The first claim of m1 runs, but its answer is lost twice.
    storage.lose.store(2, Ordering::SeqCst);
    let acks = tab
        .send(json!([{"id": "m1", "event": "e"}, {"id": "m2", "event": "e"}]))
        .await;
    assert_eq!(acks[0]["reply"], json!({"ok": "m1"}), "{acks:?}");
    assert_eq!(acks[1]["reply"], json!({"ok": "m2"}), "{acks:?}");
    assert_eq!(seen(&handled), ["m1", "m2"], "handled once each, in order");
}

fn key(id: &str) -> DedupKey {
    DedupKey {
        user: UserId::from("ann"),
        client: ClientId::new("tab1").expect("id"),
        id: MessageId::new(id).expect("id"),
    }
}

#[tokio::test]
async fn a_dead_holders_claim_is_taken_over_when_its_short_lease_ends() {
    let storage = MemoryStorage::new();
    let handled = Seen::default();
    let server = TestServer::start(
        SimpleIoLayer::builder()
            .hold_time(Duration::from_millis(300))
            .storage(storage.clone())
            .handler_lease(Duration::from_millis(800))
            .pending_wait(Duration::from_secs(3))
            .handler(service_fn(recording(&handled))),
    )
    .await;
    // A request claimed m1 and died: nobody renews its claim.
    let limits = DedupLimits {
        lease: Duration::from_millis(800),
        per_client: 100,
        per_user: 100,
    };
    assert_eq!(
        storage.claim(&key("m1"), 99, limits).await.expect("claim"),
        Claim::Acquired
    );
    let tab = Wire::new(&server).tab("ann", "tab1");
    let started = tokio::time::Instant::now();
    let acks = tab
        .send(json!([{"id": "m1", "event": "e"}, {"id": "m2", "event": "e"}]))
        .await;
    assert_eq!(acks[0]["reply"], json!({"ok": "m1"}), "{acks:?}");
    assert_eq!(acks[1]["reply"], json!({"ok": "m2"}), "{acks:?}");
    assert_eq!(seen(&handled), ["m1", "m2"]);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the retry waited out its whole pending wait"
    );
}

#[tokio::test]
async fn a_claim_held_longer_than_the_pending_wait_answers_pending_with_when_to_retry() {
    let storage = MemoryStorage::new();
    let handled = Seen::default();
    let server = TestServer::start(
        SimpleIoLayer::builder()
            .hold_time(Duration::from_millis(300))
            .storage(storage.clone())
            .pending_wait(Duration::from_millis(300))
            .handler(service_fn(recording(&handled))),
    )
    .await;
    let limits = DedupLimits {
        lease: Duration::from_secs(2),
        per_client: 100,
        per_user: 100,
    };
    storage.claim(&key("m1"), 99, limits).await.expect("claim");
    let tab = Wire::new(&server).tab("ann", "tab1");
    let acks = tab
        .send(json!([{"id": "m1", "event": "e"}, {"id": "m2", "event": "e"}]))
        .await;
    assert_eq!(acks[0]["pending"], json!(true), "{acks:?}");
    let wait = acks[0]["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!((1_000..=2_000).contains(&wait), "retry_after_ms {wait}");
    // m2 waits behind m1: order is kept, and it is told the same.
    assert_eq!(acks[1]["pending"], json!(true), "{acks:?}");
    assert_eq!(acks[1]["retry_after_ms"].as_u64(), Some(wait));
    assert!(
        seen(&handled).is_empty(),
        "a message ran before the one it follows"
    );
    // Sent again after the wait, both are handled, in order.
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let acks = tab
        .send(json!([{"id": "m1", "event": "e"}, {"id": "m2", "event": "e"}]))
        .await;
    assert_eq!(acks[0]["reply"], json!({"ok": "m1"}), "{acks:?}");
    assert_eq!(seen(&handled), ["m1", "m2"]);
}

#[tokio::test]
async fn a_handler_slower_than_its_lease_is_not_run_twice() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let server = TestServer::start(
        SimpleIoLayer::builder()
            .hold_time(Duration::from_millis(300))
            .handler_lease(Duration::from_millis(300))
            .pending_wait(Duration::from_millis(200))
            .handler(service_fn(move |_msg: Incoming| {
                counted.fetch_add(1, Ordering::SeqCst);
                async {
                    tokio::time::sleep(Duration::from_millis(1_500)).await;
                    Ok::<_, BoxError>(Reply::from(json!("slow")))
                }
            })),
    )
    .await;
    let tab = Wire::new(&server).tab("ann", "tab1");
    let first = tokio::spawn({
        let tab = tab.clone();
        async move { tab.send(json!([{"id": "m1", "event": "e"}])).await }
    });
    // Retries while it runs, past several lease lengths: the renewed claim holds.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let acks = tab.send(json!([{"id": "m1", "event": "e"}])).await;
        if acks[0].get("reply").is_some() {
            break;
        }
        assert_eq!(acks[0]["pending"], json!(true), "{acks:?}");
    }
    assert_eq!(first.await.expect("first")[0]["reply"], json!("slow"));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a renewed claim was taken over"
    );
}
