//! [`Storage::append`]: a chunk of messages to many users' logs, set-based.
//!
//! One round trip reads what the call needs of each of its users (their rows, locked in
//! order; the origins and sender shares its messages name; the other nodes interested in
//! them); the decisions are made here, in order, as the contract says; one more round trip
//! writes it all: the evictions, every payload, message, ack record and origin with one
//! statement each, the notifications (one statement, whatever the number of nodes) and the
//! node's interest. Only a full queue costs more: a read of its oldest `EVICT_SCAN` messages,
//! then one more per `EVICT_SCAN` of them it evicts, never one per eviction.

use std::sync::Arc;

use futures_util::future::{try_join, try_join5};

use super::PostgresStorage;
use super::error::col;
use super::fetch::sql_pos;
use super::routes::Routes;
use super::signals::Outbox;
use super::sql::{
    ENSURE_USERS, EPOCH, EVICT, FIND_ORIGINS, FIND_SENDERS, INSERT_ACKS, INSERT_MESSAGES,
    INSERT_ORIGINS, INSERT_PAYLOADS, INTERESTED_NODES, LOCK_USERS, OLDEST_OF_SENDER,
    OLDEST_OF_USER, SET_LAST_POSITIONS,
};
use super::tx::{Statement, Tx};
use crate::hash::{HashMap, HashSet};
use crate::storage::{
    AppendOutcome, Appended, Epoch, NewMessage, Position, QueueLimits, Signal, StorageError,
    now_millis,
};

/// How many of a full queue's oldest messages an append looks at for one to evict (expired or
/// delivered), per eviction: what it reads of them at a time.
const EVICT_SCAN: i64 = 64;

/// What the call knows of one user while it decides.
#[derive(Default)]
struct UserState {
    last_pos: Position,
    queued: usize,
    bytes: usize,
    acks: usize,
    origins: usize,
    /// Positions this call evicts (removed with one statement when it writes).
    evicted: HashSet<i64>,
    /// The queue's oldest messages, read once for all the evictions of the call.
    oldest: Oldest,
    /// The same of each sender's share, for those that are full.
    oldest_of: HashMap<String, Oldest>,
}

/// A queue's (or a share's) oldest messages, as candidates for eviction: read `EVICT_SCAN` at
/// a time, in order, and more only when fewer than that are left that this call did not
/// evict, so that each eviction looks at the `EVICT_SCAN` oldest messages left, as
/// `MemoryStorage`'s does, for a query per `EVICT_SCAN` evictions at most, not one each.
#[derive(Default)]
struct Oldest {
    candidates: Vec<Candidate>,
    /// Whether the last read came back full: the table may hold more after them.
    more: bool,
    read: bool,
}

/// A message an append may evict, as [`OLDEST_OF_USER`] or [`OLDEST_OF_SENDER`] reads it.
struct Candidate {
    pos: i64,
    size: usize,
    sender: Option<String>,
    /// Expired or delivered: what may be evicted. Neither changes during the call, which
    /// holds the user's lock.
    evictable: bool,
}

/// What the call knows of one sender's share of one queue.
#[derive(Default, Clone, Copy)]
struct Share {
    count: usize,
    bytes: usize,
}

/// The rows the call writes, column by column, for `unnest`.
#[derive(Default)]
struct Rows<'a> {
    users: Vec<&'a str>,
    positions: Vec<i64>,
    clients: Vec<&'a str>,
    namespaces: Vec<&'a str>,
    payloads: Vec<i64>,
    expiries: Vec<i64>,
    senders: Vec<Option<&'a str>>,
    sizes: Vec<i32>,
    acks: Vec<bool>,
}

