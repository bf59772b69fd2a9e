//! Buckets: which hash slot a user's keys, and a room's set, live in.
//!
//! A user is in bucket `crc16(user) mod BUCKETS` (the CRC16 Redis Cluster hashes keys with), and every
//! key of a bucket starts with `{P}{N}`, N the bucket's number in decimal: the hash tag puts
//! all of them in one slot, so a script touches one slot whatever users of the bucket it reads
//! and writes. The bucket also holds what was global on one server — its copy of the epoch,
//! its `presence` and `live` sets, the payloads its entries share — so that a fetch, a reap or
//! an append never needs another slot.

/// How many buckets the users (and rooms) are spread over; every node sharing a key prefix must
/// agree on it, as it decides where keys are. A bucket is the smallest part of the data a
/// master can hold, so many buckets balance many masters (1,024 over 30 masters: 34 each, give
/// or take 6); each costs a script per [`reap`](crate::Storage::reap) and per
/// [`live_users`](crate::Storage::live_users) page walk, and a fan-out stores its payload once
/// per bucket it reaches, not once.
pub(crate) const BUCKETS: usize = 1_024;

/// The bucket of a user id, or of a room name.
pub(super) fn bucket_of(id: &str) -> usize {
    usize::from(crc16(id.as_bytes())) % BUCKETS
}

/// CRC16-XMODEM, Redis Cluster's key hash (the slot of a key is this of its tag, mod 16384).
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
/// The hash slot of a key, as Redis Cluster computes it (its first non-empty `{tag}`, if any).
pub(super) fn slot_of(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let close = bytes[open + 1..].iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &bytes[open + 1..open + 1 + close])
    });
    crc16(tagged.unwrap_or(bytes)) % 16_384
}

/// The prefix of every key of bucket `n`: the storage's prefix and the bucket's hash tag.
pub(super) fn bucket_prefix(prefix: &str, n: usize) -> String {
    format!("{prefix}{{{n}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buckets_keys_share_one_slot_and_buckets_spread() {
        let p = bucket_prefix("app:", 7);
        assert_eq!(p, "app:{7}");
        // Redis's own figures: the CRC16 of its specification, `CLUSTER KEYSLOT k{a}`.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot_of("k{a}"), 15_495);
        let slot = |k: String| slot_of(&k);
        // Whatever follows the tag, a user id with braces included.
        assert_eq!(slot(format!("{p}u:ann:log")), slot(format!("{p}epoch")));
        assert_eq!(
            slot(format!("{p}u:{{x}}:log")),
            slot(format!("{p}presence"))
        );
        let mut seen = vec![0usize; BUCKETS];
        for i in 0..BUCKETS * 64 {
            seen[bucket_of(&format!("user{i}"))] += 1;
        }
        assert!(
            seen.iter().all(|&n| n > 16),
            "some bucket gets almost no user"
        );
        let slots: std::collections::HashSet<u16> = (0..BUCKETS)
            .map(|n| slot(bucket_prefix("app:", n)))
            .collect();
        assert!(
            slots.len() > BUCKETS * 9 / 10,
            "buckets share slots: {}",
            slots.len()
        );
    }
}
