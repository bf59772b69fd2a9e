//! The service under fuzzing, the requests made from fuzz bytes, and the checks on every answer.
//!
//! Shared, as a file, by the `service` fuzz target (`fuzz/fuzz_targets/service.rs`, nightly,
//! libFuzzer) and its replay on stable (`tests/fuzz_service.rs`), so both check the same things.
//!
//! One fuzz input is one [`Case`]: a few requests against a layer built for that case alone, so
//! that an input that fails fails again on its own, with bounds set small enough for the fuzzer
//! to meet each of them. The requests are decoded with `arbitrary` from the bytes; where the
//! fuzzer would take long to find structure (a batch of messages, a query with a cursor from
//! the last answer), the bytes pick among pieces close to valid ones.
//!
//! Every answer is checked:
//! * nothing panics, in the request or in any task it spawned (libFuzzer aborts on any panic;
//!   the replay counts them);
//! * every request is answered, within the hold time and a margin (virtual time: the runtime's
//!   clock is paused, so a 1 ms hold and the layer's timers cost no wall time);
//! * an answer on the route is JSON that serde_json reads with its default nesting limit: a
//!   `200` of the shape the spec gives for its method, or an error `{"error": {"code",
//!   "message"}}` whose status is in the spec's error table and whose code is one the table
//!   lists for that status (`401`/`403` are the application's to choose), with `Allow` on a
//!   `405` and `Retry-After` on a `429` or `503`;
//! * an answer off the route is the inner service's, untouched (or the browser client script);
//! * once the layer is dropped, none of the tasks it started outlives it.

// Each includer uses its own part of this file.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Duration;

use arbitrary::{Result as ArbResult, Unstructured};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use simpleio::{
    HandlerError, Incoming, MemoryStorage, Namespace, Presence, Rejection, Reply, SimpleIo,
    SimpleIoLayer, UserId,
};
use tokio::runtime::Runtime;
use tokio::task::JoinError;
use tower::{BoxError, Layer, ServiceExt, service_fn};

/// The route, as configured.
pub const ROUTE: &str = "/simpleio";
/// Limits small enough for the fuzzer to reach from both sides.
pub const MAX_BODY: usize = 512;
pub const MAX_MESSAGES: usize = 3;
pub const MAX_EVENT_LEN: usize = 16;
pub const MAX_DATA_DEPTH: usize = 8;
pub const MAX_MESSAGE_BYTES: usize = 160;
/// Above the scan of a short list (16), so that repeats are also found by a set.
pub const MAX_NAMESPACES: usize = 20;
/// The hold of a poll with a cursor: tiny, so a case never waits out a real one.
pub const HOLD: Duration = Duration::from_millis(1);
/// How long any request may take, in the runtime's virtual time: the hold, the short waits this
/// layer is configured with, and plenty to spare. Past it a request counts as hung.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);
/// Long enough, in virtual time, for every task a case started to finish once its layer is gone:
/// sends expire after `MESSAGE_TTL`, the reaper notices the layer is gone at its next tick.
const DRAIN: Duration = Duration::from_secs(10);
const MESSAGE_TTL: Duration = Duration::from_secs(1);
/// The user the `/chat` namespace refuses.
const BANNED: &str = "mallory";

/// The runtime a case runs on: one thread, the clock paused. With the clock paused, the runtime
/// jumps to the next timer whenever every task waits, so holds, leases and TTLs pass at once
/// and every run of an input takes the same path.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime")
}

// --- the decoded input ------------------------------------------------------------------------

/// One fuzz input: requests to one fresh layer, one after another or all at once.
#[derive(Debug)]
pub struct Case {
    pub requests: Vec<Req>,
    /// All requests in flight together (a newer poll ending an older one, a retried `POST`
    /// meeting the original), instead of each after the last one's answer.
    pub concurrent: bool,
}

#[derive(Debug, Clone)]
pub struct Req {
    pub method: Method,
    /// Everything before the query (`/simpleio`, or another path, or an absolute form).
    pub target: String,
    pub query: Option<Vec<QueryPart>>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Vec<u8>,
    /// How the body arrives: in chunks of these sizes, then its end.
    pub chunks: Vec<usize>,
    pub end: BodyEnd,
}

/// What comes after a body's last chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// The end of the body.
    Done,
    /// An error: the client went away.
    Fails,
    /// Nothing, ever: a client that stopped sending.
    Stalls,
}

/// A piece of a query string, filled in when the request is sent: the epoch and cursor of the
/// case's last poll answer are only known then.
#[derive(Debug, Clone)]
pub enum QueryPart {
    Raw(String),
    LastEpoch(String),
    LastCursor(u64),
}

/// What the case's earlier answers told, as a client would keep it.
#[derive(Debug, Default)]
struct ClientState {
    epoch: Option<String>,
    cursor: Option<u64>,
}

impl ClientState {
    /// Keeps the storage's epoch; a case's storage never loses its data, so it never changes.
    fn same_epoch(&mut self, epoch: &str) -> Result<(), &'static str> {
        match &self.epoch {
            Some(known) if known != epoch => Err("the epoch changed, with nothing lost"),
            Some(_) => Ok(()),
            None => {
                self.epoch = Some(epoch.to_owned());
                Ok(())
            }
        }
    }
}

