//! The schema's migrations: embedded in the crate, numbered, applied on connect.
//!
//! `schema_version` holds one row per migration applied. Connecting takes a transaction-scoped
//! advisory lock on the schema's name first, so that nodes starting together apply each
//! migration once; a migration and its row commit together, so a failed one is retried whole
//! on the next connect. Migrations are only ever added, never edited: a database migrated by an
//! older version of the crate moves forward from where it is.

use deadpool_postgres::Object;

use super::error::{OrUnavailable, col};
use super::tx::Tx;
use crate::storage::{Epoch, StorageError, now_millis};

/// Every migration, in order: its number is its place in this list, from 1.
const MIGRATIONS: &[&str] = &[
    include_str!("sql/migrations/001_tables.sql"),
    include_str!("sql/migrations/002_interest.sql"),
    include_str!("sql/migrations/003_forgetting.sql"),
];

/// The schema version this crate needs: a database ahead of it was migrated by a newer version
/// of simpleio, and is refused rather than misread.
pub(super) const VERSION: i32 = MIGRATIONS.len() as i32;

/// Creates `schema` if needed, applies the migrations it lacks, and makes its epoch if it has
/// none: a schema created empty is a new generation of the data.
pub(super) async fn migrate(conn: &mut Object, schema: &str) -> Result<(), StorageError> {
    let tx = Tx::begin(conn).await?;
    let key = format!("simpleio:{schema}");
    tx.rows("SELECT pg_advisory_xact_lock(hashtext($1::text))", &[&key])
        .await?;
    tx.exec(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""), &[])
        .await?;
    tx.exec(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version integer PRIMARY KEY,
             applied_at bigint NOT NULL
         )",
        &[],
    )
    .await?;
    let rows = tx
        .rows("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await?;
    let current: i32 = match rows.first() {
        Some(row) => col(row, 0)?,
        None => 0,
    };
    if current > VERSION {
        return Err(StorageError::Corrupt(format!(
            "schema {schema} is at version {current}, newer than this simpleio ({VERSION})"
        )));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index as i32 + 1;
        tx.batch(migration).await?;
        let now = now_millis() as i64;
        tx.exec(
            "INSERT INTO schema_version (version, applied_at) VALUES ($1::integer, $2::bigint)",
            &[&version, &now],
        )
        .await?;
        tracing::info!(schema, version, "applied a PostgreSQL migration");
    }
    let epoch = Epoch::random();
    tx.exec(
        "INSERT INTO meta (key, value) VALUES ('epoch', $1::text) ON CONFLICT (key) DO NOTHING",
        &[&epoch.as_str()],
    )
    .await?;
    tx.commit().await
}

impl Tx<'_> {
    /// Runs several statements with no parameters (a migration), unprepared.
    async fn batch(&self, sql: &str) -> Result<(), StorageError> {
        self.inner().batch_execute(sql).await.or_unavailable()
    }
}
