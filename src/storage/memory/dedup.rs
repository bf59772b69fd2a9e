//! One shard's dedup records: every client message id being handled or handled lately, bounded
//! per client and per user, and swept by time.
//!
//! Records are numbered in the order they were claimed. Each user keeps their records by that
//! number, overall and per client, so the oldest one to forget is the first of an ordered set:
//! making room costs a lookup, never a scan, however many records there are.

use std::collections::{BTreeMap, BTreeSet};

use std::time::Duration;

use super::super::{Claim, DedupKey, DedupLimits, Limit, Millis};
use super::journal::{Change, Changes};
use crate::hash::HashMap;
use crate::id::{ClientId, MessageId, UserId};

/// The most records one claim forgets.
const EVICT_MOST: usize = 64;

#[derive(Debug, Default)]
pub(super) struct Dedup {
    records: HashMap<DedupKey, Record>,
    /// Every record by the time it lapses.
    expiries: BTreeSet<(Millis, DedupKey)>,
    /// Every user's records in claim order.
    users: HashMap<UserId, UserRecords>,
    next_seq: u64,
    /// What changed, for a journaled storage.
    pub(super) changes: Changes,
}

#[derive(Debug)]
struct Record {
    outcome: Option<Box<str>>,
    until: Millis,
    seq: u64,
    /// The request holding it, while in progress.
    owner: u64,
}

impl Record {
    fn change(&self, key: &DedupKey) -> Change {
        Change::Dedup {
            key: key.clone(),
            seq: self.seq,
            owner: self.owner,
            until: self.until,
            outcome: self.outcome.clone(),
        }
    }
}

#[derive(Debug, Default)]
struct UserRecords {
    by_seq: BTreeMap<u64, (ClientId, MessageId)>,
    by_client: HashMap<ClientId, BTreeSet<u64>>,
}

impl Dedup {
    pub(super) fn claim(
        &mut self,
        key: &DedupKey,
        owner: u64,
        limits: DedupLimits,
        now: Millis,
    ) -> Result<Claim, Limit> {
        let until = now.saturating_add(limits.lease.as_millis() as Millis);
        match self.records.get(key) {
            Some(r) if r.until > now => {
                return Ok(match &r.outcome {
                    Some(outcome) => Claim::Done(outcome.to_string()),
                    None if r.owner == owner => {
                        self.set_until(key, until);
                        Claim::Acquired
                    }
                    None => Claim::InProgress {
                        retry_after: Duration::from_millis(r.until - now),
                    },
                });
            }
            Some(_) => self.remove(key),
            None => {}
        }
        self.make_room(key, limits, now)?;
        self.insert(key, None, until, owner);
        Ok(Claim::Acquired)
    }

    /// Restarts the lease of an in-progress record of `owner`; whether there was one.
    pub(super) fn renew(&mut self, key: &DedupKey, owner: u64, until: Millis, now: Millis) -> bool {
        let held = self
            .records
            .get(key)
            .is_some_and(|r| r.outcome.is_none() && r.owner == owner && r.until > now);
        if held {
            self.set_until(key, until);
        }
        held
    }

    fn set_until(&mut self, key: &DedupKey, until: Millis) {
        if let Some(record) = self.records.get_mut(key) {
            self.expiries.remove(&(record.until, key.clone()));
            record.until = until;
            self.expiries.insert((until, key.clone()));
            self.changes.push(|| record.change(key));
        }
    }

    /// Records the outcome, for a record claimed earlier or (its lease having lapsed) anew.
    pub(super) fn complete(&mut self, key: &DedupKey, outcome: &str, until: Millis) {
        if let Some(record) = self.records.get_mut(key) {
            self.expiries.remove(&(record.until, key.clone()));
            record.outcome = Some(outcome.into());
            record.until = until;
            self.expiries.insert((until, key.clone()));
            self.changes.push(|| record.change(key));
            return;
        }
        // A handled message must be remembered, so this one is kept beyond the limits: it can
        // only follow a lease that lapsed while the handler ran, which is rare, and the next
        // claim of the user makes room again.
        self.insert(key, Some(outcome.into()), until, 0);
    }