impl Req {
    fn uri(&self, state: &ClientState) -> String {
        let Some(parts) = &self.query else {
            return self.target.clone();
        };
        let mut uri = self.target.clone();
        uri.push('?');
        for part in parts {
            match part {
                QueryPart::Raw(s) => uri.push_str(s),
                QueryPart::LastEpoch(fallback) => {
                    uri.push_str(&encode(state.epoch.as_deref().unwrap_or(fallback)))
                }
                QueryPart::LastCursor(add) => {
                    uri.push_str(&state.cursor.unwrap_or(0).saturating_add(*add).to_string())
                }
            }
        }
        uri
    }

    /// The request, or none when the fuzz bytes made a URI `http` cannot hold (a server never
    /// sees those: its HTTP parser refuses them first).
    fn build(&self, state: &ClientState) -> Option<Request<FuzzBody>> {
        let mut request = Request::builder()
            .method(self.method.clone())
            .uri(self.uri(state))
            .body(FuzzBody::new(&self.body, &self.chunks, self.end))
            .ok()?;
        for (name, value) in &self.headers {
            request.headers_mut().append(name.clone(), value.clone());
        }
        Some(request)
    }
}

/// Percent-encodes everything but unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes a case from fuzz bytes. Never fails: once the bytes run out, every choice takes its
/// first or its valid option.
pub fn decode(data: &[u8]) -> Case {
    let mut u = Unstructured::new(data);
    // `arbitrary` fails only on an empty choice, never on short data, and no choice here is
    // empty; a case of no requests would still be checked for what it left running.
    case(&mut u).unwrap_or(Case {
        requests: Vec::new(),
        concurrent: false,
    })
}

/// Decoding state: the bytes, and how often a piece comes out wrong.
struct Gen<'a, 'b> {
    u: &'b mut Unstructured<'a>,
    /// In an honest case, pieces are wrong rarely, so that the requests mostly get through (a
    /// send is handled, a poll delivers it) and the rare flaw lands deep; in the others, often.
    honest: bool,
}

impl Gen<'_, '_> {
    /// Whether this piece comes out wrong. Asked as "is it right?": once the bytes run out,
    /// `arbitrary`'s ratios all come out true, and the rest of the case had better be valid.
    fn flaw(&mut self) -> ArbResult<bool> {
        let odds = if self.honest { 40 } else { 5 };
        Ok(!self.u.ratio(odds - 1, odds)?)
    }

    fn ratio(&mut self, numerator: u8, denominator: u8) -> ArbResult<bool> {
        self.u.ratio(numerator, denominator)
    }

    fn int(&mut self, range: std::ops::RangeInclusive<usize>) -> ArbResult<usize> {
        self.u.int_in_range(range)
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> ArbResult<T> {
        self.u.choose(items).cloned()
    }

    /// A short string of the fuzzer's own, for where no pool is worth having.
    fn text(&mut self, max: usize) -> ArbResult<String> {
        let len = self.int(0..=max)?.min(self.u.len());
        Ok(String::from_utf8_lossy(self.u.bytes(len)?).into_owned())
    }

    fn bytes(&mut self, max: usize) -> ArbResult<Vec<u8>> {
        let len = self.u.arbitrary_len::<u8>()?.min(max);
        Ok(self.u.bytes(len)?.to_vec())
    }
}

fn case(u: &mut Unstructured) -> ArbResult<Case> {
    let honest = u.ratio(1, 2)?;
    let concurrent = u.ratio(1, 4)?;
    let count = u.int_in_range(1..=5)?;
    let mut g = Gen { u, honest };
    let mut requests = Vec::with_capacity(count);
    for _ in 0..count {
        // A retry: the same request again, as a client resends a POST whose answer it lost.
        let retry = match requests.len() {
            0 => None,
            n if g.ratio(1, 4)? => Some(g.int(0..=n - 1)?),
            _ => None,
        };
        let next = match retry {
            Some(i) => Req::clone(&requests[i]),
            None => request(&mut g)?,
        };
        requests.push(next);
    }
    Ok(Case {
        requests,
        concurrent,
    })
}

fn request(g: &mut Gen) -> ArbResult<Req> {
    let method = if g.flaw()? {
        g.pick(&[
            Method::PUT,
            Method::HEAD,
            Method::DELETE,
            Method::OPTIONS,
            Method::PATCH,
            Method::TRACE,
            Method::CONNECT,
            Method::from_bytes(b"FUZZ").expect("a valid method name"),
        ])?
    } else if g.ratio(1, 2)? {
        Method::GET
    } else {
        Method::POST
    };
    let target = if g.flaw()? {
        g.pick(&[
            "/simpleio/simpleio.js",
            "/simpleio/",
            "/simpleio/x",
            "/simpleiox",
            "/SIMPLEIO",
            "/simple%69o",
            "//simpleio",
            "/",
            "/other",
            "http://example.com/simpleio",
            "http://example.com/simpleio/simpleio.js",
            "*",
        ])?
        .to_owned()
    } else {
        ROUTE.to_owned()
    };
    let query = if method == Method::GET || g.flaw()? {
        Some(query(g)?)
    } else {
        None
    };
    let body = if g.flaw()? {
        match g.int(0..=2)? {
            0 => Vec::new(),
            _ => g.bytes(MAX_BODY * 2)?,
        }
    } else if method == Method::GET {
        Vec::new()
    } else {
        batch_body(g)?
    };
    let headers = headers(g, body.len())?;
    let mut chunks = Vec::new();
    if g.ratio(1, 4)? {
        let mut left = body.len();
        while left > 0 && chunks.len() < 8 {
            let size = g.int(1..=left)?;
            chunks.push(size);
            left -= size;
        }
    }
    let end = if g.flaw()? && g.ratio(1, 2)? {
        g.pick(&[BodyEnd::Fails, BodyEnd::Stalls])?
    } else {
        BodyEnd::Done
    };
    Ok(Req {
        method,
        target,
        query,
        headers,
        body,
        chunks,
        end,
    })
}

fn headers(g: &mut Gen, body_len: usize) -> ArbResult<Vec<(HeaderName, HeaderValue)>> {
    let mut headers = Vec::new();
    let user = if g.flaw()? {
        match g.int(0..=3)? {
            0 => None,
            1 => Some(HeaderValue::from_static(BANNED)),
            2 => Some(HeaderValue::from_static("")),
            // Not visible ASCII: the identity function's `to_str` refuses it.
            _ => HeaderValue::from_bytes(b"\xe2\x98\x83").ok(),
        }
    } else if g.ratio(3, 4)? {
        Some(HeaderValue::from_static("ann"))
    } else {
        Some(HeaderValue::from_static("bob"))
    };
    if let Some(user) = user {
        headers.push((HeaderName::from_static("x-user"), user));
    }
    let content_types = [
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        " application/json ;x=y",
        "application/jsonx",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "",
        ";",
    ];
    if g.flaw()? {
        match g.int(0..=3)? {
            0 => {}
            1 => {
                // Two of them: only the first counts.
                for _ in 0..2 {
                    let ct = g.pick(&content_types)?;
                    headers.push((header::CONTENT_TYPE, HeaderValue::from_static(ct)));
                }
            }
            2 => {
                if let Ok(ct) = HeaderValue::from_bytes(g.text(40)?.as_bytes()) {
                    headers.push((header::CONTENT_TYPE, ct));
                }
            }
            _ => {
                let ct = g.pick(&content_types)?;
                headers.push((header::CONTENT_TYPE, HeaderValue::from_static(ct)));
            }
        }
    } else {
        headers.push((
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_types[0]),
        ));
    }
    // In-process, nothing holds a body to its length; the layer must not trust one.
    let length = if g.flaw()? {
        g.pick(&[
            (body_len + 1).to_string(),
            "0".to_owned(),
            "99999999999999999999999".to_owned(),
            "abc".to_owned(),
        ])?
        .into()
    } else if g.ratio(1, 2)? {
        Some(body_len.to_string())
    } else {
        None
    };
    if let Some(length) = length
        && let Ok(value) = HeaderValue::from_str(&length)
    {
        headers.push((header::CONTENT_LENGTH, value));
    }
    Ok(headers)
}

