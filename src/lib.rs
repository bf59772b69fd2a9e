#![doc = include_str!("../docs/guide.md")]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod acks;
#[cfg(feature = "admin")]
mod admin;
mod binary;
mod builder;
#[cfg(feature = "client")]
pub mod client;
mod config;
mod delivery;
pub mod events;
mod handler;
mod hash;
mod hub;
mod id;
mod identity;
mod inbound;
mod io;
mod json;
mod layer;
mod namespace;
mod observe;
mod origin;
mod poll;
mod presence;
mod protocol;
mod reply;
mod script;
mod sharded;
mod shared;
pub mod storage;
pub mod testing;
mod wait;

/// The names of simpleio's metrics, reported with the feature `metrics`; the guide's
/// "Observability" section has their table.
pub mod metrics {
    pub use crate::observe::names::*;
}

/// The client protocol, version 1.2 (`docs/spec.md`): everything needed to write a client.
pub mod spec {
    #![doc = include_str!("../docs/spec.md")]
}

pub use acks::{
    AckError, AckReply, AckSending, MAX_REPLY_BYTES_PER_USER, NoReply, Replies, Unanswered,
};
pub use binary::{BYTES_KEY, Binary};
pub use builder::Builder;
pub use config::BuildError;
pub use delivery::{Delivered, Failure, SendError, Undelivered};
pub use events::Events;
pub use handler::{HandlerError, Incoming, Reply};
pub use id::{ClientId, InvalidId, MAX_ID_LEN, MessageId, UserId};
pub use identity::{Identify, IdentifyFuture, Identity, IdentityFn, IdentityFuture, Rejection};
pub use io::{DataError, Emitter, MAX_DATA_LEN, Receipt, Sending, SimpleIo, VolatileEmitter};
pub use layer::{ResponseFuture, SimpleIoBody, SimpleIoLayer, SimpleIoService};
pub use namespace::{Authorize, AuthorizeFuture, Namespace};
pub use presence::{OnPresence, Presence, PresenceFuture};
pub use protocol::ErrorBody;
pub use script::{CLIENT_MODULE, CLIENT_SCRIPT};
#[cfg(feature = "durable")]
pub use storage::DurableStorage;
#[cfg(feature = "postgres")]
pub use storage::PostgresStorage;
#[cfg(feature = "redis-cluster")]
pub use storage::RedisClusterStorage;
#[cfg(feature = "redis")]
pub use storage::RedisStorage;
pub use storage::{Member, MemoryStorage, Storage};
pub use wait::Waited;
