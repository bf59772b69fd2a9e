//! One user's client records, in a vector sorted by client id.
//!
//! Most users have one or two clients (a tab or two), and every connected user holds this map:
//! a hash map's smallest table has room for four records plus its control bytes, about 400
//! bytes for one client, where a vector holds just the one. Lookups are binary searches;
//! adding or removing a client moves the records after it, a few at most (a user's polling
//! clients are bounded by `Builder::max_clients_per_user`).

use crate::id::ClientId;

use super::log::ClientRecord;

#[derive(Debug, Default)]
pub(super) struct Clients {
    /// Sorted by id, each id once.
    records: Vec<(ClientId, ClientRecord)>,
}

impl Clients {
    fn find(&self, client: &ClientId) -> Result<usize, usize> {
        self.records.binary_search_by(|(id, _)| id.cmp(client))
    }

    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub(super) fn contains_key(&self, client: &ClientId) -> bool {
        self.find(client).is_ok()
    }

    pub(super) fn get(&self, client: &ClientId) -> Option<&ClientRecord> {
        self.find(client).ok().map(|i| &self.records[i].1)
    }

    pub(super) fn get_mut(&mut self, client: &ClientId) -> Option<&mut ClientRecord> {
        self.find(client).ok().map(|i| &mut self.records[i].1)
    }

    /// The record of `client`, made by `make` if there is none.
    pub(super) fn get_or_insert_with(
        &mut self,
        client: &ClientId,
        make: impl FnOnce() -> ClientRecord,
    ) -> &mut ClientRecord {
        let i = match self.find(client) {
            Ok(i) => i,
            Err(i) => {
                // Room for exactly one at first: most users never have a second client. Past
                // it the vector grows as vectors do, so many records cost amortised O(1) each.
                if self.records.capacity() == 0 {
                    self.records.reserve_exact(1);
                }
                self.records.insert(i, (client.clone(), make()));
                i
            }
        };
        &mut self.records[i].1
    }

    /// Puts `record` in place of the client's, if any (restoring a durable storage's file).
    #[cfg(any(feature = "durable", test))]
    pub(super) fn insert(&mut self, client: ClientId, record: ClientRecord) {
        match self.find(&client) {
            Ok(i) => self.records[i].1 = record,
            Err(i) => {
                if self.records.capacity() == 0 {
                    self.records.reserve_exact(1);
                }
                self.records.insert(i, (client, record));
            }
        }
    }

    pub(super) fn remove(&mut self, client: &ClientId) -> Option<ClientRecord> {
        let i = self.find(client).ok()?;
        let (_, record) = self.records.remove(i);
        if self.records.is_empty() {
            self.records = Vec::new();
        }
        Some(record)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &ClientRecord> {
        self.records.iter().map(|(_, r)| r)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&ClientId, &ClientRecord)> {
        self.records.iter().map(|(c, r)| (c, r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ClientId {
        ClientId::new(s).expect("id")
    }

    #[test]
    fn records_are_found_by_id_whatever_the_order_they_came_in() {
        let mut clients = Clients::default();
        for (i, c) in ["tab3", "tab1", "tab2"].into_iter().enumerate() {
            clients
                .get_or_insert_with(&id(c), ClientRecord::default)
                .cursor = i as u64 + 10;
        }
        clients
            .get_or_insert_with(&id("tab1"), || unreachable!("known"))
            .cursor += 1;
        assert_eq!(clients.len(), 3);
        assert_eq!(clients.get(&id("tab1")).map(|r| r.cursor), Some(12));
        assert_eq!(clients.get(&id("tab3")).map(|r| r.cursor), Some(10));
        assert!(!clients.contains_key(&id("tab4")));
        let ids: Vec<&str> = clients.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(ids, ["tab1", "tab2", "tab3"]);
        assert_eq!(clients.remove(&id("tab2")).map(|r| r.cursor), Some(12));
        assert!(clients.remove(&id("tab2")).is_none());
        clients.insert(id("tab2"), ClientRecord::default());
        assert_eq!(clients.get(&id("tab2")).map(|r| r.cursor), Some(0));
        for c in ["tab1", "tab2", "tab3"] {
            clients.remove(&id(c));
        }
        assert!(clients.is_empty());
    }
}