/// A poll's query: `client`, then perhaps `cursor` and `epoch` (from the case's last answer),
/// then perhaps `ns`, or flawed versions of any of them.
fn query(g: &mut Gen) -> ArbResult<Vec<QueryPart>> {
    let mut fields: Vec<Vec<QueryPart>> = Vec::new();
    if !g.flaw()? {
        fields.push(field("client", client_query(g)?));
    }
    if g.ratio(2, 3)? {
        if !g.flaw()? || g.ratio(1, 2)? {
            fields.push(field("cursor", cursor_query(g)?));
        }
        if !g.flaw()? || g.ratio(1, 2)? {
            fields.push(field("epoch", epoch_query(g)?));
        }
    }
    if g.ratio(1, 2)? {
        fields.push(field("ns", QueryPart::Raw(ns_query(g)?)));
    }
    if g.flaw()? {
        // Repeats, odd keys, keys without `=`, in any order.
        for _ in 0..g.int(1..=3)? {
            let key = g.pick(&[
                "client", "cursor", "epoch", "ns", "%63lient", "later", "", "client+", "Client",
                "ns%00", "=", "cursor=",
            ])?;
            let value = match key {
                "client" | "%63lient" => client_query(g)?,
                "cursor" => cursor_query(g)?,
                "epoch" => epoch_query(g)?,
                "ns" => QueryPart::Raw(ns_query(g)?),
                _ => QueryPart::Raw(encode(&g.text(16)?)),
            };
            if g.ratio(1, 8)? {
                fields.push(vec![QueryPart::Raw(key.to_owned())]);
            } else {
                fields.push(field(key, value));
            }
        }
        let at = g.int(0..=fields.len() - 1)?;
        let last = fields.len() - 1;
        fields.swap(at, last);
    }
    let mut parts = Vec::new();
    for (i, field) in fields.into_iter().enumerate() {
        if i > 0 {
            let separator = if g.flaw()? {
                g.pick(&["&&", ";", "&&&"])?
            } else {
                "&"
            };
            parts.push(QueryPart::Raw(separator.to_owned()));
        }
        parts.extend(field);
    }
    Ok(parts)
}

fn field(key: &str, value: QueryPart) -> Vec<QueryPart> {
    vec![QueryPart::Raw(format!("{key}=")), value]
}

fn client_query(g: &mut Gen) -> ArbResult<QueryPart> {
    let value = if g.flaw()? {
        match g.int(0..=3)? {
            0 => g
                .pick(&[
                    "", "bad%20id", "tab+1", "%74ab1", "%ZZ", "%", "tab%2", "%C3%A9", "t%00",
                ])?
                .to_owned(),
            1 => "a".repeat(64),
            2 => "a".repeat(65),
            _ => encode(&g.text(70)?),
        }
    } else {
        tab(g)?.to_owned()
    };
    Ok(QueryPart::Raw(value))
}

