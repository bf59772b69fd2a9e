//! Presence: [`Storage::live_users`], [`Storage::live_clients`], [`Storage::reap`], the
//! sweeps of expired rows that every reap runs first, and forgetting users nothing needs.
//!
//! **Forgetting.** A user's rows of `users` and `watermarks` go once nothing needs them: no
//! client record, no message, no ack record (nor reply), no origin, as `MemoryStorage` drops
//! a user's log once it holds no message and no client. A reap forgets, under the locks it
//! holds already, the users whose last clients it removed; then those whose last expired
//! rows the sweep removed; then, as a safety net for rows nothing pointed it at (a claim's
//! alone, rows left by an older version), a slice of `SCAN_BATCH` users of the table in
//! `user_id` order, taking up where the node's last reap stopped. Each is a short
//! transaction over at most `FORGET_BATCH` users, which locks them in order and skips those
//! busy. A user who comes back starts afresh, with positions above those of every user
//! forgotten before (`forgotten_pos` in `meta`): a cursor they kept confirms nothing new.

use std::sync::PoisonError;

use futures_util::future::try_join3;
use tracing::warn;

use super::PostgresStorage;
use super::error::{col, corrupt, within};
use super::sql::{
    DROP_DATA, DROP_MEMBERSHIPS, ENSURE_USERS, FORGET_USERS, LAPSED_USERS, LIVE_CLIENTS,
    LIVE_USERS, LOCK_IDLE, LOCK_USERS, ONLINE_USERS, REMOVE_LAPSED, SCAN_USERS, SWEEP_ACKS,
    SWEEP_DEDUP, SWEEP_INTEREST, SWEEP_MESSAGES, SWEEP_ORIGINS, SWEEP_PAYLOADS,
    SWEEP_SIGNAL_BODIES,
};
use super::tx::Tx;
use crate::hash::HashSet;
use crate::id::{ClientId, UserId};
use crate::storage::{Departure, StorageError, now_millis};

/// The most users one reap transaction takes clients of; `reap` runs another while it finds
/// more, so that no transaction holds many rows' locks for long.
const REAP_BATCH: i64 = 500;

/// The most rows of each table one sweep removes (by users, for the tables counted per user).
const SWEEP_BATCH: i64 = 2_000;

/// The most one reap spends sweeping expired rows before it reaps; the rest is swept next time.
const SWEEP_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a long signal's row is kept: its listeners read it within milliseconds.
const SIGNAL_BODY_TTL: u64 = 60_000;

/// The most users one transaction forgets.
const FORGET_BATCH: usize = 500;

/// How many users of the table one reap looks at, besides those it was pointed at: the whole
/// table is gone through every (users / `SCAN_BATCH`) reaps of a node.
const SCAN_BATCH: i64 = 1_000;

/// The most one reap spends forgetting users.
const FORGET_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

