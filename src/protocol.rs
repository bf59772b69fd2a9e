//! The wire format of `docs/spec.md`: request and response bodies, and protocol errors as HTTP
//! responses.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::id::{ClientId, MessageId};
use crate::identity::Rejection;
use crate::storage::{DEFAULT_NAMESPACE, Epoch, Limit, Position, StorageError, StoredMessage};

fn is_default_namespace(ns: &Arc<str>) -> bool {
    &**ns == DEFAULT_NAMESPACE
}

/// The query of a receiving `GET`, borrowed from the query string where nothing needs
/// decoding: a poll is the hot path, and its values are short ASCII.
#[derive(Debug, Default)]
pub(crate) struct PollQuery<'a> {
    pub(crate) client: Option<Cow<'a, str>>,
    pub(crate) cursor: Option<Cow<'a, str>>,
    pub(crate) epoch: Option<Cow<'a, str>>,
    pub(crate) ns: Option<Cow<'a, str>>,
}

/// Decodes one `key=value` pair of a query through `serde_urlencoded`: for a pair holding `%`
/// or `+`, which decoding changes.
fn decoded_pair(pair: &str) -> (Cow<'_, str>, Cow<'_, str>) {
    serde_urlencoded::from_str::<Vec<(String, String)>>(pair)
        .ok()
        .and_then(|pairs| pairs.into_iter().next())
        .map_or((Cow::Borrowed(""), Cow::Borrowed("")), |(k, v)| {
            (Cow::Owned(k), Cow::Owned(v))
        })
}

/// The `key=value` pairs of a query, each borrowed as it is where it holds no `%` or `+`
/// (decoding would change nothing), decoded otherwise. One pass over the bytes finds each
/// pair's end, its `=` and whether it needs decoding: a poll's query is parsed on every
/// request, and splitting it in three passes cost several times as much.
fn query_pairs(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    let bytes = query.as_bytes();
    let mut start = 0;
    std::iter::from_fn(move || {
        while start < bytes.len() {
            let (mut end, mut eq, mut encoded) = (start, None, false);
            while end < bytes.len() {
                match bytes[end] {
                    b'&' => break,
                    b'=' if eq.is_none() => eq = Some(end),
                    b'%' | b'+' => encoded = true,
                    _ => {}
                }
                end += 1;
            }
            // `&` and `=` are ASCII: every slice below starts and ends on a char boundary.
            let pair = &query[start..end];
            let (from, eq_at) = (start, eq);
            start = end + 1;
            if pair.is_empty() {
                continue;
            }
            if encoded {
                return Some(decoded_pair(pair));
            }
            return Some(match eq_at {
                Some(eq) => (
                    Cow::Borrowed(&query[from..eq]),
                    Cow::Borrowed(&query[eq + 1..from + pair.len()]),
                ),
                None => (Cow::Borrowed(pair), Cow::Borrowed("")),
            });
        }
        None
    })
}

impl<'a> PollQuery<'a> {
    /// Splits the query into its known fields. Unknown fields are ignored; a known one given
    /// twice is an error, since a client that does that does not mean one of them.
    fn fields(query: &'a str) -> Result<Self, ProtocolError> {
        let mut q = PollQuery::default();
        for (key, value) in query_pairs(query) {
            let slot = match &*key {
                "client" => &mut q.client,
                "cursor" => &mut q.cursor,
                "epoch" => &mut q.epoch,
                "ns" => &mut q.ns,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(ProtocolError::InvalidQuery(format!(
                    "`{key}` is given more than once"
                )));
            }
        }
        Ok(q)
    }
}
/// A validated [`PollQuery`].
#[derive(Debug)]
pub(crate) struct Poll {
    pub(crate) client: ClientId,
    pub(crate) cursor: Option<(Epoch, Position)>,
    /// The namespaces to read, at least one, without repeats; shared by each read of the poll
    /// and what it announces.
    pub(crate) namespaces: Arc<[Arc<str>]>,
}

/// Up to this many namespaces in a poll are told apart by a scan, beyond by a set.
const SCAN_LIMIT: usize = 16;

/// The highest position a client may send: positions stay below 2^53, where JavaScript's
/// numbers are exact.
pub(crate) const MAX_POSITION: Position = (1 << 53) - 1;

/// The longest namespace name.
pub(crate) const MAX_NAMESPACE_LEN: usize = 64;