fn cursor_query(g: &mut Gen) -> ArbResult<QueryPart> {
    Ok(if g.flaw()? {
        match g.int(0..=1)? {
            0 => QueryPart::Raw(
                g.pick(&[
                    "0",
                    "-1",
                    "",
                    "+1",
                    "%31",
                    "01",
                    "1.0",
                    "1e3",
                    "18446744073709551615",
                    "18446744073709551616",
                    "%201",
                ])?
                .to_owned(),
            ),
            _ => QueryPart::Raw(encode(&g.text(24)?)),
        }
    } else {
        // Mostly the last cursor, as a client sends it; past it, a client that lost track.
        QueryPart::LastCursor(if g.ratio(1, 8)? { 1 } else { 0 })
    })
}

fn epoch_query(g: &mut Gen) -> ArbResult<QueryPart> {
    Ok(if g.flaw()? {
        match g.int(0..=1)? {
            0 => QueryPart::Raw(
                g.pick(&["", "e1", "%FF", "%E2%98%83", "a+b", "x"])?
                    .to_owned()
                    + &"x".repeat(g.pick(&[0, 63, 64])?),
            ),
            _ => QueryPart::Raw(encode(&g.text(70)?)),
        }
    } else {
        // The last answer's epoch; before any answer, one from an older storage.
        QueryPart::LastEpoch("q7c1f0a9".to_owned())
    })
}

fn ns_query(g: &mut Gen) -> ArbResult<String> {
    Ok(if g.flaw()? {
        match g.int(0..=2)? {
            0 => g
                .pick(&[
                    "%2Fchat", "/nope", "chat", "", ",", "/,,/chat", "/a%2Cb", "/%20", "/%FF",
                ])?
                .to_owned(),
            1 => format!("/{}", "n".repeat(g.int(62..=64)?)),
            _ => encode(&g.text(70)?),
        }
    } else {
        match g.int(0..=5)? {
            0..=1 => "/".to_owned(),
            2 => "/chat".to_owned(),
            3 => "/,/chat".to_owned(),
            4 => "/chat,/,/chat".to_owned(),
            // Longer than the scan of a short list: repeats are then found by a set.
            _ => {
                let n = g.int(15..=MAX_NAMESPACES + 3)?;
                let mut names = Vec::with_capacity(n);
                for _ in 0..n {
                    names.push(g.pick(&["/", "/chat"])?);
                }
                names.join(",")
            }
        }
    })
}

/// A `POST` body close to a valid batch, then perhaps damaged.
fn batch_body(g: &mut Gen) -> ArbResult<Vec<u8>> {
    let value = batch(g)?;
    let mut text = serde_json::to_vec(&value).unwrap_or_default();
    if g.flaw()? && !text.is_empty() {
        let at = g.int(0..=text.len() - 1)?;
        match g.int(0..=3)? {
            // Cut short, as a dropped connection would.
            0 => text.truncate(at),
            1 => text[at] = g.u.arbitrary()?,
            2 => text.extend_from_slice(g.pick(&[&b" "[..], b"}", b",", b"\x00", b" {}"])?),
            // A key given twice, which serde's derive refuses.
            _ => {
                text.splice(1..1, br#""client":"tab1","#.iter().copied());
            }
        }
    }
    Ok(text)
}

fn batch(g: &mut Gen) -> ArbResult<Value> {
    if g.flaw()? && g.ratio(1, 4)? {
        return g.pick(&[json!(null), json!([]), json!("x"), json!(1), json!({})]);
    }
    let mut batch = Map::new();
    if !(g.flaw()? && g.ratio(1, 4)?) {
        batch.insert("client".to_owned(), client_id(g)?);
    }
    if !(g.flaw()? && g.ratio(1, 4)?) {
        let messages = if g.flaw()? && g.ratio(1, 4)? {
            g.pick(&[json!(null), json!({}), json!(3), json!("m")])?
        } else {
            let n = if g.flaw()? {
                g.pick(&[0, MAX_MESSAGES + 1, MAX_MESSAGES + 2])?
            } else {
                g.int(1..=MAX_MESSAGES)?
            };
            let mut list = Vec::with_capacity(n);
            for _ in 0..n {
                list.push(message(g)?);
            }
            Value::Array(list)
        };
        batch.insert("messages".to_owned(), messages);
    }
    if g.flaw()? && g.ratio(1, 4)? {
        batch.insert("extra".to_owned(), json!(1));
    }
    Ok(Value::Object(batch))
}

fn client_id(g: &mut Gen) -> ArbResult<Value> {
    Ok(if g.flaw()? {
        match g.int(0..=2)? {
            0 => g.pick(&[
                json!(""),
                json!("bad id"),
                json!("é"),
                json!(7),
                json!(null),
                json!(["tab1"]),
            ])?,
            1 => json!("c".repeat(g.int(63..=65)?)),
            _ => json!(g.text(70)?),
        }
    } else {
        json!(tab(g)?)
    })
}

/// A valid client id: mostly one, sometimes others of the same user, more than it may have.
fn tab(g: &mut Gen) -> ArbResult<&'static str> {
    if g.ratio(1, 2)? {
        Ok("tab1")
    } else {
        g.pick(&["tab2", "tab3", "tab4"])
    }
}

