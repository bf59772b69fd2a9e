//! The [`SimpleIo`] handle: sending to users, clients, rooms and everyone, confirmed or
//! volatile; rooms, presence and per-client data.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::delivery::{self, Delivered, Failure, SendError};
use crate::hash::HashSet;
use crate::hub::Expectation;
use crate::id::{ClientId, UserId};
use crate::origin::Origins;
use crate::shared::Shared;
use crate::storage::{
    AppendOutcome, DEFAULT_NAMESPACE, DeliveryState, DeliveryTarget, Epoch, FANOUT_CHUNK, Member,
    Millis, NewMessage, Persisting, Position, QueueLimits, Signal, Storage, StorageError,
    millis_after,
};

/// How long a fan-out works before it lets other tasks run: a send to a big room never holds
/// the thread for longer, while a send to a few thousand is stored in one go.
const FANOUT_SLICE: Duration = Duration::from_millis(15);

/// The largest value [`SimpleIo::set_data`] stores, in bytes of JSON.
pub const MAX_DATA_LEN: usize = 64 * 1024;

/// The sending side of simpleio: cheap to clone, usable from anywhere (handlers, background
/// tasks, other routes). Returned by [`Builder::build`](crate::Builder::build) beside the layer.
///
/// ```no_run
/// # async fn demo(io: simpleio::SimpleIo) -> Result<(), simpleio::SendError> {
/// // Resolves once a client of "ann" confirmed the message.
/// io.to_user("ann").emit("news", &"the build is green").await?;
///
/// // Several users: resolves once each of them confirmed, or names who did not.
/// io.recipients(["ann", "bob"]).emit("chat", &serde_json::json!({"text": "hi"})).await?;
///
/// // A room, in the namespace "/chat", to every member but ann.
/// io.of("/chat").to_room("lobby").except("ann").emit("joined", &"bob").await?;
///
/// // Only clients waiting right now; nothing stored, nothing confirmed.
/// io.everyone().volatile().emit("typing", &"ann").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SimpleIo {
    pub(crate) shared: Arc<Shared>,
    /// The namespace this handle sends in.
    namespace: Arc<str>,
    /// On whose behalf its messages are sent, if anyone's: each sender holds only a share of a
    /// recipient's queue.
    sender: Option<UserId>,
    /// Names for its sends, when it is a handler's (see [`crate::origin`]).
    origins: Option<Arc<Origins>>,
}

impl fmt::Debug for SimpleIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimpleIo")
            .field("path", &self.shared.config.path)
            .field("namespace", &self.namespace)
            .field("sender", &self.sender)
            .field("storage", &self.shared.storage)
            .finish()
    }
}

/// Who an [`Emitter`] sends to. Resolved to single recipients when the message is sent.
#[derive(Debug, Clone, Default)]
struct Recipients {
    users: Vec<UserId>,
    clients: Vec<(UserId, ClientId)>,
    rooms: Vec<Arc<str>>,
    /// Add every user with a live client, looked up at send time.
    everyone: bool,
    except: Vec<Member>,
}