/// Checks a namespace name: `/` followed by up to 63 visible ASCII characters other than `,`.
pub(crate) fn check_namespace(ns: &str) -> Result<(), String> {
    let well_formed = ns.starts_with('/')
        && ns.len() <= MAX_NAMESPACE_LEN
        && ns.bytes().all(|b| b.is_ascii_graphic() && b != b',');
    if well_formed {
        Ok(())
    } else {
        Err(format!(
            "namespace {ns:?} must start with '/' and be at most {MAX_NAMESPACE_LEN} visible ASCII characters without ','"
        ))
    }
}

impl PollQuery<'_> {
    #[cfg(test)]
    pub(crate) fn parse(query: Option<&str>) -> Result<Poll, ProtocolError> {
        Self::parse_with(query, usize::MAX, |_| None)
    }

    /// Validates a poll's query. `known` gives the shared name of a namespace the application
    /// has, so that a poll does not allocate its names anew.
    pub(crate) fn parse_with(
        query: Option<&str>,
        max_namespaces: usize,
        known: impl Fn(&str) -> Option<Arc<str>>,
    ) -> Result<Poll, ProtocolError> {
        let q = PollQuery::fields(query.unwrap_or(""))?;
        let client = q
            .client
            .ok_or_else(|| ProtocolError::InvalidQuery("`client` is required".to_owned()))?;
        let client = ClientId::new(&client)
            .map_err(|e| ProtocolError::InvalidQuery(format!("`client` {e}")))?;
        let cursor = match (q.cursor, q.epoch) {
            (None, None) => None,
            (Some(c), Some(e)) => {
                // Digits only: `parse` would also take a leading `+`, which the spec does not.
                let pos = Some(&*c)
                    .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|c| c.parse::<Position>().ok())
                    .filter(|pos| *pos <= MAX_POSITION)
                    .ok_or_else(|| {
                        ProtocolError::InvalidQuery(format!(
                            "`cursor` must be an integer from 0 to {MAX_POSITION}"
                        ))
                    })?;
                if e.is_empty() || e.len() > 64 {
                    return Err(ProtocolError::InvalidQuery(
                        "`epoch` must be 1 to 64 characters".to_owned(),
                    ));
                }
                Some((Epoch::new(&*e), pos))
            }
            _ => {
                return Err(ProtocolError::InvalidQuery(
                    "send `cursor` and `epoch` together, or neither".to_owned(),
                ));
            }
        };
        let mut namespaces: Vec<Arc<str>> = Vec::new();
        // Repeats are dropped by a scan while the list is short, as it always is for an honest
        // client, and by a set beyond: the list is the client's, of any length.
        let mut seen: crate::hash::HashSet<&str> = crate::hash::HashSet::default();
        let list = q.ns.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        for (i, ns) in list.split(',').enumerate() {
            if i == max_namespaces {
                return Err(ProtocolError::TooManyNamespaces(max_namespaces));
            }
            check_namespace(ns).map_err(|e| ProtocolError::InvalidQuery(format!("`ns`: {e}")))?;
            let repeated = if i < SCAN_LIMIT {
                namespaces.iter().any(|n| &**n == ns)
            } else {
                if seen.is_empty() {
                    seen.extend(list.split(',').take(SCAN_LIMIT));
                }
                !seen.insert(ns)
            };
            if !repeated {
                namespaces.push(known(ns).unwrap_or_else(|| ns.into()));
            }
        }
        Ok(Poll {
            client,
            cursor,
            namespaces: namespaces.into(),
        })
    }
}

/// The body of a `GET` response.
#[derive(Debug, Serialize)]
pub(crate) struct PollResponse<'a> {
    pub(crate) epoch: &'a Epoch,
    pub(crate) cursor: Position,
    /// Stored messages serialize as the spec's `{pos, event, data}`.
    pub(crate) messages: &'a [StoredMessage],
    pub(crate) volatile: &'a [WireVolatile],
    /// In the answer to a first poll (no cursor): the server's limits, so a client need not
    /// guess them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) limits: Option<&'a Limits>,
    /// Set when a newer poll of the same client id ended this one: if the client did not
    /// send a newer poll itself, another instance (a duplicated tab) uses its id.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) taken_over: bool,
}