fn message(g: &mut Gen) -> ArbResult<Value> {
    if g.flaw()? && g.ratio(1, 4)? {
        return g.pick(&[json!(null), json!([]), json!("m"), json!(2)]);
    }
    let mut m = Map::new();
    if !(g.flaw()? && g.ratio(1, 4)?) {
        let id = if g.flaw()? {
            match g.int(0..=2)? {
                0 => g.pick(&[
                    json!(""),
                    json!("bad id"),
                    json!(1),
                    json!(null),
                    json!("m/1"),
                ])?,
                1 => json!("i".repeat(g.int(63..=65)?)),
                _ => json!(g.text(70)?),
            }
        } else {
            // Few ids, so that retries and repeats within a batch are common.
            json!(format!("m{}", g.int(1..=6)?))
        };
        m.insert("id".to_owned(), id);
    }
    if !(g.flaw()? && g.ratio(1, 4)?) {
        let event = if g.flaw()? {
            match g.int(0..=2)? {
                0 => g.pick(&[json!(""), json!(null), json!(5), json!({})])?,
                // At and over the limit, counted in bytes: "é" is two.
                1 => g.pick(&[
                    json!("e".repeat(MAX_EVENT_LEN)),
                    json!("e".repeat(MAX_EVENT_LEN + 1)),
                    json!("é".repeat(MAX_EVENT_LEN / 2)),
                    json!("é".repeat(MAX_EVENT_LEN / 2 + 1)),
                ])?,
                _ => json!(g.text(20)?),
            }
        } else {
            json!(g.pick(&[
                "chat", "emit", "emit", "volatile", "everyone", "room", "data", "slow", "fail",
                "boom",
            ])?)
        };
        m.insert("event".to_owned(), event);
    }
    if g.ratio(3, 4)? {
        m.insert("data".to_owned(), data(g)?);
    }
    if g.flaw()? {
        let ns = match g.int(0..=2)? {
            0 => g.pick(&[
                json!("/nope"),
                json!("chat"),
                json!(""),
                json!("/a,b"),
                json!(null),
            ])?,
            1 => json!(format!("/{}", "n".repeat(g.int(62..=64)?))),
            _ => json!(g.text(20)?),
        };
        m.insert("ns".to_owned(), ns);
    } else if g.ratio(1, 3)? {
        m.insert("ns".to_owned(), g.pick(&[json!("/"), json!("/chat")])?);
    }
    if g.flaw()? && g.ratio(1, 4)? {
        m.insert("extra".to_owned(), json!(true));
    }
    Ok(Value::Object(m))
}

fn data(g: &mut Gen) -> ArbResult<Value> {
    if g.flaw()? {
        return Ok(match g.int(0..=2)? {
            // Big enough that a batch of it passes the body limit.
            0 => json!("d".repeat(g.int(100..=600)?)),
            // Around the layer's depth limit, and serde_json's of 128.
            1 => {
                let depth = if g.ratio(3, 4)? {
                    g.int(MAX_DATA_DEPTH - 2..=MAX_DATA_DEPTH + 2)?
                } else {
                    g.int(120..=140)?
                };
                let mut v = json!(0);
                for _ in 0..depth {
                    v = if g.ratio(1, 2)? {
                        json!([v])
                    } else {
                        json!({"a": v})
                    };
                }
                v
            }
            _ => g.pick(&[
                json!({"$bytes": "not base64"}),
                json!({"$bytes": 1, "x": 2}),
            ])?,
        });
    }
    Ok(match g.int(0..=6)? {
        0 => json!(null),
        1 => json!(g.u.arbitrary::<i64>()?),
        2 => json!(g.u.arbitrary::<f64>()?),
        3 => json!(g.text(40)?),
        4 => json!({"text": g.text(20)?, "n": [1, 2, {"x": null}]}),
        5 => json!({"$bytes": "AJ+Slg=="}),
        _ => json!([true, false, "é\u{0}\u{1F600}", -0.0, 1e300]),
    })
}

// --- the request body -----------------------------------------------------------------------

/// A request body as hyper would hand it over: in chunks, perhaps failing or stalling partway.
#[derive(Debug)]
pub struct FuzzBody {
    chunks: VecDeque<Bytes>,
    end: BodyEnd,
}

impl FuzzBody {
    fn new(body: &[u8], sizes: &[usize], end: BodyEnd) -> Self {
        let body = Bytes::copy_from_slice(body);
        let mut chunks = VecDeque::new();
        let mut at = 0;
        for &size in sizes {
            chunks.push_back(body.slice(at..at + size));
            at += size;
        }
        if at < body.len() {
            chunks.push_back(body.slice(at..));
        }
        FuzzBody { chunks, end }
    }
}

impl http_body::Body for FuzzBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(chunk) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match std::mem::replace(&mut self.end, BodyEnd::Done) {
            BodyEnd::Done => Poll::Ready(None),
            BodyEnd::Fails => Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "the client went away",
            )))),
            BodyEnd::Stalls => {
                // Never woken: only the layer's body deadline ends the wait.
                self.end = BodyEnd::Stalls;
                Poll::Pending
            }
        }
    }
}

// --- the service ----------------------------------------------------------------------------

/// The header the inner service marks its answers with, to tell them from the layer's.
const INNER: &str = "x-inner";

/// The handler: echoes the data back as the reply, and for some events does what handlers do
/// (sends, joins, stores data, takes its time, fails), so that polls have something to deliver.
async fn handle(msg: Incoming) -> Result<Reply, BoxError> {
    let data = msg.data.clone();
    match msg.event.as_str() {
        "emit" => {
            tokio::spawn(msg.io.to_user(msg.user.clone()).emit("echo", &data));
        }
        "volatile" => {
            let to = msg.io.to_user(msg.user.clone()).volatile();
            let echo = data.clone();
            tokio::spawn(async move { to.emit("echo", &echo).await });
        }
        "everyone" => {
            tokio::spawn(msg.broadcast().emit("echo", &data));
        }
        "room" => {
            msg.join("room").await?;
            tokio::spawn(msg.io.to_room("room").emit("echo", &data));
        }
        "data" => {
            msg.set("k", &data).await?;
            let back: Option<Value> = msg.get("k").await?;
            return Ok(Reply::json(&back)?);
        }
        // Longer than a retry waits for the original: the retry is told `pending`.
        "slow" => tokio::time::sleep(Duration::from_millis(20)).await,
        "fail" => return Err(HandlerError::new("refused", "the handler refused it").into()),
        "boom" => return Err("the handler failed".into()),
        _ => {}
    }
    Ok(Reply::from(data))
}

