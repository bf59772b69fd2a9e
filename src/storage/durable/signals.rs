//! A batch's signals, made fewer before they are published: the batch's [`Signal::Appended`]
//! become one for every [`FANOUT_CHUNK`] users they name.
//!
//! Signals wait with the changes until their frame is on disk, so one frame publishes at once
//! what many operations signalled: under a load of direct messages, one `Appended` per message.
//! The writer thread publishes them from outside the runtime, and the hub's task that reads
//! them is woken from there too, behind every task the same frame woke; a burst of thousands
//! then overflows the channel, and an overflow makes every waiter re-read the storage
//! (`Signal::Resync`). Once the frame is durable every change before each signal is, so the
//! batch's appends can be told together, naming each user once, in the place of the first: in
//! signals of [`FANOUT_CHUNK`] users at most, as an append call tells them, so that the hub's
//! dispatch of one never holds a lock for a whole broadcast's recipients.

use std::sync::Arc;

use crate::hash::HashSet;
use crate::id::UserId;
use crate::storage::{FANOUT_CHUNK, Signal};

/// A set kept for the next batch up to this many users; one a large batch made larger is let
/// go.
const KEEP: usize = 4_096;

/// Merges the `Appended` signals of `signals` into signals of at most [`FANOUT_CHUNK`] users, in
/// the place of the first, each user named once; the other signals keep their order. `named`
/// is scratch space, left empty.
pub(super) fn coalesce(signals: &mut Vec<Signal>, named: &mut HashSet<UserId>) {
    let appends = signals
        .iter()
        .filter(|s| matches!(s, Signal::Appended { .. }))
        .count();
    if appends < 2 {
        return;
    }
    let mut users: Vec<UserId> = Vec::new();
    let mut first = None;
    let mut kept = 0;
    for i in 0..signals.len() {
        if let Signal::Appended { users: these } = &signals[i] {
            users.extend(these.iter().filter(|u| named.insert((*u).clone())).cloned());
            if first.is_some() {
                continue;
            }
            first = Some(kept);
        }
        signals.swap(kept, i);
        kept += 1;
    }
    signals.truncate(kept);
    if let Some(first) = first {
        let mut chunks = users.chunks(FANOUT_CHUNK).map(|chunk| Signal::Appended {
            users: Arc::from(chunk),
        });
        signals[first] = chunks.next().unwrap_or(Signal::Appended {
            users: Arc::from(Vec::new()),
        });
        signals.splice(first + 1..first + 1, chunks);
    }
    named.clear();
    if named.capacity() > KEEP {
        *named = HashSet::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ClientId;
    use crate::storage::Epoch;

    fn appended(users: &[&str]) -> Signal {
        Signal::Appended {
            users: users.iter().map(|u| UserId::from(*u)).collect(),
        }
    }

    fn confirmed(user: &str) -> Signal {
        Signal::Confirmed {
            epoch: Epoch::new("e"),
            user: UserId::from(user),
            client: ClientId::new("c").expect("id"),
            cursor: 1,
            namespaces: Arc::from(vec![Arc::<str>::from("/")]),
        }
    }

    /// What a list says, for comparing: `A(users)` or `C(user)`.
    fn shape(signals: &[Signal]) -> Vec<String> {
        signals
            .iter()
            .map(|s| match s {
                Signal::Appended { users } => {
                    let names: Vec<&str> = users.iter().map(UserId::as_str).collect();
                    format!("A({})", names.join(","))
                }
                Signal::Confirmed { user, .. } => format!("C({})", user.as_str()),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn appends_become_one_in_the_place_of_the_first_naming_each_user_once() {
        let mut signals = vec![
            confirmed("x"),
            appended(&["ann", "bob"]),
            confirmed("y"),
            appended(&["bob", "cy"]),
            appended(&["ann"]),
            confirmed("z"),
        ];
        let mut named = HashSet::default();
        coalesce(&mut signals, &mut named);
        assert_eq!(
            shape(&signals),
            ["C(x)", "A(ann,bob,cy)", "C(y)", "C(z)"],
            "the other signals keep their order"
        );
        assert!(named.is_empty(), "the scratch set is left empty");
    }

    #[test]
    fn a_broadcasts_users_are_told_a_chunk_per_signal() {
        let users: Vec<String> = (0..FANOUT_CHUNK * 2 + 1).map(|i| format!("u{i}")).collect();
        let mut signals: Vec<Signal> = users
            .chunks(FANOUT_CHUNK / 2)
            .map(|chunk| {
                let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
                appended(&chunk)
            })
            .collect();
        signals.push(confirmed("x"));
        let mut named = HashSet::default();
        coalesce(&mut signals, &mut named);
        let sizes: Vec<usize> = signals
            .iter()
            .map(|s| match s {
                Signal::Appended { users } => users.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(
            sizes,
            [FANOUT_CHUNK, FANOUT_CHUNK, 1, 0],
            "then the confirmation"
        );
        let told: Vec<&str> = signals
            .iter()
            .flat_map(|s| match s {
                Signal::Appended { users } => users.iter().map(UserId::as_str).collect(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(told, users, "each once, in order");
    }

    #[test]
    fn a_batch_with_one_append_or_none_is_left_as_it_is() {
        let mut named = HashSet::default();
        let mut one = vec![appended(&["ann", "ann"]), confirmed("x")];
        coalesce(&mut one, &mut named);
        assert_eq!(shape(&one), ["A(ann,ann)", "C(x)"], "not even looked into");
        let mut none = vec![confirmed("x"), Signal::Resync];
        coalesce(&mut none, &mut named);
        assert_eq!(shape(&none), ["C(x)", "Resync"]);
        let mut empty = Vec::new();
        coalesce(&mut empty, &mut named);
        assert!(empty.is_empty());
    }
}
