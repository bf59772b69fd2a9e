//! One transaction per storage operation, with prepared statements cached per connection.

use deadpool_postgres::{Object, Transaction};
use futures_util::future::try_join_all;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::error::OrUnavailable;
use crate::storage::StorageError;

/// The parameters of a statement, as the driver takes them.
pub(super) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// A statement and its parameters, for [`Tx::pipeline`].
pub(super) type Statement<'a> = (&'static str, Vec<&'a (dyn ToSql + Sync)>);

/// An open transaction. Dropped without [`commit`](Tx::commit), it rolls back: an operation
/// that fails half-way (a bound refused it, the connection broke) leaves nothing behind.
///
/// Statements with no data dependency between them are sent without waiting for each other's
/// answers (`try_join`), which tokio-postgres pipelines on the one connection: the reads that
/// open an operation cost one round trip together, whatever their number.
pub(super) struct Tx<'a>(Transaction<'a>);

impl<'a> Tx<'a> {
    pub(super) async fn begin(conn: &'a mut Object) -> Result<Tx<'a>, StorageError> {
        Ok(Tx(conn.transaction().await.or_unavailable()?))
    }

    /// Prepares `statements` on this connection if they are not yet. Statements run together
    /// (`try_join`) are sent in the order they are polled only if none of them needs a round
    /// trip to be prepared first, so an operation warms its statements before it pipelines them.
    pub(super) async fn prepare(&self, statements: &[&str]) -> Result<(), StorageError> {
        for sql in statements {
            self.0.prepare_cached(sql).await.or_unavailable()?;
        }
        Ok(())
    }

    /// Runs `sql` (prepared once per connection) and returns its rows.
    pub(super) async fn rows(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Vec<Row>, StorageError> {
        let statement = self.0.prepare_cached(sql).await.or_unavailable()?;
        self.0.query(&statement, params).await.or_unavailable()
    }

    /// Runs `statements` in one round trip, in order (each sees what the ones before it did),
    /// and returns each one's rows. They are sent without waiting for each other's answers:
    /// give only statements whose parameters do not depend on another's answer.
    pub(super) async fn pipeline(
        &self,
        statements: &[Statement<'_>],
    ) -> Result<Vec<Vec<Row>>, StorageError> {
        let sqls: Vec<&str> = statements.iter().map(|(sql, _)| *sql).collect();
        self.prepare(&sqls).await?;
        // Polled in order (as `try_join` would, for a list this short), each sends its
        // statement on its first poll: the server runs them in that order.
        try_join_all(
            statements
                .iter()
                .map(|(sql, params)| self.rows(sql, params.as_slice())),
        )
        .await
    }

    /// Runs `sql` and returns how many rows it changed.
    pub(super) async fn exec(&self, sql: &str, params: Params<'_>) -> Result<u64, StorageError> {
        let statement = self.0.prepare_cached(sql).await.or_unavailable()?;
        self.0.execute(&statement, params).await.or_unavailable()
    }

    /// The driver's transaction, for what the helpers above do not cover.
    pub(super) fn inner(&self) -> &Transaction<'a> {
        &self.0
    }

    pub(super) async fn commit(self) -> Result<(), StorageError> {
        self.0.commit().await.or_unavailable()
    }
}
