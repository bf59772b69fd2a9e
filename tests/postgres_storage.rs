//! `PostgresStorage` against a real PostgreSQL that the tests start themselves (`initdb` into a
//! temporary folder, a free port): the whole storage conformance suite, then what only a
//! networked store can get wrong: an outage and a restart, several nodes, migrations.
#![cfg(all(feature = "postgres", feature = "conformance"))]

#[path = "support/postgres.rs"]
mod postgres_server;

use std::time::Duration;

use postgres_server::PostgresServer;
use simpleio::storage::{
    FetchRequest, NewMessage, QueueLimits, Signal, StorageError, millis_after,
};
use simpleio::{ClientId, PostgresStorage, Storage, UserId};

/// A fresh schema on the binary's shared server: each test its own tables and channels.
fn fresh_schema() -> String {
    format!(
        "t_{}",
        ClientId::random()
            .as_str()
            .to_ascii_lowercase()
            .replace('-', "_")
    )
}

async fn connect(server: &PostgresServer, schema: &str) -> PostgresStorage {
    PostgresStorage::builder(server.url())
        .schema(schema)
        .pool_size(8)
        .connect()
        .await
        .expect("connect to the test PostgreSQL")
}

/// A storage on a fresh schema of the shared test server; `None` (after a loud warning) when
/// PostgreSQL is not installed outside CI.
async fn fresh() -> Option<PostgresStorage> {
    Some(connect(PostgresServer::shared()?, &fresh_schema()).await)
}

simpleio::storage_conformance_tests!(optional fresh);
