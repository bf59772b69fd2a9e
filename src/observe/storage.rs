//! [`Observed`]: the layer's storage, seen from outside. Every call becomes a child span of the
//! request's (`storage`, with its `op`), and with the `metrics` feature its latency and errors
//! are recorded per operation. The storages themselves know nothing of it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;
use tracing::Instrument;

use super::Tally;
use super::handles::{Counter, Histogram, counter, histogram};
use super::names::{STORAGE_ERRORS, STORAGE_SECONDS};
use crate::id::{ClientId, UserId};
use crate::storage::{
    Appended, Claim, DedupKey, DedupLimits, DeliveryState, DeliveryTarget, Departure, Epoch,
    FetchBatch, FetchRequest, Member, NewMessage, NewReply, Persisting, QueueLimits, RecordedReply,
    ReplyLimits, ReplyOutcome, Signal, Storage, StorageError,
};

/// The operations, in the order of [`Ops::of`]'s arrays.
const OPS: [&str; 18] = [
    "epoch",
    "append",
    "fetch",
    "delivery",
    "claim",
    "renew",
    "complete",
    "live_users",
    "live_clients",
    "reap",
    "join",
    "leave",
    "members",
    "rooms",
    "set_data",
    "get_data",
    "reply",
    "replies",
];

/// One operation's handles.
#[derive(Debug)]
struct Op {
    seconds: Histogram,
    unavailable: Counter,
    corrupt: Counter,
}

/// Wraps the application's storage; made once, when the layer is built.
pub(crate) struct Observed {
    inner: Arc<dyn Storage>,
    ops: Box<[Op]>,
    tally: Arc<Tally>,
}

impl Observed {
    pub(crate) fn new(inner: Arc<dyn Storage>, tally: Arc<Tally>) -> Self {
        let ops = OPS
            .iter()
            .map(|&op| Op {
                seconds: histogram(STORAGE_SECONDS, &[("op", op)]),
                unavailable: counter(STORAGE_ERRORS, &[("op", op), ("kind", "unavailable")]),
                corrupt: counter(STORAGE_ERRORS, &[("op", op), ("kind", "corrupt")]),
            })
            .collect();
        Observed { inner, ops, tally }
    }

    /// [`Storage::fetch`], as a future of its own type rather than a box: a poll awaits it
    /// inline, once or twice per request (the inner storage's call is still boxed).
    pub(crate) async fn fetch_inline(
        &self,
        request: FetchRequest,
    ) -> Result<FetchBatch, StorageError> {
        self.call(2, (*self.inner).fetch(request)).await
    }

    /// Runs one call of operation `index` in a span, timing it and counting its failure.
    async fn call<T>(
        &self,
        index: usize,
        call: impl Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        let span = tracing::debug_span!("storage", op = OPS[index]);
        let timer = Timer::start();
        // Not wrapped when nobody listens at `debug`: a disabled span still costs its enter and
        // exit on every poll of the call.
        let result = if span.is_disabled() {
            call.await
        } else {
            call.instrument(span).await
        };
        let op = &self.ops[index];
        if let Some(took) = timer.took() {
            op.seconds.record(took.as_secs_f64());
            self.tally.storage.record(took);
        }
        match &result {
            Ok(_) | Err(StorageError::Limit(_)) => {}
            Err(e) => {
                self.tally.storage_errors.fetch_add(1, Ordering::Relaxed);
                match e {
                    StorageError::Corrupt(_) => op.corrupt.increment(1),
                    _ => op.unavailable.increment(1),
                }
            }
        }
        result
    }
}

/// A call's start, read only when something records durations: without the `metrics` and
/// `admin` features a storage call costs no clock reads.
struct Timer {
    #[cfg(any(feature = "metrics", feature = "admin"))]
    start: std::time::Instant,
}

impl Timer {
    #[inline]
    fn start() -> Self {
        Timer {
            #[cfg(any(feature = "metrics", feature = "admin"))]
            start: std::time::Instant::now(),
        }
    }

    #[inline]
    fn took(&self) -> Option<Duration> {
        #[cfg(any(feature = "metrics", feature = "admin"))]
        return Some(self.start.elapsed());
        #[cfg(not(any(feature = "metrics", feature = "admin")))]
        None
    }
}