type Service = simpleio::SimpleIoService<
    tower::util::BoxCloneSyncService<Request<FuzzBody>, Response<Full<Bytes>>, Infallible>,
>;

/// A layer configured as the fuzzer needs it, around an inner service that marks its answers.
fn build() -> (Service, SimpleIo) {
    let chat = Namespace::new("/chat")
        .handler(service_fn(handle))
        .authorize(|_: &http::request::Parts, user: &UserId| {
            let banned = user.as_str() == BANNED;
            async move {
                if banned {
                    Err(Rejection::forbidden("not in /chat"))
                } else {
                    Ok(())
                }
            }
        });
    let (layer, io) = SimpleIoLayer::builder()
        .storage(MemoryStorage::new())
        .identity(|parts: &http::request::Parts| {
            let user = parts
                .headers
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .map(UserId::from);
            async move { user.ok_or_else(|| Rejection::unauthorized("no x-user header")) }
        })
        .handler(service_fn(handle))
        .namespace(chat)
        .on_presence(|change: Presence, io: SimpleIo| async move {
            if let Presence::Online { user } = change {
                let _ = io.everyone().volatile().emit("online", &user).await;
            }
        })
        .hold_time(HOLD)
        .max_body(MAX_BODY)
        .max_messages_per_request(MAX_MESSAGES)
        .max_event_len(MAX_EVENT_LEN)
        .max_data_depth(MAX_DATA_DEPTH)
        .max_message_bytes(MAX_MESSAGE_BYTES)
        .max_reply_bytes(96)
        .max_namespaces_per_poll(MAX_NAMESPACES)
        .body_timeout(Duration::from_secs(1))
        .batch_limit(2)
        .max_batch_bytes(64)
        .max_queue(4)
        .max_queue_per_sender(2)
        .max_queue_bytes(512)
        .max_queue_bytes_per_sender(256)
        .max_dedup_per_client(2)
        .max_dedup_per_user(4)
        .max_clients_per_user(2)
        .max_polls_per_user(2)
        .max_polls(3)
        .max_presence_queue(4)
        .message_ttl(MESSAGE_TTL)
        .handler_lease(Duration::from_millis(500))
        .pending_wait(Duration::from_millis(5))
        .presence_ttl(Duration::from_millis(400))
        .recheck_interval(Duration::from_millis(50))
        .build();
    let inner = tower::util::BoxCloneSyncService::new(service_fn(|_: Request<FuzzBody>| async {
        let mut response = Response::new(Full::new(Bytes::from_static(b"inner")));
        response
            .headers_mut()
            .insert(INNER, HeaderValue::from_static("1"));
        Ok::<_, Infallible>(response)
    }));
    (layer.layer(inner), io)
}

// --- the spec's error table -----------------------------------------------------------------

/// One row of the error table of `docs/spec.md` §5: its statuses and the codes it lists. A row
/// that lists none (`401`, `403`) leaves the code to the application.
#[derive(Debug)]
struct ErrorRow {
    statuses: Vec<u16>,
    codes: Vec<String>,
}

static SPEC_ERRORS: LazyLock<Vec<ErrorRow>> =
    LazyLock::new(|| parse_error_table(include_str!("../docs/spec.md")));

/// The backticked words of a table cell.
fn backticked(cell: &str) -> impl Iterator<Item = &str> {
    cell.split('`').skip(1).step_by(2)
}

fn is_lower_snake(word: &str) -> bool {
    word.starts_with(|c: char| c.is_ascii_lowercase())
        && word
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Reads the error table: the rows of the errors section whose first cell names statuses.
fn parse_error_table(spec: &str) -> Vec<ErrorRow> {
    let section = spec
        .split("\n## ")
        .find(|s| s.starts_with(|c: char| c.is_ascii_digit()) && s.contains("Errors\n"))
        .expect("docs/spec.md has an errors section (`## N. Errors`)");
    let rows: Vec<ErrorRow> = section
        .lines()
        .filter(|line| line.starts_with('|'))
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').collect();
            let statuses: Vec<u16> = backticked(cells.get(1)?)
                .filter_map(|s| s.parse().ok())
                .filter(|s| (100..600).contains(s))
                .collect();
            if statuses.is_empty() {
                return None;
            }
            let codes = backticked(cells.get(2)?)
                .filter(|w| is_lower_snake(w))
                .map(str::to_owned)
                .collect();
            Some(ErrorRow { statuses, codes })
        })
        .collect();
    // A table reformatted out of reach of this parser must not pass every code.
    assert!(
        rows.iter()
            .any(|r| r.statuses == [400] && r.codes.iter().any(|c| c == "malformed_json")),
        "could not read the error table of docs/spec.md: {rows:?}"
    );
    rows
}

/// Whether the spec allows an error answer with `status` and `code`.
fn spec_allows(status: u16, code: &str) -> bool {
    SPEC_ERRORS
        .iter()
        .filter(|row| row.statuses.contains(&status))
        .any(|row| row.codes.is_empty() || row.codes.iter().any(|c| c == code))
}