impl PostgresStorage {
    pub(super) async fn append_now(
        &self,
        messages: Vec<NewMessage>,
        limits: QueueLimits,
    ) -> Result<Appended, StorageError> {
        let now = now_millis();
        let mut names: Vec<&str> = messages.iter().map(|m| m.user.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let (origin_users, origin_keys): (Vec<&str>, Vec<&str>) = messages
            .iter()
            .filter_map(|m| Some((m.user.as_str(), m.origin.as_deref()?)))
            .unzip();
        let (share_users, share_senders): (Vec<&str>, Vec<&str>) = messages
            .iter()
            .filter_map(|m| Some((m.user.as_str(), m.sender.as_ref()?.as_str())))
            .unzip();

        let mut conn = self.conn().await?;
        let tx = Tx::begin(&mut conn).await?;
        tx.prepare(&[
            ENSURE_USERS,
            LOCK_USERS,
            EPOCH,
            FIND_ORIGINS,
            FIND_SENDERS,
            INTERESTED_NODES,
        ])
        .await?;
        let now_sql = now as i64;
        let routes = &self.inner.routes;
        // The nodes to signal are read with the rest, for every user of the call: most of
        // them get a message.
        let (_, locked, epoch, origins, (shares, others)) = try_join5(
            tx.exec(ENSURE_USERS, &[&names]),
            tx.rows(LOCK_USERS, &[&names]),
            tx.rows(EPOCH, &[]),
            tx.rows(FIND_ORIGINS, &[&origin_users, &origin_keys, &now_sql]),
            try_join(
                tx.rows(FIND_SENDERS, &[&share_users, &share_senders]),
                routes.interested(&tx, &names, now),
            ),
        )
        .await?;
        let epoch = match epoch.first() {
            Some(row) => Epoch::new(col::<String>(row, 0)?),
            None => return Err(super::error::corrupt("the schema has no epoch")),
        };
        let mut users: HashMap<String, UserState> = HashMap::default();
        for r in &locked {
            users.insert(
                col(r, 0)?,
                UserState {
                    last_pos: col::<i64>(r, 1)? as Position,
                    queued: col::<i32>(r, 2)?.max(0) as usize,
                    bytes: col::<i64>(r, 3)?.max(0) as usize,
                    acks: col::<i32>(r, 4)?.max(0) as usize,
                    origins: col::<i32>(r, 5)?.max(0) as usize,
                    ..UserState::default()
                },
            );
        }
        let mut known: HashMap<(String, String), Position> = HashMap::default();
        for r in &origins {
            known.insert((col(r, 0)?, col(r, 1)?), col::<i64>(r, 2)? as Position);
        }
        let mut held: HashMap<(String, String), Share> = HashMap::default();
        for r in &shares {
            let share = Share {
                count: col::<i32>(r, 2)?.max(0) as usize,
                bytes: col::<i64>(r, 3)?.max(0) as usize,
            };
            held.insert((col(r, 0)?, col(r, 1)?), share);
        }

        let mut outcomes = vec![AppendOutcome::QueueFull; messages.len()];
        let mut deepest = 0;
        let mut rows = Rows::default();
        // Payloads by the address of their data: a fan-out's messages share one `Arc`.
        let mut payload_of: HashMap<(usize, &str, &str), usize> = HashMap::default();
        let mut payloads: Vec<(i64, &str, &str, i64)> = Vec::new();
        let mut ack_rows: (Vec<&str>, Vec<i64>, Vec<&str>, Vec<i64>) = Default::default();
        let mut origin_rows: (Vec<&str>, Vec<&str>, Vec<i64>, Vec<i64>) = Default::default();
        let mut woken: Vec<&str> = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let user = m.user.as_str();
            if let Some(origin) = &m.origin
                && let Some(pos) = known.get(&(user.to_owned(), origin.to_string()))
            {
                // Stored before (a handler run again after a crash): not stored twice.
                outcomes[i] = AppendOutcome::Stored(*pos);
                continue;
            }
            let Some(state) = users.get_mut(user) else {
                return Err(super::error::corrupt("a user row vanished"));
            };
            // Ack records outlive delivered messages, so they have their own count.
            if m.ack && state.acks >= limits.per_user {
                continue;
            }
            let size = m.data.get().len();
            let share_key = m.sender.as_ref().map(|s| (user.to_owned(), s.to_string()));
            if !self
                .make_room(&tx, m, state, &share_key, &mut held, limits, now)
                .await?
            {
                deepest = deepest.max(state.queued);
                continue;
            }
            // Clock-based, and past anything given to this user before.
            let pos = (now * 1000).max(state.last_pos + 1);
            state.last_pos = pos;
            state.queued += 1;
            state.bytes += size;
            deepest = deepest.max(state.queued);
            if let Some(key) = share_key {
                let share = held.entry(key).or_default();
                share.count += 1;
                share.bytes += size;
            }
            let ptr = Arc::as_ptr(&m.data) as *const u8 as usize;
            let next = payloads.len();
            let index = *payload_of
                .entry((ptr, &*m.event, &*m.namespace))
                .or_insert(next);
            let expires = m.expires_at.min(i64::MAX as u64) as i64;
            if index == next {
                payloads.push((fastrand::i64(1..), &*m.event, m.data.get(), expires));
            } else {
                payloads[index].3 = payloads[index].3.max(expires);
            }
            rows.users.push(user);
            rows.positions.push(sql_pos(pos));
            rows.clients
                .push(m.client.as_ref().map_or("", |c| c.as_str()));
            rows.namespaces.push(&m.namespace);
            rows.payloads.push(payloads[index].0);
            rows.expiries.push(expires);
            rows.senders.push(m.sender.as_ref().map(|s| s.as_str()));
            rows.sizes.push(size.min(i32::MAX as usize) as i32);
            rows.acks.push(m.ack);
            if m.ack {
                state.acks += 1;
                ack_rows.0.push(user);
                ack_rows.1.push(sql_pos(pos));
                ack_rows
                    .2
                    .push(m.client.as_ref().map_or("", |c| c.as_str()));
                ack_rows.3.push(expires);
            }
            if let Some(origin) = &m.origin
                && state.origins < limits.per_user
            {
                state.origins += 1;
                known.insert((user.to_owned(), origin.to_string()), pos);
                origin_rows.0.push(user);
                origin_rows.1.push(origin);
                origin_rows.2.push(sql_pos(pos));
                origin_rows.3.push(expires);
            }
            outcomes[i] = AppendOutcome::Stored(pos);
            woken.push(user);
        }

        // Everything it decided, in one round trip: the evictions, then the rows of what it
        // stored (payloads, messages, last positions, ack records, origins), the
        // notifications and the node's interest.
        let (evicted_users, evicted_positions): (Vec<&str>, Vec<i64>) = users
            .iter()
            .flat_map(|(u, s)| s.evicted.iter().map(move |pos| (u.as_str(), *pos)))
            .unzip();
        let ids: Vec<i64> = payloads.iter().map(|p| p.0).collect();
        let events: Vec<&str> = payloads.iter().map(|p| p.1).collect();
        let datas: Vec<&str> = payloads.iter().map(|p| p.2).collect();
        let until: Vec<i64> = payloads.iter().map(|p| p.3).collect();
        let (last_users, last_positions): (Vec<&str>, Vec<i64>) = users
            .iter()
            .map(|(u, s)| (u.as_str(), sql_pos(s.last_pos)))
            .unzip();
        woken.sort_unstable();
        woken.dedup();
        let mut outbox = Outbox::new(now);
        if !woken.is_empty() {
            let signal = Signal::Appended {
                users: woken.iter().map(|u| (*u).into()).collect(),
            };
            routes.address(&signal, &others, &mut outbox)?;
        }
        // The node waits for these users' confirmations and replies.
        let stale = routes.stale(&woken, now);
        let interest_until = Routes::interest_until(now);
        let mut statements: Vec<Statement<'_>> = Vec::new();
        if !evicted_users.is_empty() {
            statements.push((EVICT, vec![&evicted_users, &evicted_positions]));
        }
        if !rows.users.is_empty() {
            statements.push((INSERT_PAYLOADS, vec![&ids, &events, &datas, &until]));
            statements.push((
                INSERT_MESSAGES,
                vec![
                    &rows.users,
                    &rows.positions,
                    &rows.clients,
                    &rows.namespaces,
                    &rows.payloads,
                    &rows.expiries,
                    &rows.senders,
                    &rows.sizes,
                    &rows.acks,
                ],
            ));
            statements.push((SET_LAST_POSITIONS, vec![&last_users, &last_positions]));
        }
        if !ack_rows.0.is_empty() {
            statements.push((
                INSERT_ACKS,
                vec![&ack_rows.0, &ack_rows.1, &ack_rows.2, &ack_rows.3],
            ));
        }
        if !origin_rows.0.is_empty() {
            statements.push((
                INSERT_ORIGINS,
                vec![
                    &origin_rows.0,
                    &origin_rows.1,
                    &origin_rows.2,
                    &origin_rows.3,
                ],
            ));
        }
        statements.extend(outbox.statements());
        if !stale.is_empty() {
            statements.push(routes.note_statement(&stale, &interest_until));
        }
        if !statements.is_empty() {
            tx.pipeline(&statements).await?;
        }
        drop(statements);
        tx.commit().await?;
        routes.remember(stale, now);
        Ok(Appended {
            epoch,
            outcomes,
            deepest: Some(deepest),
        })
    }

