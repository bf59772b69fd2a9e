//! The state every clone of the layer, the service and the `SimpleIo` handle share.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use crate::config::Config;
use crate::handler::BoxHandler;
use crate::hub::Hub;
use crate::identity::Identify;
use crate::storage::Storage;

pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) identity: Box<dyn Identify>,
    pub(crate) handler: BoxHandler,
    pub(crate) hub: Arc<Hub>,
    /// Polls waiting on this node now.
    pub(crate) waiting: AtomicUsize,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("storage", &self.storage)
            .finish_non_exhaustive()
    }
}
