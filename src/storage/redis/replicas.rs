//! Replica acknowledgement: an operation that others act on (a stored message, a handled
//! message's dedup record, a reply, a room or data write) returns only once enough replicas of
//! the master that wrote it hold what it wrote.
//!
//! Redis replicates asynchronously: a master answers a write before any replica has it, and
//! a master lost just then is replaced by a replica without the write, under the same epoch:
//! the message a sender was told is stored is gone, and nothing says so. `WAIT n t` closes
//! that gap: sent on the connection that wrote, it answers once `n` replicas hold every write
//! the connection made (or `t` passed, with how many do). So a write and its `WAIT` go as
//! **one pipeline on one connection** to the master that runs the write.
//!
//! A client blocked in `WAIT` is not read by Redis until it is answered: every command behind it
//! on its connection waits too. So acknowledged writes have **connections of their own**
//! ([`Acknowledging`], a few, taken in turn): reads, polls, signals and unacknowledged writes
//! never queue behind a `WAIT`, and a few acknowledged writes wait at once.
//!
//! A `WAIT` answered by fewer replicas fails the operation with
//! [`StorageError::Unavailable`](crate::storage::StorageError::Unavailable): the write is on
//! the master and may survive (the retry is idempotent where it matters: a send with an origin,
//! a claim, a completion), but no one is told it is safe. The same holds when the master has
//! fewer replicas than asked (one was lost, or a failover promoted the only one): each
//! acknowledged write then waits out the timeout and fails, until a replica is back (Redis's
//! own `min-replicas-to-write` refuses them at once instead, with `NOREPLICAS`).
//!
//! Other nodes may act on a write while its `WAIT` is out (a signal, a poll reading the log):
//! the wait makes what the *writer* reports safe, not what others see meanwhile.
//!
//! A script that finds its work done and writes nothing (an append of a send its origin shows
//! stored, a claim of a message already handled) is acknowledged too: on Redis 7.0, any command
//! moves the connection's replication offset to the master's, so its `WAIT` covers the earlier
//! write it found; Redis 7.2 moves it only after a write, so there such a `WAIT` may answer
//! before the earlier write is on a replica (the write the first attempt made, if that
//! attempt's own `WAIT` failed).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::{Cmd, RedisError, ScriptInvocation, Value};

/// How many connections acknowledged writes share (per server, or per cluster client): each
/// holds one `WAIT` at a time, so this many writes wait for their replicas at once, and a
/// missing replica holds up this many writes per timeout, never the reads.
pub(super) const ACKNOWLEDGING_CONNECTIONS: usize = 4;

/// The setting, and the connections acknowledged writes go over (see the
/// [module documentation](self)).
pub(super) struct Acknowledging<C> {
    pub(super) acks: ReplicaAcks,
    conns: Vec<C>,
    next: AtomicUsize,
}

impl<C: Clone> Acknowledging<C> {
    /// `conns` is never empty: the builders make [`ACKNOWLEDGING_CONNECTIONS`].
    pub(super) fn new(acks: ReplicaAcks, conns: Vec<C>) -> Self {
        assert!(!conns.is_empty(), "acknowledged writes need a connection");
        Self {
            acks,
            conns,
            next: AtomicUsize::new(0),
        }
    }

    /// The next connection, in turn.
    pub(super) fn connection(&self) -> C {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone()
    }
}

/// Whether an operation's writes wait for replicas, when the storage was told to
/// (`replica_acks` on either builder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replication {
    /// Others act on the write once the operation returns (a message stored, a handled
    /// message's record, a reply, a room or data write): it waits.
    Acknowledged,
    /// Losing the write costs at most a repeat that the protocol absorbs: a read's cursor (its
    /// messages count as unconfirmed again, and are confirmed again) and presence, a lease
    /// renewal, a reap (a departure reported twice). It does not wait.
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
    /// The setting of `replica_acks(replicas, timeout)`: none for 0 replicas.
    pub(super) fn new(replicas: u32, timeout: Duration) -> Option<Self> {
        (replicas > 0).then_some(Self { replicas, timeout })
    }

    /// A pipeline of `write`, then `WAIT` for these replicas.
    fn pipeline(self, write: Cmd) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.add_command(write)
            .cmd("WAIT")
            .arg(self.replicas)
            .arg(self.timeout_ms());
        pipe
    }

    /// `WAIT`'s timeout, in whole milliseconds: at least 1, as 0 would wait forever.
    fn timeout_ms(self) -> u64 {
        u64::try_from(self.timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Checks `WAIT`'s answer: how many replicas acknowledged. Too few is an I/O error, which
    /// [`storage_error`](super::error::storage_error) makes `StorageError::Unavailable`.
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

/// The `EVALSHA` command of a script invocation.
fn eval_command(invocation: &ScriptInvocation<'_>) -> redis::RedisResult<Cmd> {
    let mut eval = redis::pipe();
    eval.invoke_script(invocation);
    eval.cmd_iter().next().cloned().ok_or_else(|| {
        RedisError::from((
            redis::ErrorKind::Client,
            "a script invocation made no command",
        ))
    })
}

/// The two answers of a write and its `WAIT`.
fn two(answers: Vec<Value>) -> redis::RedisResult<(Value, Value)> {
    let mut answers = answers.into_iter();
    match (answers.next(), answers.next()) {
        (Some(written), Some(waited)) => Ok((written, waited)),
        _ => Err(RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "a write and its WAIT answered with fewer than two replies",
        ))),
    }
}

