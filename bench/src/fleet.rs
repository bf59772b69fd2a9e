//! A fleet of virtual clients of one kind, run in the driver's process, and what they record.
//!
//! Each client records its own [`ClientStats`] (returned when the fleet stops); the fleet-wide
//! [`Progress`] is what the driver waits on while the load runs (how many clients connected,
//! how many saw tick `seq`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

use crate::proc::realtime_ns;
use crate::servers::Tick;
use crate::{eio_client, hold_client, simpleio_client};

/// At most this many clients connect and handshake at once: a burst of thousands of SYNs
/// overflows the listener's backlog (1,024) and costs one-second retransmits, which would
/// measure the kernel, not the server.
const CONNECTING_AT_ONCE: usize = 200;

/// Which protocol the clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// simpleio's protocol (docs/spec.md).
    Simpleio,
    /// Engine.IO v4 long-polling with Socket.IO on top (socketioxide).
    Eio,
    /// One request to `/hold`, repeated when answered (the hyper-hold server).
    Hold,
}

/// Fleet-wide counters, shared by every client.
#[derive(Debug)]
pub struct Progress {
    /// Clients that finished their handshake.
    pub connected: AtomicUsize,
    /// Messages received, counted once per client and sequence number.
    pub received: AtomicU64,
    /// Ticks are counted and their latency recorded from this sequence number on: 1, as tick
    /// 0 is every scenario's warm-up.
    measure_from: u64,
    /// Per sequence number: how many clients saw it.
    counts: Vec<AtomicU32>,
    /// Per sequence number: the latest moment a client saw it (ns, CLOCK_REALTIME).
    last_seen_ns: Vec<AtomicU64>,
}

