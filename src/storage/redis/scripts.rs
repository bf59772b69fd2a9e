//! The Lua scripts, one file each in `scripts/`, and the constants substituted into them.
//!
//! Every script is the prelude (`scripts/prelude.lua`) followed by its own file, with the
//! bounds below written in as numbers; the dedup scripts have `scripts/dedup.lua` before
//! their own.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

/// How long a user's keys outlive the last thing that needed them (a message's expiry, a
/// client record's expiry). Keeping the last position a little longer costs little.
const IDLE_GRACE: Duration = Duration::from_secs(60);

/// The most room memberships one reap script removes, over all its clients: a client may be in
/// thousands of rooms, so the clients alone do not bound a script's work.
const REAP_ROOMS: usize = 4_096;

/// The most undelivered log entries one append call looks at, per user, for a delivered one
/// to evict from a full log (from the oldest on), and per user and sender, for one of the
/// sender's own to evict when they hold their share. A log whose delivered entries all lie
/// behind more undelivered ones than this refuses new messages
/// ([`AppendOutcome::QueueFull`](crate::storage::AppendOutcome::QueueFull)) until those
/// expire, rather than search the whole log.
const EVICT_SCAN: usize = 64;

/// How many expired entries an append removes per user beyond one per message it appends, and
/// then as many again, one at a time, while a message still needs room (one over a byte limit
/// may need several): the work is bounded by the call's size, and a mass expiry is cleared over
/// several calls (fetches clear their own user's, all of them, before reading).
const EXPIRE_SLACK: usize = 64;

/// The most dedup records one claim looks at to make room for a new one (see [`CLAIM`]): one
/// per limit when the limits hold, more only after they were lowered.
const CLAIM_EVICT: usize = 64;

/// An append moves its users' key expiries in steps this long (later, never earlier, than
/// needed), so that a busy user's keys get new expiries once a step rather than per message.
const EXPIRY_STEP: Duration = Duration::from_secs(10);

/// How long a node's interest in a user's confirmations, replies and completions lasts once
/// noted: by an append (its senders wait for them), a claim that found a message in progress,
/// and each recheck of a delivery still pending (every `recheck_interval`, 10 s by default).
const INTEREST_WAIT: Duration = Duration::from_secs(60);

/// Shared by every script. `ARGV[1]` is the key prefix, `ARGV[2]` a fresh random epoch to take
/// if none is stored, `ARGV[3]` the `Resync` signal to publish then; the last argument, after the
/// script's own, is the node running it (see `signal_user` in the prelude). Lua numbers are doubles:
/// `str` prints them exactly (tostring would switch to exponent notation past 14 digits).
pub(super) const PRELUDE: &str = include_str!("scripts/prelude.lua");

/// Shared by the dedup scripts: `ARGV[4]` user, `[5]` client, `[6]` message id. A user's
/// records are ordered by claim in `{P}du:USER` (`CLIENT:ID` → claim number) and a client's in
/// `{P}dc:CLIENT:USER` (`ID` → the same number); each expires once the last record it orders
/// could have: its expiry moves, in steps, to the latest record expiry set.
pub(super) const DEDUP: &str = include_str!("scripts/dedup.lua");

fn script(body: &str) -> Script {
    Script::new(&source(body))
}

/// A dedup script: [`DEDUP`], then its own `body`.
fn dedup_script(body: &str) -> Script {
    script(&format!("{DEDUP}{body}"))
}

/// A script's whole text: the prelude, `body`, and the bounds in place of their names.
pub(super) fn source(body: &str) -> String {
    format!("{PRELUDE}{body}")
        .replace("GRACE_MS", &IDLE_GRACE.as_millis().to_string())
        .replace("EVICT_SCAN", &EVICT_SCAN.to_string())
        .replace("EXPIRE_SLACK", &EXPIRE_SLACK.to_string())
        .replace("CLAIM_EVICT", &CLAIM_EVICT.to_string())
        .replace("REAP_ROOMS", &REAP_ROOMS.to_string())
        .replace("EXPIRY_STEP_MS", &EXPIRY_STEP.as_millis().to_string())
        .replace("INTEREST_WAIT_MS", &INTEREST_WAIT.as_millis().to_string())
}

/// `ARGV[4]`: nothing. Returns the epoch.
pub(super) static EPOCH: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("scripts/epoch.lua")));

/// `ARGV[4]` the most messages per user, `[5]` per sender, `[6]` the most bytes of data per
/// user, `[7]` per sender, `[8]` nu, `[9]` np, `[10]` n, then two per user: its id and its id as
/// JSON text; three per shared payload: its id, the latest expiry its key covers if an earlier
/// call stored it (else 0), and its value (empty if stored earlier; see
/// [`share_payloads`](super::payloads::share_payloads)); eight per message: the index of its
/// user (from 1), client (or ''), expires_at, the index of its shared payload (from 1, or 0),
/// body, its sender in hex (see [`sender_arg`](super::args::sender_arg)) or '-', the size of its
/// data (what it counts for in the byte limits), and its origin (`NewMessage::origin`, or '').
/// Publishes one `Appended` naming each user that stored a message. Returns the epoch, then per
/// message its position or 'full'; or nothing, having written nothing, if a payload stored
/// earlier is gone (send its value then).
pub(super) static APPEND: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("scripts/append.lua")));