/// Failed to read or write per-client data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The value could not be turned into JSON, or the stored JSON into the type asked for.
    #[error("the data is not valid for its type: {0}")]
    Json(#[source] serde_json::Error),
    /// The value is larger than [`MAX_DATA_LEN`] bytes of JSON.
    #[error("the data is {0} bytes of JSON, more than the limit of {MAX_DATA_LEN}")]
    TooLarge(usize),
    /// The storage failed.
    #[error("{0}")]
    Storage(#[source] StorageError),
}

impl SimpleIo {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        SimpleIo {
            shared,
            namespace: DEFAULT_NAMESPACE.into(),
            sender: None,
            origins: None,
        }
    }

    /// The same handle, sending in namespace `ns` (see [`Namespace`](crate::Namespace)): only
    /// clients subscribed to it receive the messages.
    pub fn of(&self, ns: impl Into<Arc<str>>) -> SimpleIo {
        SimpleIo {
            shared: self.shared.clone(),
            namespace: ns.into(),
            sender: self.sender.clone(),
            origins: self.origins.clone(),
        }
    }

    /// The same handle, sending on behalf of `user`: their messages may fill only a share of
    /// each recipient's queue ([`Builder::max_queue_per_sender`](crate::Builder::max_queue_per_sender)),
    /// so that one user cannot fill another's for everyone. [`Incoming::io`](crate::Incoming)
    /// already sends on behalf of the message's user; use this for their messages relayed
    /// from elsewhere (a REST route, a job).
    ///
    /// ```no_run
    /// # async fn demo(io: simpleio::SimpleIo) -> Result<(), simpleio::SendError> {
    /// io.on_behalf_of("ann").to_user("bob").emit("dm", &"hi bob").stored().await?;
    /// # Ok(()) }
    /// ```
    pub fn on_behalf_of(&self, user: impl Into<UserId>) -> SimpleIo {
        SimpleIo {
            shared: self.shared.clone(),
            namespace: self.namespace.clone(),
            sender: Some(user.into()),
            origins: self.origins.clone(),
        }
    }

    /// The same handle, naming its sends after the client message a handler handles.
    pub(crate) fn for_handler(&self, origins: Origins) -> SimpleIo {
        SimpleIo {
            origins: Some(Arc::new(origins)),
            ..self.clone()
        }
    }

    /// Whose behalf this handle sends on, if anyone's (see [`on_behalf_of`](Self::on_behalf_of)).
    pub fn sender(&self) -> Option<&UserId> {
        self.sender.as_ref()
    }

    /// The namespace this handle sends in (`/` unless made by [`of`](Self::of)).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Messages to one user: every client of theirs receives them.
    ///
    /// A user, never a room: Socket.IO's `io.to(room)` is [`to_room`](Self::to_room) here.
    /// The names say which, so a port cannot send to a user called "lobby" by mistake.
    ///
    /// ```
    /// # let (_layer, io) = simpleio::SimpleIoLayer::builder().build();
    /// let to_ann = io.to_user("ann"); // every tab of ann
    /// let to_lobby = io.to_room("lobby"); // every member of the room
    /// # drop((to_ann, to_lobby));
    /// ```
    ///
    /// ```compile_fail
    /// # let (_layer, io) = simpleio::SimpleIoLayer::builder().build();
    /// let which = io.to("lobby"); // a user or a room? Neither compiles.
    /// ```
    #[doc(alias = "to")]
    pub fn to_user(&self, user: impl Into<UserId>) -> Emitter {
        self.emitter().to_user(user)
    }

    /// Messages to several users (duplicates are ignored).
    pub fn recipients<U: Into<UserId>>(&self, users: impl IntoIterator<Item = U>) -> Emitter {
        users.into_iter().fold(self.emitter(), Emitter::to_user)
    }

    /// Messages to one client of a user (say, the tab that asked for something).
    pub fn to_client(&self, user: impl Into<UserId>, client: ClientId) -> Emitter {
        self.emitter().to_client(user, client)
    }

    /// Messages to every member of `room`, looked up when the message is sent: every client of
    /// a member user, and each member client. Each member confirms for itself.
    #[doc(alias = "to")]
    pub fn to_room(&self, room: impl Into<Arc<str>>) -> Emitter {
        self.emitter().to_room(room)
    }

    /// Messages to every user with a live client (one that polled within the presence TTL),
    /// looked up when the message is sent.
    pub fn everyone(&self) -> Emitter {
        self.emitter().everyone()
    }

    /// What became of stored messages, from their [`Receipt`]s, in the order given: asked of
    /// the storage, so it works on any node and after the sending process is gone. A message
    /// past its TTL that nobody confirmed is [`Expired`](DeliveryState::Expired).
    pub async fn delivery(&self, receipts: &[Receipt]) -> Result<Vec<DeliveryState>, StorageError> {
        let mut states = Vec::with_capacity(receipts.len());
        // One storage call per run of one epoch, in chunks: no call for a whole fan-out.
        for same_epoch in receipts.chunk_by(|a, b| a.epoch == b.epoch) {
            for chunk in same_epoch.chunks(FANOUT_CHUNK) {
                let targets: Vec<DeliveryTarget> = chunk
                    .iter()
                    .map(|r| DeliveryTarget {
                        user: r.recipient.user().clone(),
                        client: client_of(&r.recipient),
                        namespace: r.namespace.clone(),
                        pos: r.pos,
                    })
                    .collect();
                states.extend(
                    self.shared
                        .storage
                        .delivery(&chunk[0].epoch, &targets)
                        .await?,
                );
            }
        }
        Ok(states)
    }

    /// Adds `member` (a user, or one client of a user) to `room`. Rooms live in storage, so every
    /// node sees them; a user stays a member until [`leave`](Self::leave), a client as long as
    /// it is live.
    ///
    /// ```no_run
    /// # async fn demo(io: simpleio::SimpleIo) -> Result<(), simpleio::storage::StorageError> {
    /// io.join("ann", "lobby").await?;
    /// io.to_room("lobby").emit("welcome", &"hi all").await.ok();
    /// # Ok(()) }
    /// ```
    pub async fn join(&self, member: impl Into<Member>, room: &str) -> Result<(), StorageError> {
        self.start_background();
        let ttl = self.shared.config.presence_ttl;
        self.shared.storage.join(room, &member.into(), ttl).await
    }

    /// Removes `member` from `room`.
    pub async fn leave(&self, member: impl Into<Member>, room: &str) -> Result<(), StorageError> {
        self.shared.storage.leave(room, &member.into()).await
    }

    /// The rooms `member` is in (a user's own memberships, not those of their clients).
    pub async fn rooms_of(&self, member: impl Into<Member>) -> Result<Vec<String>, StorageError> {
        let rooms = self.shared.storage.rooms(&member.into()).await?;
        Ok(rooms.iter().map(|r| r.to_string()).collect())
    }

    /// The members of `room`.
    pub async fn members_of(&self, room: &str) -> Result<Vec<Member>, StorageError> {
        self.shared.storage.members(room).await
    }

    /// Whether `user` has a live client.
    pub async fn online(&self, user: impl Into<UserId>) -> Result<bool, StorageError> {
        Ok(!self.clients_of(user).await?.is_empty())
    }

    /// Every user with a live client.
    pub async fn online_users(&self) -> Result<Vec<UserId>, StorageError> {
        self.shared.storage.live_users().await
    }

    /// The live clients of `user`.
    pub async fn clients_of(&self, user: impl Into<UserId>) -> Result<Vec<ClientId>, StorageError> {
        self.shared.storage.live_clients(&user.into()).await
    }

    /// Attaches `value` under `key` to `member`, visible from every node: a client's data lives
    /// as long as the client, a user's until their last client is gone (Socket.IO's
    /// `socket.set`). At most [`MAX_DATA_LEN`] bytes of JSON.
    ///
    /// ```no_run
    /// # async fn demo(io: simpleio::SimpleIo, tab: simpleio::ClientId) -> Result<(), simpleio::DataError> {
    /// use simpleio::storage::Member;
    /// io.set_data(Member::client("ann", tab.clone()), "nickname", &"annie").await?;
    /// let nick: Option<String> = io.data(Member::client("ann", tab), "nickname").await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_data<T: Serialize + ?Sized>(
        &self,
        member: impl Into<Member>,
        key: &str,
        value: &T,
    ) -> Result<(), DataError> {
        let json = serde_json::to_string(value).map_err(DataError::Json)?;
        if json.len() > MAX_DATA_LEN {
            return Err(DataError::TooLarge(json.len()));
        }
        self.start_background();
        let ttl = self.shared.config.presence_ttl;
        self.shared
            .storage
            .set_data(&member.into(), key, Some(&json), ttl)
            .await
            .map_err(DataError::Storage)
    }

    /// The data under `key` of `member`, if set (Socket.IO's `socket.get`).
    pub async fn data<T: DeserializeOwned>(
        &self,
        member: impl Into<Member>,
        key: &str,
    ) -> Result<Option<T>, DataError> {
        let json = self
            .shared
            .storage
            .get_data(&member.into(), key)
            .await
            .map_err(DataError::Storage)?;
        json.map(|j| serde_json::from_str(&j).map_err(DataError::Json))
            .transpose()
    }

    /// Removes the data under `key` of `member`.
    pub async fn remove_data(&self, member: impl Into<Member>, key: &str) -> Result<(), DataError> {
        let ttl = self.shared.config.presence_ttl;
        self.shared
            .storage
            .set_data(&member.into(), key, None, ttl)
            .await
            .map_err(DataError::Storage)
    }

    /// How many polls are waiting on this node now.
    pub fn waiting_polls(&self) -> usize {
        self.shared.waiting.load(Ordering::Relaxed)
    }

    /// The storage this instance uses.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.shared.storage
    }

    fn emitter(&self) -> Emitter {
        self.start_background();
        Emitter {
            io: self.clone(),
            recipients: Recipients::default(),
            ttl: self.shared.config.message_ttl,
            timeout: None,
        }
    }

    fn start_background(&self) {
        // Only inside a runtime: building an emitter is allowed anywhere.
        if tokio::runtime::Handle::try_current().is_ok() {
            crate::presence::ensure_started(&self.shared);
        }
    }
}