    /// Evicts expired or delivered messages until `m` fits in its user's queue: the sender's
    /// share first, among the sender's own, then the whole queue. Whether it fits. The
    /// evictions are noted in `state.evicted`, and removed when the call writes.
    #[allow(clippy::too_many_arguments)]
    async fn make_room(
        &self,
        tx: &Tx<'_>,
        m: &NewMessage,
        state: &mut UserState,
        share_key: &Option<(String, String)>,
        held: &mut HashMap<(String, String), Share>,
        limits: QueueLimits,
        now: u64,
    ) -> Result<bool, StorageError> {
        let size = m.data.get().len();
        let user = m.user.as_str();
        if let Some(key) = share_key {
            loop {
                let share = held.get(key).copied().unwrap_or_default();
                if share.count < limits.per_sender && share.bytes + size <= limits.bytes_per_sender
                {
                    break;
                }
                let mut oldest = state.oldest_of.remove(&key.1).unwrap_or_default();
                let victim = oldest
                    .next_victim(tx, user, Some(&key.1), &state.evicted, now)
                    .await;
                state.oldest_of.insert(key.1.clone(), oldest);
                let Some(victim) = victim? else {
                    return Ok(false);
                };
                evict(user, victim, state, held);
            }
        }
        while state.queued >= limits.per_user || state.bytes + size > limits.bytes_per_user {
            let mut oldest = std::mem::take(&mut state.oldest);
            let victim = oldest
                .next_victim(tx, user, None, &state.evicted, now)
                .await;
            state.oldest = oldest;
            let Some(victim) = victim? else {
                return Ok(false);
            };
            evict(user, victim, state, held);
        }
        Ok(true)
    }
}

