//! Signals over Redis pub/sub: their encoding, and the one subscribed connection per storage
//! that forwards them to its subscribers, reconnecting by itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSub;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tracing::warn;

use super::builder::Timeouts;
use super::error::within;
use crate::storage::{FetchRequest, Signal, StorageError};

/// How many signals a slow subscriber may fall behind before it is told to resync: two per
/// poll (its announcement and its confirmation) come in bursts when thousands of clients
/// answer one broadcast and poll again at once (see `MemoryStorage`'s).
pub(super) const SIGNAL_CAPACITY: usize = 16_384;

/// How often the pub/sub connection is pinged: a connection that died without a FIN (a NAT or a
/// firewall dropped it) is only noticed by a request that gets no answer.
const PING_EVERY: Duration = Duration::from_secs(5);

/// Backoff between attempts to get the pub/sub connection back.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The `Resync` signal, which every script publishes if it finds the epoch gone (see
/// `PRELUDE` in [`scripts`](super::scripts)).
pub(super) static RESYNC_JSON: LazyLock<String> =
    LazyLock::new(|| signal_json(Signal::Resync).unwrap_or_default());

pub(super) fn signal_json(signal: Signal) -> Result<String, StorageError> {
    serde_json::to_string(&signal)
        .map_err(|e| StorageError::Corrupt(format!("cannot encode a signal: {e}")))
}

/// `s` as a JSON string literal, for the scripts to splice into the signals they build.
pub(super) fn json_string(s: &str) -> Result<String, StorageError> {
    serde_json::to_string(s)
        .map_err(|e| StorageError::Corrupt(format!("cannot encode a signal: {e}")))
}

/// The fields of a [`Signal::Confirmed`] that the fetch script does not compute, as JSON object
/// members (`"user":…,"client":…,"namespaces":[…]`); the script adds the epoch and the cursor.
pub(super) fn confirmed_fields(request: &FetchRequest) -> Result<String, StorageError> {
    let user = serde_json::to_string(request.user.as_str());
    let client = serde_json::to_string(request.client.as_str());
    let namespaces = serde_json::to_string(&request.namespaces);
    match (user, client, namespaces) {
        (Ok(user), Ok(client), Ok(namespaces)) => Ok(format!(
            r#""user":{user},"client":{client},"namespaces":{namespaces}"#
        )),
        _ => Err(StorageError::Corrupt("cannot encode a signal".to_owned())),
    }
}

fn decode_signal(payload: &[u8]) -> Result<Signal, serde_json::Error> {
    serde_json::from_slice::<Signal>(payload)
}

/// Aborts a task when dropped, so the signal task ends with the last storage handle.
pub(super) struct AbortOnDrop(pub(super) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The channels a node listens on: one connection subscribes to both, so that the signals of
/// both reach it in the order Redis published them.
#[derive(Debug, Clone)]
pub(super) struct Channels {
    /// What every node needs: resyncs and volatile messages.
    pub(super) all: String,
    /// What this node needs: signals about the users it has polls of or waits for, and those
    /// of its own operations.
    pub(super) node: String,
}

pub(super) async fn subscribe(
    client: &redis::Client,
    channels: &Channels,
    timeouts: Timeouts,
) -> Result<PubSub, StorageError> {
    let mut pubsub = within(timeouts.connect, client.get_async_pubsub()).await?;
    within(
        timeouts.response,
        pubsub.subscribe(&[channels.all.as_str(), channels.node.as_str()]),
    )
    .await?;
    Ok(pubsub)
}

/// Forwards signals from the pub/sub connection, forever: when it drops, gets it back with
/// backoff and sends [`Signal::Resync`], since anything published meanwhile was missed.
pub(super) async fn run_subscriber(
    client: redis::Client,
    channels: Channels,
    signals: broadcast::Sender<Signal>,
    received: Arc<AtomicU64>,
    mut pubsub: PubSub,
    timeouts: Timeouts,
) {
    loop {
        let cause = pump(pubsub, &signals, &received, timeouts.response).await;
        warn!(%cause, "lost the Redis pub/sub connection; reconnecting");
        let mut delay = BACKOFF_MIN;
        let mut attempts = 0u32;
        pubsub = loop {
            // Jitter, so that many nodes do not reconnect in lockstep.
            let jitter = Duration::from_millis(fastrand::u64(0..=delay.as_millis() as u64 / 2));
            tokio::time::sleep(delay + jitter).await;
            attempts += 1;
            match subscribe(&client, &channels, timeouts).await {
                Ok(pubsub) => break pubsub,
                Err(err) => {
                    warn!(cause = %err, attempts, "cannot reconnect the Redis pub/sub connection");
                    delay = (delay * 2).min(BACKOFF_MAX);
                }
            }
        };
        warn!(attempts, "Redis pub/sub connection is back; waiters resync");
        // No receiver is fine: nobody is waiting.
        let _ = signals.send(Signal::Resync);
    }
}

/// Reads signals until the connection fails; returns why it did.
async fn pump(
    pubsub: PubSub,
    signals: &broadcast::Sender<Signal>,
    received: &AtomicU64,
    timeout: Duration,
) -> String {
    let (mut sink, mut stream) = pubsub.split();
    let start = tokio::time::Instant::now() + PING_EVERY;
    let mut ping = tokio::time::interval_at(start, PING_EVERY);
    // After a stall, one ping is enough; a burst of them would only add load.
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return "the connection closed".to_owned();
                };
                received.fetch_add(1, Ordering::Relaxed);
                match decode_signal(msg.get_payload_bytes()) {
                    Ok(signal) => {
                        let _ = signals.send(signal);
                    }
                    // Someone else publishing on our channel is not our problem to crash on.
                    Err(err) => warn!(cause = %err, "ignored an unreadable signal from Redis"),
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => return format!("ping failed: {err}"),
                    Err(_) => return format!("no answer to a ping within {timeout:?}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resync_signal_is_encoded_once() {
        assert_eq!(*RESYNC_JSON, r#""resync""#);
    }
}