/// A message about to be sent; made by [`SimpleIo::to_user`] and friends, which can be chained:
/// `io.to_room("a").to_room("b").to_user("ann").except("bob")`.
#[derive(Debug, Clone)]
#[must_use = "nothing is sent until `emit` is called and awaited"]
pub struct Emitter {
    io: SimpleIo,
    recipients: Recipients,
    ttl: Duration,
    /// How long [`emit_with_ack`](Self::emit_with_ack) waits for replies.
    timeout: Option<Duration>,
}

impl Emitter {
    /// Adds a recipient user: every client of theirs receives the message.
    #[doc(alias = "to")]
    pub fn to_user(mut self, user: impl Into<UserId>) -> Self {
        // Duplicates are dropped when the message is sent, in one pass: a check here would
        // make adding n users O(n²).
        self.recipients.users.push(user.into());
        self
    }

    /// Adds one client of a user as a recipient.
    pub fn to_client(mut self, user: impl Into<UserId>, client: ClientId) -> Self {
        self.recipients.clients.push((user.into(), client));
        self
    }

    /// Adds the members of `room`, looked up when the message is sent.
    pub fn to_room(mut self, room: impl Into<Arc<str>>) -> Self {
        let room = room.into();
        if !self.recipients.rooms.contains(&room) {
            self.recipients.rooms.push(room);
        }
        self
    }