impl PollResponse<'_> {
    /// The answer's JSON, as its `Serialize` form writes it, into a buffer of about `capacity`
    /// bytes. Written by hand because it is the hot path: the field names are literals, and
    /// only the strings that vary (the epoch, namespaces, event names) go through JSON
    /// escaping. The payloads are already JSON.
    pub(crate) fn to_json(&self, capacity: usize) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            // Writing a `str` into a `Vec` cannot fail.
            let _ = serde_json::to_writer(&mut *out, s);
        }
        fn number(out: &mut Vec<u8>, n: u64) {
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        }
        let mut out = Vec::with_capacity(capacity);
        out.extend_from_slice(b"{\"epoch\":");
        string(&mut out, self.epoch.as_str());
        out.extend_from_slice(b",\"cursor\":");
        number(&mut out, self.cursor);
        out.extend_from_slice(b",\"messages\":[");
        for (i, m) in self.messages.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"pos\":");
            number(&mut out, m.pos);
            if !is_default_namespace(&m.ns) {
                out.extend_from_slice(b",\"ns\":");
                string(&mut out, &m.ns);
            }
            out.extend_from_slice(b",\"event\":");
            string(&mut out, &m.event);
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(m.data.get().as_bytes());
            if m.ack {
                out.extend_from_slice(b",\"ack\":true");
            }
            out.push(b'}');
        }
        out.extend_from_slice(b"],\"volatile\":[");
        for (i, v) in self.volatile.iter().enumerate() {
            out.extend_from_slice(if i > 0 { b",{" } else { b"{" });
            if !is_default_namespace(&v.ns) {
                out.extend_from_slice(b"\"ns\":");
                string(&mut out, &v.ns);
                out.push(b',');
            }
            out.extend_from_slice(b"\"event\":");
            string(&mut out, &v.event);
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(v.data.get().as_bytes());
            out.push(b'}');
        }
        out.push(b']');
        if let Some(limits) = self.limits {
            out.extend_from_slice(b",\"limits\":");
            // Numbers only: it always serializes.
            let _ = serde_json::to_writer(&mut out, limits);
        }
        if self.taken_over {
            out.extend_from_slice(b",\"taken_over\":true");
        }
        out.push(b'}');
        out
    }
}

/// The limits a server advertises in its handshake (spec §6).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Limits {
    pub(crate) hold_ms: u64,
    pub(crate) max_body: usize,
    pub(crate) max_messages: usize,
    pub(crate) max_event_len: usize,
    pub(crate) max_message_bytes: usize,
    pub(crate) max_data_depth: usize,
    pub(crate) batch_limit: usize,
    pub(crate) max_batch_bytes: usize,
    pub(crate) max_namespaces: usize,
    pub(crate) dedup_window_ms: u64,
    pub(crate) pending_wait_ms: u64,
    pub(crate) handler_lease_ms: u64,
    pub(crate) presence_ttl_ms: u64,
}

/// A volatile message as a client receives it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WireVolatile {
    #[serde(skip_serializing_if = "is_default_namespace")]
    pub(crate) ns: Arc<str>,
    pub(crate) event: Arc<str>,
    pub(crate) data: Arc<RawValue>,
}

/// The body of a sending `POST`. Unknown fields are ignored, here and in each message, so that a
/// client of a later protocol version can talk to this server.
#[derive(Debug, Deserialize)]
pub(crate) struct SendRequest {
    pub(crate) client: ClientId,
    pub(crate) messages: Vec<ClientMessage>,
}

/// One message of a [`SendRequest`].
#[derive(Debug, Deserialize)]
pub(crate) struct ClientMessage {
    pub(crate) id: MessageId,
    #[serde(default)]
    pub(crate) ns: Option<String>,
    /// Absent in a reply, required otherwise.
    #[serde(default)]
    pub(crate) event: Option<String>,
    #[serde(default)]
    pub(crate) data: Option<Box<RawValue>>,
    /// Set in a reply: the position of the message that asked for it (§4c).
    #[serde(default)]
    pub(crate) reply_to: Option<Position>,
}

/// The body of a `POST` response.
#[derive(Debug, Serialize)]
pub(crate) struct SendResponse {
    /// The storage's epoch: message ids are remembered within one epoch only.
    pub(crate) epoch: Epoch,
    pub(crate) acks: Vec<Ack>,
}

/// The acknowledgement of one client message.
#[derive(Debug, Serialize)]
pub(crate) struct Ack {
    pub(crate) id: MessageId,
    #[serde(flatten)]
    pub(crate) outcome: AckOutcome,
    /// For `pending`: how long to wait before sending the message again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) retry_after_ms: Option<u64>,
}

