//! Items grouped by the shard they belong to, in one allocation: each shard's lock is then
//! taken once for all of its items. A fan-out groups every chunk of recipients several times
//! (the hub's expectation and tracking, the storage's append), so a vector per shard — 32
//! small allocations per chunk, each grown as it fills — was a good part of its cost.

/// `items` ordered by shard (a counting sort: two passes, no comparison), with where each
/// shard's run ends.
#[derive(Debug)]
pub(crate) struct ByShard<T, const N: usize> {
    items: Vec<T>,
    ends: [usize; N],
}

impl<T: Copy, const N: usize> ByShard<T, N> {
    /// Groups `items` by `shard_of` (which must be below `N`); within a shard they keep their
    /// order.
    pub(crate) fn new(items: impl IntoIterator<Item = T>, shard_of: impl Fn(&T) -> usize) -> Self {
        let tagged: Vec<(usize, T)> = items.into_iter().map(|t| (shard_of(&t), t)).collect();
        let mut ends = [0usize; N];
        for (shard, _) in &tagged {
            ends[*shard] += 1;
        }
        // Starts, then (as items are placed) ends.
        let mut next = [0usize; N];
        let mut total = 0;
        for shard in 0..N {
            next[shard] = total;
            total += ends[shard];
        }
        let Some(&(_, first)) = tagged.first() else {
            return ByShard {
                items: Vec::new(),
                ends,
            };
        };
        let mut items = vec![first; tagged.len()];
        for (shard, item) in tagged {
            items[next[shard]] = item;
            next[shard] += 1;
        }
        ByShard { items, ends: next }
    }

    /// Each shard that has items, in shard order, with its items.
    pub(crate) fn groups(&self) -> impl Iterator<Item = (usize, &[T])> {
        (0..N).filter_map(move |shard| {
            let start = if shard == 0 { 0 } else { self.ends[shard - 1] };
            let group = &self.items[start..self.ends[shard]];
            (!group.is_empty()).then_some((shard, group))
        })
    }

    /// The items of `shard`.
    pub(crate) fn group(&self, shard: usize) -> &[T] {
        let start = if shard == 0 { 0 } else { self.ends[shard - 1] };
        &self.items[start..self.ends[shard]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_lands_in_its_shard_once_in_order() {
        let items: Vec<usize> = (0..100).collect();
        let grouped = ByShard::<usize, 4>::new(items.iter().copied(), |i| i % 4);
        let mut seen = 0;
        for (shard, group) in grouped.groups() {
            assert!(group.iter().all(|i| i % 4 == shard));
            assert!(group.windows(2).all(|w| w[0] < w[1]), "kept in order");
            assert_eq!(grouped.group(shard), group);
            seen += group.len();
        }
        assert_eq!(seen, 100);
        let sparse = ByShard::<usize, 4>::new([2usize, 6], |i| i % 4);
        assert_eq!(sparse.groups().map(|(s, _)| s).collect::<Vec<_>>(), [2]);
        assert!(sparse.group(0).is_empty());
        let none = ByShard::<usize, 4>::new([], |i| i % 4);
        assert_eq!(none.groups().count(), 0);
    }
}
