//! [`RedisClusterStorageBuilder`]: the settings of a [`RedisClusterStorage`], and connecting it.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::ProtocolVersion;
use redis::cluster::ClusterClientBuilder;
use tokio::sync::{broadcast, mpsc};

use super::super::builder::{Timeouts, check_ack_timeout};
use super::super::error::within;
use super::super::payloads::PayloadCache;
use super::super::replicas::{ACKNOWLEDGING_CONNECTIONS, Acknowledging, ReplicaAcks};
use super::super::signals::{AbortOnDrop, SIGNAL_CAPACITY};
use super::buckets::BUCKETS;
use super::signals::{Channels, Subscriber, subscribe};
use super::{Inner, RedisClusterStorage};
use crate::id::ClientId;
use crate::storage::StorageError;

const DEFAULT_PREFIX: &str = "simpleio:";
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Configures and connects a [`RedisClusterStorage`]; made by [`RedisClusterStorage::builder`].
///
/// ```no_run
/// use std::time::Duration;
/// use simpleio::RedisClusterStorage;
/// # async fn run() -> Result<(), simpleio::storage::StorageError> {
/// let storage = RedisClusterStorage::builder(["redis://10.0.0.1:7000/"])
///     .key_prefix("myapp:")
///     .response_timeout(Duration::from_secs(1))
///     .connect()
///     .await?;
/// # let _ = storage;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisClusterStorageBuilder {
    urls: Vec<String>,
    prefix: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    replica_acks: Option<ReplicaAcks>,
}

impl fmt::Debug for RedisClusterStorageBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the URLs: they may carry a password.
        f.debug_struct("RedisClusterStorageBuilder")
            .field("nodes", &self.urls.len())
            .field("key_prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("replica_acks", &self.replica_acks)
            .finish_non_exhaustive()
    }
}

