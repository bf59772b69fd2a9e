//! [`Storage::fetch`]: confirm the client's cursor, record its presence, read on.

use std::sync::Arc;

use futures_util::future::{try_join, try_join5};
use serde_json::value::RawValue;
use tokio_postgres::Row;

use super::PostgresStorage;
use super::error::{col, corrupt};
use super::routes::Routes;
use super::signals::Outbox;
use super::sql::{
    EARLIEST_ADDRESSED, ENSURE_USER, INTERESTED_NODES, LOCK_USER, RAISE_WATERMARKS, READ,
    SET_TRIMMED, TRIM, UPSERT_CLIENT, USER_CLIENTS, USER_WATERMARKS,
};
use super::tx::{Statement, Tx};
use crate::hash::HashMap;
use crate::storage::{
    Arrival, Epoch, FetchBatch, FetchRequest, Limit, Position, Signal, StorageError, StoredMessage,
    now_millis,
};

/// A user's row, as [`LOCK_USER`] reads it.
pub(super) struct UserRow {
    pub(super) last_pos: Position,
    pub(super) trimmed_to: Position,
    pub(super) reply_bytes: i64,
    pub(super) epoch: Epoch,
}

impl UserRow {
    pub(super) fn from_rows(rows: &[Row]) -> Result<UserRow, StorageError> {
        let row = rows.first().ok_or_else(|| corrupt("a user row vanished"))?;
        let epoch: Option<String> = col(row, 7)?;
        Ok(UserRow {
            last_pos: col::<i64>(row, 0)? as Position,
            trimmed_to: col::<i64>(row, 1)? as Position,
            reply_bytes: col(row, 5)?,
            epoch: Epoch::new(epoch.ok_or_else(|| corrupt("the schema has no epoch"))?),
        })
    }
}

/// A client's record, as [`USER_CLIENTS`] reads it.
struct ClientRow {
    id: String,
    cursor: Position,
    polled: bool,
}

/// A position as PostgreSQL's `bigint`: positions stay below 2^53, and a cursor a client sent
/// beyond that is capped (it is read as the log's end anyway).
pub(super) fn sql_pos(pos: Position) -> i64 {
    pos.min(i64::MAX as Position) as i64
}

/// A message as [`READ`] returns it.
pub(super) fn stored_message(row: &Row) -> Result<StoredMessage, StorageError> {
    let ns: String = col(row, 1)?;
    let event: String = col(row, 2)?;
    let data: String = col(row, 3)?;
    let data = RawValue::from_string(data).map_err(|e| corrupt(format!("a payload: {e}")))?;
    Ok(StoredMessage {
        pos: col::<i64>(row, 0)? as Position,
        ns: ns.into(),
        event: event.into(),
        data: Arc::from(data),
        ack: col(row, 4)?,
    })
}

/// `Ok(None)` without running `op` unless `wanted`: an optional statement in a pipeline.
pub(super) async fn maybe<T>(
    wanted: bool,
    op: impl Future<Output = Result<T, StorageError>>,
) -> Result<Option<T>, StorageError> {
    if wanted { op.await.map(Some) } else { Ok(None) }
}