    /// Adds every user with a live client, looked up when the message is sent.
    pub fn everyone(mut self) -> Self {
        self.recipients.everyone = true;
        self
    }

    /// Leaves `member` out: a user (none of their clients receives it), or one client (the
    /// user's other live clients still do — Socket.IO's `socket.broadcast`).
    pub fn except(mut self, member: impl Into<Member>) -> Self {
        self.recipients.except.push(member.into());
        self
    }

    /// How long the message waits for a recipient to confirm it (default: the builder's
    /// [`message_ttl`](crate::Builder::message_ttl), 5 minutes). Past it, the message is dropped
    /// and [`emit`](Self::emit) fails naming who did not confirm.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long [`emit_with_ack`](Self::emit_with_ack) waits for replies (default, and at
    /// most: the message's [`ttl`](Self::ttl)). The message itself lives on for its TTL.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Stores the message for each recipient, asking each receiving client's application for
    /// a reply (Socket.IO's `emitWithAck`), and resolves with the replies once every recipient
    /// client replied: the addressed client, or every client of a user that was live when the
    /// message was sent (for a user with none, the first of theirs to reply). Fails with
    /// [`AckError::Timeout`](crate::AckError::Timeout) when the [`timeout`](Self::timeout)
    /// passes first, with the replies so far and who did not reply and why.
    ///
    /// Delivery is as for [`emit`](Self::emit): stored, delivered, confirmed. Replies are
    /// recorded in storage, so a client may post its reply to any node. A client replies only
    /// if its application handles the event (the JavaScript client: `io.on(event, (data) =>
    /// reply)`); an older client ignores the request and its wait times out.
    ///
    /// ```no_run
    /// # async fn demo(io: simpleio::SimpleIo) -> Result<(), simpleio::AckError> {
    /// use std::time::Duration;
    /// let replies = io
    ///     .to_user("ann")
    ///     .timeout(Duration::from_secs(10))
    ///     .emit_with_ack("confirm", &"delete the draft?")
    ///     .await?;
    /// for reply in &replies.replies {
    ///     let yes: bool = reply.parse().unwrap_or(false);
    ///     println!("{} says {yes}", reply.client());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn emit_with_ack<T: Serialize + ?Sized>(
        self,
        event: impl Into<String>,
        data: &T,
    ) -> crate::acks::AckSending {
        use crate::acks::AckError;
        let event: String = event.into();
        let data = serde_json::value::to_raw_value(data);
        let wait = self
            .timeout
            .unwrap_or(crate::acks::default_timeout(self.ttl))
            .min(self.ttl);
        crate::acks::AckSending {
            inner: Box::pin(async move {
                let deadline = tokio::time::Instant::now() + wait;
                let data: Arc<RawValue> =
                    Arc::from(data.map_err(|e| AckError::Send(SendError::Serialize(e)))?);
                check_event(&event, &self.io).map_err(AckError::Send)?;
                check_data(&data, &self.io).map_err(AckError::Send)?;
                let io = self.io.clone();
                let stored = self
                    .store(event.into(), data, true)
                    .await
                    .map_err(AckError::Send)?
                    .persisted()
                    .await
                    .map_err(AckError::Send)?;
                let Stored {
                    expectation,
                    not_stored,
                    replies,
                    ..
                } = stored;
                let stored = expectation.targets().to_vec();
                // Replies are what this waits for; confirmations are read from storage at the
                // end for those that did not reply.
                drop(expectation);
                let Some(watch) = replies else {
                    unreachable!("a send asking for replies watches for them");
                };
                let not_stored = not_stored.into_iter().map(|(m, _)| m).collect();
                crate::acks::wait(&io.shared, watch, stored, not_stored, deadline).await
            }),
        }
    }

    /// Sends to clients waiting right now only: nothing is stored or confirmed, and a recipient
    /// between two polls misses it. For presence, typing indicators, live positions.
    pub fn volatile(self) -> VolatileEmitter {
        VolatileEmitter { inner: self }
    }

    /// Stores the message for each recipient and resolves once every recipient confirmed it
    /// ([`Delivered`]), or fails with [`SendError::NotDelivered`] naming those who did not
    /// confirm before the TTL. Dropping the future does not unsend the message.
    ///
    /// To acknowledge a client's message only once what it caused is safely stored, without
    /// waiting for anyone to confirm it, await [`Sending::stored`] first.
    pub fn emit<T: Serialize + ?Sized>(self, event: impl Into<String>, data: &T) -> Sending {
        let event: String = event.into();
        let data = serde_json::value::to_raw_value(data);
        Sending {
            receipts: Vec::new(),
            stage: Stage::Storing(Box::pin(async move {
                let data: Arc<RawValue> = Arc::from(data.map_err(SendError::Serialize)?);
                check_event(&event, &self.io)?;
                check_data(&data, &self.io)?;
                self.store(event.into(), data, false).await
            })),
        }
    }

    async fn store(
        self,
        event: Arc<str>,
        data: Arc<RawValue>,
        ack: bool,
    ) -> Result<Stored, SendError> {
        let shared = &self.io.shared;
        let recipients = self.resolve().await.map_err(SendError::Storage)?;
        // Before the append: a reply that comes before the positions are known is kept.
        let replies = ack.then(|| {
            shared
                .hub
                .watch_replies(recipients.iter().map(|m| m.user().clone()).collect())
        });
        let expires_at = millis_after(self.ttl);
        let namespace = self.io.namespace.clone();
        let origin = (self.io.origins.as_ref()).map(|o| o.next(&namespace, &event));
        let mut expectation = shared.hub.expect([]);
        expectation.reserve(recipients.len());
        let mut not_stored = Vec::new();
        let mut persisting = Vec::new();
        // In chunks: no storage call holds a lock, or runs a script, for a whole fan-out, and a
        // long one lets other tasks have the thread every few milliseconds. Every chunk shares
        // the one payload (the same `Arc`), which a storage stores once.
        let mut since_yield = std::time::Instant::now();
        for chunk in recipients.chunks(FANOUT_CHUNK) {
            if since_yield.elapsed() >= FANOUT_SLICE {
                tokio::task::yield_now().await;
                since_yield = std::time::Instant::now();
            }
            // Before the append, so that no confirmation of it can be missed.
            expectation.expect(chunk);
            let messages = chunk
                .iter()
                .map(|member| NewMessage {
                    user: member.user().clone(),
                    client: client_of(member),
                    namespace: namespace.clone(),
                    event: event.clone(),
                    data: data.clone(),
                    expires_at,
                    sender: self.io.sender.clone(),
                    origin: origin.clone(),
                    ack,
                })
                .collect();
            let limits = QueueLimits {
                per_user: shared.config.max_queue,
                per_sender: shared.config.max_queue_per_sender,
                bytes_per_user: shared.config.max_queue_bytes,
                bytes_per_sender: shared.config.max_queue_bytes_per_sender,
            };
            let (appended, written) = shared
                .storage
                .append_ordered(messages, limits)
                .await
                .map_err(SendError::Storage)?;
            if !written.is_done() {
                persisting.push(written);
            }
            shared.observe.queue_depth(appended.deepest);
            let mut targets = Vec::with_capacity(chunk.len());
            for (member, outcome) in chunk.iter().zip(appended.outcomes) {
                match outcome {
                    AppendOutcome::Stored(pos) => targets.push(DeliveryTarget {
                        user: member.user().clone(),
                        client: client_of(member),
                        namespace: namespace.clone(),
                        pos,
                    }),
                    AppendOutcome::QueueFull => {
                        shared.observe.bound_hit("max_queue");
                        not_stored.push((member.clone(), Failure::QueueFull));
                    }
                }
            }
            shared.observe.stored(targets.len());
            expectation.track(&appended.epoch, targets);
        }
        Ok(Stored {
            io: self.io,
            expectation,
            not_stored,
            persisting,
            expires_at,
            replies,
        })
    }

    /// The single recipients: users (every client of theirs) and clients, each once.
    async fn resolve(&self) -> Result<Vec<Member>, StorageError> {
        let storage = &self.io.shared.storage;
        let r = &self.recipients;
        let mut users: Vec<UserId> = r.users.clone();
        let mut clients: Vec<(UserId, ClientId)> = r.clients.clone();
        if r.everyone {
            users.extend(storage.live_users().await?);
        }
        for room in &r.rooms {
            for member in storage.members(room).await? {
                match member {
                    Member::User(user) => users.push(user),
                    Member::Client(user, client) => clients.push((user, client)),
                }
            }
        }
        // One source, with no exceptions, is one set's worth of recipients: distinct already
        // (everyone's users, or a room's members, unless it holds both a user and their clients).
        let single_source = r.users.is_empty()
            && r.clients.is_empty()
            && r.except.is_empty()
            && usize::from(r.everyone) + r.rooms.len() == 1;
        if single_source && (users.is_empty() || clients.is_empty()) {
            return Ok(users
                .into_iter()
                .map(Member::User)
                .chain(clients.into_iter().map(|(u, c)| Member::Client(u, c)))
                .collect());
        }
        // Every step is one pass with hash sets: a recipient list is as long as the audience,
        // and nothing here may be quadratic in it.
        let mut except_users = HashSet::default();
        let mut except_clients = HashSet::default();
        for member in &r.except {
            match member {
                Member::User(user) => {
                    except_users.insert(user.clone());
                }
                Member::Client(user, client) => {
                    except_clients.insert((user.clone(), client.clone()));
                }
            }
        }
        let mut seen_users = HashSet::default();
        users.retain(|u| !except_users.contains(u) && seen_users.insert(u.clone()));
        // A user with an excepted client gets the message on their other live clients, each as
        // a single recipient.
        let split: HashSet<UserId> = except_clients
            .iter()
            .filter(|(u, _)| seen_users.contains(u))
            .map(|(u, _)| u.clone())
            .collect();
        if !split.is_empty() {
            users.retain(|u| !split.contains(u));
            for user in &split {
                seen_users.remove(user);
                for other in storage.live_clients(user).await? {
                    clients.push((user.clone(), other));
                }
            }
        }
        let mut seen_clients = HashSet::default();
        // A client of a user who gets the message anyway needs no copy of its own.
        clients.retain(|(u, c)| {
            let key = (u.clone(), c.clone());
            !seen_users.contains(u)
                && !except_users.contains(u)
                && !except_clients.contains(&key)
                && seen_clients.insert(key)
        });
        Ok(users
            .into_iter()
            .map(Member::User)
            .chain(clients.into_iter().map(|(u, c)| Member::Client(u, c)))
            .collect())
    }
}

