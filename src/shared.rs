//! The state every clone of the layer, the service and the `SimpleIo` handle share.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use crate::config::Config;
use crate::hash::HashMap;
use crate::hub::Hub;
use crate::identity::Identify;
use crate::namespace::NamespaceEntry;
use crate::observe::Observe;
use crate::observe::Observed;
use crate::presence::{OnPresence, PresenceQueue};
use crate::protocol::Limits;
use crate::storage::Storage;

pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) storage: Arc<dyn Storage>,
    /// The same storage as its own type: a poll's read, the hot path, calls it without the
    /// box a call through the trait object costs ([`Observed::fetch_inline`]).
    pub(crate) observed: Arc<Observed>,
    pub(crate) identity: Box<dyn Identify>,
    /// Every namespace, the default `/` included.
    pub(crate) namespaces: HashMap<Arc<str>, NamespaceEntry>,
    pub(crate) on_presence: Option<Box<dyn OnPresence>>,
    pub(crate) presence: PresenceQueue,
    pub(crate) hub: Arc<Hub>,
    /// Polls waiting on this node now.
    pub(crate) waiting: AtomicUsize,
    /// What a handshake advertises, made once from `config`.
    pub(crate) limits: Limits,
    /// Metric handles and this node's tallies.
    pub(crate) observe: Observe,
    /// The admin page, if the application set one up.
    #[cfg(feature = "admin")]
    pub(crate) admin: Option<crate::admin::Admin>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("storage", &self.storage)
            .field("namespaces", &self.namespaces.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}
