//! Signals over `LISTEN`/`NOTIFY`: their encoding, and the one listening connection per storage
//! handle that forwards them to its subscribers, reconnecting by itself.
//!
//! A notification is sent with `pg_notify` inside the transaction of the operation that causes
//! it, so PostgreSQL delivers it when (and only if) the transaction commits, in commit order;
//! all those of a transaction go in one statement ([`Outbox`]), whatever the number of nodes.
//! A payload is at most 8,000 bytes: a longer signal (an `Appended` naming thousands of users)
//! is written to `signal_bodies` in the same transaction, and the notification carries `@` and
//! the row's id; the listener reads the row back. Rows older than a minute are swept.
//!
//! The listening connection is a plain session of its own, never from the pool: `LISTEN` is
//! session state, which a transaction-pooling proxy (PgBouncer in `transaction` mode) would
//! hand to another client. Point the storage at PostgreSQL itself, or at a session-pooling
//! proxy.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::StreamExt;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Notification};
use tracing::warn;

use super::error::{OrUnavailable, col, within};
use super::sql::{NOTIFY_LONG, NOTIFY_MANY, SIGNAL_BODY};
use super::tx::{Statement, Tx};
use crate::storage::{Millis, Signal, StorageError};

/// How many signals a slow subscriber may fall behind before it is told to resync (see
/// `MemoryStorage`'s).
pub(super) const SIGNAL_CAPACITY: usize = 16_384;

/// The longest payload sent in the notification itself: PostgreSQL refuses 8,000 bytes and more.
const LONGEST_PAYLOAD: usize = 7_900;

/// How often the listening connection is checked: one that died without a FIN (a NAT or a
/// firewall dropped it) is only noticed by a request that gets no answer.
const PING_EVERY: Duration = Duration::from_secs(5);

/// Backoff between attempts to get the listening connection back.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub(super) fn signal_json(signal: &Signal) -> Result<String, StorageError> {
    serde_json::to_string(signal)
        .map_err(|e| StorageError::Corrupt(format!("cannot encode a signal: {e}")))
}

/// The notifications of one transaction, sent when it commits: those short enough to be a
/// notification go in one statement (`pg_notify` over arrays, whatever their number of
/// channels), each longer one with its body's row.
pub(super) struct Outbox {
    channels: Vec<String>,
    payloads: Vec<String>,
    long: Vec<(String, String)>,
    now: i64,
}

impl Outbox {
    pub(super) fn new(now: Millis) -> Outbox {
        Outbox {
            channels: Vec::new(),
            payloads: Vec::new(),
            long: Vec::new(),
            now: now as i64,
        }
    }

    /// Adds `signal` for `channel`.
    pub(super) fn push(&mut self, channel: String, signal: &Signal) -> Result<(), StorageError> {
        let json = signal_json(signal)?;
        if json.len() <= LONGEST_PAYLOAD {
            self.channels.push(channel);
            self.payloads.push(json);
        } else {
            self.long.push((channel, json));
        }
        Ok(())
    }

    /// The statements that send them, to run in the transaction (on their own with
    /// [`send`](Self::send), or in a pipeline with others).
    pub(super) fn statements(&self) -> Vec<Statement<'_>> {
        let mut statements: Vec<Statement<'_>> = Vec::new();
        if !self.channels.is_empty() {
            statements.push((NOTIFY_MANY, vec![&self.channels, &self.payloads]));
        }
        for (channel, json) in &self.long {
            statements.push((NOTIFY_LONG, vec![channel, json, &self.now]));
        }
        statements
    }

    /// Sends them when `tx` commits: one round trip.
    pub(super) async fn send(&self, tx: &Tx<'_>) -> Result<(), StorageError> {
        let statements = self.statements();
        if !statements.is_empty() {
            tx.pipeline(&statements).await?;
        }
        Ok(())
    }
}