fn check_event(event: &str, io: &SimpleIo) -> Result<(), SendError> {
    let max = io.shared.config.max_event_len;
    if event.is_empty() || event.len() > max {
        return Err(SendError::InvalidEvent { max });
    }
    Ok(())
}

/// The limits on a payload that clients hold to as well: what the server sends, every client
/// can take.
fn check_data(data: &RawValue, io: &SimpleIo) -> Result<(), SendError> {
    let config = &io.shared.config;
    let size = data.get().len();
    if size > config.max_message_bytes {
        return Err(SendError::TooLarge {
            size,
            max: config.max_message_bytes,
        });
    }
    if crate::json::depth_exceeds(data.get().as_bytes(), config.max_data_depth) {
        return Err(SendError::TooDeep {
            max: config.max_data_depth,
        });
    }
    Ok(())
}

/// A volatile message about to be sent; see [`Emitter::volatile`].
#[derive(Debug, Clone)]
#[must_use = "nothing is sent until `emit` is called and awaited"]
pub struct VolatileEmitter {
    inner: Emitter,
}

impl VolatileEmitter {
    /// Hands the message to every recipient client waiting now, on every node. Resolves once it
    /// is published; there is no confirmation.
    pub async fn emit<T: Serialize + ?Sized>(
        self,
        event: impl Into<String>,
        data: &T,
    ) -> Result<(), SendError> {
        let event: String = event.into();
        check_event(&event, &self.inner.io)?;
        let data: Arc<RawValue> =
            Arc::from(serde_json::value::to_raw_value(data).map_err(SendError::Serialize)?);
        check_data(&data, &self.inner.io)?;
        let event: Arc<str> = event.into();
        let recipients = self.inner.resolve().await.map_err(SendError::Storage)?;
        if recipients.is_empty() {
            return Ok(());
        }
        // One signal for every recipient: its payload crosses to other nodes once.
        self.inner
            .io
            .shared
            .storage
            .publish(Signal::Volatile {
                recipients: recipients.into(),
                namespace: self.inner.io.namespace.clone(),
                event,
                data,
            })
            .await
            .map_err(SendError::Storage)?;
        self.inner.io.shared.observe.volatile();
        Ok(())
    }
}

