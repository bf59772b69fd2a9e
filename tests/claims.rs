//! Claims under faults: a client's messages reach the handler once each and in order even when
//! a claim's answer is lost, or the request holding a claim died. The lost answer is resumed
//! by its own request; a dead holder's claim is taken over once its short lease ends, within
//! the retry's own request when it ends soon enough, else `pending` says when to come back.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use simpleio::storage::{Claim, DedupKey, DedupLimits};
use simpleio::{
    ClientId, Incoming, MemoryStorage, MessageId, Reply, SimpleIoLayer, Storage, UserId,
};
use support::faulty::FaultyStorage;
use support::server::TestServer;
use support::wire::Wire;
use tower::{BoxError, service_fn};

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
    let storage = FaultyStorage::new();
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
    storage.lose_claim_answers(2);
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

/// A resend of an id in progress waits for it in a mailbox of the hub's, bounded as the user's
/// polls are: with the user's one slot taken by a waiting poll, the resend does not wait but is
/// told at once to ask again soon (not after the pending wait, told the lease's rest).
#[tokio::test]
async fn a_resend_finding_the_users_waits_all_taken_is_told_to_ask_again_at_once() {
    let storage = MemoryStorage::new();
    let handled = Seen::default();
    let server = TestServer::start(
        SimpleIoLayer::builder()
            .hold_time(Duration::from_secs(5))
            .storage(storage.clone())
            .max_polls_per_user(1)
            .pending_wait(Duration::from_secs(3))
            .handler(service_fn(recording(&handled))),
    )
    .await;
    let limits = DedupLimits {
        lease: Duration::from_secs(10),
        per_client: 100,
        per_user: 100,
    };
    storage.claim(&key("m1"), 99, limits).await.expect("claim");
    let wire = Wire::new(&server);
    let mut other = wire.tab("ann", "tab2");
    other.receive().await;
    let waiting = tokio::spawn(async move { other.receive().await });
    support::wire::eventually("the poll waits", || server.io.waiting_polls() == 1).await;

    let acks = wire
        .tab("ann", "tab1")
        .send(json!([{"id": "m1", "event": "e"}]))
        .await;
    assert_eq!(acks[0]["pending"], json!(true), "{acks:?}");
    let wait = acks[0]["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(wait <= 1_000, "told to ask again in {wait} ms");
    assert!(seen(&handled).is_empty());
    waiting.abort();
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
