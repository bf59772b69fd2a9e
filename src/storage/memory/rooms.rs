//! Room memberships, indexed both ways, so that a member's rooms and a room's members are
//! each found without looking at the others.

use std::sync::Arc;

use super::super::Member;
use super::journal::{Change, Changes};
use crate::hash::{HashMap, HashSet};

#[derive(Debug, Default)]
pub(super) struct Rooms {
    members: HashMap<Arc<str>, HashSet<Member>>,
    of: HashMap<Member, HashSet<Arc<str>>>,
    /// What changed, for a journaled storage.
    pub(super) changes: Changes,
}

impl Rooms {
    pub(super) fn join(&mut self, room: &str, member: &Member) {
        let room: Arc<str> = match self.members.get_key_value(room) {
            Some((name, _)) => name.clone(),
            None => room.into(),
        };
        let new = self
            .members
            .entry(room.clone())
            .or_default()
            .insert(member.clone());
        if new {
            self.changes.push(|| Change::Join {
                room: room.clone(),
                member: member.clone(),
            });
        }
        self.of.entry(member.clone()).or_default().insert(room);
    }

    pub(super) fn leave(&mut self, room: &str, member: &Member) {
        if let Some(members) = self.members.get_mut(room) {
            if members.remove(member) {
                self.changes.push(|| Change::Leave {
                    room: room.into(),
                    member: member.clone(),
                });
            }
            if members.is_empty() {
                self.members.remove(room);
            }
        }
        if let Some(rooms) = self.of.get_mut(member) {
            rooms.remove(room);
            if rooms.is_empty() {
                self.of.remove(member);
            }
        }
    }

    /// Removes `member` from every room it is in: as many steps as it has rooms.
    #[cfg(test)]
    pub(super) fn remove_everywhere(&mut self, member: &Member) {
        let mut unbounded = usize::MAX;
        self.remove_from_some(member, &mut unbounded);
    }

    /// Removes `member` from up to `budget` of its rooms, taking what it spent from `budget`;
    /// whether the member is in no room any more. So a caller holding the lock bounds its work
    /// by memberships, not by members, who may be in thousands of rooms each.
    pub(super) fn remove_from_some(&mut self, member: &Member, budget: &mut usize) -> bool {
        let Some(rooms) = self.of.get_mut(member) else {
            return true;
        };
        let some: Vec<Arc<str>> = rooms.iter().take(*budget).cloned().collect();
        for room in &some {
            rooms.remove(room);
        }
        *budget -= some.len();
        let done = rooms.is_empty();
        if done {
            self.of.remove(member);
        }
        for room in some {
            if let Some(members) = self.members.get_mut(&room) {
                if members.remove(member) {
                    self.changes.push(|| Change::Leave {
                        room: room.clone(),
                        member: member.clone(),
                    });
                }
                if members.is_empty() {
                    self.members.remove(&room);
                }
            }
        }
        done
    }

    pub(super) fn members(&self, room: &str) -> Vec<Member> {
        self.members
            .get(room)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub(super) fn rooms(&self, member: &Member) -> Vec<Arc<str>> {
        self.of
            .get(member)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub(super) fn clear(&mut self) {
        self.members.clear();
        self.of.clear();
        self.changes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaving_the_last_room_forgets_the_member() {
        let mut rooms = Rooms::default();
        let ann = Member::from("ann");
        rooms.join("a", &ann);
        rooms.join("b", &ann);
        let mut budget = 1;
        assert!(
            !rooms.remove_from_some(&ann, &mut budget),
            "one of two rooms"
        );
        assert_eq!(budget, 0);
        let mut budget = 5;
        assert!(rooms.remove_from_some(&ann, &mut budget));
        assert_eq!(budget, 4);
        rooms.remove_everywhere(&ann);
        assert!(rooms.members("a").is_empty());
        assert!(rooms.rooms(&ann).is_empty());
        assert!(rooms.members.is_empty() && rooms.of.is_empty());
    }
}