/// `ARGV[4]` user, `[5]` client, `[6]` '1' if a cursor was sent, `[7]` its epoch, `[8]` its
/// position, `[9]` limit, `[10]` presence ttl (ms), `[11]` reap grace (ms), `[12]` the
/// `Confirmed` signal, `[13]` the `PollStarted` signal to publish or '', `[14]` the namespaces
/// as a JSON array, `[15]` the most clients of the user, `[16]` n, then the n namespaces read.
/// Returns the epoch, the new cursor, the arrival ('online', 'arrived' or ''), the number of
/// shared payloads, then two per payload (its id and value), each once, then the entries read;
/// or {'limit'}, having changed nothing, for a new client of a user with the most clients.
///
/// A poll that finds nothing and the one that reads the next message are a few commands each:
/// what did not change is not written again (the client's cursor and namespaces, watermarks
/// already past the cursor), and key expiries move once per EXPIRY_STEP.
pub(super) static FETCH: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("scripts/fetch.lua")));

/// `ARGV[4]` the epoch asked about, `[5]` n, then four per target: user, client (or ''),
/// namespace, position. Returns {'lost'} or one of 'd', 'p', 'e' per target.
pub(super) static DELIVERY: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("scripts/delivery.lua")));

/// `ARGV[4..6]` (see [`DEDUP`]), `[7]` lease (ms), `[8]` the most records per client, `[9]`
/// per user, `[10]` the owner. Returns {'acquired'}, {'progress', ms left on the lease},
/// {'done', outcome} or {'limit', the limit}.
///
/// A record in progress holds `p` and its owner's number: the same owner claiming again (its
/// first answer was lost) gets it back, with its lease restarted.
///
/// A new record needs room under both limits: the client's oldest records go first while the
/// client is at its limit, then the user's oldest while the user is at theirs. One still in
/// progress refuses the claim; one completed, or gone (its key expired), is forgotten. What to
/// forget is decided before anything is written, so a refused claim changes nothing. At most
/// CLAIM_EVICT records are looked at; a user far above a limit (it was lowered) gets the new
/// record anyway and comes down by that many per claim.
pub(super) static CLAIM: LazyLock<Script> =
    LazyLock::new(|| dedup_script(include_str!("scripts/claim.lua")));

/// `ARGV[4..6]` (see [`DEDUP`]), `[7]` lease (ms), `[8]` the owner. Restarts the lease of a
/// record in progress for that owner; returns 1 if it was, else 0.
pub(super) static RENEW: LazyLock<Script> =
    LazyLock::new(|| dedup_script(include_str!("scripts/renew.lua")));

/// `ARGV[4..6]` (see [`DEDUP`]), `[7]` the outcome, `[8]` ttl (ms), `[9]` the `Completed`
/// signal. A ttl of 0 forgets the record instead.
pub(super) static COMPLETE: LazyLock<Script> =
    LazyLock::new(|| dedup_script(include_str!("scripts/complete.lua")));

/// `ARGV[4]` user, `[5]` client, `[6]` position, `[7]` the reply (JSON), `[8]` the most
/// replies per message, `[9]` the most bytes of replies per user, `[10]` the `Replied` signal
/// after its epoch (`"user":…}}`), which the script completes with the current epoch. Returns
/// 'recorded', 'duplicate', 'unknown' or 'full' (see
/// [`ReplyOutcome`](crate::storage::ReplyOutcome)). The append script makes the ack records.
pub(super) static REPLY: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("scripts/reply.lua")));

/// `ARGV[4]` the epoch asked about, `[5]` n, then two per target: user, position. Returns
/// {'lost'}, or per target the number of replies k, then k pairs of client and reply.
pub(super) static REPLIES: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("scripts/replies.lua")));

/// `ARGV[4]` the `ZSCAN` cursor ('0' to start), `[5]` the page size. Returns the next cursor
/// ('0' once done), then this page's users with a polled client within its presence ttl.
pub(super) static LIVE_USERS: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("scripts/live_users.lua")));

/// `ARGV[4]` user. Returns their polled clients within their presence ttl.
pub(super) static LIVE_CLIENTS: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("scripts/live_clients.lua")));

/// `ARGV[4]` the most clients to remove. Returns '1' if there may be more to reap (else '0'),
/// then three per departure: user, client, '1' if the user went offline (else '0').
///
/// `ZRANGEBYSCORE` and `ZREM` of `{P}presence` in one script: of several nodes reaping at once,
/// the first takes every lapsed client, the others find none.
pub(super) static REAP: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("scripts/reap.lua")));