/// Aborts a task when dropped, so the listening task ends with the last storage handle.
pub(super) struct AbortOnDrop(pub(super) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A listening session: the client that sent `LISTEN`, the notifications it receives, and the
/// task driving its connection (which ends, closing the receiver, when the connection fails).
pub(super) struct Listening {
    client: Client,
    notifications: mpsc::Receiver<Notification>,
    _driver: AbortOnDrop,
}

/// Connects a session of its own and listens on `channels`. Notifications wait for the
/// forwarding task in a queue of `SIGNAL_CAPACITY`; past that they are dropped and every
/// subscriber is told to resync on `signals`, as a lagging subscriber would be.
pub(super) async fn listen(
    config: &Config,
    channels: &[String],
    timeout: Duration,
    signals: &broadcast::Sender<Signal>,
) -> Result<Listening, StorageError> {
    let (client, mut connection) = within(timeout, async {
        config.connect(NoTls).await.or_unavailable()
    })
    .await?;
    let (sender, notifications) = mpsc::channel(SIGNAL_CAPACITY);
    let signals = signals.clone();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => match sender.try_send(n) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        let _ = signals.send(Signal::Resync);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                },
                Ok(_) => {}
                Err(err) => {
                    warn!(cause = %err, "the PostgreSQL listening connection failed");
                    return;
                }
            }
        }
    });
    let driver = AbortOnDrop(driver);
    let statements: String = channels
        .iter()
        .map(|c| format!("LISTEN \"{c}\";"))
        .collect();
    within(timeout, async {
        client.batch_execute(&statements).await.or_unavailable()
    })
    .await?;
    Ok(Listening {
        client,
        notifications,
        _driver: driver,
    })
}

/// What the listening task needs, besides its session.
pub(super) struct Forwarding {
    pub(super) config: Config,
    pub(super) channels: Vec<String>,
    pub(super) pool: Pool,
    pub(super) signals: broadcast::Sender<Signal>,
    pub(super) received: Arc<AtomicU64>,
    pub(super) timeout: Duration,
}

/// Forwards signals from the listening session, forever: when it fails, gets one back with
/// backoff and sends [`Signal::Resync`], since anything notified meanwhile was missed.
pub(super) async fn run_listener(f: Forwarding, mut listening: Listening) {
    loop {
        let cause = pump(&f, &mut listening).await;
        warn!(%cause, "lost the PostgreSQL listening connection; reconnecting");
        let mut delay = BACKOFF_MIN;
        let mut attempts = 0u32;
        listening = loop {
            // Jitter, so that many nodes do not reconnect in lockstep.
            let jitter = Duration::from_millis(fastrand::u64(0..=delay.as_millis() as u64 / 2));
            tokio::time::sleep(delay + jitter).await;
            attempts += 1;
            match listen(&f.config, &f.channels, f.timeout, &f.signals).await {
                Ok(listening) => break listening,
                Err(err) => {
                    warn!(cause = %err, attempts, "cannot reconnect the PostgreSQL listening connection");
                    delay = (delay * 2).min(BACKOFF_MAX);
                }
            }
        };
        warn!(
            attempts,
            "PostgreSQL listening connection is back; waiters resync"
        );
        // No receiver is fine: nobody is waiting.
        let _ = f.signals.send(Signal::Resync);
    }
}

/// Reads notifications until the session fails; returns why it did.
async fn pump(f: &Forwarding, listening: &mut Listening) -> String {
    let start = tokio::time::Instant::now() + PING_EVERY;
    let mut ping = tokio::time::interval_at(start, PING_EVERY);
    // After a stall, one ping is enough; a burst of them would only add load.
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            n = listening.notifications.recv() => {
                let Some(n) = n else {
                    return "the connection closed".to_owned();
                };
                f.received.fetch_add(1, Ordering::Relaxed);
                match decode(f, n.payload()).await {
                    Ok(signal) => {
                        let _ = f.signals.send(signal);
                    }
                    Err(err) => {
                        // A body that cannot be read now is a signal missed: waiters look again.
                        warn!(cause = %err, "ignored an unreadable signal from PostgreSQL");
                        let _ = f.signals.send(Signal::Resync);
                    }
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(f.timeout, listening.client.simple_query("")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => return format!("ping failed: {err}"),
                    Err(_) => return format!("no answer to a ping within {:?}", f.timeout),
                }
            }
        }
    }
}

/// The signal a notification carries, reading its body first if it is `@` and a row id.
async fn decode(f: &Forwarding, payload: &str) -> Result<Signal, StorageError> {
    let body;
    let json = match payload.strip_prefix('@') {
        None => payload,
        Some(id) => {
            let id: i64 = id
                .parse()
                .map_err(|_| StorageError::Corrupt(format!("a signal names row {id:?}")))?;
            body = within(f.timeout, read_body(&f.pool, id)).await?;
            body.as_str()
        }
    };
    serde_json::from_str(json).map_err(|e| StorageError::Corrupt(format!("a signal: {e}")))
}

async fn read_body(pool: &Pool, id: i64) -> Result<String, StorageError> {
    let mut conn = pool.get().await.or_unavailable()?;
    let tx = Tx::begin(&mut conn).await?;
    let rows = tx.rows(SIGNAL_BODY, &[&id]).await?;
    tx.commit().await?;
    match rows.first() {
        Some(row) => col(row, 0),
        None => Err(StorageError::Corrupt(format!("signal body {id} is gone"))),
    }
}
