//! The hasher of the in-memory maps: foldhash, seeded at random per map.
//!
//! Every request looks up its user, client and namespaces in several maps, so hashing was an
//! eighth of a delivered message's instructions with the standard library's SipHash. foldhash
//! (the default of `hashbrown`) is several times cheaper on short keys and still seeded at
//! random, so client-chosen ids cannot be aimed at one bucket.

pub(crate) use foldhash::fast::RandomState;

/// A `HashMap` with [`RandomState`].
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, RandomState>;

/// A `HashSet` with [`RandomState`].
pub(crate) type HashSet<T> = std::collections::HashSet<T, RandomState>;
