//! What senders ask: [`Storage::delivery`], and the replies of messages that asked for them
//! ([`Storage::reply`], [`Storage::replies`]).

use std::sync::Arc;

use futures_util::future::{try_join, try_join3};
use serde_json::value::RawValue;

use super::PostgresStorage;
use super::error::{col, corrupt};
use super::fetch::{UserRow, sql_pos};
use super::sql::{ACK_FIND, DELIVERY, ENSURE_USER, EPOCH, LOCK_USER, REPLIES, REPLY_INSERT};
use super::tx::Tx;
use crate::id::ClientId;
use crate::storage::{
    DeliveryState, DeliveryTarget, Epoch, NewReply, RecordedReply, ReplyLimits, ReplyOutcome,
    Signal, StorageError, now_millis,
};

pub(super) async fn read_epoch(tx: &Tx<'_>) -> Result<Epoch, StorageError> {
    let rows = tx.rows(EPOCH, &[]).await?;
    match rows.first() {
        Some(row) => Ok(Epoch::new(col::<String>(row, 0)?)),
        None => Err(corrupt("the schema has no epoch")),
    }
}

impl PostgresStorage {
    pub(super) async fn delivery_now(
        &self,
        epoch: &Epoch,
        targets: &[DeliveryTarget],
    ) -> Result<Vec<DeliveryState>, StorageError> {
        let users: Vec<&str> = targets.iter().map(|t| t.user.as_str()).collect();
        let clients: Vec<&str> = targets
            .iter()
            .map(|t| t.client.as_ref().map_or("", |c| c.as_str()))
            .collect();
        let namespaces: Vec<&str> = targets.iter().map(|t| &*t.namespace).collect();
        let positions: Vec<i64> = targets.iter().map(|t| sql_pos(t.pos)).collect();
        let now = now_millis() as i64;
        let mut conn = self.conn().await?;
        let tx = Tx::begin(&mut conn).await?;
        tx.prepare(&[EPOCH, DELIVERY]).await?;
        let (current, rows) = try_join(
            read_epoch(&tx),
            tx.rows(DELIVERY, &[&users, &clients, &namespaces, &positions, &now]),
        )
        .await?;
        // A check of a message still waited for keeps the node's interest in its user.
        let noted = self.inner.routes.note(&tx, &users, now as u64).await?;
        tx.commit().await?;
        self.inner.routes.remember(noted, now as u64);
        if current != *epoch {
            return Ok(vec![DeliveryState::Lost; targets.len()]);
        }
        if rows.len() != targets.len() {
            return Err(corrupt("a delivery answer per target"));
        }
        rows.iter()
            .map(|r| {
                Ok(match col::<i32>(r, 0)? {
                    0 => DeliveryState::Delivered,
                    1 => DeliveryState::Pending,
                    _ => DeliveryState::Expired,
                })
            })
            .collect()
    }

    pub(super) async fn reply_now(
        &self,
        reply: NewReply,
        limits: ReplyLimits,
    ) -> Result<ReplyOutcome, StorageError> {
        let now = now_millis() as i64;
        let user = reply.user.as_str();
        let client = reply.client.as_str();
        let pos = sql_pos(reply.pos);
        let mut conn = self.conn().await?;
        let tx = Tx::begin(&mut conn).await?;
        tx.prepare(&[ENSURE_USER, LOCK_USER, ACK_FIND]).await?;
        let (_, locked, ack) = try_join3(
            tx.exec(ENSURE_USER, &[&user]),
            tx.rows(LOCK_USER, &[&user]),
            tx.rows(ACK_FIND, &[&user, &pos, &client]),
        )
        .await?;
        let row = UserRow::from_rows(&locked)?;
        let Some(ack) = ack.first() else {
            return Ok(ReplyOutcome::Unknown);
        };
        let addressed: String = col(ack, 0)?;
        let expires_at: i64 = col(ack, 1)?;
        if expires_at <= now || (!addressed.is_empty() && addressed != client) {
            return Ok(ReplyOutcome::Unknown);
        }
        if col::<bool>(ack, 2)? {
            return Ok(ReplyOutcome::Duplicate);
        }
        let count = col::<i64>(ack, 3)?.max(0) as usize;
        let size = reply.data.get().len();
        if count >= limits.per_message
            || row.reply_bytes.max(0) as usize + size > limits.bytes_per_user
        {
            return Ok(ReplyOutcome::Full);
        }
        tx.exec(REPLY_INSERT, &[&user, &pos, &client, &reply.data.get()])
            .await?;
        let signal = Signal::Replied {
            epoch: row.epoch,
            user: reply.user,
            pos: reply.pos,
            client: reply.client,
            data: reply.data,
        };
        self.inner.routes.send(&tx, &signal, now as u64).await?;
        tx.commit().await?;
        Ok(ReplyOutcome::Recorded)
    }

    pub(super) async fn replies_now(
        &self,
        epoch: &Epoch,
        targets: &[DeliveryTarget],
    ) -> Result<Vec<Vec<RecordedReply>>, StorageError> {
        let users: Vec<&str> = targets.iter().map(|t| t.user.as_str()).collect();
        let positions: Vec<i64> = targets.iter().map(|t| sql_pos(t.pos)).collect();
        let now = now_millis() as i64;
        let mut conn = self.conn().await?;
        let tx = Tx::begin(&mut conn).await?;
        tx.prepare(&[EPOCH, REPLIES]).await?;
        let (current, rows) = try_join(
            read_epoch(&tx),
            tx.rows(REPLIES, &[&users, &positions, &now]),
        )
        .await?;
        let noted = self.inner.routes.note(&tx, &users, now as u64).await?;
        tx.commit().await?;
        self.inner.routes.remember(noted, now as u64);
        let mut out = vec![Vec::new(); targets.len()];
        if current != *epoch {
            return Ok(out);
        }
        for r in &rows {
            let index = col::<i64>(r, 0)? as usize;
            let client = ClientId::new(col::<String>(r, 1)?)
                .map_err(|e| corrupt(format!("a reply's client id: {e}")))?;
            let data =
                RawValue::from_string(col(r, 2)?).map_err(|e| corrupt(format!("a reply: {e}")))?;
            if let Some(slot) = index.checked_sub(1).and_then(|i| out.get_mut(i)) {
                slot.push(RecordedReply {
                    client,
                    data: Arc::from(data),
                });
            }
        }
        Ok(out)
    }
}
