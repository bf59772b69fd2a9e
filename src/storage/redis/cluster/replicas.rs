//! Replica acknowledgement on a cluster (see the shared [`replicas`](super::super::replicas)
//! module for what and why): the write and its `WAIT` go as one pipeline to the master of the
//! write's slot. A `WAIT` sent apart could reach another node (the slot moved in between) and
//! count the replicas of nothing.

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, RedisError, ScriptInvocation, Value};

use super::super::error::storage_error;
use super::super::replicas::{ReplicaAcks, eval_command, two};
use crate::storage::StorageError;

/// Runs `write` on the master of `key`'s slot, then `WAIT`s for `acks` on the same
/// connection. Returns the write's own answer, which may be a server error (as
/// [`Value::ServerError`]) for the caller to read: `NOSCRIPT`, `NOEPOCH`.
async fn write_then_wait(
    conn: &mut ClusterConnection,
    key: &str,
    write: Cmd,
    acks: ReplicaAcks,
) -> redis::RedisResult<(Value, Value)> {
    let route = SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master));
    two(conn
        .route_pipeline(acks.pipeline(write), 0, 2, route)
        .await?)
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
        let (written, waited) = write_then_wait(conn, key, eval_command(invocation)?, acks).await?;
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
