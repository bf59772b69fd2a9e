//! The single-server scripts, made to run in one bucket of a Redis Cluster.
//!
//! Each is the same text as [`RedisStorage`](super::super::RedisStorage)'s (the prelude and the
//! script's own file, with the same bounds), changed in three ways only:
//!
//! * `ARGV[1]`, the key prefix, is the bucket's: `{P}{N}` (see [`buckets`](super::buckets)), so
//!   every key a script builds is in the bucket's slot, the "global" ones (`epoch`,
//!   `presence`, `live`, shared payloads) included: they are the bucket's.
//! * What would reach outside the slot is **deferred**: `PUBLISH` to a node's channel, and the
//!   `SADD` and `SREM` of a room's set (a room lives in its own bucket), become entries of a
//!   list the script returns, which the storage carries out after it (see
//!   [`effects`](super::effects)).
//! * A bucket with no epoch is not given a new one by the script: it fails with `NOEPOCH`,
//!   before writing anything, and the storage decides (see [`epoch`](super::epoch)).
//!
//! The script's own reply is last in the list it returns: `{3k, k × (kind, target, value),
//! reply}`, the reply absent for a nil one.

use std::sync::LazyLock;

use redis::Script;

use super::super::scripts::{DEDUP, source};

/// Before the prelude: the deferred effects, and `defer`, which the prelude's and the scripts'
/// `PUBLISH`es and room writes call instead. Targets lose the bucket's prefix: the storage puts
/// the right one back (a node's channel, a room's bucket).
const HEAD: &str = r#"local DEFERRED = {}
local function defer(kind, target, value)
  DEFERRED[#DEFERRED + 1] = kind
  DEFERRED[#DEFERRED + 1] = string.sub(target, #ARGV[1] + 1)
  DEFERRED[#DEFERRED + 1] = value
end
"#;

/// After the prelude: a bucket's epoch is only read. A missing one means the bucket's data is
/// gone (or was never given an epoch): the storage gives the whole cluster a new epoch.
const EPOCH_CHECK: &str = r#"
local function current_epoch()
  local e = redis.call('GET', P .. 'epoch')
  if e then return e end
  return error({err = 'NOEPOCH this bucket has no epoch'})
end
local function main()
"#;

/// After the script's own text, which became `main`'s body.
const TAIL: &str = r#"
end
local reply = main()
local out = {#DEFERRED}
for i = 1, #DEFERRED do out[i + 1] = DEFERRED[i] end
out[#out + 1] = reply
return out
"#;

/// What is deferred, as the single-server text writes it, and what it becomes.
const DEFERRALS: [(&str, &str); 3] = [
    ("redis.call('PUBLISH', ", "defer('pub', "),
    (
        "redis.call('SADD', P .. 'room:' .. room, m)",
        "defer('sadd', P .. 'room:' .. room, m)",
    ),
    (
        "redis.call('SREM', P .. 'room:' .. room, m)",
        "defer('srem', P .. 'room:' .. room, m)",
    ),
];

/// A script's cluster text: see the module's documentation.
pub(super) fn cluster_source(body: &str) -> String {
    let mut text = format!("{HEAD}{}", source(&format!("{EPOCH_CHECK}{body}{TAIL}")));
    for (from, to) in DEFERRALS {
        text = text.replace(from, to);
    }
    text
}

fn script(body: &str) -> Script {
    Script::new(&cluster_source(body))
}

fn dedup_script(body: &str) -> Script {
    script(&format!("{DEDUP}{body}"))
}

macro_rules! cluster_scripts {
    ($($name:ident = $file:literal $(with $prefix:ident)?;)*) => {
        $(
            #[doc = concat!("`scripts/", $file, "` in one bucket (see the module's documentation).")]
            pub(super) static $name: LazyLock<Script> =
                LazyLock::new(|| cluster_scripts!(@make $file $(, $prefix)?));
        )*
        /// Every script's name and whole text, for the tests.
        #[cfg(test)]
        fn all() -> Vec<(&'static str, &'static Script, String)> {
            vec![$(($file, &*$name, cluster_scripts!(@text $file $(, $prefix)?))),*]
        }
    };
    (@make $file:literal) => { script(include_str!(concat!("../scripts/", $file))) };
    (@make $file:literal, dedup) => { dedup_script(include_str!(concat!("../scripts/", $file))) };
    (@text $file:literal) => { cluster_source(include_str!(concat!("../scripts/", $file))) };
    (@text $file:literal, dedup) => {
        cluster_source(&format!("{DEDUP}{}", include_str!(concat!("../scripts/", $file))))
    };
}

cluster_scripts! {
    APPEND = "append.lua";
    FETCH = "fetch.lua";
    DELIVERY = "delivery.lua";
    CLAIM = "claim.lua" with dedup;
    RENEW = "renew.lua" with dedup;
    COMPLETE = "complete.lua" with dedup;
    REPLY = "reply.lua";
    REPLIES = "replies.lua";
    LIVE_USERS = "live_users.lua";
    LIVE_CLIENTS = "live_clients.lua";
    REAP = "reap.lua";
    JOIN = "join.lua";
    LEAVE = "leave.lua";
    ROOMS = "rooms.lua";
    SET_DATA = "set_data.lua";
    GET_DATA = "get_data.lua";
}

/// `KEYS[1]` an epoch key (a bucket's, or the cluster's), `ARGV[1]` an epoch: sets the key to
/// the epoch unless it holds a later one (see [`later`](super::epoch::later)): so that epochs
/// written in any order end as the latest everywhere. Returns what the key holds then.
pub(super) static MERGE_EPOCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"local function gen(e) return tonumber(string.match(e, '^(%d+)%.')) or 0 end
-- Byte by byte: Lua's `<` on strings follows the server's locale.
local function before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local have, new = redis.call('GET', KEYS[1]), ARGV[1]
if have then
  local a, b = gen(have), gen(new)
  if a > b or (a == b and not before(have, new)) then return have end
end
redis.call('SET', KEYS[1], new)
return new"#,
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cluster_script_defers_what_leaves_its_slot() {
        let scripts = all();
        assert_eq!(scripts.len(), 16);
        for (name, script, text) in &scripts {
            assert_eq!(script.get_hash(), Script::new(text).get_hash(), "{name}");
            assert!(
                !text.contains("redis.call('PUBLISH'"),
                "{name} publishes from its slot"
            );
            assert!(
                !text.contains("'room:' .. room, m)") || text.contains("defer('s"),
                "{name} writes a room from its slot"
            );
            assert!(text.contains("local function main()"), "{name}");
            assert!(text.ends_with("return out\n"), "{name}");
        }
        // The replacements found what they replace: the prelude's signals, join's and
        // leave's room writes, reap's.
        let text = |n: &str| &scripts.iter().find(|s| s.0 == n).expect(n).2;
        assert!(text("join.lua").contains("defer('sadd', P .. 'room:' .. room, m)"));
        assert!(text("leave.lua").contains("defer('srem', P .. 'room:' .. room, m)"));
        assert!(text("reap.lua").contains("defer('srem', P .. 'room:' .. room, m)"));
        assert!(text("append.lua").contains("defer('pub', node_channel(NODE)"));
        assert!(text("fetch.lua").contains("NOEPOCH"));
        assert!(text("fetch.lua").contains("defer('pub', node_channel(NODE)"));
    }
}