/// A message appended for every recipient, not yet confirmed.
struct Stored {
    io: SimpleIo,
    /// The appended messages, registered for their confirmations.
    expectation: Expectation,
    /// Recipients it could not be stored for.
    not_stored: Vec<(Member, Failure)>,
    /// The writes still to wait for before the message is stored: its chunks are ordered
    /// (positioned) before they are safe on a storage that writes them later.
    persisting: Vec<Persisting>,
    expires_at: Millis,
    /// For a send that asks for replies: the watch for them, made before the append.
    replies: Option<crate::hub::ReplyWatch>,
}

impl Stored {
    /// Waits until every chunk is stored, not only ordered.
    async fn persisted(mut self) -> Result<Stored, SendError> {
        for written in std::mem::take(&mut self.persisting) {
            written.wait().await.map_err(SendError::Storage)?;
        }
        Ok(self)
    }

    /// One receipt per recipient it was stored for.
    fn receipts(&self) -> Vec<Receipt> {
        self.expectation
            .targets()
            .iter()
            .map(|(epoch, target)| Receipt {
                epoch: epoch.clone(),
                recipient: delivery::member_of(target),
                namespace: target.namespace.clone(),
                pos: target.pos,
            })
            .collect()
    }

    fn wait(self) -> BoxFuture<Result<Delivered, SendError>> {
        Box::pin(async move {
            let Stored {
                io,
                expectation,
                not_stored,
                expires_at,
                ..
            } = self;
            delivery::wait(&io.shared, expectation, not_stored, expires_at).await
        })
    }
}

