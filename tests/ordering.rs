//! Order is kept per recipient (guarantee 2): with several senders emitting to one user at once,
//! each sender's messages arrive in the order it sent them, positions strictly increase, and
//! nothing is missing or repeated.

mod support;

use std::time::Duration;

use serde_json::json;
use simpleio::SimpleIoLayer;
use support::server::TestServer;
use support::wire::{Wire, finish, start};

const SENDERS: u64 = 4;
const PER_SENDER: u64 = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_senders_keep_their_order_per_recipient() {
    let server = TestServer::start(
        SimpleIoLayer::builder()
            .hold_time(Duration::from_millis(300))
            // Small batches, so the messages spread over many polls.
            .batch_limit(7),
    )
    .await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    tab.receive().await;

    // The receiving client runs while the senders send, confirming as it goes.
    let total = (SENDERS * PER_SENDER) as usize;
    let receiver = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < total {
            got.extend(tab.receive().await.messages);
        }
        // One more poll confirms the last batch.
        let extra = tab.receive().await;
        assert!(extra.messages.is_empty(), "more than was sent: {extra:?}");
        got
    });

    let senders: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let io = server.io.clone();
            tokio::spawn(async move {
                // Each message is stored before the next is started; none waits for the
                // previous one's confirmation.
                let mut sends = Vec::new();
                for n in 0..PER_SENDER {
                    let data = json!({"sender": sender, "n": n});
                    sends.push(start(io.to_user("ann").emit("n", &data)).await);
                    tokio::task::yield_now().await;
                }
                for send in sends {
                    finish(send, "an emit").await.expect("delivered");
                }
            })
        })
        .collect();

    let got = finish(receiver, "the receiver").await;
    for sender in senders {
        finish(sender, "a sender").await;
    }

    let positions: Vec<u64> = got.iter().map(|m| m.pos).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions do not strictly increase: {positions:?}"
    );
    for sender in 0..SENDERS {
        let seen: Vec<u64> = got
            .iter()
            .filter(|m| m.data["sender"] == sender)
            .map(|m| m.data["n"].as_u64().expect("n"))
            .collect();
        let sent: Vec<u64> = (0..PER_SENDER).collect();
        assert_eq!(seen, sent, "sender {sender}'s messages, in arrival order");
    }
}
