//! Signals over sharded pub/sub: a node's subscription to its own channel and to the one every
//! node reads, on a RESP3 cluster connection of their own.
//!
//! The cluster client subscribes again by itself after it reconnects to a node; the node
//! resyncs then, since anything published meanwhile was missed. A failover or a slot migration
//! can move a channel's slot without the subscription noticing (a subscribed connection sends
//! nothing), so the node probes its own channel every few seconds: a probe that does not come
//! back means the subscription is lost, and the node subscribes again and resyncs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{broadcast, mpsc};
use tracing::warn;

use super::super::builder::Timeouts;
use super::super::error::within;
use crate::storage::{Signal, StorageError};

/// How often a node probes its subscription.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// What a probe carries: never a signal's JSON (which starts with `{` or `"`).
const PROBE: &str = "probe:";

/// The two channels a node reads.
#[derive(Debug, Clone)]
pub(super) struct Channels {
    /// What every node needs: resyncs and volatile messages.
    pub(super) all: String,
    /// What this node needs.
    pub(super) node: String,
}

/// Subscribes `conn` (made with a push sender whose receiver the task reads) to both
/// channels, one at a time: they are in different slots.
pub(super) async fn subscribe(
    conn: &mut ClusterConnection,
    channels: &Channels,
    timeouts: Timeouts,
) -> Result<(), StorageError> {
    for channel in [&channels.all, &channels.node] {
        within(
            timeouts.connect + timeouts.response,
            conn.ssubscribe(channel.as_str()),
        )
        .await?;
    }
    Ok(())
}

/// What the task works with.
pub(super) struct Subscriber {
    /// The subscribed connection, to subscribe again.
    pub(super) conn: ClusterConnection,
    /// Its pushes: messages, and subscription and connection events.
    pub(super) pushes: mpsc::UnboundedReceiver<PushInfo>,
    /// The command connection, to send probes.
    pub(super) commands: ClusterConnection,
    pub(super) channels: Channels,
    pub(super) signals: broadcast::Sender<Signal>,
    pub(super) received: Arc<AtomicU64>,
    pub(super) timeouts: Timeouts,
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        _ => None,
    }
}

impl Subscriber {
    /// Forwards signals, forever (the task is aborted with the last storage handle).
    pub(super) async fn run(mut self) {
        // Subscription confirmations before this many are the first subscription's.
        let mut confirmations = 0usize;
        let mut probe = tokio::time::interval(PROBE_EVERY);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent: u64 = 0;
        let mut outstanding = false;
        loop {
            tokio::select! {
                push = self.pushes.recv() => {
                    let Some(push) = push else { return };
                    match push.kind {
                        PushKind::SMessage => {
                            let Some(payload) = push.data.get(1).and_then(bytes) else { continue };
                            if payload.starts_with(PROBE.as_bytes()) {
                                if payload == format!("{PROBE}{sent}").as_bytes() {
                                    outstanding = false;
                                }
                                continue;
                            }
                            self.received.fetch_add(1, Ordering::Relaxed);
                            match serde_json::from_slice::<Signal>(payload) {
                                Ok(signal) => {
                                    let _ = self.signals.send(signal);
                                }
                                Err(err) => warn!(cause = %err, "ignored an unreadable signal from Redis"),
                            }
                        }
                        PushKind::SSubscribe => {
                            confirmations += 1;
                            if confirmations > 2 {
                                // The client subscribed again after a reconnection.
                                let _ = self.signals.send(Signal::Resync);
                            }
                        }
                        PushKind::SUnsubscribe => {
                            // The server dropped the subscription: its slot moved.
                            warn!("a Redis shard dropped this node's subscription; subscribing again");
                            self.resubscribe().await;
                        }
                        PushKind::Disconnection => {
                            warn!("lost a Redis Cluster pub/sub connection; waiters resync");
                            let _ = self.signals.send(Signal::Resync);
                        }
                        _ => {}
                    }
                }
                _ = probe.tick() => {
                    if outstanding {
                        warn!("this node's probe did not come back; subscribing again");
                        self.resubscribe().await;
                    }
                    sent += 1;
                    outstanding = true;
                    let mut publish = redis::cmd("SPUBLISH");
                    publish.arg(&self.channels.node).arg(format!("{PROBE}{sent}"));
                    let deadline = self.timeouts.connect + self.timeouts.response;
                    if let Err(err) = within(deadline, publish.query_async::<i64>(&mut self.commands)).await {
                        // Not the subscription's fault: the next probe tells.
                        warn!(cause = %err, "cannot probe this node's subscription");
                        outstanding = false;
                    }
                }
            }
        }
    }

    /// Subscribes again (the cluster client routes to the slots' current owners), then
    /// resyncs, since signals were missed meanwhile.
    async fn resubscribe(&mut self) {
        if let Err(err) = subscribe(&mut self.conn, &self.channels, self.timeouts).await {
            warn!(cause = %err, "cannot subscribe again; will retry at the next probe");
        }
        let _ = self.signals.send(Signal::Resync);
    }
}