fn client_of(member: &Member) -> Option<ClientId> {
    match member {
        Member::User(_) => None,
        Member::Client(_, client) => Some(client.clone()),
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The future of [`Emitter::emit`]: resolves when every recipient confirmed, or fails.
///
/// It first stores the message (one storage round trip), then waits for confirmations;
/// [`stored`](Self::stored) splits the two.
#[must_use = "the message is not sent unless the future is awaited or spawned"]
pub struct Sending {
    stage: Stage,
    /// One per recipient it was stored for, once stored (see [`Sending::receipts`]).
    receipts: Vec<Receipt>,
}

/// A message stored for one recipient, as any node can later ask about it
/// ([`SimpleIo::delivery`]): the sender keeps it (in its database, beside what it sent), and a
/// process that restarted learns what became of its unconfirmed sends. Its serde form is
/// stable JSON.
///
/// ```no_run
/// # async fn demo(io: simpleio::SimpleIo) -> Result<(), Box<dyn std::error::Error>> {
/// let sending = io.to_user("bob").emit("invoice", &42).stored().await?;
/// let kept = serde_json::to_string(sending.receipts())?;
/// // Later, on any node, even after this process died:
/// let receipts: Vec<simpleio::Receipt> = serde_json::from_str(&kept)?;
/// let states = io.delivery(&receipts).await?;
/// # let _ = states; Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The storage epoch it was stored in: if the storage lost its data since, it is lost.
    pub epoch: Epoch,
    /// Who it went to.
    pub recipient: Member,
    /// Its namespace.
    pub namespace: Arc<str>,
    /// Its position in the recipient user's log.
    pub pos: Position,
}

enum Stage {
    /// Appending to the storage, until the message has its positions.
    Storing(BoxFuture<Result<Stored, SendError>>),
    /// Ordered; waiting for the storage to have written it.
    Persisting(BoxFuture<Result<Stored, SendError>>),
    /// Stored; waiting for confirmations.
    Waiting(BoxFuture<Result<Delivered, SendError>>),
    /// Resolved.
    Done,
}

impl Sending {
    /// Waits until the message is stored for every recipient, and gives back the future of its
    /// confirmation (already stored: awaiting it only waits).
    ///
    /// A handler that sends on a client's behalf awaits this before it replies, so that the
    /// client's acknowledgement means "stored, and will be delivered or reported": a node that
    /// crashes after the reply has lost nothing. Spawn the returned future to learn the
    /// outcome without holding up the reply.
    ///
    /// # Errors
    ///
    /// As [`Emitter::emit`] before anything is stored: [`SendError::Serialize`],
    /// [`SendError::InvalidEvent`], [`SendError::TooLarge`], [`SendError::TooDeep`],
    /// [`SendError::Storage`]; and [`SendError::QueueFull`] if any recipient's queue (or the
    /// sender's share of it) is full, naming those recipients: once the message is stored for
    /// the others, not after they confirmed it.
    ///
    /// ```no_run
    /// # async fn demo(io: simpleio::SimpleIo) -> Result<(), simpleio::SendError> {
    /// let confirmation = io.to_user("bob").emit("chat", &"hi bob").stored().await?;
    /// // Stored: safe to tell the sender so.
    /// tokio::spawn(async move {
    ///     if let Err(e) = confirmation.await {
    ///         tracing::info!(error = %e, "bob did not get it");
    ///     }
    /// });
    /// # Ok(()) }
    /// ```
    pub async fn stored(self) -> Result<Sending, SendError> {
        match self.stage {
            Stage::Storing(storing) => {
                let stored = storing.await?.persisted().await?;
                let stored = refused_unless_all(stored)?;
                let receipts = stored.receipts();
                Ok(Sending {
                    stage: Stage::Waiting(stored.wait()),
                    receipts,
                })
            }
            Stage::Persisting(persisting) => {
                // Only a `Sending` polled past its ordering (a `wait` that timed out) can hold
                // recipients it was not stored for here: `ordered()` refused those already.
                let stored = refused_unless_all(persisting.await?)?;
                let receipts = stored.receipts();
                Ok(Sending {
                    stage: Stage::Waiting(stored.wait()),
                    receipts,
                })
            }
            stage => Ok(Sending {
                stage,
                receipts: self.receipts,
            }),
        }
    }

    /// Waits until the message has its place in every recipient's order, not until it is
    /// stored: a message this sender emits after this resolves comes after it for every
    /// recipient they share. Gives back the future of its confirmation, which also waits for
    /// the write.
    ///
    /// On `MemoryStorage`, Redis and PostgreSQL one write both orders and stores a message, so
    /// this is [`stored`](Self::stored). On `DurableStorage` a message is ordered once it is in
    /// memory, and stored once the fsync of the batch holding it is done: a sender that emits
    /// a stream of messages can emit the next one meanwhile, and many share one fsync and one
    /// poll's answer, where awaiting `stored()` for each would take one fsync per message.
    /// Nobody reads the message before it is stored, and its [`receipts`](Self::receipts) come
    /// once it is. If the write fails, the returned future fails with [`SendError::Storage`]; a
    /// message emitted after it may still be stored, so a sender that must not leave a gap
    /// awaits `stored()` instead.
    ///
    /// It saves the wait for messages to users and clients. Recipients read from the storage
    /// first (a room's members, everyone, clients excepted by id) are read as any read is, once
    /// what the storage holds of them is written.
    ///
    /// # Errors
    ///
    /// As [`stored`](Self::stored) (a full queue too is told once the message is stored for the
    /// others), except a failed write, which the returned future reports.
    ///
    /// ```no_run
    /// # async fn demo(io: simpleio::SimpleIo) -> Result<(), simpleio::SendError> {
    /// let mut confirmations = Vec::new();
    /// for line in ["one", "two", "three"] {
    ///     // In this order for bob, without waiting for a write per line.
    ///     confirmations.push(io.to_user("bob").emit("line", &line).ordered().await?);
    /// }
    /// for confirmation in confirmations {
    ///     confirmation.await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn ordered(self) -> Result<Sending, SendError> {
        match self.stage {
            Stage::Storing(storing) => {
                let stored = storing.await?;
                if !stored.not_stored.is_empty() {
                    // Told once the others are stored, as `stored()` tells it.
                    return refused_unless_all(stored.persisted().await?).map(Sending::ordered_as);
                }
                Ok(Sending::ordered_as(stored))
            }
            stage => Ok(Sending {
                stage,
                receipts: self.receipts,
            }),
        }
    }

    /// The future of a message once ordered: its writes to wait for, if any, then its
    /// confirmations. Its receipts come once it is written: a receipt of a message whose write
    /// then fails would tell a later confirmation of its recipient as its own.
    fn ordered_as(stored: Stored) -> Sending {
        if stored.persisting.is_empty() {
            Sending {
                receipts: stored.receipts(),
                stage: Stage::Waiting(stored.wait()),
            }
        } else {
            Sending {
                receipts: Vec::new(),
                stage: Stage::Persisting(Box::pin(stored.persisted())),
            }
        }
    }
}

