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
use crate::observe::{Observe, Observed};
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
    #[cfg(feature = "admin")]
    admin: Option<crate::admin::Admin>,
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

    /// Names the user of each request (see [`Identify`]): a function or closure over the
    /// request's parts returning a [`UserId`](crate::UserId), or an
    /// [`Identity`](crate::Identity) with what else it learnt (roles, claims) for handlers and
    /// namespace authorization. A named `async fn(&Parts) -> Result<UserId, Rejection>` works
    /// as it is. Without one, every request on the route is refused with `401`: the layer
    /// fails closed.
    pub fn identity(mut self, identity: impl Identify) -> Self {
        self.identity = Some(Box::new(identity));
        self
    }

    /// The service that handles client messages: usually an [`Events`](crate::Events) router,
    /// a handler per event; or any `tower::Service<Incoming>`. Its response becomes the
    /// message's acknowledgement ([`Reply`], or anything `Into<Reply>` such as `()` or a
    /// `serde_json::Value`); its error an error acknowledgement. Tower layers (timeouts,
    /// concurrency limits) apply as usual. Without one, messages are refused with an error ack.
    ///
    /// ```
    /// use simpleio::events::{Data, Events};
    /// use simpleio::{Incoming, Reply, SimpleIoLayer};
    /// use tower::{BoxError, service_fn};
    ///
    /// // A router of events…
    /// let events: Events = Events::new().on("add", |Data((a, b)): Data<(i64, i64)>| async move {
    ///     (a + b).to_string()
    /// });
    /// let (_layer, _io) = SimpleIoLayer::builder().handler(events).build();
    ///
    /// // …or any service, seeing every message.
    /// let plain = service_fn(|msg: Incoming| async move {
    ///     Ok::<_, BoxError>(Reply::json(&msg.event)?)
    /// });
    /// let (_layer, _io) = SimpleIoLayer::builder().handler(plain).build();
    /// ```
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
    /// (default 10 minutes, also the least: clients resend an unanswered message for up to 9
    /// minutes, spec §4; [`try_build`](Self::try_build) refuses a shorter window).
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.config.dedup_window = window;
        self
    }

    /// How long a request that died while handling a message blocks the message's retries
    /// (default 10 s). A live request renews its claim every third of this while the handler
    /// runs, so a handler may take longer; the message is handled twice only if its request
    /// died mid-handling, or could not reach the storage for this long while the handler ran.
    pub fn handler_lease(mut self, lease: Duration) -> Self {
        self.config.handler_lease = lease;
        self
    }

    /// How long a retried `POST` waits for the original request to finish the same message
    /// before acknowledging it as `pending` (default 5 s, at most 20 s: clients give a `POST`
    /// 30 s, spec §4; [`try_build`](Self::try_build) refuses a longer wait).
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

    /// How many of one recipient's queued messages may come from one sender (default 1,000 of
    /// the [`max_queue`](Self::max_queue) of 10,000). A sender is the user on whose behalf a
    /// message is sent: [`Incoming::io`](crate::Incoming) sends on behalf of the message's user,
    /// and [`SimpleIo::on_behalf_of`](crate::SimpleIo::on_behalf_of) names one. One user who
    /// floods another's queue then fills only their share of it, and messages from everyone
    /// else still get in; a send beyond the share fails with
    /// [`Failure::QueueFull`](crate::Failure::QueueFull).
    pub fn max_queue_per_sender(mut self, limit: usize) -> Self {
        self.config.max_queue_per_sender = limit;
        self
    }

    /// How many bytes of message data one user's queue holds (default 64 MiB), beside the
    /// [`max_queue`](Self::max_queue) count: a send beyond it fails with
    /// [`Failure::QueueFull`](crate::Failure::QueueFull). A fan-out's payload is stored once,
    /// but counts in each recipient's queue.
    pub fn max_queue_bytes(mut self, bytes: usize) -> Self {
        self.config.max_queue_bytes = bytes;
        self
    }

    /// How many of those bytes may come from one sender (default 8 MiB), as
    /// [`max_queue_per_sender`](Self::max_queue_per_sender) for the count.
    pub fn max_queue_bytes_per_sender(mut self, bytes: usize) -> Self {
        self.config.max_queue_bytes_per_sender = bytes;
        self
    }

    /// How many message ids of one client are remembered, so that a retry is not handled twice
    /// (default 1,000). When a client has this many, its oldest handled one is forgotten: a
    /// client retries only its latest messages. Bounds memory against a client that sends
    /// without end.
    pub fn max_dedup_per_client(mut self, limit: usize) -> Self {
        self.config.max_dedup_per_client = limit;
        self
    }

    /// How many message ids of one user, over all of their clients, are remembered (default
    /// 4,000), as [`max_dedup_per_client`](Self::max_dedup_per_client). When the oldest is
    /// still being handled, a new message is refused with `429 too_many_in_progress`.
    pub fn max_dedup_per_user(mut self, limit: usize) -> Self {
        self.config.max_dedup_per_user = limit;
        self
    }

    /// The largest handler reply in bytes of JSON (default 8 KiB). A reply is remembered with
    /// its message id for the [dedup window](Self::dedup_window), so it must stay small; a
    /// larger one becomes the error acknowledgement `reply_too_large`. Send large results as
    /// messages.
    pub fn max_reply_bytes(mut self, bytes: usize) -> Self {
        self.config.max_reply_bytes = bytes;
        self
    }

    /// How many clients (tabs, devices) one user may have at once (default 64): a poll with a
    /// new client id beyond it is refused with `429 too_many_clients` until one of them has
    /// been gone for the [presence TTL](Self::presence_ttl).
    pub fn max_clients_per_user(mut self, limit: usize) -> Self {
        self.config.max_clients_per_user = limit;
        self
    }

    /// How many polls of one user may wait on this node at once (default 64): more are refused
    /// with `429 too_many_polls`.
    pub fn max_polls_per_user(mut self, limit: usize) -> Self {
        self.config.max_polls_per_user = limit;
        self
    }

    /// How many polls may wait on this node at once (default 100,000): more are refused with
    /// `503 server_busy`, which clients retry with backoff. Size it to the node's memory and
    /// file descriptors (see the guide's "Running in production").
    pub fn max_polls(mut self, limit: usize) -> Self {
        self.config.max_polls = limit;
        self
    }

    /// How many namespaces one poll may read (default 32); more is `400 too_many_namespaces`.
    pub fn max_namespaces_per_poll(mut self, limit: usize) -> Self {
        self.config.max_namespaces = limit;
        self
    }

    /// The most bytes of messages in one `GET` response (default 4 MiB), beside the
    /// [`batch_limit`](Self::batch_limit) count: the rest come on the next `GET`. A single
    /// message larger than this still goes, alone.
    pub fn max_batch_bytes(mut self, bytes: usize) -> Self {
        self.config.max_batch_bytes = bytes;
        self
    }

    /// The largest message payload in bytes of JSON, in either direction (default 1 MiB). A
    /// client's is refused with `413 message_too_large`; a send from the server fails with
    /// [`SendError::TooLarge`](crate::SendError::TooLarge).
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.config.max_message_bytes = bytes;
        self
    }

    /// The deepest nesting of arrays and objects in a message payload (default 64), in either
    /// direction: every client can parse what it is sent (`400 data_too_deep` for a client's,
    /// [`SendError::TooDeep`](crate::SendError::TooDeep) for the server's).
    pub fn max_data_depth(mut self, depth: usize) -> Self {
        self.config.max_data_depth = depth;
        self
    }

    /// How long reading a `POST` body may take (default 10 s); past it the request is answered
    /// `408 body_timeout`, so that slow or never-ending bodies cannot hold connections.
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.config.body_timeout = timeout;
        self
    }

    /// How many presence changes may wait for the [presence handler](Self::on_presence) on
    /// this node (default 10,000). Beyond, new ones are dropped with a warning: a handler that
    /// cannot keep up must not grow memory without end.
    pub fn max_presence_queue(mut self, limit: usize) -> Self {
        self.config.max_presence_queue = limit;
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

    /// Serves the admin page at `path` (feature `admin`), to the requests `authorize` lets in:
    /// an identity function (see [`identity`](Self::identity)) over the request parts that
    /// names the operator, or rejects. There is no page without this call, and none without an
    /// authorization: the page shows every live user, room and pending message.
    ///
    /// `GET {path}` is the page, `GET {path}/snapshot` its figures as JSON (the guide's
    /// "Observability" section describes both).
    ///
    /// ```
    /// use simpleio::{Rejection, SimpleIoLayer, UserId};
    ///
    /// let (layer, io) = SimpleIoLayer::builder()
    ///     .admin("/admin", |parts: &http::request::Parts| {
    ///         // A real application checks its own session or token here.
    ///         let operator = parts.headers.get("x-operator-key").is_some_and(|k| k == "s3cret");
    ///         std::future::ready(if operator {
    ///             Ok(UserId::from("operator"))
    ///         } else {
    ///             Err(Rejection::forbidden("operators only"))
    ///         })
    ///     })
    ///     .build();
    /// # let _ = (layer, io);
    /// ```
    #[cfg(feature = "admin")]
    #[cfg_attr(docsrs, doc(cfg(feature = "admin")))]
    pub fn admin(mut self, path: impl Into<String>, authorize: impl Identify) -> Self {
        self.admin = Some(crate::admin::Admin {
            path: path.into(),
            authorize: Box::new(authorize),
        });
        self
    }

    /// Builds the layer and its handle, or says which setting is invalid.
    pub fn try_build(self) -> Result<(SimpleIoLayer, SimpleIo), BuildError> {
        self.config.validate()?;
        #[cfg(feature = "admin")]
        if let Some(admin) = &self.admin {
            let path = &admin.path;
            let clash = path == &self.config.path
                || path.strip_prefix(self.config.path.trim_end_matches('/'))
                    == Some("/simpleio.js");
            if !path.starts_with('/') || (path.len() > 1 && path.ends_with('/')) || clash {
                return Err(BuildError::AdminPath(path.clone()));
            }
        }
        let storage = self
            .storage
            .unwrap_or_else(|| Arc::new(MemoryStorage::new()));
        let observe = Observe::new(&self.config);
        let observed = Arc::new(Observed::new(storage, observe.tally.clone()));
        let storage: Arc<dyn Storage> = observed.clone();
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
        let hub = Hub::counting(&*storage, observe.signals.clone());
        let presence = PresenceQueue::new(self.config.max_presence_queue);
        let limits = self.config.advertised();
        let shared = Arc::new(Shared {
            config: self.config,
            storage,
            observed,
            identity: self.identity.unwrap_or_else(|| Box::new(reject_all)),
            namespaces,
            on_presence: self.on_presence,
            presence,
            hub,
            waiting: AtomicUsize::new(0),
            limits,
            observe,
            #[cfg(feature = "admin")]
            admin: self.admin,
        });
        Ok((
            SimpleIoLayer {
                shared: shared.clone(),
            },
            SimpleIo::new(shared),
        ))
    }
}
