//! [`PostgresStorageBuilder`]: the settings of a [`PostgresStorage`], and connecting it.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::broadcast;
use tokio_postgres::{Config, NoTls};

use super::error::{OrUnavailable, within};
use super::routes::Routes;
use super::schema::migrate;
use super::signals::{AbortOnDrop, Forwarding, SIGNAL_CAPACITY, listen, run_listener};
use super::{Inner, PostgresStorage};
use crate::id::random_token;
use crate::storage::StorageError;

const DEFAULT_SCHEMA: &str = "simpleio";
const DEFAULT_POOL_SIZE: usize = 16;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest schema name: channel names (schema, `:`, a suffix) must stay under
/// PostgreSQL's 63 bytes.
const SCHEMA_MAX: usize = 40;

/// Configures and connects a [`PostgresStorage`]; made by [`PostgresStorage::builder`].
///
/// ```no_run
/// use std::time::Duration;
/// use simpleio::PostgresStorage;
/// # async fn run() -> Result<(), simpleio::storage::StorageError> {
/// let storage = PostgresStorage::builder("postgres://app@db.internal/app")
///     .schema("chat")
///     .pool_size(32)
///     .response_timeout(Duration::from_secs(2))
///     .connect()
///     .await?;
/// # let _ = storage;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresStorageBuilder {
    url: String,
    schema: String,
    pool_size: usize,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl fmt::Debug for PostgresStorageBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the URL: it may carry a password, and builders end up in logs.
        f.debug_struct("PostgresStorageBuilder")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

impl PostgresStorageBuilder {
    pub(super) fn new(url: String) -> Self {
        Self {
            url,
            schema: DEFAULT_SCHEMA.to_owned(),
            pool_size: DEFAULT_POOL_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
        }
    }

    /// The schema simpleio's tables live in (default `simpleio`), created if missing: lower-case
    /// letters, digits and `_`, at most 40 of them. Its name also prefixes the notification
    /// channels, so applications sharing a database each take their own.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// How many connections the pool holds at most (default 16), besides the one listening
    /// connection.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// How long one attempt to connect may take (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one operation may take once connected (default 5 s). An operation fails with
    /// [`StorageError::Unavailable`] after at most the connect timeout plus this.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Connects, applies the schema's migrations, and starts listening for signals.
    ///
    /// Fails with [`StorageError::Unavailable`] if the URL is invalid or PostgreSQL cannot be
    /// reached. Must be called within a Tokio runtime, which then runs the background task that
    /// forwards signals.
    pub async fn connect(self) -> Result<PostgresStorage, StorageError> {
        let schema = self.schema;
        let valid = !schema.is_empty()
            && schema.len() <= SCHEMA_MAX
            && schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !schema.as_bytes()[0].is_ascii_digit();
        if !valid {
            return Err(StorageError::Unavailable(format!(
                "invalid PostgreSQL schema name {schema:?}: lower-case letters, digits and _"
            )));
        }
        let mut config = Config::from_str(&self.url)
            .map_err(|e| StorageError::Unavailable(format!("invalid PostgreSQL URL: {e}")))?;
        // The server gives up on its side too: a statement or a lock wait past the response
        // timeout, and a transaction left open past the whole deadline — its client timed out,
        // or vanished behind a silent network — so that no row lock outlives the operation
        // that took it. Options the URL gives come first.
        let ms = |d: Duration| d.as_millis().min(i32::MAX as u128);
        let server_side = format!(
            "-c search_path={schema} -c statement_timeout={response} -c lock_timeout={response} \
             -c idle_in_transaction_session_timeout={deadline}",
            response = ms(self.response_timeout),
            deadline = ms(self.connect_timeout + self.response_timeout),
        );
        let options = match config.get_options() {
            Some(given) if !given.trim().is_empty() => format!("{given} {server_side}"),
            _ => server_side,
        };
        config
            .options(options)
            .application_name("simpleio")
            .connect_timeout(self.connect_timeout)
            // A dead server behind a silent network is noticed by the OS, not only by timeouts.
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                // A connection that broke (the server restarted) is dropped from the pool, not
                // handed out.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(self.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(self.connect_timeout + self.response_timeout))
            .create_timeout(Some(self.connect_timeout))
            .recycle_timeout(Some(self.connect_timeout))
            .build()
            .map_err(|e| StorageError::Unavailable(format!("cannot make the pool: {e}")))?;
        let deadline = self.connect_timeout + self.response_timeout;
        within(deadline * 2, async {
            let mut conn = pool.get().await.or_unavailable()?;
            migrate(&mut conn, &schema).await
        })
        .await?;
        let node = random_token(12).to_ascii_lowercase();
        let routes = Routes::new(&schema, node);
        // One session for both, so that their notifications arrive in commit order.
        let channels = vec![routes.all.clone(), routes.own.clone()];
        let (signals, _) = broadcast::channel(SIGNAL_CAPACITY);
        let listening = listen(&config, &channels, deadline, &signals).await?;
        let received = Arc::new(AtomicU64::new(0));
        let listener = tokio::spawn(run_listener(
            Forwarding {
                config,
                channels,
                pool: pool.clone(),
                signals: signals.clone(),
                received: received.clone(),
                timeout: deadline,
            },
            listening,
        ));
        Ok(PostgresStorage {
            inner: Arc::new(Inner {
                pool,
                schema,
                routes,
                received,
                signals,
                deadline,
                scan_from: std::sync::Mutex::new(String::new()),
                remade_at: tokio::sync::Mutex::new(None),
                _listener: AbortOnDrop(listener),
            }),
        })
    }
}
