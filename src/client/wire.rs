//! The wire format of `docs/spec.md` as the client sees it, and one request/response exchange.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::error::ConnectionError;
use crate::storage::DEFAULT_NAMESPACE;

/// The body of a `GET` response (§3).
#[derive(Debug, Deserialize)]
pub(crate) struct PollBody {
    pub(crate) epoch: String,
    pub(crate) cursor: u64,
    #[serde(default)]
    pub(crate) messages: Vec<WireMessage>,
    #[serde(default)]
    pub(crate) volatile: Vec<WireVolatile>,
    /// In a handshake's answer: the server's limits (spec §6).
    #[serde(default)]
    pub(crate) limits: Option<WireLimits>,
    /// A newer poll with this client's id ended this one (spec §3 step 6).
    #[serde(default)]
    pub(crate) taken_over: bool,
}

/// The part of a handshake's `limits` this client uses.
#[derive(Debug, Deserialize)]
pub(crate) struct WireLimits {
    pub(crate) max_messages: Option<usize>,
    pub(crate) max_event_len: Option<usize>,
}

/// A stored message in a [`PollBody`].
#[derive(Debug, Deserialize)]
pub(crate) struct WireMessage {
    pub(crate) pos: u64,
    /// Its namespace; absent for `/` (§4a).
    #[serde(default = "root")]
    pub(crate) ns: String,
    pub(crate) event: String,
    #[serde(default)]
    pub(crate) data: Value,
    /// The sender waits for this client's reply (§4c).
    #[serde(default)]
    pub(crate) ack: bool,
}

/// A volatile message in a [`PollBody`].
#[derive(Debug, Deserialize)]
pub(crate) struct WireVolatile {
    /// Its namespace; absent for `/` (§4a).
    #[serde(default = "root")]
    pub(crate) ns: String,
    pub(crate) event: String,
    #[serde(default)]
    pub(crate) data: Value,
}

/// The body of a `POST` (§4).
#[derive(Debug, Serialize)]
pub(crate) struct SendBody<'a> {
    pub(crate) client: &'a str,
    pub(crate) messages: Vec<OutMessage<'a>>,
}

/// One message of a [`SendBody`].
#[derive(Debug, Serialize)]
pub(crate) struct OutMessage<'a> {
    pub(crate) id: &'a str,
    /// Left out for `/`, as the spec allows (§4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ns: Option<&'a str>,
    /// Left out of a reply (§4c).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) event: Option<&'a str>,
    pub(crate) data: &'a RawValue,
    /// Set in a reply: the position of the message that asked for it (§4c).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reply_to: Option<u64>,
}

/// The body of a `POST` response.
#[derive(Debug, Deserialize)]
pub(crate) struct AcksBody {
    pub(crate) acks: Vec<WireAck>,
}

/// One acknowledgement: exactly one of `reply`, `error`, `pending` is present.
#[derive(Debug, Deserialize)]
pub(crate) struct WireAck {
    pub(crate) id: String,
    /// `Some(Value::Null)` for `"reply": null`, `None` if there is no `reply` field.
    #[serde(default, deserialize_with = "present")]
    pub(crate) reply: Option<Value>,
    #[serde(default)]
    pub(crate) error: Option<WireError>,
    #[serde(default)]
    pub(crate) pending: bool,
    /// With `pending`: how long the server asks to wait before sending it again.
    #[serde(default)]
    pub(crate) retry_after_ms: Option<u64>,
}

/// `{"code": …, "message": …}`.
#[derive(Debug, Deserialize)]
pub(crate) struct WireError {
    #[serde(default)]
    pub(crate) code: String,
    #[serde(default)]
    pub(crate) message: String,
}

#[derive(Debug, Deserialize)]
struct ErrorEnvelope {
    error: WireError,
}

/// The namespace of a message that names none.
fn root() -> String {
    DEFAULT_NAMESPACE.to_owned()
}

/// A field that is present, even as `null`, deserializes to `Some`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A failed exchange: the error, and the `Retry-After` the server asked for, if any (spec §5:
/// a floor under the backoff).
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) error: ConnectionError,
    pub(crate) retry_after: Option<Duration>,
}

impl From<ConnectionError> for Failed {
    fn from(error: ConnectionError) -> Self {
        Failed {
            error,
            retry_after: None,
        }
    }
}

impl From<reqwest::Error> for Failed {
    fn from(error: reqwest::Error) -> Self {
        ConnectionError::from(error).into()
    }
}

/// Sends `request` and reads a `200` body as `T`, or turns the outcome into a [`Failed`].
/// Bodies past `limit` bytes are refused rather than buffered.
pub(crate) async fn exchange<T: DeserializeOwned>(
    request: reqwest::RequestBuilder,
    limit: usize,
) -> Result<T, Failed> {
    let response = request.send().await?;
    // Whole seconds, as this server sends it (an HTTP date is not worth parsing here).
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    read(response, limit)
        .await
        .map_err(|error| Failed { error, retry_after })
}