/// How a client message ended; stored verbatim in its dedup record so a retry gets it again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AckOutcome {
    Reply(Box<RawValue>),
    Error(ErrorBody),
    Pending(bool),
}

/// `{"code": …, "message": …}`, the error object of the protocol.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// Stable, for programs.
    pub code: String,
    /// For people.
    pub message: String,
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: &'a ErrorBody,
}

/// Everything a request on the route can do wrong, or meet, that becomes an error response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProtocolError {
    #[error("the query is invalid: {0}")]
    InvalidQuery(String),
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    InvalidField(String),
    #[error("the request body is larger than the limit of {0} bytes")]
    BodyTooLarge(usize),
    #[error("the request body is larger than a body limit of the server allows")]
    BodyLimitedOutside,
    #[error("a request may carry at most {limit} messages; this one has {got}")]
    TooManyMessages { limit: usize, got: usize },
    #[error("send the body as `Content-Type: application/json`")]
    UnsupportedMediaType,
    #[error("use GET to receive and POST to send")]
    MethodNotAllowed,
    #[error("the request body could not be read: {0}")]
    BodyRead(String),
    #[error("no namespace {0:?} on this server")]
    UnknownNamespace(String),
    #[error("a poll may read at most {0} namespaces")]
    TooManyNamespaces(usize),
    #[error("message {id:?} carries {size} bytes of data, more than the limit of {limit}")]
    MessageTooLarge {
        id: String,
        size: usize,
        limit: usize,
    },
    #[error("message {id:?} nests its data deeper than {limit} levels")]
    DataTooDeep { id: String, limit: usize },
    #[error("the message id {0:?} is given twice in one request")]
    DuplicateId(String),
    #[error("the request body did not arrive within {0} ms")]
    BodyTimeout(u128),
    #[error("this user has {0} polls waiting already, the most allowed")]
    TooManyPolls(usize),
    #[error("this server holds as many waiting polls as it may ({0}); try again")]
    ServerBusy(usize),
    #[error("{0}")]
    Storage(#[from] StorageError),
    /// The identity function or a namespace's authorization refused: its own response.
    #[error("refused by the application ({})", .0.status())]
    Rejected(Rejection),
}

impl ProtocolError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProtocolError::InvalidQuery(_)
            | ProtocolError::MalformedJson(_)
            | ProtocolError::InvalidField(_)
            | ProtocolError::UnknownNamespace(_)
            | ProtocolError::TooManyNamespaces(_)
            | ProtocolError::DataTooDeep { .. }
            | ProtocolError::DuplicateId(_)
            | ProtocolError::BodyRead(_) => StatusCode::BAD_REQUEST,
            ProtocolError::BodyTooLarge(_)
            | ProtocolError::BodyLimitedOutside
            | ProtocolError::TooManyMessages { .. }
            | ProtocolError::MessageTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProtocolError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProtocolError::TooManyPolls(_) | ProtocolError::Storage(StorageError::Limit(_)) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ProtocolError::ServerBusy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProtocolError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProtocolError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProtocolError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProtocolError::Rejected(r) => r.status(),
        }
    }

    pub(crate) fn code(&self) -> &'static str {
        match self {
            ProtocolError::InvalidQuery(_) => "invalid_query",
            ProtocolError::MalformedJson(_) => "malformed_json",
            ProtocolError::InvalidField(_) => "invalid_field",
            ProtocolError::BodyRead(_) => "body_unreadable",
            ProtocolError::BodyTooLarge(_) | ProtocolError::BodyLimitedOutside => "body_too_large",
            ProtocolError::TooManyMessages { .. } => "too_many_messages",
            ProtocolError::UnsupportedMediaType => "unsupported_media_type",
            ProtocolError::MethodNotAllowed => "method_not_allowed",
            ProtocolError::UnknownNamespace(_) => "unknown_namespace",
            ProtocolError::TooManyNamespaces(_) => "too_many_namespaces",
            ProtocolError::MessageTooLarge { .. } => "message_too_large",
            ProtocolError::DataTooDeep { .. } => "data_too_deep",
            ProtocolError::DuplicateId(_) => "duplicate_id",
            ProtocolError::BodyTimeout(_) => "body_timeout",
            ProtocolError::TooManyPolls(_) => "too_many_polls",
            ProtocolError::ServerBusy(_) => "server_busy",
            ProtocolError::Storage(StorageError::Limit(Limit::ClientsPerUser(_))) => {
                "too_many_clients"
            }
            ProtocolError::Storage(StorageError::Limit(_)) => "too_many_in_progress",
            ProtocolError::Storage(_) => "storage_unavailable",
            ProtocolError::Rejected(_) => "rejected",
        }
    }

    pub(crate) fn into_response(self) -> Response<Full<Bytes>> {
        if let ProtocolError::Rejected(rejection) = self {
            return rejection.into_response();
        }
        let status = self.status();
        let body = ErrorBody {
            code: self.code().to_owned(),
            message: self.to_string(),
        };
        let mut response = error_response(status, &body);
        if let ProtocolError::MethodNotAllowed = self {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
        }
        if let Some(seconds) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
        }
        response
    }

    /// `Retry-After`, in seconds, where waiting is what helps.
    fn retry_after(&self) -> Option<&'static str> {
        match self {
            // A client id frees up only when one of the user's clients has been gone for the
            // presence TTL: no use asking every second.
            ProtocolError::Storage(StorageError::Limit(Limit::ClientsPerUser(_))) => Some("10"),
            ProtocolError::Storage(_)
            | ProtocolError::TooManyPolls(_)
            | ProtocolError::ServerBusy(_) => Some("1"),
            _ => None,
        }
    }
}