    /// Removes up to `most` records that lapsed by `now`.
    pub(super) fn sweep(&mut self, now: Millis, most: usize) {
        for _ in 0..most {
            match self.expiries.first() {
                Some((until, _)) if *until <= now => {}
                _ => break,
            }
            if let Some((_, key)) = self.expiries.pop_first() {
                self.remove(&key);
            }
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    /// Forgets the oldest completed records of the key's client, then of its user, until a new
    /// one fits under both limits; refuses, changing nothing, if one it would forget is still
    /// in progress. The records to forget are chosen before any is, at most `EVICT_MOST` per
    /// claim (a limit lowered since records were made is caught up with over several claims).
    fn make_room(&mut self, key: &DedupKey, limits: DedupLimits, now: Millis) -> Result<(), Limit> {
        let Some(user) = self.users.get(&key.user) else {
            return Ok(());
        };
        let of_client = user.by_client.get(&key.client);
        let mut client_count = of_client.map_or(0, BTreeSet::len);
        let mut user_count = user.by_seq.len();
        let mut client_oldest = of_client.into_iter().flatten();
        let mut user_oldest = user.by_seq.iter();
        let mut victims: Vec<DedupKey> = Vec::new();
        while victims.len() < EVICT_MOST {
            let (client, id, limit) = if client_count >= limits.per_client {
                let Some((c, id)) = client_oldest.next().and_then(|seq| user.by_seq.get(seq))
                else {
                    break;
                };
                (c, id, limits.per_client)
            } else if user_count >= limits.per_user {
                let next = user_oldest
                    .find(|(_, (c, id))| !victims.iter().any(|v| v.client == *c && v.id == *id));
                let Some((_, (c, id))) = next else {
                    break;
                };
                (c, id, limits.per_user)
            } else {
                break;
            };
            let victim = DedupKey {
                user: key.user.clone(),
                client: client.clone(),
                id: id.clone(),
            };
            let in_progress = self
                .records
                .get(&victim)
                .is_some_and(|r| r.outcome.is_none() && r.until > now);
            if in_progress {
                return Err(Limit::DedupRecords(limit));
            }
            if *client == key.client {
                client_count -= 1;
            }
            user_count -= 1;
            victims.push(victim);
        }
        for victim in victims {
            self.remove(&victim);
        }
        Ok(())
    }

    fn insert(&mut self, key: &DedupKey, outcome: Option<Box<str>>, until: Millis, owner: u64) {
        let seq = self.next_seq;
        self.insert_numbered(key, outcome, until, owner, seq);
    }

    /// Puts back a record a durable storage kept, under the number it was claimed with.
    #[cfg(feature = "durable")]
    pub(super) fn restore(
        &mut self,
        key: &DedupKey,
        outcome: Option<Box<str>>,
        until: Millis,
        owner: u64,
        seq: u64,
    ) {
        self.remove(key);
        self.insert_numbered(key, outcome, until, owner, seq);
    }

    fn insert_numbered(
        &mut self,
        key: &DedupKey,
        outcome: Option<Box<str>>,
        until: Millis,
        owner: u64,
        seq: u64,
    ) {
        self.next_seq = self.next_seq.max(seq + 1);
        let user = self.users.entry(key.user.clone()).or_default();
        user.by_seq
            .insert(seq, (key.client.clone(), key.id.clone()));
        user.by_client
            .entry(key.client.clone())
            .or_default()
            .insert(seq);
        self.expiries.insert((until, key.clone()));
        let record = Record {
            outcome,
            until,
            seq,
            owner,
        };
        self.changes.push(|| record.change(key));
        self.records.insert(key.clone(), record);
    }

    fn remove(&mut self, key: &DedupKey) {
        let Some(record) = self.records.remove(key) else {
            return;
        };
        self.changes.push(|| Change::Undedup { key: key.clone() });
        self.expiries.remove(&(record.until, key.clone()));
        let Some(user) = self.users.get_mut(&key.user) else {
            return;
        };
        user.by_seq.remove(&record.seq);
        if let Some(seqs) = user.by_client.get_mut(&key.client) {
            seqs.remove(&record.seq);
            if seqs.is_empty() {
                user.by_client.remove(&key.client);
            }
        }
        if user.by_seq.is_empty() {
            self.users.remove(&key.user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(client: &str, id: &str) -> DedupKey {
        DedupKey {
            user: UserId::from("ann"),
            client: ClientId::new(client).expect("id"),
            id: MessageId::new(id).expect("id"),
        }
    }

    /// A new owner for each claim, as each request has its own.
    fn fresh() -> u64 {
        fastrand::u64(..)
    }

    const LIMITS: DedupLimits = DedupLimits {
        lease: Duration::from_secs(60),
        per_client: 3,
        per_user: 5,
    };

    #[test]
    fn the_oldest_completed_record_of_a_client_makes_room() {
        let mut d = Dedup::default();
        for i in 0..3 {
            let k = key("a", &format!("m{i}"));
            assert_eq!(d.claim(&k, fresh(), LIMITS, 0), Ok(Claim::Acquired));
            d.complete(&k, "1", 1_000);
        }
        assert_eq!(
            d.claim(&key("a", "m3"), fresh(), LIMITS, 0),
            Ok(Claim::Acquired)
        );
        assert_eq!(d.len(), 3);
        // m0 was forgotten, m1 is remembered.
        assert_eq!(
            d.claim(&key("a", "m1"), fresh(), LIMITS, 0),
            Ok(Claim::Done("1".into()))
        );
        // m0 was forgotten: a retry of it now would be handled again.
        assert_eq!(
            d.claim(&key("a", "m0"), fresh(), LIMITS, 0),
            Ok(Claim::Acquired)
        );
        assert_eq!(d.len(), 3);
    }

    #[test]
    fn an_oldest_record_in_progress_refuses_a_new_one() {
        let mut d = Dedup::default();
        for i in 0..3 {
            assert_eq!(
                d.claim(&key("a", &format!("m{i}")), fresh(), LIMITS, 0),
                Ok(Claim::Acquired)
            );
        }
        assert_eq!(
            d.claim(&key("a", "m3"), fresh(), LIMITS, 0),
            Err(Limit::DedupRecords(3))
        );
        // A refusal changes nothing.
        let mut d = Dedup::default();
        let a0 = key("a", "m0");
        assert_eq!(
            d.claim(&key("b", "x0"), fresh(), LIMITS, 0),
            Ok(Claim::Acquired)
        );
        for i in 0..3 {
            let k = key("a", &format!("m{i}"));
            assert_eq!(d.claim(&k, fresh(), LIMITS, 0), Ok(Claim::Acquired));
            d.complete(&k, "1", 1_000);
        }
        assert_eq!(
            d.claim(&key("b", "x1"), fresh(), LIMITS, 0),
            Ok(Claim::Acquired)
        );
        // With the user's limit lowered to 4, a's claim would forget m0 for a, then must forget
        // the user's oldest, x0, still in progress.
        let lowered = DedupLimits {
            per_user: 4,
            ..LIMITS
        };
        assert_eq!(
            d.claim(&key("a", "m3"), fresh(), lowered, 0),
            Err(Limit::DedupRecords(4))
        );
        assert_eq!(
            d.claim(&a0, fresh(), LIMITS, 0),
            Ok(Claim::Done("1".into())),
            "a refusal forgot a record"
        );
        let mut d = Dedup::default();
        for i in 0..3 {
            assert_eq!(
                d.claim(&key("a", &format!("m{i}")), fresh(), LIMITS, 0),
                Ok(Claim::Acquired)
            );
        }
        // Once its lease lapsed, it no longer holds the place.
        assert_eq!(
            d.claim(&key("a", "m3"), fresh(), LIMITS, 60_001),
            Ok(Claim::Acquired)
        );
    }

    #[test]
    fn a_user_is_bounded_over_all_their_clients() {
        let mut d = Dedup::default();
        for i in 0..10 {
            let k = key(&format!("c{i}"), "m");
            assert_eq!(d.claim(&k, fresh(), LIMITS, 0), Ok(Claim::Acquired));
            d.complete(&k, "1", 1_000);
        }
        assert_eq!(d.len(), 5);
        d.sweep(1_000, 100);
        assert_eq!(d.len(), 0);
        assert!(
            d.users.is_empty(),
            "no order is kept for a user without records"
        );
    }
}

#[cfg(test)]
mod owner_tests {
    use super::*;

    #[test]
    fn the_owner_resumes_its_claim_and_others_are_told_how_long_to_wait() {
        let limits = DedupLimits {
            lease: Duration::from_millis(1_000),
            per_client: 10,
            per_user: 10,
        };
        let key = DedupKey {
            user: UserId::from("ann"),
            client: ClientId::new("tab").expect("id"),
            id: MessageId::new("m1").expect("id"),
        };
        let mut d = Dedup::default();
        assert_eq!(d.claim(&key, 7, limits, 0), Ok(Claim::Acquired));
        assert_eq!(
            d.claim(&key, 7, limits, 100),
            Ok(Claim::Acquired),
            "not resumed"
        );
        assert_eq!(
            d.claim(&key, 8, limits, 300),
            Ok(Claim::InProgress {
                retry_after: Duration::from_millis(800)
            })
        );
        assert!(d.renew(&key, 7, 2_000, 900));
        assert!(!d.renew(&key, 8, 2_000, 900), "renewed by another owner");
        assert!(matches!(
            d.claim(&key, 8, limits, 1_500),
            Ok(Claim::InProgress { .. })
        ));
        assert_eq!(
            d.claim(&key, 8, limits, 2_000),
            Ok(Claim::Acquired),
            "a lapsed lease held"
        );
    }
}
