//! [`RedisStorageBuilder`]: the settings of a [`RedisStorage`], and connecting it.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::broadcast;

use super::error::within;
use super::payloads::PayloadCache;
use super::replicas::{ACKNOWLEDGING_CONNECTIONS, Acknowledging, ReplicaAcks};
use super::signals::{AbortOnDrop, Channels, SIGNAL_CAPACITY, run_subscriber, subscribe};
use super::{Inner, RedisStorage};
use crate::id::ClientId;
use crate::storage::StorageError;

/// Defaults for [`RedisStorageBuilder`].
const DEFAULT_PREFIX: &str = "simpleio:";
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Configures and connects a [`RedisStorage`]; made by [`RedisStorage::builder`].
///
/// ```no_run
/// use std::time::Duration;
/// use simpleio::RedisStorage;
/// # async fn run() -> Result<(), simpleio::storage::StorageError> {
/// let storage = RedisStorage::builder("redis://127.0.0.1/2")
///     .key_prefix("myapp:simpleio:")
///     .connect_timeout(Duration::from_millis(500))
///     .response_timeout(Duration::from_secs(1))
///     .connect()
///     .await?;
/// # let _ = storage;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStorageBuilder {
    url: String,
    prefix: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    replica_acks: Option<ReplicaAcks>,
}

impl fmt::Debug for RedisStorageBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the URL: it may carry a password, and builders end up in logs.
        f.debug_struct("RedisStorageBuilder")
            .field("key_prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("replica_acks", &self.replica_acks)
            .finish_non_exhaustive()
    }
}

/// How long one attempt to connect, and one command, may take.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    pub(super) connect: Duration,
    pub(super) response: Duration,
}

impl RedisStorageBuilder {
    /// A builder for the Redis at `url`, with the default settings.
    pub(super) fn new(url: String) -> Self {
        Self {
            url,
            prefix: DEFAULT_PREFIX.to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            replica_acks: None,
        }
    }

    /// The prefix of every key and of the pub/sub channel (default `simpleio:`). Give each
    /// application sharing a Redis its own; a database number in the URL does not separate
    /// pub/sub channels.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one attempt to connect to Redis may take (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long Redis may take to answer one command (default 2 s). An operation fails with
    /// [`StorageError::Unavailable`] after at most the connect timeout plus this.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Makes every operation that others act on — an append (what `stored()` waits for), a
    /// claim and a completion of a client's message, a reply, a join, a leave, a data write —
    /// return only once `replicas` replicas of the Redis primary hold it (`WAIT`, in one
    /// pipeline with the write), so that a primary lost afterwards and replaced by one of them
    /// loses none of it. Default: none, Redis's asynchronous replication. The same setting as
    /// [`RedisClusterStorageBuilder::replica_acks`](super::RedisClusterStorageBuilder::replica_acks),
    /// which says what waits, what does not, and what it costs; the guide's "Failover without
    /// loss" more.
    ///
    /// The primary's address must move to the promoted replica and the old connections must
    /// be closed on failover (managed Redis services do both): the storage reconnects only
    /// when its connections drop.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # async fn run() -> Result<(), simpleio::storage::StorageError> {
    /// let storage = simpleio::RedisStorage::builder("redis://primary.example:6379/")
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

    /// Connects the command connection and subscribes the pub/sub one.
    ///
    /// Fails with [`StorageError::Unavailable`] if the URL is invalid or Redis cannot be
    /// reached. Must be called within a Tokio runtime, which then runs the background task that
    /// forwards signals.
    pub async fn connect(self) -> Result<RedisStorage, StorageError> {
        if let Some(acks) = self.replica_acks {
            check_ack_timeout(acks, self.response_timeout)?;
        }
        let timeouts = Timeouts {
            connect: self.connect_timeout,
            response: self.response_timeout,
        };
        let deadline = timeouts.connect + timeouts.response;
        let client = redis::Client::open(self.url.as_str())
            .map_err(|e| StorageError::Unavailable(format!("invalid Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeouts.connect))
            .set_response_timeout(Some(timeouts.response))
            // Few, quick retries: a request should fail fast with 503 rather than wait out an
            // outage; the next request starts a new reconnection anyway.
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = within(
            deadline,
            ConnectionManager::new_with_config(client.clone(), config.clone()),
        )
        .await?;
        let acknowledging = match self.replica_acks {
            Some(acks) => {
                let mut conns = Vec::with_capacity(ACKNOWLEDGING_CONNECTIONS);
                for _ in 0..ACKNOWLEDGING_CONNECTIONS {
                    let connecting =
                        ConnectionManager::new_with_config(client.clone(), config.clone());
                    conns.push(within(deadline, connecting).await?);
                }
                Some(Acknowledging::new(acks, conns))
            }
            None => None,
        };
        let channel = format!("{}signals", self.prefix);
        // This handle's id among the nodes sharing the prefix: random, so that a restarted
        // process is a new node and never gets the signals its previous life asked for.
        let node = ClientId::random().as_str().to_owned();
        let channels = Channels {
            all: channel.clone(),
            node: format!("{}n:{node}", self.prefix),
        };
        // Subscribed before returning, so that no signal published after `connect` is missed.
        let pubsub = subscribe(&client, &channels, timeouts).await?;
        let (signals, _) = broadcast::channel(SIGNAL_CAPACITY);
        let received = Arc::new(AtomicU64::new(0));
        let subscriber = tokio::spawn(run_subscriber(
            client,
            channels,
            signals.clone(),
            received.clone(),
            pubsub,
            timeouts,
        ));
        Ok(RedisStorage {
            inner: Arc::new(Inner {
                conn,
                prefix: self.prefix,
                channel,
                node,
                received,
                signals,
                deadline,
                acknowledging,
                payloads: Mutex::new(PayloadCache::default()),
                _subscriber: AbortOnDrop(subscriber),
            }),
        })
    }
}

/// A replica acknowledgement's timeout must be shorter than the response timeout, which bounds
/// the write and its `WAIT` together.
pub(super) fn check_ack_timeout(acks: ReplicaAcks, response: Duration) -> Result<(), StorageError> {
    if acks.timeout < response {
        return Ok(());
    }
    Err(StorageError::Unavailable(format!(
        "the replica acknowledgement timeout ({:?}) must be shorter than the response timeout \
         ({response:?})",
        acks.timeout
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replica_wait_longer_than_the_response_timeout_is_refused() {
        let refused = RedisStorage::builder("redis://127.0.0.1:1/")
            .response_timeout(Duration::from_millis(500))
            .replica_acks(1, Duration::from_millis(500))
            .connect()
            .await;
        assert!(
            matches!(&refused, Err(StorageError::Unavailable(e)) if e.contains("shorter than")),
            "{refused:?}"
        );
    }

    #[test]
    fn a_builder_does_not_print_its_password() {
        let builder = RedisStorage::builder("redis://:hunter2@127.0.0.1/");
        assert!(!format!("{builder:?}").contains("hunter2"));
    }
}
