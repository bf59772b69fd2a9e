//! Dedup records: [`Storage::claim`], [`Storage::renew`], [`Storage::complete`].
//!
//! A claim locks its user's row, so that the claims of one user (and their bounds) are decided
//! one at a time; the record itself is one row.

use std::time::Duration;

use futures_util::future::{try_join, try_join4};

use super::PostgresStorage;
use super::error::col;
use super::sql::{
    DEDUP_COMPLETE, DEDUP_COUNTS, DEDUP_FIND, DEDUP_INSERT, DEDUP_OLDEST_OF_CLIENT,
    DEDUP_OLDEST_OF_USER, DEDUP_REMOVE, DEDUP_RENEW, DEDUP_SET_UNTIL, ENSURE_USER, LOCK_USER,
};
use super::tx::Tx;
use crate::storage::{Claim, DedupKey, DedupLimits, Limit, Signal, StorageError, now_millis};

/// The most records one claim forgets to make room (as `MemoryStorage`).
const EVICT_MOST: usize = 64;

fn millis(d: Duration) -> u64 {
    d.as_millis().min(i64::MAX as u128) as u64
}

impl PostgresStorage {
    pub(super) async fn claim_now(
        &self,
        key: &DedupKey,
        owner: u64,
        limits: DedupLimits,
    ) -> Result<Claim, StorageError> {
        let now = now_millis();
        let until = now.saturating_add(millis(limits.lease)) as i64;
        let (user, client, id) = (key.user.as_str(), key.client.as_str(), key.id.as_str());
        // The owner's bits, as a bigint.
        let owner = owner as i64;
        let mut conn = self.conn().await?;
        let tx = Tx::begin(&mut conn).await?;
        tx.prepare(&[ENSURE_USER, LOCK_USER, DEDUP_FIND, DEDUP_COUNTS])
            .await?;
        let (_, _, found, counts) = try_join4(
            tx.exec(ENSURE_USER, &[&user]),
            tx.rows(LOCK_USER, &[&user]),
            tx.rows(DEDUP_FIND, &[&user, &client, &id]),
            tx.rows(DEDUP_COUNTS, &[&user, &client]),
        )
        .await?;
        let mut present = false;
        if let Some(r) = found.first() {
            present = true;
            let (held_by, outcome, held_until): (i64, Option<String>, i64) =
                (col(r, 0)?, col(r, 1)?, col(r, 2)?);
            if held_until > now as i64 {
                let claim = match outcome {
                    Some(outcome) => Claim::Done(outcome),
                    None if held_by == owner => {
                        tx.exec(DEDUP_SET_UNTIL, &[&user, &client, &id, &until])
                            .await?;
                        Claim::Acquired
                    }
                    None => Claim::InProgress {
                        retry_after: Duration::from_millis((held_until - now as i64) as u64),
                    },
                };
                // A request that finds the message in progress waits for its completion, on
                // this node: the completion's signal must come here.
                let noted = match claim {
                    Claim::InProgress { .. } => self.inner.routes.note(&tx, &[user], now).await?,
                    _ => Vec::new(),
                };
                tx.commit().await?;
                self.inner.routes.remember(noted, now);
                return Ok(claim);
            }
            tx.exec(DEDUP_REMOVE, &[&user, &client, &id]).await?;
        }
        let (mut of_client, mut of_user) = match counts.first() {
            Some(r) => (
                col::<i64>(r, 0)?.max(0) as usize,
                col::<i64>(r, 1)?.max(0) as usize,
            ),
            None => (0, 0),
        };
        if present {
            of_client = of_client.saturating_sub(1);
            of_user = of_user.saturating_sub(1);
        }
        if of_client >= limits.per_client || of_user >= limits.per_user {
            let scan = (EVICT_MOST + 1) as i64;
            let now_sql = now as i64;
            let (client_oldest, user_oldest) = try_join(
                tx.rows(DEDUP_OLDEST_OF_CLIENT, &[&user, &client, &now_sql, &scan]),
                tx.rows(DEDUP_OLDEST_OF_USER, &[&user, &now_sql, &scan]),
            )
            .await?;
            let read = |rows: &[tokio_postgres::Row]| {
                rows.iter()
                    .map(|r| {
                        Ok((
                            col::<String>(r, 0)?,
                            col::<String>(r, 1)?,
                            col::<bool>(r, 2)?,
                        ))
                    })
                    .collect::<Result<Vec<_>, StorageError>>()
            };
            let client_oldest = read(&client_oldest)?;
            let user_oldest = read(&user_oldest)?;
            let mut client_next = client_oldest.iter();
            let mut user_next = user_oldest.iter();
            let mut victims: Vec<(&str, &str)> = Vec::new();
            while victims.len() < EVICT_MOST {
                let (victim, limit) = if of_client >= limits.per_client {
                    let next =
                        client_next.find(|(c, i, _)| !victims.contains(&(c.as_str(), i.as_str())));
                    let Some(v) = next else { break };
                    (v, limits.per_client)
                } else if of_user >= limits.per_user {
                    let next =
                        user_next.find(|(c, i, _)| !victims.contains(&(c.as_str(), i.as_str())));
                    let Some(v) = next else { break };
                    (v, limits.per_user)
                } else {
                    break;
                };
                let (c, i, in_progress) = victim;
                if (c.as_str(), i.as_str()) == (client, id) {
                    continue;
                }
                if *in_progress {
                    return Err(Limit::DedupRecords(limit).into());
                }
                if c == client {
                    of_client = of_client.saturating_sub(1);
                }
                of_user = of_user.saturating_sub(1);
                victims.push((c, i));
            }
            for (c, i) in victims {
                tx.exec(DEDUP_REMOVE, &[&user, &c, &i]).await?;
            }
        }
        tx.exec(DEDUP_INSERT, &[&user, &client, &id, &owner, &until])
            .await?;
        // The claiming request waits for the record's completion if another one holds it.
        let noted = self.inner.routes.note(&tx, &[user], now).await?;
        tx.commit().await?;
        self.inner.routes.remember(noted, now);
        Ok(Claim::Acquired)
    }