/// `ARGV[4]` room, `[5]` user, `[6]` client (or ''), `[7]` presence ttl (ms), `[8]` reap grace
/// (ms).
pub(super) static JOIN: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("scripts/join.lua")));

/// `ARGV[4]` room, `[5]` user, `[6]` client (or '').
pub(super) static LEAVE: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("scripts/leave.lua")));

/// `ARGV[4]` room, `[5]` the `SSCAN` cursor ('0' to start), `[6]` the page size. Returns the
/// next cursor ('0' once done), then this page's members as written in the room (`u:USER`,
/// `c:CLIENT:USER`).
pub(super) static MEMBERS: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("scripts/members.lua")));

/// `ARGV[4]` user, `[5]` client (or ''). Returns the rooms of that member.
pub(super) static ROOMS: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("scripts/rooms.lua")));

/// `ARGV[4]` user, `[5]` client (or ''), `[6]` key, `[7]` '1' to set (else remove), `[8]` the
/// value, `[9]` presence ttl (ms), `[10]` reap grace (ms).
pub(super) static SET_DATA: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("scripts/set_data.lua")));

/// `ARGV[4]` user, `[5]` client (or ''), `[6]` key. Returns the value, or nil.
pub(super) static GET_DATA: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("scripts/get_data.lua")));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_print_large_numbers_exactly() {
        // The prelude's `str` must not be `tostring`, which prints 1.7e+15.
        assert!(PRELUDE.contains("string.format('%.0f', n)"));
        let full = source("return GRACE_MS");
        assert!(
            !full.contains("GRACE_MS"),
            "a placeholder was left in a script"
        );
        assert!(full.ends_with("return 60000"));
    }

    #[test]
    fn every_script_has_its_bounds_written_in() {
        let scripts: [(&Script, &str, String); 18] = [
            (&*REPLY, "reply", source(include_str!("scripts/reply.lua"))),
            (
                &*REPLIES,
                "replies",
                source(include_str!("scripts/replies.lua")),
            ),
            (&*EPOCH, "epoch", source(include_str!("scripts/epoch.lua"))),
            (
                &*APPEND,
                "append",
                source(include_str!("scripts/append.lua")),
            ),
            (&*FETCH, "fetch", source(include_str!("scripts/fetch.lua"))),
            (
                &*DELIVERY,
                "delivery",
                source(include_str!("scripts/delivery.lua")),
            ),
            (
                &*CLAIM,
                "claim",
                source(&format!("{DEDUP}{}", include_str!("scripts/claim.lua"))),
            ),
            (
                &*RENEW,
                "renew",
                source(&format!("{DEDUP}{}", include_str!("scripts/renew.lua"))),
            ),
            (
                &*COMPLETE,
                "complete",
                source(&format!("{DEDUP}{}", include_str!("scripts/complete.lua"))),
            ),
            (
                &*LIVE_USERS,
                "live_users",
                source(include_str!("scripts/live_users.lua")),
            ),
            (
                &*LIVE_CLIENTS,
                "live_clients",
                source(include_str!("scripts/live_clients.lua")),
            ),
            (&*REAP, "reap", source(include_str!("scripts/reap.lua"))),
            (&*JOIN, "join", source(include_str!("scripts/join.lua"))),
            (&*LEAVE, "leave", source(include_str!("scripts/leave.lua"))),
            (
                &*MEMBERS,
                "members",
                source(include_str!("scripts/members.lua")),
            ),
            (&*ROOMS, "rooms", source(include_str!("scripts/rooms.lua"))),
            (
                &*SET_DATA,
                "set_data",
                source(include_str!("scripts/set_data.lua")),
            ),
            (
                &*GET_DATA,
                "get_data",
                source(include_str!("scripts/get_data.lua")),
            ),
        ];
        let prelude = source("");
        for (script, name, text) in &scripts {
            // The same text as the static's: a script is known by the hash of its text.
            assert_eq!(script.get_hash(), Script::new(text).get_hash(), "{name}");
            assert!(
                text.starts_with(&prelude) && text.len() > prelude.len(),
                "{name} is empty"
            );
            for placeholder in [
                "GRACE_MS",
                "EVICT_SCAN",
                "EXPIRE_SLACK",
                "CLAIM_EVICT",
                "REAP_ROOMS",
                "EXPIRY_STEP_MS",
            ] {
                assert!(
                    !text.contains(placeholder),
                    "{placeholder} is left in {name}"
                );
            }
        }
        // Every file in `scripts/` is a script above, the prelude or the dedup part.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/storage/redis/scripts");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("the scripts folder")
            .map(|f| {
                f.expect("a script file")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        files.sort();
        let mut expected: Vec<String> = scripts
            .iter()
            .map(|(_, name, _)| format!("{name}.lua"))
            .chain(["dedup.lua".to_owned(), "prelude.lua".to_owned()])
            .collect();
        expected.sort();
        assert_eq!(files, expected);
    }
}
