//! Redis failures, and replies the scripts could not have sent, as [`StorageError`]s.

use std::time::Duration;

use tracing::debug;

use crate::storage::StorageError;

/// Runs `op` within `deadline`, turning every failure into a [`StorageError`].
pub(super) async fn within<T>(
    deadline: Duration,
    op: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, StorageError> {
    match tokio::time::timeout(deadline, op).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(storage_error(err)),
        Err(_) => Err(StorageError::Unavailable(format!(
            "Redis did not answer within {deadline:?}"
        ))),
    }
}

pub(super) fn storage_error(err: redis::RedisError) -> StorageError {
    debug!(cause = %err, "Redis operation failed");
    match err.kind() {
        redis::ErrorKind::UnexpectedReturnType | redis::ErrorKind::Parse => {
            StorageError::Corrupt(format!("Redis: {err}"))
        }
        _ => StorageError::Unavailable(format!("Redis: {err}")),
    }
}

pub(super) fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt(format!("unexpected reply from Redis: {what}"))
}