/// A response with status `status` and the JSON error body `body`.
pub(crate) fn error_response(status: StatusCode, body: &ErrorBody) -> Response<Full<Bytes>> {
    let mut response = json_response(&ErrorEnvelope { error: body });
    *response.status_mut() = status;
    response
}

/// A `200` response with `value` as its JSON body.
pub(crate) fn json_response<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    json_response_sized(value, 128)
}

/// [`json_response`], written into a buffer of about `capacity` bytes, so that a large body
/// is not grown (and copied) step by step.
pub(crate) fn json_response_sized<T: Serialize>(
    value: &T,
    capacity: usize,
) -> Response<Full<Bytes>> {
    let mut body = Vec::with_capacity(capacity);
    // Our wire types hold only strings, numbers and already-valid JSON, which always serialize.
    if serde_json::to_writer(&mut body, value).is_err() {
        body = b"{}".to_vec();
    }
    json_body_response(body)
}

/// A `200` response with `body`, already JSON.
pub(crate) fn json_body_response(body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Polls must never be answered from a cache: each one is a fresh read.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written poll answer is byte for byte its `Serialize` form, in every shape:
    /// empty, messages with and without a namespace or an ask, volatile messages, the limits,
    /// a taken-over poll, and strings that need escaping.
    #[test]
    fn a_poll_answer_is_written_as_its_serde_form() {
        let raw = |s: &str| -> Arc<RawValue> {
            Arc::from(RawValue::from_string(s.to_owned()).expect("JSON"))
        };
        let message = |pos, ns: &str, event: &str, data: &str, ack| StoredMessage {
            pos,
            ns: ns.into(),
            event: event.into(),
            data: raw(data),
            ack,
        };
        let messages = [
            message(1, "/", "tick", r#"{"seq":1}"#, false),
            message(2, "/chat", "say \"hi\"\n", r#""é""#, true),
            message(9_007_199_254_740_991, "/", "", "null", false),
        ];
        let volatile = [
            WireVolatile {
                ns: "/".into(),
                event: "typing".into(),
                data: raw("[1,2]"),
            },
            WireVolatile {
                ns: "/chat\u{1}".into(),
                event: "t".into(),
                data: raw("{}"),
            },
        ];
        let limits = Limits {
            hold_ms: 25_000,
            max_body: 1,
            max_messages: 2,
            max_event_len: 3,
            max_message_bytes: 4,
            max_data_depth: 5,
            batch_limit: 6,
            max_batch_bytes: 7,
            max_namespaces: 8,
            dedup_window_ms: 9,
            pending_wait_ms: 10,
            handler_lease_ms: 11,
            presence_ttl_ms: 12,
        };
        let epoch = Epoch::new("e\"poch");
        for (messages, volatile, limits, taken_over) in [
            (&messages[..0], &volatile[..0], None, false),
            (&messages[..], &volatile[..0], None, false),
            (&messages[..1], &volatile[..], Some(&limits), false),
            (&messages[..0], &volatile[1..], None, true),
            (&messages[..], &volatile[..], Some(&limits), true),
        ] {
            let answer = PollResponse {
                epoch: &epoch,
                cursor: 42,
                messages,
                volatile,
                limits,
                taken_over,
            };
            let serde = serde_json::to_vec(&answer).expect("serialize");
            assert_eq!(
                String::from_utf8(answer.to_json(16)).expect("UTF-8"),
                String::from_utf8(serde).expect("UTF-8")
            );
        }
    }

    /// The one-pass split gives what `serde_urlencoded` gives for the whole query, pair by
    /// pair, empty pairs dropped.
    #[test]
    fn query_pairs_agree_with_form_decoding() {
        for query in [
            "",
            "&",
            "&&client=a&&",
            "client=tab1&cursor=12&epoch=e1",
            "client",
            "client=",
            "=x",
            "client=a=b",
            "ns=%2Fchat,%2F&client=t",
            "ns=/chat+x&client=t%20u",
            "cursor=1&cursor=2",
            "é=ü&client=ñ",
            "a%3Db=c",
        ] {
            let ours: Vec<(String, String)> = query_pairs(query)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let theirs: Vec<(String, String)> =
                serde_urlencoded::from_str(query).expect("a valid form");
            assert_eq!(ours, theirs, "for {query:?}");
        }
    }

    #[test]
    fn poll_query_needs_a_valid_client() {
        assert!(PollQuery::parse(None).is_err());
        assert!(PollQuery::parse(Some("client=bad%20id")).is_err());
        let p = PollQuery::parse(Some("client=tab1")).expect("valid");
        assert!(p.cursor.is_none());
    }

    #[test]
    fn poll_query_decodes_escapes_ignores_unknown_fields_and_refuses_repeats() {
        let p = PollQuery::parse(Some("client=tab1&ns=%2Fchat,/&later=1")).expect("valid");
        assert_eq!(*p.namespaces, [Arc::from("/chat"), Arc::from("/")]);
        assert!(PollQuery::parse(Some("client=tab1&client=tab2")).is_err());
        assert!(
            PollQuery::parse(Some("cursor=1&epoch=e")).is_err(),
            "no client"
        );
    }

    #[test]
    fn poll_query_takes_cursor_and_epoch_together() {
        let p = PollQuery::parse(Some("client=tab1&cursor=42&epoch=e1")).expect("valid");
        assert_eq!(p.cursor, Some((Epoch::new("e1"), 42)));
        assert!(PollQuery::parse(Some("client=tab1&cursor=42")).is_err());
        assert!(PollQuery::parse(Some("client=tab1&cursor=-1&epoch=e1")).is_err());
        // Digits only, as the spec says: no sign, nothing empty.
        for cursor in ["%2B5", "", "4%202"] {
            let query = format!("client=tab1&cursor={cursor}&epoch=e1");
            assert!(PollQuery::parse(Some(&query)).is_err(), "{query}");
        }
        let p = PollQuery::parse(Some("client=tab1&cursor=007&epoch=e1")).expect("valid");
        assert_eq!(p.cursor, Some((Epoch::new("e1"), 7)));
    }

    #[test]
    fn poll_query_lists_namespaces_defaulting_to_the_root() {
        let p = PollQuery::parse(Some("client=tab1")).expect("valid");
        assert_eq!(*p.namespaces, [Arc::from("/")]);
        let p = PollQuery::parse(Some("client=tab1&ns=/chat,/,/chat")).expect("valid");
        assert_eq!(*p.namespaces, [Arc::from("/chat"), Arc::from("/")]);
        assert!(PollQuery::parse(Some("client=tab1&ns=chat")).is_err());
        assert!(PollQuery::parse(Some("client=tab1&ns=/a,,/b")).is_err());
    }

    #[test]
    fn ack_outcomes_serialize_as_the_spec_says() {
        let reply = Ack {
            id: MessageId::new("m1").expect("id"),
            outcome: AckOutcome::Reply(RawValue::from_string("3".into()).expect("json")),
            retry_after_ms: None,
        };
        assert_eq!(
            serde_json::to_string(&reply).expect("json"),
            r#"{"id":"m1","reply":3}"#
        );
        let pending = Ack {
            id: MessageId::new("m2").expect("id"),
            outcome: AckOutcome::Pending(true),
            retry_after_ms: Some(250),
        };
        assert_eq!(
            serde_json::to_string(&pending).expect("json"),
            r#"{"id":"m2","pending":true,"retry_after_ms":250}"#
        );
    }

    #[test]
    fn errors_carry_status_code_and_allow() {
        let r = ProtocolError::MethodNotAllowed.into_response();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET, POST");
    }
}
