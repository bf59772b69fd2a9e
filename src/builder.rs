//! [`Builder`]: how a layer and its [`SimpleIo`] handle are configured and made.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use tower::{BoxError, Service};

use crate::config::{BuildError, Config};
use crate::handler::{BoxHandler, Incoming, Reply, no_handler};
use crate::hash::HashMap;
use crate::hub::Hub;
use crate::identity::{Identify, reject_all};
use crate::io::SimpleIo;
use crate::layer::SimpleIoLayer;
use crate::namespace::{Namespace, NamespaceEntry, box_handler};
use crate::presence::{OnPresence, PresenceQueue};
use crate::protocol::check_namespace;
use crate::shared::Shared;
use crate::storage::DEFAULT_NAMESPACE;
use crate::storage::{MemoryStorage, Storage};

/// Configures a [`SimpleIoLayer`] and its [`SimpleIo`] handle. Every setting has a default.
///
/// ```
/// use std::time::Duration;
/// use simpleio::{Incoming, MemoryStorage, Reply, SimpleIoLayer, UserId};
/// use tower::service_fn;
///
/// let (layer, io) = SimpleIoLayer::builder()
///     .path("/simpleio")
///     .storage(MemoryStorage::new())
///     .identity(|parts: &http::request::Parts| {
///         let user = parts.headers.get("x-user").and_then(|v| v.to_str().ok()).map(UserId::from);
///         async move { user.ok_or_else(|| simpleio::Rejection::unauthorized("no x-user header")) }
///     })
///     .handler(service_fn(|msg: Incoming| async move {
///         Ok::<_, tower::BoxError>(Reply::json(&format!("got {}", msg.event))?)
///     }))
///     .hold_time(Duration::from_secs(20))
///     .build();
/// # let _ = (layer, io);
/// ```
#[must_use = "call `build` to get the layer and its handle"]
#[derive(Default)]
pub struct Builder {
    config: Config,
    storage: Option<Arc<dyn Storage>>,
    identity: Option<Box<dyn Identify>>,
    handler: Option<BoxHandler>,
    namespaces: Vec<Namespace>,
    on_presence: Option<Box<dyn OnPresence>>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .field("storage", &self.storage)
            .field("identity", &self.identity.is_some())
            .field("handler", &self.handler.is_some())
            .field("namespaces", &self.namespaces)
            .field("on_presence", &self.on_presence.is_some())
            .finish()
    }
}

