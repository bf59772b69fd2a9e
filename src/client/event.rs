//! What the client hands to the application: messages and changes of the connection's state.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::mpsc;

use super::error::ConnectionError;

/// One thing that happened, in the order it happened. Read them from [`Events`].
///
/// ```no_run
/// # async fn demo(mut events: simpleio::client::Events) {
/// use simpleio::client::Event;
///
/// while let Some(event) = events.recv().await {
///     match event {
///         Event::Message(m) => println!("{}: {}", m.event, m.data),
///         Event::Connected => println!("connected"),
///         Event::Disconnected(why) => println!("disconnected ({why}); retrying"),
///         Event::Resynced => println!("the server lost its storage; some messages may be lost"),
///         _ => {}
///     }
/// }
/// # }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A message from the server, stored or volatile (see [`Message::kind`]).
    Message(Message),
    /// A poll succeeded: the first one, or the first after [`Disconnected`](Self::Disconnected).
    ///
    /// The first poll is the protocol's handshake, which the server answers at once, so this
    /// comes as soon as the server is reached.
    Connected,
    /// A poll failed; the client keeps retrying with backoff. Sent once per outage, with the
    /// error that began it (see the client's `tracing` logs for the ones that followed).
    Disconnected(ConnectionError),
    /// The server's storage lost its data (its epoch changed). The client started over with the
    /// new positions; messages stored for you before the loss and not yet received are gone.
    Resynced,
}

/// A message from the server.
///
/// ```
/// use simpleio::client::{Message, MessageKind};
///
/// #[derive(serde::Deserialize)]
/// struct Chat { from: String, text: String }
///
/// fn show(m: &Message) {
///     match (m.namespace.as_str(), m.event.as_str(), m.kind) {
///         ("/chat", "said", MessageKind::Stored { .. }) => match m.json::<Chat>() {
///             Ok(chat) => println!("{}: {}", chat.from, chat.text),
///             Err(e) => eprintln!("a malformed chat line: {e}"),
///         },
///         (ns, other, _) => println!("{ns} {other}: {}", m.data),
///     }
/// }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Message {
    /// The namespace it was sent in: `/` unless the server sent it with
    /// [`SimpleIo::of`](crate::SimpleIo::of); always one the client subscribed to (see
    /// [`ClientBuilder::namespaces`](super::ClientBuilder::namespaces)).
    pub namespace: String,
    /// The event name.
    pub event: String,
    /// The payload (`null` if the server sent none).
    pub data: Value,
    /// Stored (confirmed, never repeated) or volatile.
    pub kind: MessageKind,
    /// Its sender waits for a reply (the server's
    /// [`emit_with_ack`](crate::Emitter::emit_with_ack)): answer with
    /// [`Client::reply`](super::Client::reply).
    pub asks_reply: bool,
}

impl Message {
    /// The payload, deserialized. Bytes in it (`{"$bytes": "<base64>"}` on the wire) come out
    /// as [`Binary`](crate::Binary) wherever `T` has one.
    ///
    /// ```
    /// use simpleio::Binary;
    /// # use simpleio::client::Message;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Avatar { user: String, png: Binary }
    ///
    /// fn save(m: &Message) -> Result<(), Box<dyn std::error::Error>> {
    ///     let avatar: Avatar = m.json()?;
    ///     std::fs::write(format!("{}.png", avatar.user), &avatar.png[..])?;
    ///     Ok(())
    /// }
    /// ```
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.data)
    }
}

/// How a [`Message`] was sent.
///
/// ```
/// use simpleio::client::MessageKind;
/// assert!(MessageKind::Stored { pos: 1 }.is_stored());
/// assert!(!MessageKind::Volatile.is_stored());
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageKind {
    /// Stored until confirmed: the client confirms it once you received it from [`Events`], and
    /// never hands it to you twice.
    Stored {
        /// Its position in your user's log (increasing; unique per user within an epoch).
        pos: u64,
    },
    /// Sent only to clients waiting at that moment; never stored, confirmed or repeated.
    Volatile,
}

impl MessageKind {
    /// Whether the message is [`Stored`](Self::Stored).
    pub fn is_stored(&self) -> bool {
        matches!(self, MessageKind::Stored { .. })
    }
}

/// The events of a client, in order: a [`Stream`] of [`Event`], or call [`recv`](Self::recv).
///
/// The buffer is bounded (see
/// [`ClientBuilder::event_buffer`](super::ClientBuilder::event_buffer)): while it is full the
/// client stops polling, so a slow reader slows the server down instead of filling memory.
/// Messages are confirmed to the server only once they are in this buffer. Dropping `Events`
/// stops receiving (sending still works). It ends (`None`) after the client is closed.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use futures_util::StreamExt;
///
/// let (client, events) = simpleio::client::Client::builder("http://127.0.0.1:3000/simpleio")
///     .connect()?;
/// let mut chats = events.filter_map(|e| async move {
///     match e {
///         simpleio::client::Event::Message(m) if m.event == "chat" => Some(m),
///         _ => None,
///     }
/// });
/// let mut chats = std::pin::pin!(chats);
/// while let Some(chat) = chats.next().await {
///     println!("{}", chat.data);
/// }
/// # drop(client); Ok(()) }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub struct Events {
    pub(crate) rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the client is closed and every event before was read.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("buffered", &self.rx.len())
            .finish()
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}