/// [`SendError::QueueFull`] if any recipient could not have the message: said once the others
/// have it stored, not after they confirmed it, so that a handler that acknowledges a client's
/// message once it is stored does not acknowledge this one.
fn refused_unless_all(stored: Stored) -> Result<Stored, SendError> {
    if stored.not_stored.is_empty() {
        return Ok(stored);
    }
    Err(SendError::QueueFull {
        stored: stored.expectation.targets().len(),
        failed: stored.not_stored.into_iter().map(|(m, _)| m).collect(),
    })
}

impl Sending {
    /// One [`Receipt`] per recipient the message was stored for, to ask about it later from any
    /// node with [`SimpleIo::delivery`]. Empty until the message is stored: after
    /// [`stored`](Self::stored) resolved (after [`ordered`](Self::ordered) only where one write
    /// orders and stores it), or a [`wait`](Self::wait) that timed out after it was.
    pub fn receipts(&self) -> &[Receipt] {
        &self.receipts
    }
}

impl fmt::Debug for Sending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = match self.stage {
            Stage::Storing(_) => "storing",
            Stage::Persisting(_) => "persisting",
            Stage::Waiting(_) => "waiting",
            Stage::Done => "done",
        };
        f.debug_struct("Sending")
            .field("stage", &stage)
            .finish_non_exhaustive()
    }
}

impl Future for Sending {
    type Output = Result<Delivered, SendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match &mut self.stage {
                Stage::Storing(storing) => match storing.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(stored)) => {
                        // Its receipts are kept once it is written, so a sender whose wait
                        // timed out still has them.
                        *self = Sending::ordered_as(stored);
                    }
                    Poll::Ready(Err(e)) => {
                        self.stage = Stage::Done;
                        return Poll::Ready(Err(e));
                    }
                },
                Stage::Persisting(persisting) => match persisting.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(stored)) => {
                        self.receipts = stored.receipts();
                        self.stage = Stage::Waiting(stored.wait());
                    }
                    Poll::Ready(Err(e)) => {
                        self.stage = Stage::Done;
                        return Poll::Ready(Err(e));
                    }
                },
                Stage::Waiting(waiting) => {
                    let result = std::task::ready!(waiting.as_mut().poll(cx));
                    self.stage = Stage::Done;
                    return Poll::Ready(result);
                }
                Stage::Done => panic!("`Sending` polled after it resolved"),
            }
        }
    }
}

// `tokio::spawn(io.to_user(user).emit(..))` must work.
const _: fn() = || {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<Sending>();
};