/// A message to evict: its position, size and sender.
type Victim = (i64, usize, Option<String>);

/// Notes that the call evicts `victim` from `user`'s queue.
fn evict(
    user: &str,
    (pos, size, sender): Victim,
    state: &mut UserState,
    held: &mut HashMap<(String, String), Share>,
) {
    state.evicted.insert(pos);
    state.queued = state.queued.saturating_sub(1);
    state.bytes = state.bytes.saturating_sub(size);
    if let Some(sender) = sender
        && let Some(share) = held.get_mut(&(user.to_owned(), sender))
    {
        share.count = share.count.saturating_sub(1);
        share.bytes = share.bytes.saturating_sub(size);
    }
}

impl Oldest {
    /// The first evictable one of the `EVICT_SCAN` oldest messages not in `evicted` (of the
    /// share of `sender`, if given), reading more of them if fewer are known.
    async fn next_victim(
        &mut self,
        tx: &Tx<'_>,
        user: &str,
        sender: Option<&str>,
        evicted: &HashSet<i64>,
        now: u64,
    ) -> Result<Option<Victim>, StorageError> {
        let known = self
            .candidates
            .iter()
            .filter(|c| !evicted.contains(&c.pos))
            .count();
        if !self.read || (self.more && known < EVICT_SCAN as usize) {
            let after = self.candidates.last().map_or(0, |c| c.pos);
            let rows = match sender {
                Some(sender) => {
                    tx.rows(OLDEST_OF_SENDER, &[&user, &sender, &EVICT_SCAN, &after])
                        .await?
                }
                None => {
                    tx.rows(OLDEST_OF_USER, &[&user, &EVICT_SCAN, &after])
                        .await?
                }
            };
            self.read = true;
            self.more = rows.len() as i64 == EVICT_SCAN;
            for r in &rows {
                let expires_at: i64 = col(r, 1)?;
                let delivered: Option<bool> = col(r, 6)?;
                self.candidates.push(Candidate {
                    pos: col(r, 0)?,
                    size: col::<i32>(r, 4)?.max(0) as usize,
                    sender: col(r, 5)?,
                    evictable: expires_at <= now as i64 || delivered.unwrap_or(false),
                });
            }
        }
        Ok(self
            .candidates
            .iter()
            .filter(|c| !evicted.contains(&c.pos))
            .take(EVICT_SCAN as usize)
            .find(|c| c.evictable)
            .map(|c| (c.pos, c.size, c.sender.clone())))
    }
}
