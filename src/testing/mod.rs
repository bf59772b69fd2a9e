//! A test kit for applications: an in-process client that connects as a user, emits, receives
//! and confirms, through the real layer and without HTTP plumbing, with time under the test's
//! control.
//!
//! [`TestClient`] speaks the protocol (`docs/spec.md`) to a [`SimpleIoLayer`] directly, as a
//! client on the network would, through the same code path: the identity function, namespace
//! authorization, the handler, the storage. So a test exercises the application's handlers and
//! emits as they will run, in milliseconds and with no port.
//!
//! ```
//! use serde_json::json;
//! use simpleio::testing::TestClient;
//! use simpleio::{Incoming, Rejection, Reply, SimpleIoLayer, UserId};
//! use tower::service_fn;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The app under test: the user comes from a header, `add` replies with the sum.
//! let (layer, io) = SimpleIoLayer::builder()
//!     .identity(|parts: &http::request::Parts| {
//!         let user = parts.headers.get("x-user").and_then(|v| v.to_str().ok()).map(UserId::from);
//!         async move { user.ok_or_else(|| Rejection::unauthorized("sign in first")) }
//!     })
//!     .handler(service_fn(|msg: Incoming| async move {
//!         let (a, b): (i64, i64) = msg.json()?;
//!         Ok::<_, tower::BoxError>(Reply::json(&(a + b))?)
//!     }))
//!     .build();
//!
//! let mut ann = TestClient::builder(&layer).header("x-user", "ann").connect().await?;
//! assert_eq!(ann.emit("add", &(2, 3)).await?, json!(5));
//!
//! // A message to ann: she receives it, and confirming it resolves the emit.
//! let sending = tokio::spawn(io.to_user("ann").emit("news", &"hello").stored().await?);
//! let got = ann.recv().await?;
//! assert_eq!((got.event.as_str(), &got.data), ("news", &json!("hello")));
//! ann.confirm().await?;
//! assert!(sending.await?.is_ok());
//! # Ok(()) }
//! ```
//!
//! # Time control
//!
//! Under a paused tokio clock (`#[tokio::test(start_paused = true)]`, or
//! `tokio::time::pause()`), a held poll ends as soon as the test has nothing else to do. With
//! the feature `test-util` (give it in `[dev-dependencies]`:
//! `simpleio = { version = "…", features = ["test-util"] }`), the storage's clock is the
//! test's too: `tokio::time::advance` moves message expiry, presence, dedup windows and handler
//! leases forward — a five-minute TTL is tested in no time. This holds for the storages in the
//! process ([`MemoryStorage`](crate::MemoryStorage), the durable one); Redis keeps its own
//! clock. Without the feature the storage reads only the wall clock.
//!
//! ```
//! use std::time::Duration;
//! use simpleio::testing::TestClient;
//! use simpleio::{Failure, Member, SendError, SimpleIoLayer, UserId};
//!
//! # #[cfg(not(feature = "test-util"))] fn main() {}
//! # #[cfg(feature = "test-util")]
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (layer, io) = SimpleIoLayer::builder()
//!     .identity(|_: &http::request::Parts| std::future::ready(Ok(UserId::from("ann"))))
//!     .build();
//! // ann is connected, and never confirms what she is sent.
//! let _ann = TestClient::builder(&layer).connect().await?;
//! let sending = tokio::spawn(io.to_user("ann").ttl(Duration::from_secs(300)).emit("reminder", &1));
//! tokio::time::advance(Duration::from_secs(301)).await; // five minutes, in no time
//! match sending.await? {
//!     Err(SendError::NotDelivered(report)) => {
//!         assert_eq!(report.failed, [(Member::from("ann"), Failure::Expired)]);
//!     }
//!     other => panic!("{other:?}"),
//! }
//! # Ok(()) }
//! ```
//!
//! [`SimpleIoLayer`]: crate::SimpleIoLayer

mod client;
mod received;

pub use client::{TestClient, TestClientBuilder};
pub use received::{EmitError, Received, TestError};