impl PostgresStorage {
    pub(super) async fn live_users_now(&self) -> Result<Vec<UserId>, StorageError> {
        let now = now_millis() as i64;
        let mut conn = self.conn().await?;
        let tx = Tx::begin(&mut conn).await?;
        let rows = tx.rows(LIVE_USERS, &[&now]).await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| Ok(UserId::from(col::<String>(r, 0)?)))
            .collect()
    }

    pub(super) async fn live_clients_now(
        &self,
        user: &UserId,
    ) -> Result<Vec<ClientId>, StorageError> {
        let now = now_millis() as i64;
        let mut conn = self.conn().await?;
        let tx = Tx::begin(&mut conn).await?;
        let rows = tx.rows(LIVE_CLIENTS, &[&user.as_str(), &now]).await?;
        tx.commit().await?;
        rows.iter().map(|r| client_id(col(r, 0)?)).collect()
    }

    pub(super) async fn reap_now(&self) -> Result<Vec<Departure>, StorageError> {
        // What the sweep leaves (an outage, its time budget) it takes next time; reaping goes
        // on regardless, so departures are never held up by a backlog of expired rows.
        let mut emptied = HashSet::default();
        if let Err(err) = self.sweep(&mut emptied).await {
            warn!(cause = %err, "sweeping expired rows stopped; will go on next time");
        }
        let mut departures = Vec::new();
        loop {
            match within(self.inner.deadline, self.reap_batch(&mut departures)).await {
                Ok(true) => continue,
                Ok(false) => break,
                // Earlier batches are committed: report them now, the rest next time.
                Err(err) if !departures.is_empty() => {
                    warn!(cause = %err, "reaping stopped after a batch; will go on next time");
                    return Ok(departures);
                }
                Err(err) => return Err(err),
            }
        }
        if let Err(err) = self.forget(emptied).await {
            warn!(cause = %err, "forgetting users stopped; will go on next time");
        }
        Ok(departures)
    }

    /// Forgets those of `emptied` (users the sweep removed rows of) and of the next slice of
    /// the table that nothing needs any more, a batch per transaction, for at most
    /// [`FORGET_BUDGET`].
    async fn forget(&self, emptied: HashSet<String>) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        let from = self
            .inner
            .scan_from
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let scan = async {
            let mut conn = self.conn().await?;
            let tx = Tx::begin(&mut conn).await?;
            let rows = tx.rows(SCAN_USERS, &[&from, &SCAN_BATCH]).await?;
            tx.commit().await?;
            rows.iter()
                .map(|r| col(r, 0))
                .collect::<Result<Vec<String>, _>>()
        };
        let scanned = within(self.inner.deadline, scan).await?;
        // Past the last user, the next reap starts again from the first.
        let next = match scanned.last() {
            Some(last) if scanned.len() as i64 == SCAN_BATCH => last.clone(),
            _ => String::new(),
        };
        *self
            .inner
            .scan_from
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = next;
        let mut candidates: Vec<String> = emptied.into_iter().chain(scanned).collect();
        candidates.sort_unstable();
        candidates.dedup();
        for chunk in candidates.chunks(FORGET_BATCH) {
            let batch = async {
                let mut conn = self.conn().await?;
                let tx = Tx::begin(&mut conn).await?;
                let idle = tx.rows(LOCK_IDLE, &[&chunk]).await?;
                if !idle.is_empty() {
                    let idle: Vec<String> =
                        idle.iter().map(|r| col(r, 0)).collect::<Result<_, _>>()?;
                    tx.rows(FORGET_USERS, &[&idle]).await?;
                }
                tx.commit().await
            };
            within(self.inner.deadline, batch).await?;
            if started.elapsed() >= FORGET_BUDGET {
                break;
            }
        }
        Ok(())
    }

    /// Removes up to a batch of users' lapsed clients, with their rooms and data; whether more
    /// may be left. The users' rows are locked first, in order: of several nodes reaping at
    /// once, exactly one deletes (and reports) each client, and a fetch of the user waits.
    async fn reap_batch(&self, departures: &mut Vec<Departure>) -> Result<bool, StorageError> {
        let now = now_millis() as i64;
        let mut conn = self.conn().await?;
        let tx = Tx::begin(&mut conn).await?;
        let lapsed = tx.rows(LAPSED_USERS, &[&now, &REAP_BATCH]).await?;
        if lapsed.is_empty() {
            return Ok(false);
        }
        let mut users: Vec<String> = lapsed.iter().map(|r| col(r, 0)).collect::<Result<_, _>>()?;
        users.sort_unstable();
        tx.exec(ENSURE_USERS, &[&users]).await?;
        tx.rows(LOCK_USERS, &[&users]).await?;
        let removed = tx.rows(REMOVE_LAPSED, &[&users, &now]).await?;
        let online = tx.rows(ONLINE_USERS, &[&users]).await?;
        let online: HashSet<String> = online.iter().map(|r| col(r, 0)).collect::<Result<_, _>>()?;
        let mut gone_users: Vec<&str> = Vec::new();
        let mut gone_clients: Vec<String> = Vec::new();
        let mut departed: Vec<(String, String)> = Vec::new();
        for r in &removed {
            let (user, client, polled): (String, String, bool) =
                (col(r, 0)?, col(r, 1)?, col(r, 2)?);
            if polled {
                departed.push((user.clone(), client.clone()));
            }
            gone_clients.push(client);
            let user_ref = users
                .iter()
                .find(|u| **u == user)
                .map(String::as_str)
                .ok_or_else(|| corrupt("a reaped client of another user"))?;
            gone_users.push(user_ref);
        }
        // Users left with no polled client lose their own data.
        let offline: Vec<&str> = users
            .iter()
            .filter(|u| !online.contains(*u) && departed.iter().any(|(d, _)| d == *u))
            .map(String::as_str)
            .collect();
        let mut data_users = gone_users.clone();
        let mut data_clients: Vec<&str> = gone_clients.iter().map(String::as_str).collect();
        data_users.extend(offline.iter().copied());
        data_clients.extend(offline.iter().map(|_| ""));
        let client_refs: Vec<&str> = gone_clients.iter().map(String::as_str).collect();
        tx.prepare(&[DROP_MEMBERSHIPS, DROP_DATA, FORGET_USERS])
            .await?;
        // The users left with nothing are forgotten with their last client, under the locks
        // held already.
        try_join3(
            tx.exec(DROP_MEMBERSHIPS, &[&gone_users, &client_refs]),
            tx.exec(DROP_DATA, &[&data_users, &data_clients]),
            tx.rows(FORGET_USERS, &[&users]),
        )
        .await?;
        tx.commit().await?;
        // Reported per user, the last of a user's departures saying whether they went offline.
        departed.sort();
        for (i, (user, client)) in departed.iter().enumerate() {
            let last_of_user = departed.get(i + 1).is_none_or(|(next, _)| next != user);
            departures.push(Departure {
                user: UserId::from(user.as_str()),
                client: client_id(client.clone())?,
                user_went_offline: last_of_user && !online.contains(user),
            });
        }
        // The batch is of clients, and several may be one user's: whether it was full cannot
        // be told from the users. So the next batch runs whenever this one removed some, and
        // the last finds none.
        Ok(!removed.is_empty())
    }

    /// Removes expired rows from each table that expires, a bounded batch per statement and
    /// transaction (so no transaction holds many users' locks for long), batch after batch
    /// while they come back full, for at most [`SWEEP_BUDGET`] in all: what keeps the tables
    /// bounded by what is live, whatever the rate of sends (a reap comes every quarter of the
    /// presence TTL, so one batch per reap would fall behind above a few hundred rows a
    /// second). The users whose rows it removed go into `emptied`, to forget if that was
    /// their last.
    async fn sweep(&self, emptied: &mut HashSet<String>) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        // One connection for every batch: under load each wait for the pool can take most of
        // the budget, and a sweep that got a batch or two per reap fell behind the sends
        // (expired payloads piled up at 300 messages a second, `docs/benchmarks.md`).
        let mut conn = within(self.inner.deadline, self.conn()).await?;
        for statement in [
            SWEEP_MESSAGES,
            SWEEP_ACKS,
            SWEEP_ORIGINS,
            SWEEP_PAYLOADS,
            SWEEP_DEDUP,
            SWEEP_INTEREST,
            SWEEP_SIGNAL_BODIES,
        ] {
            // These answer how many rows of each user they removed; the others, how many.
            let per_user =
                [SWEEP_MESSAGES, SWEEP_ACKS, SWEEP_ORIGINS, SWEEP_DEDUP].contains(&statement);
            loop {
                let now = now_millis() as i64;
                let before = if statement == SWEEP_SIGNAL_BODIES {
                    now - SIGNAL_BODY_TTL as i64
                } else {
                    now
                };
                let batch = async {
                    let tx = Tx::begin(&mut conn).await?;
                    let mut users = Vec::new();
                    let removed = if per_user {
                        let rows = tx.rows(statement, &[&before, &SWEEP_BATCH]).await?;
                        let mut removed = 0;
                        for r in &rows {
                            users.push(col::<String>(r, 0)?);
                            removed += col::<i64>(r, 1)?.max(0) as u64;
                        }
                        removed
                    } else {
                        tx.exec(statement, &[&before, &SWEEP_BATCH]).await?
                    };
                    tx.commit().await?;
                    Ok::<_, StorageError>((removed, users))
                };
                let (removed, users) = within(self.inner.deadline, batch).await?;
                emptied.extend(users);
                if removed < SWEEP_BATCH as u64 || started.elapsed() >= SWEEP_BUDGET {
                    break;
                }
            }
        }
        Ok(())
    }
}

pub(super) fn client_id(id: String) -> Result<ClientId, StorageError> {
    ClientId::new(id).map_err(|e| corrupt(format!("a client id: {e}")))
}