// --- running and checking a case ------------------------------------------------------------

/// What one request got, for the replay's account of how far the inputs reach.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Seen {
    pub method: String,
    pub on_route: bool,
    pub status: u16,
    /// The error code, or for a `200` on the route what it held (`messages`, `reply`, …).
    pub detail: String,
}

/// Runs `case` on `runtime` and checks every answer; panics on the first violation.
pub fn run(runtime: &Runtime, case: &Case) -> Vec<Seen> {
    runtime.block_on(async {
        let mut seen = Vec::with_capacity(case.requests.len());
        let mut state = ClientState::default();
        let (service, io) = build();
        if case.concurrent {
            let mut calls = Vec::new();
            for req in &case.requests {
                if let Some(request) = req.build(&state) {
                    let path = request.uri().path().to_owned();
                    let call = tokio::spawn(answer(service.clone(), request));
                    calls.push((req, path, call));
                }
            }
            for (req, path, call) in calls {
                let response = match call.await.map_err(JoinError::try_into_panic) {
                    Ok(response) => response,
                    Err(Ok(panic)) => std::panic::resume_unwind(panic),
                    Err(Err(e)) => panic!("a request's task did not finish: {e}"),
                };
                seen.push(check(req, &path, response, &mut state));
            }
        } else {
            for req in &case.requests {
                if let Some(request) = req.build(&state) {
                    let path = request.uri().path().to_owned();
                    let response = answer(service.clone(), request).await;
                    seen.push(check(req, &path, response, &mut state));
                }
            }
        }
        drop((service, io));
        // With the layer gone, what it started must end: sends expire, the reaper and the
        // presence task see the layer is gone.
        let metrics = tokio::runtime::Handle::current().metrics();
        let give_up = tokio::time::Instant::now() + DRAIN;
        while metrics.num_alive_tasks() > 0 {
            assert!(
                tokio::time::Instant::now() < give_up,
                "{} tasks outlive their layer by {DRAIN:?}: {case:?}",
                metrics.num_alive_tasks()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seen
    })
}

/// An answer as read off the wire.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

async fn answer(service: Service, request: Request<FuzzBody>) -> Answer {
    let exchange = async {
        let response = match service.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let (parts, body) = response.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        };
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    };
    match tokio::time::timeout(ANSWER_WITHIN, exchange).await {
        Ok(answer) => answer,
        Err(_) => panic!("a request was not answered within {ANSWER_WITHIN:?}"),
    }
}

/// Checks one answer; `path` is the request's, as the layer saw it.
fn check(req: &Req, path: &str, answer: Answer, state: &mut ClientState) -> Seen {
    let on_route = path == ROUTE;
    let detail = if on_route {
        check_route(req, &answer, state)
    } else if path == "/simpleio/simpleio.js" && matches!(req.method, Method::GET | Method::HEAD) {
        assert!(
            matches!(answer.status.as_u16(), 200 | 304),
            "the client script answered {}: {req:?}",
            answer.status
        );
        "script".to_owned()
    } else {
        assert!(
            answer.headers.contains_key(INNER) && answer.body == "inner",
            "a request off the route did not reach the inner service: {req:?} got {answer:?}"
        );
        "inner".to_owned()
    };
    Seen {
        method: req.method.to_string(),
        on_route,
        status: answer.status.as_u16(),
        detail,
    }
}

/// Checks an answer on the route, and returns what it was.
fn check_route(req: &Req, answer: &Answer, state: &mut ClientState) -> String {
    let fail = |why: &str| -> ! {
        panic!(
            "{why}\nrequest: {req:?}\nbody sent: {:?}\nanswer: {} {:?}\nbody: {:?}",
            String::from_utf8_lossy(&req.body),
            answer.status,
            answer.headers,
            String::from_utf8_lossy(&answer.body)
        )
    };
    let is_json_type = answer
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json_type {
        fail("an answer on the route is not `Content-Type: application/json`");
    }
    // Read as a `Value`, within serde_json's default nesting limit: the layer bounds the depth
    // of `data` both ways so that every client can parse what it is sent.
    if serde_json::from_slice::<Value>(&answer.body).is_err() {
        fail("an answer on the route is not JSON a default serde_json can read");
    }
    let status = answer.status.as_u16();
    if status != 200 {
        let Ok(ErrorAnswer { error }) = serde_json::from_slice(&answer.body) else {
            fail("an error answer is not `{\"error\": {\"code\", \"message\"}}`");
        };
        if !spec_allows(status, &error.code) {
            fail("the spec's error table does not list this status with this code");
        }
        if status == 405 {
            let allow = answer
                .headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok());
            if allow != Some("GET, POST") {
                fail("a 405 without `Allow: GET, POST`");
            }
        }
        // The spec has the client wait `Retry-After` seconds before it tries again.
        if matches!(status, 429 | 503) {
            let retry_after = answer
                .headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if retry_after.is_none() {
                fail("a 429 or 503 without `Retry-After` in seconds");
            }
        }
        return error.code;
    }
    let checked = match req.method {
        Method::GET => check_poll(&answer.body, state),
        Method::POST => check_send(&req.body, &answer.body, state),
        _ => fail("a method other than GET and POST was answered 200"),
    };
    checked.unwrap_or_else(|why| fail(why))
}

// The answers' shapes. Fields besides these are let be: the spec has clients ignore fields
// they do not know, in every response, so that later versions can add some.