impl fmt::Debug for Observed {
    // The application's storage, as it would show without the wrapper.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

#[async_trait]
impl Storage for Observed {
    async fn epoch(&self) -> Result<Epoch, StorageError> {
        self.call(0, (*self.inner).epoch()).await
    }
    async fn append(
        &self,
        messages: Vec<NewMessage>,
        limits: QueueLimits,
    ) -> Result<Appended, StorageError> {
        self.call(1, (*self.inner).append(messages, limits)).await
    }
    // Timed to the messages' positions: the write after is the storage's own (its failure is
    // logged there, and reaches the sender).
    async fn append_ordered(
        &self,
        messages: Vec<NewMessage>,
        limits: QueueLimits,
    ) -> Result<(Appended, Persisting), StorageError> {
        self.call(1, (*self.inner).append_ordered(messages, limits))
            .await
    }
    async fn fetch(&self, request: FetchRequest) -> Result<FetchBatch, StorageError> {
        self.fetch_inline(request).await
    }
    async fn delivery(
        &self,
        epoch: &Epoch,
        targets: &[DeliveryTarget],
    ) -> Result<Vec<DeliveryState>, StorageError> {
        self.call(3, (*self.inner).delivery(epoch, targets)).await
    }
    async fn reply(
        &self,
        reply: NewReply,
        limits: ReplyLimits,
    ) -> Result<ReplyOutcome, StorageError> {
        self.call(16, (*self.inner).reply(reply, limits)).await
    }
    async fn replies(
        &self,
        epoch: &Epoch,
        targets: &[DeliveryTarget],
    ) -> Result<Vec<Vec<RecordedReply>>, StorageError> {
        self.call(17, (*self.inner).replies(epoch, targets)).await
    }
    async fn claim(
        &self,
        key: &DedupKey,
        owner: u64,
        limits: DedupLimits,
    ) -> Result<Claim, StorageError> {
        self.call(4, (*self.inner).claim(key, owner, limits)).await
    }
    async fn renew(
        &self,
        key: &DedupKey,
        owner: u64,
        lease: Duration,
    ) -> Result<bool, StorageError> {
        self.call(5, (*self.inner).renew(key, owner, lease)).await
    }
    async fn complete(
        &self,
        key: &DedupKey,
        outcome: &str,
        ttl: Duration,
    ) -> Result<(), StorageError> {
        self.call(6, (*self.inner).complete(key, outcome, ttl))
            .await
    }
    async fn live_users(&self) -> Result<Vec<UserId>, StorageError> {
        self.call(7, (*self.inner).live_users()).await
    }
    async fn live_clients(&self, user: &UserId) -> Result<Vec<ClientId>, StorageError> {
        self.call(8, (*self.inner).live_clients(user)).await
    }
    async fn reap(&self) -> Result<Vec<Departure>, StorageError> {
        self.call(9, (*self.inner).reap()).await
    }
    async fn join(
        &self,
        room: &str,
        member: &Member,
        presence_ttl: Duration,
    ) -> Result<(), StorageError> {
        self.call(10, (*self.inner).join(room, member, presence_ttl))
            .await
    }
    async fn leave(&self, room: &str, member: &Member) -> Result<(), StorageError> {
        self.call(11, (*self.inner).leave(room, member)).await
    }
    async fn members(&self, room: &str) -> Result<Vec<Member>, StorageError> {
        self.call(12, (*self.inner).members(room)).await
    }
    async fn rooms(&self, member: &Member) -> Result<Vec<Arc<str>>, StorageError> {
        self.call(13, (*self.inner).rooms(member)).await
    }
    async fn set_data(
        &self,
        member: &Member,
        key: &str,
        value: Option<&str>,
        presence_ttl: Duration,
    ) -> Result<(), StorageError> {
        self.call(14, (*self.inner).set_data(member, key, value, presence_ttl))
            .await
    }
    async fn get_data(&self, member: &Member, key: &str) -> Result<Option<String>, StorageError> {
        self.call(15, (*self.inner).get_data(member, key)).await
    }
    // Not timed: publishing is the storage's send of a signal, counted where signals arrive.
    async fn publish(&self, signal: Signal) -> Result<(), StorageError> {
        (*self.inner).publish(signal).await
    }
    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        (*self.inner).subscribe()
    }
}