impl Progress {
    fn new(max_seq: usize) -> Progress {
        Progress {
            connected: AtomicUsize::new(0),
            received: AtomicU64::new(0),
            measure_from: 1,
            counts: (0..=max_seq).map(|_| AtomicU32::new(0)).collect(),
            last_seen_ns: (0..=max_seq).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// How many clients saw tick `seq`.
    pub fn seen_by(&self, seq: u64) -> usize {
        self.counts
            .get(seq as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed) as usize)
    }

    /// When the last client to see tick `seq` saw it (ns, CLOCK_REALTIME); 0 if nobody did.
    pub fn last_seen_ns(&self, seq: u64) -> u64 {
        self.last_seen_ns
            .get(seq as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// What one client saw.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Ticks received (each sequence number once), from `measure_from` on.
    pub received: u64,
    /// A sequence number handed to the application twice (after the protocol's own dedup).
    pub duplicates: u64,
    /// A sequence number lower than one received before it.
    pub out_of_order: u64,
    /// Messages the server sent again that the position rule dropped (simpleio; not an error).
    pub repeats: u64,
    /// Polls answered (simpleio): messages per poll is what an answer's HTTP cost is shared by.
    pub answers: u64,
    /// Failed requests (each followed by a reconnect).
    pub errors: u64,
    /// Epoch changes seen (simpleio: the storage lost its data).
    pub epoch_changes: u64,
    /// Latency of each tick from `measure_from` on, send timestamp → parsed here, in µs.
    pub latencies_us: Vec<u32>,
    /// Which sequence numbers were seen.
    seen: Vec<bool>,
    last_seq: Option<u64>,
    /// The first error, for the report.
    pub first_error: Option<String>,
}

impl ClientStats {
    /// Records one received tick.
    pub fn on_tick(&mut self, tick: Tick, progress: &Progress) {
        let now = realtime_ns();
        let i = tick.seq as usize;
        if self.seen.len() <= i {
            self.seen.resize(i + 1, false);
        }
        if self.seen[i] {
            self.duplicates += 1;
            return;
        }
        self.seen[i] = true;
        if self.last_seq.is_some_and(|last| tick.seq < last) {
            self.out_of_order += 1;
        }
        self.last_seq = Some(tick.seq);
        if let Some(c) = progress.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
            progress.last_seen_ns[i].fetch_max(now, Ordering::Relaxed);
        }
        if tick.seq >= progress.measure_from {
            self.received += 1;
            progress.received.fetch_add(1, Ordering::Relaxed);
            let us = now.saturating_sub(tick.ts) / 1000;
            self.latencies_us.push(us.min(u32::MAX as u64) as u32);
        }
    }

    /// Records a failed request.
    pub fn on_error(&mut self, e: &anyhow::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{e:#}"));
        }
    }

    /// Sequence numbers in `range` this client never saw.
    pub fn missing(&self, range: std::ops::RangeInclusive<u64>) -> u64 {
        range
            .filter(|&s| !self.seen.get(s as usize).copied().unwrap_or(false))
            .count() as u64
    }
}

/// What every client task gets.
pub struct ClientCtx {
    pub addr: SocketAddr,
    /// The client's number in the fleet (its user is `u{index}`).
    pub index: usize,
    pub progress: Arc<Progress>,
    /// Becomes `true` when the fleet stops.
    pub stop: watch::Receiver<bool>,
    /// Held while connecting and handshaking (see [`CONNECTING_AT_ONCE`]).
    pub connecting: Arc<Semaphore>,
}

impl ClientCtx {
    /// Waits for a turn to connect.
    pub async fn connect_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.connecting.clone().acquire_owned().await.ok()
    }
}

/// Running clients.
pub struct Fleet {
    pub progress: Arc<Progress>,
    stop: watch::Sender<bool>,
    clients: Vec<JoinHandle<ClientStats>>,
}

impl Fleet {
    /// Starts `n` clients of `kind` against `addr`; ticks up to `max_seq` are tracked.
    pub fn start(kind: Kind, addr: SocketAddr, n: usize, max_seq: usize) -> Fleet {
        let progress = Arc::new(Progress::new(max_seq));
        let (stop, stop_rx) = watch::channel(false);
        let connecting = Arc::new(Semaphore::new(CONNECTING_AT_ONCE));
        let clients = (0..n)
            .map(|index| {
                let ctx = ClientCtx {
                    addr,
                    index,
                    progress: progress.clone(),
                    stop: stop_rx.clone(),
                    connecting: connecting.clone(),
                };
                match kind {
                    Kind::Simpleio => tokio::spawn(simpleio_client::run(ctx)),
                    Kind::Eio => tokio::spawn(eio_client::run(ctx)),
                    Kind::Hold => tokio::spawn(hold_client::run(ctx)),
                }
            })
            .collect();
        Fleet {
            progress,
            stop,
            clients,
        }
    }

    /// Waits until every client finished its handshake.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        let n = self.clients.len();
        let ok = wait_until(timeout, || {
            self.progress.connected.load(Ordering::Relaxed) >= n
        })
        .await;
        if !ok {
            bail!(
                "only {} of {n} clients connected within {timeout:?}",
                self.progress.connected.load(Ordering::Relaxed)
            );
        }
        Ok(())
    }

    /// Waits until every client saw tick `seq`, or `timeout`; tells which.
    pub async fn wait_seen(&self, seq: u64, timeout: Duration) -> bool {
        let n = self.clients.len();
        wait_until(timeout, || self.progress.seen_by(seq) >= n).await
    }

    /// The number of clients.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Stops every client and collects what they saw.
    pub async fn stop(self) -> Vec<ClientStats> {
        let _ = self.stop.send(true);
        let mut all = Vec::with_capacity(self.clients.len());
        for client in self.clients {
            all.push(client.await.unwrap_or_default());
        }
        all
    }
}

/// Polls `done` every 5 ms until it holds or `timeout` passes; tells whether it held.
pub async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(5)).await;
    }
}

/// The pause before reconnecting after a failed request.
pub const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A random client id of 16 characters, as the spec asks.
pub fn client_id() -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(16)
        .collect()
}