/// `{"error": {"code", "message"}}` (§5).
#[derive(Deserialize)]
struct ErrorAnswer {
    error: ErrorObject,
}

#[derive(Deserialize)]
struct ErrorObject {
    code: String,
    #[allow(dead_code, reason = "only its presence is checked")]
    message: String,
}

/// A poll's `200` (§3).
#[derive(Deserialize)]
struct PollAnswer<'a> {
    epoch: String,
    cursor: u64,
    #[serde(borrow)]
    messages: Vec<StoredAnswer<'a>>,
    #[serde(borrow)]
    volatile: Vec<VolatileAnswer<'a>>,
    /// Only in the answer to a handshake: the server's limits, by name.
    limits: Option<Map<String, Value>>,
    /// Present, and `true`, only when a newer poll of the client ended this one.
    taken_over: Option<bool>,
}

#[derive(Deserialize)]
struct StoredAnswer<'a> {
    pos: u64,
    ns: Option<String>,
    event: String,
    #[allow(dead_code, reason = "only its presence is checked")]
    #[serde(borrow)]
    data: &'a RawValue,
}

/// As a stored message, without `pos`.
#[derive(Deserialize)]
struct VolatileAnswer<'a> {
    ns: Option<String>,
    event: String,
    #[allow(dead_code, reason = "only its presence is checked")]
    #[serde(borrow)]
    data: &'a RawValue,
}

/// A send's `200` (§4).
#[derive(Deserialize)]
struct SendAnswer<'a> {
    epoch: String,
    #[serde(borrow)]
    acks: Vec<AckAnswer<'a>>,
}

#[derive(Deserialize)]
struct AckAnswer<'a> {
    id: String,
    /// `Some` for `"reply": null` too.
    #[serde(default, borrow, deserialize_with = "present")]
    reply: Option<&'a RawValue>,
    error: Option<ErrorObject>,
    pending: Option<bool>,
    /// With every `pending`: when to send the message again.
    retry_after_ms: Option<u64>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// What of a sent batch is needed to check its acks.
#[derive(Deserialize)]
struct SentBatch {
    messages: Vec<SentMessage>,
}

#[derive(Deserialize)]
struct SentMessage {
    id: String,
}

fn check_namespace_field(ns: &Option<String>) -> Result<(), &'static str> {
    match ns.as_deref() {
        Some("/") => Err("a message names the default namespace, which the spec leaves out"),
        _ => Ok(()),
    }
}

/// A poll's `200`: the shape of §3, positions positive and increasing, none above the cursor.
/// Keeps its epoch and cursor for the case's next polls.
fn check_poll(body: &[u8], state: &mut ClientState) -> Result<String, &'static str> {
    let poll: PollAnswer = serde_json::from_slice(body)
        .map_err(|_| "a poll's 200 is not `{epoch, cursor, messages, volatile}`")?;
    let mut last = 0;
    for m in &poll.messages {
        if m.pos == 0 || m.pos <= last {
            return Err("positions are not positive and increasing");
        }
        last = m.pos;
        if m.event.is_empty() {
            return Err("a message's `event` is empty");
        }
        check_namespace_field(&m.ns)?;
    }
    // A cursor below a message just given would have the client take it again next time.
    if poll.cursor < last {
        return Err("the cursor is below a position it answers with");
    }
    for v in &poll.volatile {
        if v.event.is_empty() {
            return Err("a volatile message's `event` is empty");
        }
        check_namespace_field(&v.ns)?;
    }
    if let Some(limits) = &poll.limits
        && !limits.values().all(|v| v.is_u64())
    {
        return Err("`limits` holds something other than non-negative integers");
    }
    if poll.taken_over == Some(false) {
        return Err("`taken_over` is present but not `true`");
    }
    state.same_epoch(&poll.epoch)?;
    state.cursor = Some(poll.cursor);
    Ok(match (poll.messages.is_empty(), poll.volatile.is_empty()) {
        (true, true) => "empty",
        (false, true) => "messages",
        (true, false) => "volatile",
        (false, false) => "messages+volatile",
    }
    .to_owned())
}

/// A send's `200`: one ack per message sent, in order, each with exactly one outcome.
fn check_send(sent: &[u8], body: &[u8], state: &mut ClientState) -> Result<String, &'static str> {
    let sent: SentBatch =
        serde_json::from_slice(sent).map_err(|_| "a body that is not a batch got 200")?;
    let answer: SendAnswer = serde_json::from_slice(body)
        .map_err(|_| "a send's 200 is not `{epoch, acks: [{id, …}]}`")?;
    state.same_epoch(&answer.epoch)?;
    let sent: Vec<&str> = sent.messages.iter().map(|m| m.id.as_str()).collect();
    let acked: Vec<&str> = answer.acks.iter().map(|a| a.id.as_str()).collect();
    if acked != sent {
        return Err("the acks are not one per message, in order");
    }
    let mut outcomes = Vec::new();
    for ack in &answer.acks {
        let outcome = match (&ack.reply, &ack.error, ack.pending) {
            (Some(_), None, None) => "reply",
            (None, Some(_), None) => "error",
            (None, None, Some(true)) if ack.retry_after_ms.is_some() => "pending",
            (None, None, Some(true)) => return Err("a `pending` ack without `retry_after_ms`"),
            _ => return Err("an ack has not exactly one of `reply`, `error`, `pending: true`"),
        };
        if !outcomes.contains(&outcome) {
            outcomes.push(outcome);
        }
    }
    outcomes.sort_unstable();
    Ok(outcomes.join("+"))
}