    pub(super) async fn renew_now(
        &self,
        key: &DedupKey,
        owner: u64,
        lease: Duration,
    ) -> Result<bool, StorageError> {
        let now = now_millis();
        let until = now.saturating_add(millis(lease)) as i64;
        let (user, client, id) = (key.user.as_str(), key.client.as_str(), key.id.as_str());
        let (owner, now) = (owner as i64, now as i64);
        let mut conn = self.conn().await?;
        let tx = Tx::begin(&mut conn).await?;
        let renewed = tx
            .exec(DEDUP_RENEW, &[&user, &client, &id, &owner, &until, &now])
            .await?;
        tx.commit().await?;
        Ok(renewed > 0)
    }

    pub(super) async fn complete_now(
        &self,
        key: &DedupKey,
        outcome: &str,
        ttl: Duration,
    ) -> Result<(), StorageError> {
        let now = now_millis();
        let until = now.saturating_add(millis(ttl)) as i64;
        let (user, client, id) = (key.user.as_str(), key.client.as_str(), key.id.as_str());
        let mut conn = self.conn().await?;
        let tx = Tx::begin(&mut conn).await?;
        let signal = Signal::Completed {
            user: key.user.clone(),
        };
        if ttl.is_zero() {
            // The outcome is not known: a retry is to be handled again.
            tx.prepare(&[DEDUP_REMOVE]).await?;
            try_join(
                tx.exec(DEDUP_REMOVE, &[&user, &client, &id]),
                self.inner.routes.send(&tx, &signal, now),
            )
            .await?;
        } else {
            tx.prepare(&[DEDUP_COMPLETE]).await?;
            try_join(
                tx.exec(DEDUP_COMPLETE, &[&user, &client, &id, &outcome, &until]),
                self.inner.routes.send(&tx, &signal, now),
            )
            .await?;
        }
        tx.commit().await
    }
}
