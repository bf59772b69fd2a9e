//! The admin page's figures, as JSON: this node's own, and the storage's.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use serde::Serialize;

use crate::id::{ClientId, UserId};
use crate::observe::{Expiration, TimingReading};
use crate::protocol::ProtocolError;
use crate::shared::Shared;
use crate::storage::{Member, Millis, StorageError, now_millis};

/// The most users, and rooms, one snapshot lists (each costs storage calls); `truncated` says
/// when there were more. The counts are of all of them.
const MOST_USERS: usize = 200;
const MOST_ROOMS: usize = 100;
/// The most users listed with messages pending on this node.
const MOST_PENDING: usize = 200;

#[derive(Serialize)]
pub(super) struct Snapshot {
    /// When it was taken, in ms since the Unix epoch.
    at: Millis,
    node: Node,
    storage: StorageView,
}

/// This node's own figures.
#[derive(Serialize)]
struct Node {
    polls_waiting: usize,
    requests: u64,
    stored: u64,
    delivered: u64,
    expired: u64,
    lost: u64,
    volatile: u64,
    dedup_hits: u64,
    handler_errors: u64,
    storage_errors: u64,
    bounds_hit: u64,
    delivery: TimingReading,
    handler: TimingReading,
    storage_calls: TimingReading,
    /// Messages its senders wait for, per recipient user, oldest first.
    pending: Vec<Pending>,
    /// What its senders saw expire, newest first.
    expired_recently: Vec<Expiration>,
}

#[derive(Serialize)]
struct Pending {
    user: UserId,
    messages: usize,
    oldest_ms: Millis,
}

/// What the storage holds, the same from every node.
#[derive(Serialize)]
struct StorageView {
    live_users: usize,
    /// Clients of the listed users.
    live_clients: usize,
    users: Vec<UserView>,
    rooms: Vec<RoomView>,
    /// More users or rooms than listed.
    truncated: bool,
}

#[derive(Serialize)]
struct UserView {
    user: UserId,
    clients: Vec<ClientId>,
}

#[derive(Serialize)]
struct RoomView {
    room: Arc<str>,
    members: Vec<String>,
}

pub(super) async fn respond(shared: &Shared) -> Response<Full<Bytes>> {
    match take(shared).await {
        Ok(snapshot) => crate::protocol::json_response_sized(&snapshot, 4096),
        Err(e) => {
            tracing::warn!(cause = %e, "the admin page could not read the storage");
            ProtocolError::Storage(e).into_response()
        }
    }
}

pub(super) async fn take(shared: &Shared) -> Result<Snapshot, StorageError> {
    let at = now_millis();
    let t = &shared.observe.tally;
    let get = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
    let mut pending: Vec<Pending> = shared
        .hub
        .pending(MOST_PENDING)
        .into_iter()
        .map(|(user, messages, oldest)| Pending {
            user,
            messages,
            oldest_ms: at.saturating_sub(oldest / 1000),
        })
        .collect();
    pending.sort_by_key(|p| std::cmp::Reverse(p.oldest_ms));
    let node = Node {
        polls_waiting: shared.waiting.load(Ordering::Relaxed),
        requests: get(&t.requests),
        stored: get(&t.stored),
        delivered: get(&t.delivered),
        expired: get(&t.expired),
        lost: get(&t.lost),
        volatile: get(&t.volatile),
        dedup_hits: get(&t.dedup_hits),
        handler_errors: get(&t.handler_errors),
        storage_errors: get(&t.storage_errors),
        bounds_hit: get(&t.bounds_hit),
        delivery: t.delivery.read(),
        handler: t.handler.read(),
        storage_calls: t.storage.read(),
        pending,
        expired_recently: t.recent(),
    };
    Ok(Snapshot {
        at,
        node,
        storage: storage_view(shared).await?,
    })
}

async fn storage_view(shared: &Shared) -> Result<StorageView, StorageError> {
    let storage = &shared.storage;
    let mut all = storage.live_users().await?;
    let live_users = all.len();
    all.sort();
    let mut truncated = all.len() > MOST_USERS;
    all.truncate(MOST_USERS);
    let mut users = Vec::with_capacity(all.len());
    let mut rooms = BTreeSet::new();
    for user in all {
        let mut clients = storage.live_clients(&user).await?;
        clients.sort();
        rooms.extend(storage.rooms(&Member::User(user.clone())).await?);
        for client in &clients {
            let member = Member::Client(user.clone(), client.clone());
            rooms.extend(storage.rooms(&member).await?);
        }
        users.push(UserView { user, clients });
    }
    truncated |= rooms.len() > MOST_ROOMS;
    let mut room_views = Vec::new();
    for room in rooms.into_iter().take(MOST_ROOMS) {
        let mut members: Vec<String> = storage
            .members(&room)
            .await?
            .iter()
            .map(ToString::to_string)
            .collect();
        members.sort();
        room_views.push(RoomView { room, members });
    }
    Ok(StorageView {
        live_users,
        live_clients: users.iter().map(|u| u.clients.len()).sum(),
        users,
        rooms: room_views,
        truncated,
    })
}
