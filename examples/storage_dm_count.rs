//! Confirmed direct messages straight on a `Storage`, in lockstep rounds, for counting
//! instructions (valgrind callgrind) rather than timing: what the storage alone costs per
//! message, with no HTTP, on memory, on a durable file, or on PostgreSQL (`postgres`, with
//! `DATABASE_URL` set and the feature `postgres`; each run in a fresh schema it drops after).
//!
//! Each round, every one of `USERS` users stores a message to the next one (one `append` call
//! each, all at once), then every recipient fetches with its cursor: the fetch confirms the
//! previous round's message, trims it, and reads this round's. On a durable storage all the
//! round's appends share one commit, and all its fetches another, as under load.
//!
//! ```text
//! cargo build --release --example storage_dm_count
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/storage_dm_count durable 60
//! ```
//!
//! Run it for two numbers of rounds: the difference of the totals over the difference of the
//! messages is the cost per message, without the start. Each run also prints its wall-clock
//! time per message (a networked store's cost is mostly round trips, which callgrind does not
//! see).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::value::RawValue;
use simpleio::storage::{Epoch, FetchRequest, NewMessage, Position, QueueLimits, now_millis};
use simpleio::{ClientId, DurableStorage, MemoryStorage, Storage, UserId};

const USERS: usize = 200;

fn limits() -> QueueLimits {
    QueueLimits {
        per_user: 10_000,
        per_sender: 10_000,
        bytes_per_user: 64 << 20,
        bytes_per_sender: 64 << 20,
    }
}

async fn run(s: &dyn Storage, rounds: usize) -> Result<usize, Box<dyn std::error::Error>> {
    let users: Vec<UserId> = (0..USERS).map(|i| UserId::from(format!("u{i}"))).collect();
    let clients: Vec<ClientId> = (0..USERS)
        .map(|i| ClientId::new(format!("u{i}-tab")))
        .collect::<Result<_, _>>()?;
    let data: Arc<RawValue> = Arc::from(RawValue::from_string(r#"{"text":"hello"}"#.into())?);
    let epoch: Epoch = s.epoch().await?;
    let mut cursors: Vec<Option<(Epoch, Position)>> = vec![None; USERS];
    let fetch = |i: usize, cursor: Option<(Epoch, Position)>| {
        s.fetch(FetchRequest {
            user: users[i].clone(),
            client: clients[i].clone(),
            cursor,
            namespaces: Arc::from(["/".into()]),
            limit: 100,
            presence_ttl: Duration::from_secs(60),
            announce: None,
            max_clients: 8,
        })
    };
    for (i, batch) in join_all((0..USERS).map(|i| fetch(i, None)))
        .await
        .into_iter()
        .enumerate()
    {
        cursors[i] = Some((epoch.clone(), batch?.cursor));
    }
    let mut received = 0;
    for _ in 0..rounds {
        let sends = (0..USERS).map(|i| {
            let message = NewMessage {
                user: users[(i + 1) % USERS].clone(),
                client: None,
                namespace: "/".into(),
                event: "dm".into(),
                data: data.clone(),
                expires_at: now_millis() + 3_600_000,
                sender: Some(users[i].clone()),
                origin: None,
                ack: false,
            };
            s.append(vec![message], limits())
        });
        for appended in join_all(sends).await {
            appended?;
        }
        let fetches = (0..USERS).map(|i| fetch(i, cursors[i].clone()));
        for (i, batch) in join_all(fetches).await.into_iter().enumerate() {
            let batch = batch?;
            received += batch.messages.len();
            cursors[i] = Some((epoch.clone(), batch.cursor));
        }
    }
    Ok(received)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let storage = args.next().unwrap_or_else(|| "memory".into());
    let rounds: usize = args.next().as_deref().unwrap_or("50").parse()?;
    let started = std::time::Instant::now();
    let received = match storage.as_str() {
        "memory" => run(&MemoryStorage::new(), rounds).await?,
        "durable" => {
            let dir =
                std::env::temp_dir().join(format!("simpleio-dm-count-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let s = DurableStorage::open(dir.join("store.redb")).await?;
            let received = run(&s, rounds).await?;
            let commits = s.commits();
            drop(s);
            std::fs::remove_dir_all(&dir)?;
            eprintln!("{commits} commits");
            received
        }
        #[cfg(feature = "postgres")]
        "postgres" => {
            let url = std::env::var("DATABASE_URL")?;
            let schema = format!("dm_count_{}", std::process::id());
            let s = simpleio::PostgresStorage::builder(url.as_str())
                .schema(schema.as_str())
                .connect()
                .await?;
            let received = run(&s, rounds).await?;
            drop(s);
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            client
                .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
                .await?;
            received
        }
        other => return Err(format!("memory, durable or postgres, not {other}").into()),
    };
    let took = started.elapsed();
    eprintln!(
        "{received} messages received, {:.1} µs each (wall clock)",
        took.as_secs_f64() * 1e6 / received.max(1) as f64
    );
    Ok(())
}
