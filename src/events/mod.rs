//! Event handlers the axum way: an [`Events`] router with a handler per event, each an async
//! function whose arguments are extractors.
//!
//! ```
//! use serde::Deserialize;
//! use simpleio::events::{Data, Events, Extension, State};
//! use simpleio::{HandlerError, Identity, Rejection, SimpleIo, SimpleIoLayer, UserId};
//!
//! #[derive(Clone)]
//! struct App {
//!     max_len: usize,
//! }
//!
//! /// What the identity function learnt about the user.
//! #[derive(Clone)]
//! struct Moderator(bool);
//!
//! async fn identity(parts: &http::request::Parts) -> Result<Identity, Rejection> {
//!     let user = parts.headers.get("x-user").and_then(|v| v.to_str().ok());
//!     let user = user.ok_or_else(|| Rejection::unauthorized("sign in first"))?;
//!     Ok(Identity::new(user).with_extension(Moderator(user == "mia")))
//! }
//!
//! #[derive(Deserialize)]
//! struct Chat {
//!     text: String,
//! }
//!
//! async fn chat(
//!     user: UserId,
//!     io: SimpleIo,
//!     State(app): State<App>,
//!     Data(chat): Data<Chat>,
//! ) -> Result<(), HandlerError> {
//!     if chat.text.len() > app.max_len {
//!         return Err(HandlerError::new("too_long", format!("at most {} bytes", app.max_len)));
//!     }
//!     let sending = io.everyone().emit("chat", &serde_json::json!({"from": user, "text": chat.text}));
//!     sending.stored().await.map(drop).map_err(|e| HandlerError::new("not_sent", e.to_string()))
//! }
//!
//! async fn ban(Extension(Moderator(moderator)): Extension<Moderator>, Data(who): Data<String>)
//!     -> Result<String, HandlerError>
//! {
//!     if !moderator {
//!         return Err(HandlerError::new("forbidden", "only moderators may ban"));
//!     }
//!     Ok(format!("{who} is banned"))
//! }
//!
//! let events = Events::new()
//!     .on("chat", chat)
//!     .on("ban", ban)
//!     .with_state(App { max_len: 2000 });
//! let (layer, io) = SimpleIoLayer::builder().identity(identity).handler(events).build();
//! # let _ = (layer, io);
//! ```
//!
//! | extractor | gives |
//! |---|---|
//! | [`Data<T>`] | the payload as `T` (serde); a bad one is refused with `invalid_data`, naming the field |
//! | [`State<S>`] | the router's state ([`Events::with_state`]), or a part of it ([`FromRef`]) |
//! | [`UserId`](crate::UserId), [`ClientId`](crate::ClientId), [`MessageId`](crate::MessageId) | the sender, its client, the message's id |
//! | [`Extension<T>`] | what the identity function added ([`Identity::with_extension`](crate::Identity::with_extension)), or a layer outside simpleio |
//! | [`SimpleIo`](crate::SimpleIo) | a sending handle in the message's namespace, on behalf of the sender |
//! | [`Event`] | the event's name (for a fallback) |
//! | [`Incoming`](crate::Incoming) | the whole message |
//! | `Option<T>` | `T` if it can be made, else `None` |
//!
//! A handler returns anything [`IntoReply`]: `()`, a [`Json`] value, a [`Reply`](crate::Reply),
//! a `Result` whose error is a [`HandlerError`](crate::HandlerError) (an error
//! acknowledgement with its code and message) or any other error (`handler_error`, logged).
//! The guide's "Handlers" section says more.

mod data;
mod extension;
mod extract;
mod handler;
mod reply;
mod router;
mod state;

pub use data::{Data, INVALID_DATA};
pub use extension::{Extension, MissingExtension};
pub use extract::{Event, FromIncoming};
pub use handler::{Handler, HandlerFuture, HandlerService};
pub use reply::{IntoReply, Json};
pub use router::{Events, UNKNOWN_EVENT};
pub use state::{FromRef, State};
