//! The cluster's epoch: one value, `{P}{epoch}epoch`, copied into every bucket.
//!
//! A script reads only its bucket's copy (it cannot read another slot). A copy is written when
//! an epoch is made and has no TTL, so a missing copy means the bucket's data is gone — or, on
//! a new cluster, was never given one — and the whole cluster takes a new epoch (see the
//! [module documentation](super)).
//!
//! Epochs are `GEN.RANDOM`. Keys take epochs only forwards ([`MERGE_EPOCH`]: a higher
//! generation, ties broken by the text), and a new epoch is written to every bucket before the
//! cluster's key: so whatever order two nodes making epochs at once write in, every key ends
//! with the later one, and the cluster's key is never ahead of a bucket.

use futures_util::StreamExt;
use tracing::warn;

use super::super::error::within;
use super::super::signals::RESYNC_JSON;
use super::buckets::{BUCKETS, bucket_prefix};
use super::scripts::MERGE_EPOCH;
use super::{IN_FLIGHT, RedisClusterStorage};
use crate::storage::{Epoch, StorageError};

/// An epoch's generation: the number before the first `.`, 0 for any other text.
fn generation(epoch: &str) -> u64 {
    epoch
        .split_once('.')
        .and_then(|(generation, _)| generation.parse().ok())
        .unwrap_or(0)
}

/// Whether epoch `a` comes after `b` (as [`MERGE_EPOCH`] orders them).
pub(super) fn later(a: &str, b: &str) -> bool {
    (generation(a), a) > (generation(b), b)
}

impl RedisClusterStorage {
    fn home_key(&self) -> String {
        format!("{}{{epoch}}epoch", self.inner.prefix)
    }

    fn bucket_epoch_key(&self, bucket: usize) -> String {
        format!("{}epoch", bucket_prefix(&self.inner.prefix, bucket))
    }

    async fn get(&self, key: String) -> Result<Option<String>, StorageError> {
        let mut conn = self.inner.conn.clone();
        let mut get = redis::cmd("GET");
        get.arg(key);
        within(self.inner.deadline, get.query_async(&mut conn)).await
    }

    /// The cluster's epoch; a cluster with none (new, or the shard of its key lost it) gets
    /// one.
    pub(super) async fn cluster_epoch(&self) -> Result<Epoch, StorageError> {
        match self.get(self.home_key()).await? {
            Some(epoch) => Ok(Epoch::new(epoch)),
            None => self.new_epoch(None).await,
        }
    }

    /// A bucket's script found no epoch there: unless another node gave it one meanwhile, its
    /// data is gone, and the cluster takes a new epoch.
    pub(super) async fn recover_epoch(&self, bucket: usize) -> Result<(), StorageError> {
        let home = self.get(self.home_key()).await?;
        if self.get(self.bucket_epoch_key(bucket)).await?.is_some() {
            return Ok(());
        }
        self.new_epoch(home.as_deref()).await?;
        Ok(())
    }

    /// Makes an epoch later than `after` (the cluster's, if it has one) and than every
    /// bucket's, writes it everywhere, and wakes every node to resync. Returns the epoch the
    /// cluster has then (another node's, if it made a later one at the same time).
    async fn new_epoch(&self, after: Option<&str>) -> Result<Epoch, StorageError> {
        let mut latest = after.map_or(0, generation);
        if after.is_none() {
            // The cluster's key is gone: the buckets that kept theirs say how far epochs went,
            // so that the new one comes after them.
            let mut copies = futures_util::stream::iter(0..BUCKETS)
                .map(|b| self.get(self.bucket_epoch_key(b)))
                .buffer_unordered(IN_FLIGHT);
            while let Some(copy) = copies.next().await {
                latest = latest.max(copy?.as_deref().map_or(0, generation));
            }
        }
        let fresh = format!("{}.{}", latest + 1, Epoch::random());
        let epoch = self.spread(&fresh).await?;
        // Every node's clients resync on their own anyway once they meet the new epoch: the
        // signal only makes it sooner, so failing to send it does not fail the operation.
        let mut conn = self.inner.conn.clone();
        let mut resync = redis::cmd("SPUBLISH");
        resync
            .arg(format!("{}signals", self.inner.prefix))
            .arg(RESYNC_JSON.as_str());
        if let Err(err) = within(self.inner.deadline, resync.query_async::<i64>(&mut conn)).await {
            warn!(cause = %err, "the cluster has a new epoch, but the resync signal was not sent");
        }
        Ok(epoch)
    }

    /// The buckets of one call answered with different epochs (a new one is spreading): the
    /// latest is written everywhere, and is the call's.
    pub(super) async fn agree_on(&self, epochs: Vec<Epoch>) -> Result<Epoch, StorageError> {
        let latest = epochs
            .iter()
            .map(Epoch::as_str)
            .reduce(|a, b| if later(b, a) { b } else { a })
            .unwrap_or_default()
            .to_owned();
        self.spread(&latest).await
    }

    /// Writes `epoch` to every bucket, then to the cluster's key, each taking it only if it
    /// holds no later one; if the cluster's key holds a later one, spreads that instead.
    /// Returns the cluster's epoch at the end.
    async fn spread(&self, epoch: &str) -> Result<Epoch, StorageError> {
        let mut epoch = epoch.to_owned();
        loop {
            let keys = (0..BUCKETS).map(|b| self.bucket_epoch_key(b));
            let current = epoch.as_str();
            let mut writes = futures_util::stream::iter(keys)
                .map(|key| self.merge(key, current))
                .buffer_unordered(IN_FLIGHT);
            while let Some(written) = writes.next().await {
                written?;
            }
            drop(writes);
            let home = self.merge(self.home_key(), &epoch).await?;
            if home == epoch {
                return Ok(Epoch::new(home));
            }
            epoch = home;
        }
    }

    async fn merge(&self, key: String, epoch: &str) -> Result<String, StorageError> {
        let mut conn = self.inner.conn.clone();
        let mut invocation = MERGE_EPOCH.key(key);
        invocation.arg(epoch);
        within(self.inner.deadline, invocation.invoke_async(&mut conn)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_ordered_by_generation_then_text() {
        assert!(later("2.aaa", "1.zzz"));
        assert!(later("10.a", "9.z"), "generations are numbers, not text");
        assert!(later("1.b", "1.a"));
        assert!(!later("1.a", "1.a"));
        // An epoch of the single-server form (no generation) comes before every made one.
        assert!(later("1.a", "Xk2j9"));
        assert_eq!(generation("Xk2j9"), 0);
    }
}
