//! Rooms and members' data: [`Storage::join`], [`Storage::leave`], [`Storage::members`],
//! [`Storage::rooms`], [`Storage::set_data`], [`Storage::get_data`].
//!
//! A member is a user and a client id, '' for the user as a whole (client ids are never
//! empty), so one index over `(user_id, client_id)` finds every row of a member.

use std::sync::Arc;
use std::time::Duration;

use super::PostgresStorage;
use super::error::col;
use super::presence::client_id;
use super::sql::{
    ENSURE_USER, GET_DATA, JOIN, LEAVE, LOCK_MEMBER, MEMBERS, REMOVE_DATA, ROOMS_OF, SET_DATA,
    TOUCH_CLIENT,
};
use super::tx::{Statement, Tx};
use crate::id::UserId;
use crate::storage::{Member, StorageError, now_millis};

fn member_parts(member: &Member) -> (&str, &str) {
    match member {
        Member::User(user) => (user.as_str(), ""),
        Member::Client(user, client) => (user.as_str(), client.as_str()),
    }
}

impl PostgresStorage {
    /// Locks the member's user as a reap does, and keeps a client not seen yet for `ttl`, as
    /// if it had polled (not live), then runs `write`: all in one round trip. A reap of the
    /// user waits, or comes first and this sees what it left: a membership or data is never
    /// written for a client record a reap is removing, nor removed with it unseen. A client's
    /// user gets a row (its client record will be reaped, and the row forgotten with it); a
    /// user's own membership or data makes none.
    async fn locked_write(
        tx: &Tx<'_>,
        member: &Member,
        ttl: Duration,
        write: Statement<'_>,
    ) -> Result<(), StorageError> {
        let until = now_millis().saturating_add(ttl.as_millis() as u64) as i64;
        let (user, client) = member_parts(member);
        let statements: Vec<Statement<'_>> = match member {
            Member::Client(..) => vec![
                (ENSURE_USER, vec![&user]),
                (TOUCH_CLIENT, vec![&user, &client, &until]),
                write,
            ],
            Member::User(_) => vec![(LOCK_MEMBER, vec![&user]), write],
        };
        tx.pipeline(&statements).await?;
        Ok(())
    }

    pub(super) async fn join_now(
        &self,
        room: &str,
        member: &Member,
        presence_ttl: Duration,
    ) -> Result<(), StorageError> {
        let (user, client) = member_parts(member);
        let mut conn = self.conn().await?;
        let tx = Tx::begin(&mut conn).await?;
        Self::locked_write(
            &tx,
            member,
            presence_ttl,
            (JOIN, vec![&room, &user, &client]),
        )
        .await?;
        tx.commit().await
    }

    pub(super) async fn leave_now(&self, room: &str, member: &Member) -> Result<(), StorageError> {
        let (user, client) = member_parts(member);
        let mut conn = self.conn().await?;
        let tx = Tx::begin(&mut conn).await?;
        tx.exec(LEAVE, &[&room, &user, &client]).await?;
        tx.commit().await
    }

    pub(super) async fn members_now(&self, room: &str) -> Result<Vec<Member>, StorageError> {
        let mut conn = self.conn().await?;
        let tx = Tx::begin(&mut conn).await?;
        let rows = tx.rows(MEMBERS, &[&room]).await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                let user = UserId::from(col::<String>(r, 0)?);
                let client: String = col(r, 1)?;
                Ok(if client.is_empty() {
                    Member::User(user)
                } else {
                    Member::Client(user, client_id(client)?)
                })
            })
            .collect()
    }

    pub(super) async fn rooms_now(&self, member: &Member) -> Result<Vec<Arc<str>>, StorageError> {
        let (user, client) = member_parts(member);
        let mut conn = self.conn().await?;
        let tx = Tx::begin(&mut conn).await?;
        let rows = tx.rows(ROOMS_OF, &[&user, &client]).await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| Ok(Arc::from(col::<String>(r, 0)?)))
            .collect()
    }

    pub(super) async fn set_data_now(
        &self,
        member: &Member,
        key: &str,
        value: Option<&str>,
        presence_ttl: Duration,
    ) -> Result<(), StorageError> {
        let (user, client) = member_parts(member);
        let mut conn = self.conn().await?;
        let tx = Tx::begin(&mut conn).await?;
        let write: Statement<'_> = match &value {
            Some(value) => (SET_DATA, vec![&user, &client, &key, value]),
            None => (REMOVE_DATA, vec![&user, &client, &key]),
        };
        Self::locked_write(&tx, member, presence_ttl, write).await?;
        tx.commit().await
    }

    pub(super) async fn get_data_now(
        &self,
        member: &Member,
        key: &str,
    ) -> Result<Option<String>, StorageError> {
        let (user, client) = member_parts(member);
        let mut conn = self.conn().await?;
        let tx = Tx::begin(&mut conn).await?;
        let rows = tx.rows(GET_DATA, &[&user, &client, &key]).await?;
        tx.commit().await?;
        match rows.first() {
            Some(r) => Ok(Some(col(r, 0)?)),
            None => Ok(None),
        }
    }
}
