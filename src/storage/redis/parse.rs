//! Decoding the scripts' replies: anything a script could not have sent is
//! [`StorageError::Corrupt`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;

use super::entries::{Payload, parse_entry, parse_payload};
use super::error::corrupt;
use crate::hash::HashSet;
use crate::id::{ClientId, UserId};
use crate::storage::{
    AppendOutcome, Appended, Arrival, Claim, DeliveryState, Departure, Epoch, FetchBatch, Limit,
    Member, RecordedReply, ReplyOutcome, StorageError,
};

/// Decodes the append script's reply (see [`APPEND`](super::scripts::APPEND)), for a call of
/// `count` messages.
pub(super) fn parse_appended(reply: Vec<String>, count: usize) -> Result<Appended, StorageError> {
    let mut reply = reply.into_iter();
    let epoch = Epoch::new(reply.next().ok_or_else(|| corrupt("no epoch"))?);
    let mut reply: Vec<String> = reply.collect();
    let depth = reply
        .pop()
        .and_then(|d| d.strip_prefix("depth:").map(str::to_owned))
        .ok_or_else(|| corrupt("no queue depth"))?;
    let deepest = parse_u64(&depth, "a queue depth")? as usize;
    let outcomes = reply
        .into_iter()
        .map(|o| match o.as_str() {
            "full" => Ok(AppendOutcome::QueueFull),
            pos => parse_u64(pos, "a position").map(AppendOutcome::Stored),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if outcomes.len() != count {
        return Err(corrupt("wrong number of append outcomes"));
    }
    Ok(Appended {
        epoch,
        outcomes,
        deepest: Some(deepest),
    })
}

/// Decodes the fetch script's reply (see [`FETCH`](super::scripts::FETCH)); `max_clients` is
/// the limit it refused a new client for, if it did.
pub(super) fn parse_fetch(
    reply: Vec<String>,
    max_clients: usize,
) -> Result<FetchBatch, StorageError> {
    if let [only] = reply.as_slice()
        && only == "limit"
    {
        return Err(Limit::ClientsPerUser(max_clients).into());
    }
    let mut reply = reply.into_iter();
    let epoch = Epoch::new(reply.next().ok_or_else(|| corrupt("no epoch"))?);
    let cursor = parse_u64(
        &reply.next().ok_or_else(|| corrupt("no cursor"))?,
        "a cursor",
    )?;
    let arrival = match reply.next().as_deref() {
        Some("") => None,
        Some("online") => Some(Arrival {
            user_came_online: true,
        }),
        Some("arrived") => Some(Arrival {
            user_came_online: false,
        }),
        _ => return Err(corrupt("an arrival")),
    };
    let shared = parse_payloads(&mut reply)?;
    let messages = reply
        .map(|entry| parse_entry(&entry, &shared))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(FetchBatch {
        epoch,
        cursor,
        messages,
        arrival,
    })
}

/// Decodes the shared payloads at the head of a fetch reply: their number, then id and value
/// of each.
fn parse_payloads(
    reply: &mut impl Iterator<Item = String>,
) -> Result<HashMap<String, Payload>, StorageError> {
    let n = parse_u64(
        &reply.next().ok_or_else(|| corrupt("no payload count"))?,
        "a payload count",
    )?;
    let mut payloads = HashMap::new();
    for _ in 0..n {
        let (Some(id), Some(value)) = (reply.next(), reply.next()) else {
            return Err(corrupt("a shared payload"));
        };
        let payload = parse_payload(&value).ok_or_else(|| corrupt("a shared payload"))?;
        payloads.insert(id, payload);
    }
    Ok(payloads)
}

/// Decodes the delivery script's reply (see [`DELIVERY`](super::scripts::DELIVERY)) about
/// `targets` targets.
pub(super) fn parse_reply(reply: String) -> Result<ReplyOutcome, StorageError> {
    match reply.as_str() {
        "recorded" => Ok(ReplyOutcome::Recorded),
        "duplicate" => Ok(ReplyOutcome::Duplicate),
        "unknown" => Ok(ReplyOutcome::Unknown),
        "full" => Ok(ReplyOutcome::Full),
        _ => Err(corrupt("a reply outcome")),
    }
}

pub(super) fn parse_replies(
    reply: Vec<String>,
    targets: usize,
) -> Result<Vec<Vec<RecordedReply>>, StorageError> {
    if reply.first().map(String::as_str) == Some("lost") {
        return Ok(vec![Vec::new(); targets]);
    }
    let mut out = Vec::with_capacity(targets);
    let mut items = reply.into_iter();
    for _ in 0..targets {
        let n: usize = items
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| corrupt("a reply count"))?;
        let mut replies = Vec::with_capacity(n);
        for _ in 0..n {
            let (Some(client), Some(data)) = (items.next(), items.next()) else {
                return Err(corrupt("a reply"));
            };
            let client = ClientId::new(client).map_err(|_| corrupt("a reply's client"))?;
            let data = RawValue::from_string(data).map_err(|_| corrupt("a reply's JSON"))?;
            replies.push(RecordedReply {
                client,
                data: Arc::from(data),
            });
        }
        out.push(replies);
    }
    Ok(out)
}

pub(super) fn parse_delivery(
    reply: Vec<String>,
    targets: usize,
) -> Result<Vec<DeliveryState>, StorageError> {
    if reply.first().map(String::as_str) == Some("lost") {
        return Ok(vec![DeliveryState::Lost; targets]);
    }
    if reply.len() != targets {
        return Err(corrupt("wrong number of delivery states"));
    }
    reply
        .iter()
        .map(|s| match s.as_str() {
            "d" => Ok(DeliveryState::Delivered),
            "p" => Ok(DeliveryState::Pending),
            "e" => Ok(DeliveryState::Expired),
            _ => Err(corrupt("a delivery state")),
        })
        .collect()
}

/// Decodes the claim script's reply (see [`CLAIM`](super::scripts::CLAIM)).
pub(super) fn parse_claim(reply: Vec<String>) -> Result<Claim, StorageError> {
    let mut reply = reply.into_iter();
    match (reply.next().as_deref(), reply.next()) {
        (Some("acquired"), None) => Ok(Claim::Acquired),
        (Some("progress"), Some(left)) => Ok(Claim::InProgress {
            retry_after: Duration::from_millis(parse_u64(&left, "a lease")?),
        }),
        (Some("done"), Some(outcome)) => Ok(Claim::Done(outcome)),
        (Some("limit"), Some(limit)) => {
            let limit = parse_u64(&limit, "a dedup limit")?;
            Err(Limit::DedupRecords(usize::try_from(limit).unwrap_or(usize::MAX)).into())
        }
        _ => Err(corrupt("a dedup claim")),
    }
}

/// Decodes one reap script's reply (see [`REAP`](super::scripts::REAP)) into `departures`;
/// returns whether there may be more to reap.
pub(super) fn parse_reap(
    reply: &[String],
    departures: &mut Vec<Departure>,
) -> Result<bool, StorageError> {
    let (more, rest) = reply.split_first().ok_or_else(|| corrupt("no reap flag"))?;
    if rest.len() % 3 != 0 {
        return Err(corrupt("a departure"));
    }
    for d in rest.chunks_exact(3) {
        departures.push(Departure {
            user: UserId::from(d[0].as_str()),
            client: parse_client(d[1].clone())?,
            user_went_offline: d[2] == "1",
        });
    }
    Ok(more == "1")
}

/// Decodes one page of a room (see [`MEMBERS`](super::scripts::MEMBERS)) into `members`;
/// returns the cursor of the next page, `0` after the last.
pub(super) fn parse_members_page(
    page: Vec<String>,
    members: &mut HashSet<Member>,
) -> Result<String, StorageError> {
    let mut page = page.into_iter();
    let cursor = page.next().ok_or_else(|| corrupt("no room cursor"))?;
    for m in page {
        members.insert(parse_member(&m)?);
    }
    Ok(cursor)
}

/// Decodes a member as the scripts write it: `u:USER` or `c:CLIENT:USER`.
fn parse_member(s: &str) -> Result<Member, StorageError> {
    if let Some(user) = s.strip_prefix("u:") {
        return Ok(Member::User(UserId::from(user)));
    }
    let (client, user) = s
        .strip_prefix("c:")
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(|| corrupt("a room member"))?;
    let client = ClientId::new(client).map_err(|_| corrupt("a room member's client id"))?;
    Ok(Member::Client(UserId::from(user), client))
}

pub(super) fn parse_client(s: String) -> Result<ClientId, StorageError> {
    ClientId::new(s).map_err(|_| corrupt("a client id"))
}

fn parse_u64(s: &str, what: &str) -> Result<u64, StorageError> {
    s.parse().map_err(|_| corrupt(what))
}

#[cfg(test)]
mod tests {
    use super::super::args::member_args;
    use super::*;

    #[test]
    fn members_decode_whatever_the_user_id() {
        let tab = ClientId::new("tab-1").expect("id");
        for user in ["ann", "", "c:tab-1:ann", "u:x", "a:b:c", "ann\n:rooms"] {
            let as_user = Member::User(UserId::from(user));
            let as_client = Member::Client(UserId::from(user), tab.clone());
            let (u, c) = member_args(&as_user);
            assert_eq!(parse_member(&format!("u:{u}")).expect("user"), as_user);
            let (u, c2) = member_args(&as_client);
            assert_eq!(c, "");
            assert_eq!(
                parse_member(&format!("c:{c2}:{u}")).expect("client"),
                as_client
            );
        }
        for bad in ["", "x:ann", "c:", "c:tab", "c:bad id:ann"] {
            assert!(
                matches!(parse_member(bad), Err(StorageError::Corrupt(_))),
                "{bad:?} was accepted"
            );
        }
    }
}