impl Builder {
    /// The route the layer answers on (default `/simpleio`). Everything else passes through.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.config.path = path.into();
        self
    }

    /// Where messages live (default: a new [`MemoryStorage`], for one process).
    pub fn storage(mut self, storage: impl Storage) -> Self {
        self.storage = Some(Arc::new(storage));
        self
    }

    /// A storage already behind an `Arc`, shared with other code.
    pub fn shared_storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Names the user of each request (see [`Identify`]). Without one, every request on the
    /// route is refused with `401`: the layer fails closed.
    pub fn identity(mut self, identity: impl Identify) -> Self {
        self.identity = Some(Box::new(identity));
        self
    }

    /// The service that handles client messages. Its response becomes the message's
    /// acknowledgement ([`Reply`], or anything `Into<Reply>` such as `()` or a
    /// `serde_json::Value`); its error an error acknowledgement. Tower layers (timeouts,
    /// concurrency limits) apply as usual. Without one, messages are refused with an error ack.
    pub fn handler<S, R>(mut self, handler: S) -> Self
    where
        S: Service<Incoming, Response = R> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        R: Into<Reply> + 'static,
    {
        self.handler = Some(box_handler(handler));
        self
    }

    /// Adds a namespace, with its own handler and authorization (see [`Namespace`]). The
    /// default namespace `/` always exists and uses [`handler`](Self::handler).
    pub fn namespace(mut self, namespace: Namespace) -> Self {
        self.namespaces.push(namespace);
        self
    }

    /// Called with each change of who is online (see [`Presence`](crate::Presence)): clients connecting and
    /// going away (no poll for the [presence TTL](Self::presence_ttl)), users coming online and
    /// going offline. In a cluster each change is reported once, by one node.
    ///
    /// ```
    /// use simpleio::{Presence, SimpleIo, SimpleIoLayer};
    /// let (layer, io) = SimpleIoLayer::builder()
    ///     .on_presence(|change: Presence, io: SimpleIo| async move {
    ///         if let Presence::Offline { user } = change {
    ///             let _ = io.everyone().volatile().emit("left", &user).await;
    ///         }
    ///     })
    ///     .build();
    /// # let _ = (layer, io);
    /// ```
    pub fn on_presence(mut self, handler: impl OnPresence) -> Self {
        self.on_presence = Some(Box::new(handler));
        self
    }

    /// How long a `GET` waits for a message before answering empty (default 25 s; at most 29 s,
    /// since proxies commonly cut requests at 30 s).
    pub fn hold_time(mut self, hold: Duration) -> Self {
        self.config.hold = hold;
        self
    }

    /// The most messages in one `GET` response (default 100).
    pub fn batch_limit(mut self, limit: usize) -> Self {
        self.config.batch_limit = limit;
        self
    }

    /// The largest `POST` body in bytes (default 1 MiB, as Socket.IO's `maxHttpBufferSize`).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.config.max_body = bytes;
        self
    }

    /// The most messages in one `POST` (default 100).
    pub fn max_messages_per_request(mut self, limit: usize) -> Self {
        self.config.max_messages = limit;
        self
    }

    /// The longest event name in bytes (default 128).
    pub fn max_event_len(mut self, bytes: usize) -> Self {
        self.config.max_event_len = bytes;
        self
    }

    /// How long a client message id is remembered, so that a retry is not handled twice
    /// (default 10 minutes).
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.config.dedup_window = window;
        self
    }

    /// How long one request may handle a message before a retry may handle it again (default
    /// 60 s). Keep it above your handler's timeout: it only matters when a handling request died.
    pub fn handler_lease(mut self, lease: Duration) -> Self {
        self.config.handler_lease = lease;
        self
    }

    /// How long a retried `POST` waits for the original request to finish the same message
    /// before acknowledging it as `pending` (default 5 s).
    pub fn pending_wait(mut self, wait: Duration) -> Self {
        self.config.pending_wait = wait;
        self
    }

    /// How long a sent message waits for confirmation by default (default 5 minutes); see
    /// [`Emitter::ttl`](crate::Emitter::ttl).
    pub fn message_ttl(mut self, ttl: Duration) -> Self {
        self.config.message_ttl = ttl;
        self
    }

    /// The most unconfirmed messages a user's queue holds before sends to them fail with
    /// [`Failure::QueueFull`](crate::Failure::QueueFull) (default 10,000).
    pub fn max_queue(mut self, limit: usize) -> Self {
        self.config.max_queue = limit;
        self
    }

    /// How long after its last poll a client still counts as live (default 60 s; must exceed
    /// the hold time). Used by [`SimpleIo::everyone`].
    pub fn presence_ttl(mut self, ttl: Duration) -> Self {
        self.config.presence_ttl = ttl;
        self
    }

    /// How often a waiting poll or sender looks at storage even without a wakeup (default
    /// 10 s): a safety net for a lost signal, never the normal path of a message.
    pub fn recheck_interval(mut self, every: Duration) -> Self {
        self.config.recheck = every;
        self
    }

    /// Builds the layer and its handle.
    ///
    /// # Panics
    ///
    /// If the configuration is invalid (see [`BuildError`]); [`try_build`](Self::try_build)
    /// returns the error instead.
    pub fn build(self) -> (SimpleIoLayer, SimpleIo) {
        match self.try_build() {
            Ok(built) => built,
            Err(e) => panic!("invalid simpleio configuration: {e}"),
        }
    }

    /// Builds the layer and its handle, or says which setting is invalid.
    pub fn try_build(self) -> Result<(SimpleIoLayer, SimpleIo), BuildError> {
        self.config.validate()?;
        let storage = self
            .storage
            .unwrap_or_else(|| Arc::new(MemoryStorage::new()));
        let mut namespaces = HashMap::default();
        namespaces.insert(
            Arc::from(DEFAULT_NAMESPACE),
            NamespaceEntry {
                handler: self.handler.unwrap_or_else(no_handler),
                authorize: None,
            },
        );
        for ns in self.namespaces {
            check_namespace(&ns.name).map_err(BuildError::Namespace)?;
            let entry = NamespaceEntry {
                handler: ns.handler.unwrap_or_else(no_handler),
                authorize: ns.authorize,
            };
            if namespaces.insert(ns.name.clone(), entry).is_some() {
                return Err(BuildError::DuplicateNamespace(ns.name.to_string()));
            }
        }
        let hub = Hub::new(&*storage);
        let shared = Arc::new(Shared {
            config: self.config,
            storage,
            identity: self.identity.unwrap_or_else(|| Box::new(reject_all)),
            namespaces,
            on_presence: self.on_presence,
            presence: PresenceQueue::new(),
            hub,
            waiting: AtomicUsize::new(0),
        });
        Ok((
            SimpleIoLayer {
                shared: shared.clone(),
            },
            SimpleIo::new(shared),
        ))
    }
}