/// Where a write and its `WAIT` go together: one server's connection, or a cluster's master
/// of one slot.
pub(super) trait WriteTarget: Send {
    /// Sends `pipe` (a write and its `WAIT`) in one go; the answers, server errors among them.
    fn send(
        &mut self,
        pipe: redis::Pipeline,
    ) -> impl Future<Output = redis::RedisResult<Vec<Value>>> + Send;

    /// Loads a script where [`send`](Self::send) runs it.
    fn load(
        &mut self,
        invocation: &ScriptInvocation<'_>,
    ) -> impl Future<Output = redis::RedisResult<String>> + Send;
}

impl WriteTarget for redis::aio::ConnectionManager {
    async fn send(&mut self, pipe: redis::Pipeline) -> redis::RedisResult<Vec<Value>> {
        redis::aio::ConnectionLike::req_packed_commands(self, &pipe, 0, 2).await
    }

    async fn load(&mut self, invocation: &ScriptInvocation<'_>) -> redis::RedisResult<String> {
        invocation.load_async(self).await
    }
}

/// A script run on `target` and acknowledged by `acks` replicas; a script the server does not
/// know yet (`NOSCRIPT`: it did not run) is loaded and run again. Returns the script's answer,
/// which may be a server error (as [`Value::ServerError`]) for the caller to read.
pub(super) async fn invoke_acked(
    target: &mut impl WriteTarget,
    invocation: &ScriptInvocation<'_>,
    acks: ReplicaAcks,
) -> redis::RedisResult<Value> {
    let mut loaded = false;
    loop {
        let pipe = acks.pipeline(eval_command(invocation)?);
        let (written, waited) = two(target.send(pipe).await?)?;
        if let Value::ServerError(err) = &written {
            let err = RedisError::from(err.clone());
            if err.code() == Some("NOSCRIPT") && !loaded {
                loaded = true;
                target.load(invocation).await?;
                continue;
            }
            return Err(err);
        }
        acks.check(waited)?;
        return Ok(written);
    }
}

/// A plain write acknowledged by `acks` replicas (the cluster's deferred room writes).
#[cfg(feature = "redis-cluster")]
pub(super) async fn write_acked(
    target: &mut impl WriteTarget,
    write: Cmd,
    acks: ReplicaAcks,
) -> redis::RedisResult<()> {
    let (written, waited) = two(target.send(acks.pipeline(write)).await?)?;
    if let Value::ServerError(err) = written {
        return Err(RedisError::from(err));
    }
    acks.check(waited)
}

#[cfg(test)]
mod tests {
    use super::super::error::storage_error;
    use super::*;
    use crate::storage::StorageError;

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
    fn no_replicas_is_no_acknowledgement_and_a_zero_timeout_is_not_forever() {
        assert_eq!(ReplicaAcks::new(0, Duration::from_secs(1)), None);
        let acks = ReplicaAcks::new(1, Duration::ZERO).expect("one replica");
        assert_eq!(acks.timeout_ms(), 1);
    }

    #[test]
    fn a_write_and_its_wait_are_one_pipeline() {
        let script = redis::Script::new("return 1");
        let mut invocation = script.key("k");
        invocation.arg("a");
        let pipe = ONE.pipeline(eval_command(&invocation).expect("a command"));
        let packed = String::from_utf8(pipe.get_packed_pipeline()).expect("text");
        assert!(packed.contains("EVALSHA"), "{packed}");
        assert!(
            packed.ends_with("$4\r\nWAIT\r\n$1\r\n1\r\n$3\r\n100\r\n"),
            "{packed}"
        );
    }
}
