//! Room memberships, indexed both ways, so that a member's rooms and a room's members are
//! each found without looking at the others.

use std::sync::Arc;

use super::super::Member;
use crate::hash::{HashMap, HashSet};

#[derive(Debug, Default)]
pub(super) struct Rooms {
    members: HashMap<Arc<str>, HashSet<Member>>,
    of: HashMap<Member, HashSet<Arc<str>>>,
}

impl Rooms {
    pub(super) fn join(&mut self, room: &str, member: &Member) {
        let room: Arc<str> = match self.members.get_key_value(room) {
            Some((name, _)) => name.clone(),
            None => room.into(),
        };
        self.members
            .entry(room.clone())
            .or_default()
            .insert(member.clone());
        self.of.entry(member.clone()).or_default().insert(room);
    }

    pub(super) fn leave(&mut self, room: &str, member: &Member) {
        if let Some(members) = self.members.get_mut(room) {
            members.remove(member);
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
    pub(super) fn remove_everywhere(&mut self, member: &Member) {
        let Some(rooms) = self.of.remove(member) else {
            return;
        };
        for room in rooms {
            if let Some(members) = self.members.get_mut(&room) {
                members.remove(member);
                if members.is_empty() {
                    self.members.remove(&room);
                }
            }
        }
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
        rooms.remove_everywhere(&ann);
        assert!(rooms.members("a").is_empty());
        assert!(rooms.rooms(&ann).is_empty());
        assert!(rooms.members.is_empty() && rooms.of.is_empty());
    }
}
