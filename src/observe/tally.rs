//! This node's own running totals, kept beside the metrics so that the admin page can show
//! them without reading back from whatever recorder the application installed.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::id::UserId;
use crate::storage::Millis;

/// How many recent expirations a node remembers for the admin page.
const RECENT_EXPIRATIONS: usize = 50;

/// Totals since the layer was built; relaxed atomics, since each is read on its own.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) requests: AtomicU64,
    pub(crate) stored: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) lost: AtomicU64,
    pub(crate) volatile: AtomicU64,
    pub(crate) dedup_hits: AtomicU64,
    pub(crate) handler_errors: AtomicU64,
    pub(crate) storage_errors: AtomicU64,
    pub(crate) bounds_hit: AtomicU64,
    pub(crate) delivery: Timing,
    pub(crate) handler: Timing,
    pub(crate) storage: Timing,
    recent: Mutex<VecDeque<Expiration>>,
}

/// A count and a sum of durations: a rate of calls and their mean, from two readings.
#[derive(Debug, Default)]
pub(crate) struct Timing {
    count: AtomicU64,
    micros: AtomicU64,
}

impl Timing {
    pub(crate) fn record(&self, took: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) fn read(&self) -> TimingReading {
        TimingReading {
            count: self.count.load(Ordering::Relaxed),
            micros: self.micros.load(Ordering::Relaxed),
        }
    }
}

/// A reading of a [`Timing`].
#[cfg_attr(not(feature = "admin"), allow(dead_code))]
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct TimingReading {
    pub(crate) count: u64,
    pub(crate) micros: u64,
}

/// A message that expired unconfirmed, as its sender on this node learnt.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Expiration {
    pub(crate) user: UserId,
    pub(crate) namespace: String,
    /// When it was stored (from its position, which is the store's clock × 1000).
    pub(crate) stored_at: Millis,
    /// When its sender learnt it expired.
    pub(crate) at: Millis,
}

impl Tally {
    pub(crate) fn expired(&self, expiration: Expiration) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_EXPIRATIONS {
            recent.pop_front();
        }
        recent.push_back(expiration);
    }

    /// The recent expirations, newest first.
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) fn recent(&self) -> Vec<Expiration> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().rev().cloned().collect()
    }
}