async fn read<T: DeserializeOwned>(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<T, ConnectionError> {
    let status = response.status();
    // An error body is for people; a few KiB of it is plenty.
    let body_limit = if status.is_success() {
        limit
    } else {
        limit.min(64 * 1024)
    };
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > body_limit {
            return Err(ConnectionError::InvalidResponse(format!(
                "the body of a {status} response is larger than {body_limit} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    let status = status.as_u16();
    match status {
        200 => serde_json::from_slice(&body).map_err(|e| {
            ConnectionError::InvalidResponse(format!("the body of a 200 response: {e}"))
        }),
        400..=499 => {
            let (code, message) = error_of(status, &body);
            Err(ConnectionError::Rejected {
                status,
                code,
                message,
            })
        }
        500..=599 => {
            let (code, message) = error_of(status, &body);
            Err(ConnectionError::Server {
                status,
                code,
                message,
            })
        }
        other => Err(ConnectionError::InvalidResponse(format!(
            "unexpected status {other}"
        ))),
    }
}

/// The code and message of an error body; if it is not the protocol's (a proxy's page, an
/// application's own rejection), `http_<status>` and the start of the body as text.
fn error_of(status: u16, body: &[u8]) -> (String, String) {
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(ErrorEnvelope { error }) if !error.code.is_empty() => (error.code, error.message),
        _ => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.trim().chars().take(200).collect();
            (format!("http_{status}"), text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_null_reply_is_told_apart_from_no_reply() {
        let acks: AcksBody = serde_json::from_str(
            r#"{"acks":[{"id":"a","reply":null},{"id":"b","pending":true},{"id":"c","error":{"code":"x","message":"y"}}]}"#,
        )
        .expect("valid");
        assert_eq!(acks.acks[0].reply, Some(Value::Null));
        assert!(acks.acks[1].reply.is_none() && acks.acks[1].pending);
        assert!(acks.acks[2].reply.is_none());
        assert_eq!(
            acks.acks[2].error.as_ref().map(|e| e.code.as_str()),
            Some("x")
        );
    }

    #[test]
    fn a_poll_body_parses_as_in_the_spec() {
        let body: PollBody = serde_json::from_str(
            r#"{"epoch":"q7c1f0a9","cursor":42,"messages":[{"pos":41,"event":"chat","data":{"from":"ann","text":"hi"}},{"pos":42,"event":"news"}],"volatile":[{"event":"typing","data":{"from":"bob"}}]}"#,
        )
        .expect("valid");
        assert_eq!(body.cursor, 42);
        assert_eq!(body.messages[1].data, Value::Null);
        assert_eq!(body.volatile[0].event, "typing");
    }

    #[test]
    fn namespaces_default_to_the_root_as_in_the_spec() {
        let body: PollBody = serde_json::from_str(
            r#"{"epoch":"q7c1f0a9","cursor":44,"messages":[{"pos":43,"event":"news","data":1},{"pos":44,"ns":"/chat","event":"said","data":{"from":"bob","text":"yo"}}],"volatile":[{"ns":"/chat","event":"typing"},{"event":"x"}]}"#,
        )
        .expect("valid");
        assert_eq!(body.messages[0].ns, "/");
        assert_eq!(body.messages[1].ns, "/chat");
        assert_eq!(body.volatile[0].ns, "/chat");
        assert_eq!(body.volatile[1].ns, "/");
    }

    #[test]
    fn a_message_names_its_namespace_unless_it_is_the_root() {
        let data =
            serde_json::value::to_raw_value(&serde_json::json!({"text": "hi"})).expect("json");
        let body = SendBody {
            client: "c",
            messages: vec![
                OutMessage {
                    id: "c-1",
                    ns: None,
                    event: Some("a"),
                    reply_to: None,
                    data: &data,
                },
                OutMessage {
                    id: "c-2",
                    ns: Some("/chat"),
                    event: Some("say"),
                    reply_to: None,
                    data: &data,
                },
            ],
        };
        assert_eq!(
            serde_json::to_string(&body).expect("json"),
            r#"{"client":"c","messages":[{"id":"c-1","event":"a","data":{"text":"hi"}},{"id":"c-2","ns":"/chat","event":"say","data":{"text":"hi"}}]}"#
        );
    }

    #[test]
    fn error_bodies_of_other_shapes_still_explain_themselves() {
        let (code, message) = error_of(
            400,
            br#"{"error":{"code":"invalid_field","message":"bad"}}"#,
        );
        assert_eq!((code.as_str(), message.as_str()), ("invalid_field", "bad"));
        let (code, message) = error_of(502, b"<html>Bad Gateway</html>");
        assert_eq!(code, "http_502");
        assert_eq!(message, "<html>Bad Gateway</html>");
    }
}