impl RedisClusterStorageBuilder {
    pub(super) fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            prefix: DEFAULT_PREFIX.to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            replica_acks: None,
        }
    }

    /// The prefix of every key and channel (default `simpleio:`). It may not contain `{` or
    /// `}`: the buckets' hash tags follow it, and Redis hashes a key by its first `{…}`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one attempt to connect to a node may take (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the cluster may take to answer one command, redirections and retries included
    /// (default 2 s). An operation fails with [`StorageError::Unavailable`] after at most the
    /// connect timeout plus this, per round trip it makes.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Makes every operation that others act on — an append (what `stored()` waits for), a
    /// claim and a completion of a client's message, a reply, a join, a leave, a data write —
    /// return only once `replicas` replicas of the master that wrote it hold it (`WAIT`, in one
    /// pipeline with the write), so that a master killed afterwards and replaced by one of them
    /// loses none of it. Default: none, Redis's asynchronous replication, where a failover can
    /// lose the last writes a master acknowledged.
    ///
    /// These writes go over connections of their own (four): Redis reads nothing more from a
    /// connection while a `WAIT` on it is unanswered, so reads, polls, signals and the other
    /// writes never queue behind one. Reads, a poll's cursor and presence, lease renewals,
    /// reaps and the epoch's copies do not wait: losing them in a failover costs a repeat (a
    /// message counted unconfirmed again, a departure reported twice), not a message.
    ///
    /// If fewer replicas acknowledge within `timeout`, the operation fails with
    /// [`StorageError::Unavailable`] (a request answers 503; the write is on the master and
    /// may survive, and a retry stores it once where it matters). So while a master has fewer
    /// replicas than asked — one is down, or a failover promoted its only one — each
    /// acknowledged write to it waits out the timeout and fails, until a replica is back (set
    /// Redis's `min-replicas-to-write` on the masters to refuse them at once instead). Each
    /// acknowledged operation costs a replica's round trip more; `docs/benchmarks.md`
    /// measures it.
    ///
    /// `timeout` must be shorter than the [response timeout](Self::response_timeout), which
    /// bounds the write and its `WAIT` together. `replicas` 0 turns acknowledgement off again.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use simpleio::RedisClusterStorage;
    /// # async fn run() -> Result<(), simpleio::storage::StorageError> {
    /// let storage = RedisClusterStorage::builder(["redis://10.0.0.1:7000/"])
    ///     .replica_acks(1, Duration::from_millis(200))
    ///     .connect()
    ///     .await?;
    /// # let _ = storage;
    /// # Ok(())
    /// # }
    /// ```
    pub fn replica_acks(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replica_acks = ReplicaAcks::new(replicas, timeout);
        self
    }

    /// Connects to the cluster, subscribes to this node's channels, and makes sure the cluster
    /// has an epoch (a new cluster gets its first here).
    ///
    /// Fails with [`StorageError::Unavailable`] if a URL is invalid, the prefix has a brace,
    /// or the cluster cannot be reached. Must be called within a Tokio runtime, which then runs
    /// the task that forwards signals.
    pub async fn connect(self) -> Result<RedisClusterStorage, StorageError> {
        if self.prefix.contains(['{', '}']) {
            return Err(StorageError::Unavailable(format!(
                "a Redis Cluster key prefix may not contain braces: {:?}",
                self.prefix
            )));
        }
        if let Some(acks) = self.replica_acks {
            check_ack_timeout(acks, self.response_timeout)?;
        }
        let timeouts = Timeouts {
            connect: self.connect_timeout,
            response: self.response_timeout,
        };
        let deadline = timeouts.connect + timeouts.response;
        let builder = |retries| {
            ClusterClientBuilder::new(self.urls.clone())
                .connection_timeout(timeouts.connect)
                .response_timeout(timeouts.response)
                .retries(retries)
                .min_retry_wait(20)
                .max_retry_wait(500)
        };
        let invalid = |e: redis::RedisError| {
            StorageError::Unavailable(format!("invalid Redis Cluster settings: {e}"))
        };
        // Commands are never re-sent: the cluster client re-sends a request whose connection
        // dropped before its answer, and a script that had run would run twice (an append
        // without an origin would store its message twice). Such a request fails instead, as
        // does one redirected after a failover or a slot migration (the client learns the new
        // slots from it, so the next one goes right): a 503, whose retry by the client is
        // stored or handled once.
        let client = builder(0).build().map_err(invalid)?;
        let conn = within(deadline, client.get_async_connection()).await?;
        let acknowledging = match self.replica_acks {
            Some(acks) => {
                let mut conns = Vec::with_capacity(ACKNOWLEDGING_CONNECTIONS);
                for _ in 0..ACKNOWLEDGING_CONNECTIONS {
                    conns.push(within(deadline, client.get_async_connection()).await?);
                }
                Some(Acknowledging::new(acks, conns))
            }
            None => None,
        };
        let (push_sender, pushes) = mpsc::unbounded_channel();
        // The subscription's commands (`SSUBSCRIBE`, its probes) may be re-sent: they write
        // nothing. A few quick retries, to follow a failover without an error.
        let subscriber_client = builder(3)
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(push_sender)
            .build()
            .map_err(invalid)?;
        let mut subscribed = within(deadline, subscriber_client.get_async_connection()).await?;
        // A random id, so that a restarted process is a new node (see `RedisStorage`).
        let node = ClientId::random().as_str().to_owned();
        let channels = Channels {
            all: format!("{}signals", self.prefix),
            node: format!("{}n:{node}", self.prefix),
        };
        // Subscribed before returning, so that no signal published after `connect` is missed.
        subscribe(&mut subscribed, &channels, timeouts).await?;
        let (signals, _) = broadcast::channel(SIGNAL_CAPACITY);
        let received = Arc::new(AtomicU64::new(0));
        let subscriber = tokio::spawn(
            Subscriber {
                conn: subscribed,
                pushes,
                commands: conn.clone(),
                channels,
                signals: signals.clone(),
                received: received.clone(),
                timeouts,
            }
            .run(),
        );
        let storage = RedisClusterStorage {
            inner: Arc::new(Inner {
                conn,
                prefix: self.prefix,
                node,
                received,
                signals,
                deadline,
                acknowledging,
                payloads: Mutex::new((0..BUCKETS).map(|_| PayloadCache::default()).collect()),
                _subscriber: AbortOnDrop(subscriber),
            }),
        };
        storage.cluster_epoch().await?;
        Ok(storage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_builder_does_not_print_its_password() {
        let builder = RedisClusterStorage::builder(["redis://:hunter2@127.0.0.1:7000/"]);
        assert!(!format!("{builder:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn a_prefix_with_a_brace_is_refused() {
        let refused = RedisClusterStorage::builder(["redis://127.0.0.1:1/"])
            .key_prefix("app{1}:")
            .connect()
            .await;
        assert!(matches!(refused, Err(StorageError::Unavailable(e)) if e.contains("braces")));
    }

    #[tokio::test]
    async fn a_replica_wait_longer_than_the_response_timeout_is_refused() {
        let refused = RedisClusterStorage::builder(["redis://127.0.0.1:1/"])
            .response_timeout(Duration::from_millis(500))
            .replica_acks(1, Duration::from_secs(1))
            .connect()
            .await;
        assert!(
            matches!(&refused, Err(StorageError::Unavailable(e)) if e.contains("shorter than")),
            "{refused:?}"
        );
    }
}
