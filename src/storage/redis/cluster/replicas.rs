//! Replica acknowledgement: an operation that others rely on (a stored message, a handled
//! message's dedup record, a reply, a room or data write) returns only once enough of its
//! master's replicas hold what it wrote.
//!
//! Redis replicates asynchronously: a master answers a write before any replica has it, and
//! a master killed just then is replaced by a replica without the write, under the same
//! epoch: the message a sender was told is stored is gone, and nothing says so. `WAIT n t`
//! closes that gap: sent on the connection that wrote, it answers once `n` replicas hold
//! every write the connection made (or `t` passed, with how many do). So the write and its
//! `WAIT` go to the slot's master as **one pipeline on one connection**: a `WAIT` sent apart
//! could reach another node (the slot moved in between) and count replicas of nothing.
//!
//! A `WAIT` answered by fewer replicas fails the operation with
//! [`StorageError::Unavailable`]: the write is on the master and may survive (the operation's
//! retry is idempotent where it matters: a send with an origin, a claim, a completion), but no
//! one is told it is safe. The same holds when the master has fewer replicas than asked (one
//! was lost, or a failover promoted the only one): writes to that master fail until a replica
//! is back, as Redis's own `min-replicas-to-write` would refuse them.

use std::time::Duration;

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, RedisError, ScriptInvocation, Value};

use super::super::error::storage_error;
use crate::storage::StorageError;

/// Whether an operation's writes wait for replicas, when the storage was told to
/// ([`RedisClusterStorageBuilder::replica_acks`](super::RedisClusterStorageBuilder::replica_acks)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replication {
    /// Others act on the write once the operation returns (a message stored, a handled
    /// message's record, a reply, a room or data write): it waits.
    Acknowledged,
    /// Losing the write costs at most a repeat that the protocol absorbs (a read's cursor and
    /// presence, a lease renewal, a reap): it does not wait.
    Asynchronous,
}

/// How many replicas must hold a write before the operation that made it returns, and how
/// long to wait for them (see the [module documentation](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReplicaAcks {
    pub(super) replicas: u32,
    pub(super) timeout: Duration,
}

impl ReplicaAcks {
    /// `WAIT`'s timeout, in whole milliseconds: at least 1, as 0 would wait forever.
    fn timeout_ms(self) -> u64 {
        u64::try_from(self.timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Checks `WAIT`'s answer: how many replicas acknowledged. Too few is an I/O error, which
    /// [`storage_error`] makes [`StorageError::Unavailable`].
    fn check(self, answer: Value) -> redis::RedisResult<()> {
        let acked = match answer {
            Value::Int(n) => n,
            Value::ServerError(err) => return Err(RedisError::from(err)),
            _ => {
                return Err(RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "WAIT answered with something else than a number",
                )));
            }
        };
        if acked >= i64::from(self.replicas) {
            return Ok(());
        }
        Err(RedisError::from(std::io::Error::other(format!(
            "a write was acknowledged by {acked} of the {} replicas asked for within {:?}; it \
             is on the master and may be lost in a failover",
            self.replicas, self.timeout
        ))))
    }
}

/// Runs `write` (one command, or a script's `EVALSHA`) on the master of `key`'s slot, then
/// `WAIT`s for `acks` on the same connection. Returns the write's own answer, which may be a
/// server error (as [`Value::ServerError`]) for the caller to read: `NOSCRIPT`, `NOEPOCH`.
async fn write_then_wait(
    conn: &mut ClusterConnection,
    key: &str,
    write: Cmd,
    acks: ReplicaAcks,
) -> redis::RedisResult<(Value, Value)> {
    let mut pipe = redis::pipe();
    pipe.add_command(write)
        .cmd("WAIT")
        .arg(acks.replicas)
        .arg(acks.timeout_ms());
    let route = SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master));
    let mut answers = conn.route_pipeline(pipe, 0, 2, route).await?.into_iter();
    match (answers.next(), answers.next()) {
        (Some(written), Some(waited)) => Ok((written, waited)),
        _ => Err(RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "a write and its WAIT answered with fewer than two replies",
        ))),
    }
}

/// A script run in `key`'s slot and acknowledged by `acks` replicas; a script the master does
/// not know yet (`NOSCRIPT`: it did not run) is loaded and run again.
pub(super) async fn invoke_acked(
    conn: &mut ClusterConnection,
    key: &str,
    invocation: &ScriptInvocation<'_>,
    acks: ReplicaAcks,
) -> redis::RedisResult<Value> {
    let mut loaded = false;
    loop {
        let mut eval = redis::pipe();
        eval.invoke_script(invocation);
        let Some(command) = eval.cmd_iter().next().cloned() else {
            return Err(RedisError::from((
                redis::ErrorKind::Client,
                "a script invocation made no command",
            )));
        };
        let (written, waited) = write_then_wait(conn, key, command, acks).await?;
        if let Value::ServerError(err) = &written {
            let err = RedisError::from(err.clone());
            if err.code() == Some("NOSCRIPT") && !loaded {
                loaded = true;
                invocation.load_async(conn).await?;
                continue;
            }
            return Err(err);
        }
        acks.check(waited)?;
        return Ok(written);
    }
}

/// A plain write (a room's `SADD`/`SREM`) acknowledged by `acks` replicas.
pub(super) async fn write_acked(
    conn: &mut ClusterConnection,
    key: &str,
    write: Cmd,
    acks: ReplicaAcks,
) -> Result<(), StorageError> {
    let (written, waited) = write_then_wait(conn, key, write, acks)
        .await
        .map_err(storage_error)?;
    if let Value::ServerError(err) = written {
        return Err(storage_error(RedisError::from(err)));
    }
    acks.check(waited).map_err(storage_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: ReplicaAcks = ReplicaAcks {
        replicas: 1,
        timeout: Duration::from_millis(100),
    };

    #[test]
    fn enough_replicas_pass_and_too_few_say_what_happened() {
        assert!(ONE.check(Value::Int(1)).is_ok());
        assert!(ONE.check(Value::Int(2)).is_ok());
        let too_few = storage_error(ONE.check(Value::Int(0)).expect_err("no replica"));
        assert!(
            matches!(&too_few, StorageError::Unavailable(e) if e.contains("0 of the 1 replicas")),
            "{too_few}"
        );
        assert!(matches!(
            ONE.check(Value::Nil).map_err(storage_error),
            Err(StorageError::Corrupt(_))
        ));
    }

    #[test]
    fn a_zero_timeout_does_not_become_wait_forever() {
        let acks = ReplicaAcks {
            replicas: 1,
            timeout: Duration::ZERO,
        };
        assert_eq!(acks.timeout_ms(), 1);
    }
}
