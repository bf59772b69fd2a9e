//! PostgreSQL failures as [`StorageError`]s, and reading columns without panicking.

use std::time::Duration;

use tokio_postgres::Row;
use tokio_postgres::types::FromSql;
use tracing::debug;

use crate::storage::StorageError;

/// Runs `op` within `deadline`: a server that stopped answering is an outage, not a hang.
pub(super) async fn within<T>(
    deadline: Duration,
    op: impl Future<Output = Result<T, StorageError>>,
) -> Result<T, StorageError> {
    match tokio::time::timeout(deadline, op).await {
        Ok(result) => result,
        Err(_) => Err(StorageError::Unavailable(format!(
            "PostgreSQL did not answer within {deadline:?}"
        ))),
    }
}

/// Every failure of the driver or the pool means the database could not do the work now (it is
/// down, restarting, out of connections, or aborted the transaction): the request answers
/// `503` and may be retried. Nothing is half-done, since each operation is one transaction.
pub(super) trait OrUnavailable<T> {
    fn or_unavailable(self) -> Result<T, StorageError>;
}

impl<T> OrUnavailable<T> for Result<T, tokio_postgres::Error> {
    fn or_unavailable(self) -> Result<T, StorageError> {
        self.map_err(|err| {
            debug!(cause = %err, "PostgreSQL operation failed");
            StorageError::Unavailable(format!("PostgreSQL: {}", describe(&err)))
        })
    }
}

impl<T> OrUnavailable<T> for Result<T, deadpool_postgres::PoolError> {
    fn or_unavailable(self) -> Result<T, StorageError> {
        self.map_err(|err| {
            debug!(cause = %err, "no PostgreSQL connection");
            StorageError::Unavailable(format!("PostgreSQL: no connection: {err}"))
        })
    }
}

/// Whether `err` says that the tables are not there (`undefined_table`, `invalid_schema_name`):
/// the schema was dropped under a running node. Read from the message [`describe`] made,
/// which ends with the SQLSTATE.
pub(super) fn tables_missing(err: &StorageError) -> bool {
    matches!(err, StorageError::Unavailable(m) if m.ends_with("(42P01)") || m.ends_with("(3F000)"))
}

/// The server's own message when there is one: `db error` alone says nothing.
fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => err.to_string(),
    }
}

/// Column `index` of `row`, or [`StorageError::Corrupt`] if it is not of type `T`.
pub(super) fn col<'a, T: FromSql<'a>>(row: &'a Row, index: usize) -> Result<T, StorageError> {
    row.try_get(index).map_err(|e| {
        StorageError::Corrupt(format!("PostgreSQL returned an unexpected column: {e}"))
    })
}

pub(super) fn corrupt(what: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(format!("PostgreSQL holds unreadable data: {what}"))
}
