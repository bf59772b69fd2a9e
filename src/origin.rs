//! Names for the sends of one handler run, the same when the handler runs again for the same
//! client message (after a crash before its outcome was recorded), so that the storage stores
//! each of them once ([`NewMessage::origin`](crate::storage::NewMessage::origin)).
//!
//! A send is named after the message handled (its user, client and id), its namespace and
//! event, and how many sends of that event the run made before it: the second run's first
//! `chat` is the first run's first `chat`, whatever its payload (which may carry a fresh
//! timestamp). What a first run stored stands; a second run's send that it already made is not
//! stored again. Sends of one event made concurrently within a run may be numbered in another
//! order the second time; each is still stored at least once.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use crate::id::{ClientId, MessageId, UserId};

#[derive(Debug)]
pub(crate) struct Origins {
    /// The handled message. Kept as ids (cheap clones) and written out only by a send: most
    /// handlers of most messages send nothing.
    user: UserId,
    client: ClientId,
    id: MessageId,
    /// Sends made so far, per hash of namespace and event.
    counts: Mutex<HashMap<u64, u32>>,
}

impl Origins {
    pub(crate) fn new(user: &UserId, client: &ClientId, id: &MessageId) -> Self {
        Origins {
            user: user.clone(),
            client: client.clone(),
            id: id.clone(),
            counts: Mutex::default(),
        }
    }

    /// The name of the run's next send of `event` in `namespace`.
    pub(crate) fn next(&self, namespace: &str, event: &str) -> Arc<str> {
        // A fixed-key hash: the name must be the same in the process that runs the handler
        // again.
        let mut hasher = DefaultHasher::new();
        (namespace, event).hash(&mut hasher);
        let hash = hasher.finish();
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(hash).or_default();
        *n += 1;
        // The user is length-prefixed, so that no two messages' names run together.
        let (user, client, id) = (self.user.as_str(), &self.client, &self.id);
        format!("{}:{user}:{client}:{id}:{hash:016x}:{n}", user.len()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins() -> Origins {
        Origins::new(
            &UserId::from("ann"),
            &ClientId::new("tab").unwrap(),
            &MessageId::new("m1").unwrap(),
        )
    }

    #[test]
    fn a_run_again_names_its_sends_alike_per_event() {
        let (first, again) = (origins(), origins());
        let chat = first.next("/", "chat");
        let chat2 = first.next("/", "chat");
        let news = first.next("/", "news");
        assert_ne!(chat, chat2, "two sends of one event share a name");
        assert_ne!(chat, news);
        assert_ne!(first.next("/other", "chat"), chat);
        // Events interleaved otherwise: each keeps its name.
        assert_eq!(again.next("/", "news"), news);
        assert_eq!(again.next("/", "chat"), chat);
        assert_eq!(again.next("/", "chat"), chat2);
        let other = Origins::new(
            &UserId::from("ann"),
            &ClientId::new("tab").unwrap(),
            &MessageId::new("m2").unwrap(),
        );
        assert_ne!(
            other.next("/", "chat"),
            chat,
            "two messages' sends share a name"
        );
    }
}