impl PostgresStorage {
    /// Four round trips, whatever it confirms: the transaction's start; one that reads all it
    /// decides from (the user's row, locked; their clients and watermarks; the nodes to
    /// signal); one that writes all it decided, with the read (the client's record; the
    /// watermarks, only those that rise; the trim; every notification; the node's interest);
    /// the commit.
    pub(super) async fn fetch_now(&self, req: FetchRequest) -> Result<FetchBatch, StorageError> {
        let now = now_millis();
        let user = req.user.as_str();
        let client = req.client.as_str();
        let users = [user];
        // What is read only in case it is needed, so as not to cost a round trip of its own
        // when it is: the nodes to signal (of an announcement or a confirmation), and where a
        // client sending no cursor starts if it is new.
        let may_signal = req.announce.is_some() || req.cursor.is_some();
        let may_be_new = req.cursor.is_none();
        let routes = &self.inner.routes;
        let mut conn = self.conn().await?;
        let tx = Tx::begin(&mut conn).await?;
        tx.prepare(&[
            ENSURE_USER,
            LOCK_USER,
            USER_CLIENTS,
            USER_WATERMARKS,
            INTERESTED_NODES,
            EARLIEST_ADDRESSED,
        ])
        .await?;
        // The lock comes first in the pipeline: the reads after it see the user at rest.
        let (_, locked, clients, watermarks, (others, earliest)) = try_join5(
            tx.exec(ENSURE_USER, &[&user]),
            tx.rows(LOCK_USER, &[&user]),
            tx.rows(USER_CLIENTS, &[&user]),
            tx.rows(USER_WATERMARKS, &[&user]),
            try_join(
                maybe(may_signal, routes.interested(&tx, &users, now)),
                maybe(may_be_new, tx.rows(EARLIEST_ADDRESSED, &[&user, &client])),
            ),
        )
        .await?;
        let row = UserRow::from_rows(&locked)?;
        let epoch = row.epoch.clone();
        let head = row.last_pos;
        let clients = clients
            .iter()
            .map(|r| {
                Ok(ClientRow {
                    id: col(r, 0)?,
                    cursor: col::<i64>(r, 1)? as Position,
                    polled: col(r, 4)?,
                })
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        let mut marks: HashMap<String, Position> = HashMap::default();
        for r in &watermarks {
            marks.insert(col(r, 0)?, col::<i64>(r, 1)? as Position);
        }

        let record = clients.iter().find(|c| c.id == client);
        let polled = clients.iter().filter(|c| c.polled).count();
        // Records made by `join` or `set_data` alone are the application's, and do not count.
        if record.is_none() && polled >= req.max_clients {
            return Err(Limit::ClientsPerUser(req.max_clients).into());
        }
        let known = record.is_some_and(|r| r.polled);
        let arrival = (!known).then_some(Arrival {
            user_came_online: polled == 0,
        });
        let mut cursor = record.map_or(0, |r| r.cursor);
        let mut advanced = None;
        let mut confirmed = None;
        let start = match &req.cursor {
            Some((e, sent)) if *e == epoch => {
                let upto = (*sent).min(head);
                // A client's own cursor confirms messages addressed to it even when the
                // watermark is past them, so its advance is a confirmation too.
                if upto > cursor {
                    cursor = upto;
                    advanced = Some(upto);
                }
                confirmed = Some(upto);
                upto
            }
            _ if !known => {
                let lowest = req
                    .namespaces
                    .iter()
                    .map(|ns| marks.get(&**ns).copied().unwrap_or(0))
                    .min()
                    .unwrap_or(0);
                // Read with the rest when the client sent no cursor; a cursor of another
                // epoch (rare: after data was lost) costs its own round trip.
                let earliest = match earliest {
                    Some(rows) => rows,
                    None => tx.rows(EARLIEST_ADDRESSED, &[&user, &client]).await?,
                };
                let earliest: Option<i64> = match earliest.first() {
                    Some(r) => col(r, 0)?,
                    None => None,
                };
                let start = earliest.map_or(lowest, |p| (p as Position - 1).min(lowest));
                cursor = start;
                start
            }
            _ => cursor,
        };
        // The watermarks this confirmation raises: none, most of the time, and then no
        // statement is sent at all.
        let rising: Vec<&str> = match confirmed {
            Some(upto) => req
                .namespaces
                .iter()
                .filter(|ns| marks.get(&***ns).copied().unwrap_or(0) < upto)
                .map(|ns| &**ns)
                .collect(),
            None => Vec::new(),
        };
        if let Some(upto) = confirmed
            && !rising.is_empty()
        {
            advanced = Some(upto);
        }
        // Delivered messages below every polled client's cursor can go: none of them reads
        // below its cursor again.
        let trim_to = advanced.and_then(|_| {
            let lowest = clients
                .iter()
                .filter(|c| c.polled && c.id != client)
                .map(|c| c.cursor)
                .chain(std::iter::once(cursor))
                .min()
                .unwrap_or(cursor);
            (lowest > row.trimmed_to).then_some(lowest)
        });

        let mut outbox = Outbox::new(now);
        let others = others.unwrap_or_default();
        if let Some(poll) = req.announce {
            let signal = Signal::PollStarted {
                user: req.user.clone(),
                client: req.client.clone(),
                poll,
            };
            routes.address(&signal, &others, &mut outbox)?;
        }
        if let Some(cursor) = advanced {
            let signal = Signal::Confirmed {
                epoch: epoch.clone(),
                user: req.user.clone(),
                client: req.client.clone(),
                cursor,
                namespaces: req.namespaces.clone(),
            };
            routes.address(&signal, &others, &mut outbox)?;
        }
        // The node has a poll of this user: it needs their signals.
        let stale = routes.stale(&users, now);
        let until = Routes::interest_until(now);

        let namespaces: Vec<&str> = req.namespaces.iter().map(|ns| &**ns).collect();
        let seen_until = now.saturating_add(req.presence_ttl.as_millis() as u64) as i64;
        let limit = req.limit as i64;
        let (start_sql, cursor_sql, now_sql) = (sql_pos(start), sql_pos(cursor), now as i64);
        let upto_sql = sql_pos(confirmed.unwrap_or(0));
        let (from_sql, to_sql) = (sql_pos(row.trimmed_to), sql_pos(trim_to.unwrap_or(0)));
        // In this order: the trim sees the client's cursor and the watermarks just written,
        // and runs after the read, as it would in turn.
        let mut statements: Vec<Statement<'_>> = vec![(
            UPSERT_CLIENT,
            vec![&user, &client, &cursor_sql, &namespaces, &seen_until],
        )];
        if !rising.is_empty() {
            statements.push((RAISE_WATERMARKS, vec![&user, &rising, &upto_sql]));
        }
        let read_at = statements.len();
        statements.push((
            READ,
            vec![&user, &start_sql, &now_sql, &namespaces, &client, &limit],
        ));
        if trim_to.is_some() {
            statements.push((TRIM, vec![&user, &from_sql, &to_sql]));
            statements.push((SET_TRIMMED, vec![&user, &to_sql]));
        }
        statements.extend(outbox.statements());
        if !stale.is_empty() {
            statements.push(routes.note_statement(&stale, &until));
        }
        let results = tx.pipeline(&statements).await?;
        let rows = results
            .get(read_at)
            .ok_or_else(|| corrupt("a pipeline's answers"))?;
        let messages = rows
            .iter()
            .map(stored_message)
            .collect::<Result<Vec<_>, _>>()?;
        drop(statements);
        tx.commit().await?;
        routes.remember(stale, now);
        let cursor_out = match messages.last() {
            Some(last) if messages.len() == req.limit => last.pos,
            _ => start.max(head),
        };
        Ok(FetchBatch {
            epoch,
            cursor: cursor_out,
            messages,
            arrival,
        })
    }
}
