//! What a bucket's script leaves to the storage: its reply, and the writes outside its slot it
//! deferred (see [`scripts`](super::scripts)).

use std::collections::HashMap;
use std::sync::Arc;

use redis::{FromRedisValue, Value};

use super::super::error::corrupt;
use super::super::signals::signal_json;
use crate::id::UserId;
use crate::storage::{Signal, StorageError};

/// A write a script could not make from its slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Effect {
    /// A signal to publish on the channel `{P}` + this (`n:NODE`, `signals`).
    Publish { channel: String, json: String },
    /// A member to add to a room (`room:NAME`, in the room's bucket).
    RoomAdd { room: String, member: String },
    /// A member to remove from a room.
    RoomRemove { room: String, member: String },
}

fn text(v: Value) -> Result<String, StorageError> {
    String::from_redis_value(v).map_err(|_| corrupt("a deferred write"))
}

/// Splits a cluster script's reply into its own reply and its deferred writes.
pub(super) fn split_reply<T: FromRedisValue>(
    reply: Value,
) -> Result<(T, Vec<Effect>), StorageError> {
    let Value::Array(items) = reply else {
        return Err(corrupt("a bucket script's reply"));
    };
    let mut items = items.into_iter();
    let count = match items.next() {
        Some(Value::Int(n)) => usize::try_from(n).map_err(|_| corrupt("a deferred count"))?,
        _ => return Err(corrupt("a deferred count")),
    };
    if count % 3 != 0 || items.len() < count {
        return Err(corrupt("a deferred count"));
    }
    let mut effects = Vec::with_capacity(count / 3);
    for _ in 0..count / 3 {
        let (kind, target, value) = match (items.next(), items.next(), items.next()) {
            (Some(k), Some(t), Some(v)) => (text(k)?, text(t)?, text(v)?),
            _ => return Err(corrupt("a deferred write")),
        };
        let room = |target: String| -> Result<String, StorageError> {
            target
                .strip_prefix("room:")
                .map(str::to_owned)
                .ok_or_else(|| corrupt("a deferred room write"))
        };
        effects.push(match kind.as_str() {
            "pub" => Effect::Publish {
                channel: target,
                json: value,
            },
            "sadd" => Effect::RoomAdd {
                room: room(target)?,
                member: value,
            },
            "srem" => Effect::RoomRemove {
                room: room(target)?,
                member: value,
            },
            _ => return Err(corrupt("a deferred write's kind")),
        });
    }
    let reply = items.next().unwrap_or(Value::Nil);
    if items.next().is_some() {
        return Err(corrupt("a bucket script's reply"));
    }
    let reply = T::from_redis_value(reply)
        .map_err(|e| StorageError::Corrupt(format!("unexpected reply from Redis: {e}")))?;
    Ok((reply, effects))
}

/// The signals of one operation as they are to be published: the `Appended` signals bound for
/// one channel (one per bucket the operation touched) become one, naming all their users, so
/// that a fan-out over many buckets still wakes each node once. Others keep their order.
pub(super) fn merge_signals(effects: &mut Vec<Effect>) -> Result<(), StorageError> {
    let mut appended: HashMap<String, Vec<UserId>> = HashMap::new();
    let mut order = Vec::new();
    let mut kept = Vec::with_capacity(effects.len());
    for effect in effects.drain(..) {
        match &effect {
            Effect::Publish { channel, json } if json.starts_with(r#"{"appended":"#) => {
                let Ok(Signal::Appended { users }) = serde_json::from_str::<Signal>(json) else {
                    return Err(corrupt("an appended signal"));
                };
                let named = appended.entry(channel.clone()).or_insert_with(|| {
                    order.push(channel.clone());
                    Vec::new()
                });
                named.extend(users.iter().cloned());
            }
            _ => kept.push(effect),
        }
    }
    for channel in order {
        let users = appended.remove(&channel).unwrap_or_default();
        let json = signal_json(Signal::Appended {
            users: Arc::from(users),
        })?;
        kept.push(Effect::Publish { channel, json });
    }
    *effects = kept;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_reply_comes_apart_into_its_own_and_the_deferred_writes() {
        let reply = Value::Array(vec![
            Value::Int(6),
            bulk("pub"),
            bulk("n:abc"),
            bulk(r#"{"appended":{"users":["ann"]}}"#),
            bulk("srem"),
            bulk("room:lobby"),
            bulk("c:tab:ann"),
            Value::Array(vec![bulk("x"), bulk("y")]),
        ]);
        let (own, effects): (Vec<String>, _) = split_reply(reply).expect("reply");
        assert_eq!(own, ["x", "y"]);
        assert_eq!(
            effects[1],
            Effect::RoomRemove {
                room: "lobby".into(),
                member: "c:tab:ann".into()
            }
        );
        // A nil reply is simply absent.
        let (none, effects): (Option<String>, _) =
            split_reply(Value::Array(vec![Value::Int(0)])).expect("reply");
        assert_eq!((none, effects.len()), (None, 0));
        assert!(split_reply::<i64>(Value::Array(vec![Value::Int(3), bulk("pub")])).is_err());
    }

    #[test]
    fn appended_signals_to_one_channel_become_one() {
        let publish = |channel: &str, json: &str| Effect::Publish {
            channel: channel.into(),
            json: json.into(),
        };
        let mut effects = vec![
            publish("n:a", r#"{"appended":{"users":["ann"]}}"#),
            publish("n:b", r#"{"appended":{"users":["bob"]}}"#),
            publish("n:a", r#""resync""#),
            publish("n:a", r#"{"appended":{"users":["cy","dee"]}}"#),
        ];
        merge_signals(&mut effects).expect("merge");
        assert_eq!(
            effects,
            [
                publish("n:a", r#""resync""#),
                publish("n:a", r#"{"appended":{"users":["ann","cy","dee"]}}"#),
                publish("n:b", r#"{"appended":{"users":["bob"]}}"#),
            ]
        );
    }
}
