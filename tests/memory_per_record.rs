//! What each bounded resource costs in `MemoryStorage`, counted by a counting allocator: a
//! dedup record, a client id. The guide's "Running in production" multiplies these by the
//! bounds to say what the bounds cost. One test, so nothing else allocates meanwhile.

use std::sync::Arc;
use std::time::Duration;

use simpleio::storage::{Claim, DEFAULT_NAMESPACE, DedupKey, DedupLimits, FetchRequest};
use simpleio::{ClientId, MemoryStorage, MessageId, Storage, UserId};

#[path = "support/counting.rs"]
mod counting;

const N: usize = 20_000;

/// Live bytes added per item by `add`, called `N` times.
async fn per_item<F, Fut>(mut add: F) -> f64
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let before = counting::live();
    for i in 0..N {
        add(i).await;
    }
    (counting::live() - before) as f64 / N as f64
}

#[tokio::test(flavor = "current_thread")]
async fn what_a_dedup_record_and_a_client_id_cost() {
    let limits = DedupLimits {
        lease: Duration::from_secs(60),
        per_client: usize::MAX,
        per_user: usize::MAX,
    };
    let window = Duration::from_secs(600);
    let storage = MemoryStorage::new();
    // Ids as the JS client makes them: the client id and a counter.
    let key = |user: &str, i: usize| DedupKey {
        user: UserId::from(user),
        client: ClientId::new("k2J8mW0qZr5tYb1x").expect("id"),
        id: MessageId::new(format!("k2J8mW0qZr5tYb1x-{i}")).expect("id"),
    };
    // Warm-up: the shards' maps and the signal channel's first allocations.
    for i in 0..100 {
        let k = key("warm", i);
        storage.claim(&k, 1, limits).await.expect("claim");
        storage
            .complete(&k, "{\"reply\":null}", window)
            .await
            .expect("complete");
    }

    let small = per_item(|i| {
        let (storage, k) = (storage.clone(), key("ann", i));
        async move {
            assert_eq!(
                storage.claim(&k, 1, limits).await.expect("claim"),
                Claim::Acquired
            );
            storage
                .complete(&k, "{\"reply\":{\"ok\":true}}", window)
                .await
                .expect("complete");
        }
    })
    .await;
    let reply = format!("{{\"reply\":\"{}\"}}", "x".repeat(8 * 1024 - 12));
    let large = per_item(|i| {
        let (storage, k, reply) = (storage.clone(), key("bob", i), reply.clone());
        async move {
            storage.claim(&k, 1, limits).await.expect("claim");
            storage
                .complete(&k, &reply, window)
                .await
                .expect("complete");
        }
    })
    .await;
    let namespaces: Vec<Arc<str>> = vec![DEFAULT_NAMESPACE.into()];
    let client = per_item(|i| {
        let (storage, namespaces) = (storage.clone(), namespaces.clone());
        async move {
            storage
                .fetch(FetchRequest {
                    user: UserId::from("carol"),
                    client: ClientId::new(format!("k2J8mW0qZr5t{i:06}")).expect("id"),
                    cursor: None,
                    namespaces: namespaces.into(),
                    limit: 100,
                    presence_ttl: Duration::from_secs(60),
                    announce: None,
                    max_clients: usize::MAX,
                })
                .await
                .expect("fetch");
        }
    })
    .await;
    println!(
        "MemoryStorage: {small:.0} bytes per dedup record with a small reply, {large:.0} with an \
         8 KiB reply, {client:.0} bytes per client id of one user"
    );
    assert!(small < 700.0, "a dedup record costs {small:.0} bytes");
    assert!(
        large < 8_192.0 + 700.0,
        "a dedup record with an 8 KiB reply costs {large:.0} bytes"
    );
    assert!(client < 800.0, "a client id costs {client:.0} bytes");
}
