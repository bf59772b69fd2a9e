//! simpleio (crate docs to come)
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod id;
pub mod storage;

pub use id::{ClientId, InvalidId, MessageId, UserId, MAX_ID_LEN};
pub use storage::{MemoryStorage, Storage};
