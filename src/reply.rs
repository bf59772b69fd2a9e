//! A client's reply to a message that asked for one (`reply_to`, spec §4c): checked and
//! recorded in storage for its sender, never handed to the handler. It goes through the
//! dedup records like any client message, so a retried `POST` records it once.

use std::sync::Arc;

use crate::id::{ClientId, UserId};
use crate::protocol::{AckOutcome, ClientMessage, ErrorBody};
use crate::shared::Shared;
use crate::storage::{NewReply, Position, ReplyOutcome};

/// Records the reply `message` of `client` of `user` to the message at `pos` of that user's
/// log, and gives its acknowledgement; `None` when the storage failed, so that whether it was
/// recorded is not known (the client sends it again, and a second record is a duplicate).
pub(crate) async fn record(
    shared: &Shared,
    user: &UserId,
    client: &ClientId,
    pos: Position,
    message: ClientMessage,
) -> Option<AckOutcome> {
    let data: Arc<serde_json::value::RawValue> =
        Arc::from(message.data.unwrap_or_else(crate::handler::null));
    let max = shared.config.max_reply_bytes;
    if data.get().len() > max {
        return Some(error(
            "reply_too_large",
            format!("the reply is larger than the server's limit of {max} bytes"),
        ));
    }
    let reply = NewReply {
        user: user.clone(),
        client: client.clone(),
        pos,
        data,
    };
    let limits = crate::acks::reply_limits(shared);
    match shared.storage.reply(reply, limits).await {
        // A second reply of the same client is acknowledged as the first was: the client may
        // have lost the first answer and sent it again under a new id.
        Ok(ReplyOutcome::Recorded | ReplyOutcome::Duplicate) => {
            Some(AckOutcome::Reply(crate::handler::null()))
        }
        Ok(ReplyOutcome::Unknown) => Some(error(
            "unknown_message",
            format!("no message at position {pos} asks this client for a reply"),
        )),
        Ok(ReplyOutcome::Full) => Some(error(
            "too_many_replies",
            "the server keeps no more replies for this user now".to_owned(),
        )),
        Err(e) => {
            tracing::warn!(?user, %client, pos, error = %e,
                "could not record a reply; the client will send it again");
            None
        }
    }
}

fn error(code: &str, message: String) -> AckOutcome {
    AckOutcome::Error(ErrorBody {
        code: code.to_owned(),
        message,
    })
}
