//! [`RedisStorage`]: the [`Storage`] contract on one Redis server, for many processes.
//!
//! # How it maps onto Redis
//!
//! Every operation is one Lua script, so it is atomic and one round trip: an append assigns
//! positions and publishes its wakeup in the same script, a fetch confirms, records presence,
//! reads and publishes in the same script. All keys start with the configured prefix `{P}`
//! (default `simpleio:`, so the epoch is at `simpleio:epoch`):
//!
//! | key                   | type    | holds                                                  |
//! |-----------------------|---------|--------------------------------------------------------|
//! | `{P}epoch`            | string  | the current [`Epoch`]; the only key without a TTL      |
//! | `{P}live`             | zset    | user → until when a client of theirs counts as seen    |
//! | `{P}signals`          | channel | [`Signal`]s as JSON (not scoped by database number)    |
//! | `{P}u:USER:log`       | zset    | the user's messages: score = position, member = entry  |
//! | `{P}u:USER:exp`       | zset    | position → `expires_at`, to find expired entries fast  |
//! | `{P}u:USER:meta`      | hash    | `last` position given, `wm` watermark, `until` (below) |
//! | `{P}u:USER:cur`       | hash    | client → its recorded cursor                           |
//! | `{P}u:USER:keep`      | zset    | client → until when its cursor record is kept          |
//! | `{P}d:CLIENT:ID:USER` | string  | dedup record: `p` (in progress) or `d` + the outcome   |
//!
//! A log entry is `pos:expires_at:client:` followed by the event's byte length, `:`, the event
//! and the JSON payload, so the scripts can filter and expire without touching the payload.
//!
//! Memory stays bounded: a log never holds more than `max_queue` entries, expired entries go on
//! the next append or fetch of their user, and every user key carries an absolute expiry
//! (`meta.until` plus [`IDLE_GRACE`]: past the last message's expiry and the last client's
//! presence), so idle users vanish by themselves. `live` is trimmed by every fetch and expires
//! with the newest presence in it; dedup records are plain keys with a TTL.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::{FromRedisValue, Script, ScriptInvocation};
use serde_json::value::RawValue;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::{
    AppendOutcome, Appended, Claim, DedupKey, DeliveryState, DeliveryTarget, Epoch, FetchBatch,
    FetchRequest, NewMessage, Signal, Storage, StorageError, StoredMessage,
};
use crate::id::UserId;

/// How many signals a slow subscriber may fall behind before it is told to resync.
const SIGNAL_CAPACITY: usize = 4096;

/// How long a user's keys outlive the last thing that needed them (a message's expiry, a
/// client's presence). Keeping the last position and the cursors a little longer costs little
/// and spares a client that polls just after its presence lapsed a needless restart.
const IDLE_GRACE: Duration = Duration::from_secs(60);

/// Positions, cursors and times are Lua numbers (doubles) inside the scripts: anything above
/// this would lose precision, so inputs are clamped to it. Real positions are far below it.
const MAX_EXACT: u64 = (1 << 53) - 1;

/// How often the pub/sub connection is pinged: a connection that died without a FIN (a NAT or a
/// firewall dropped it) is only noticed by a request that gets no answer.
const PING_EVERY: Duration = Duration::from_secs(5);

/// Backoff between attempts to get the pub/sub connection back.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Defaults for [`RedisStorageBuilder`].
const DEFAULT_PREFIX: &str = "simpleio:";
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Storage in Redis: share it between any number of processes behind a load balancer.
///
/// Every operation is one atomic Lua script (one round trip); wakeups travel over Redis pub/sub,
/// with **one** subscribed connection per `RedisStorage`, whatever the number of waiting polls.
/// Clones share the connections.
///
/// * **Losing Redis's data** (a restart without persistence, a `FLUSHALL`) gives a new
///   [`Epoch`]: clients resync and senders of unconfirmed messages learn they were lost. Enable
///   persistence (`appendonly yes`) if messages must survive a Redis restart.
/// * **Losing the connection** makes operations fail with [`StorageError::Unavailable`] within
///   the connect plus response timeouts (never a hang), and both connections come back by
///   themselves when Redis does; the pub/sub one then sends [`Signal::Resync`], since signals may
///   have been missed meanwhile.
///
/// Needs Redis 5 or later (tested with 7), as one server or a primary; not Redis Cluster, since
/// one script may touch the keys of several users. Use the `noeviction` or a `volatile-*`
/// eviction policy: the epoch key has no TTL so that it is never evicted, while an `allkeys-*`
/// policy could evict it and change the epoch.
///
/// ```no_run
/// use simpleio::{RedisStorage, SimpleIoLayer};
/// # async fn run() -> Result<(), simpleio::storage::StorageError> {
/// let storage = RedisStorage::builder("redis://127.0.0.1:6379/")
///     .key_prefix("chat:")
///     .connect()
///     .await?;
/// let (layer, io) = SimpleIoLayer::builder().storage(storage).build();
/// # let _ = (layer, io);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStorage {
    inner: Arc<Inner>,
}

struct Inner {
    /// Commands go over one multiplexed connection that reconnects by itself.
    conn: ConnectionManager,
    /// The first part of every key and of the signal channel.
    prefix: String,
    /// `prefix + "signals"`: pub/sub is not scoped by database, so it carries the prefix too.
    channel: String,
    /// Signals from the pub/sub connection, handed out by `subscribe`.
    signals: broadcast::Sender<Signal>,
    /// The most an operation may take, reconnecting included: connect + response timeouts.
    deadline: Duration,
    /// The task reading the pub/sub connection; stops with the last handle.
    _subscriber: AbortOnDrop,
}

impl fmt::Debug for RedisStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStorage")
            .field("key_prefix", &self.inner.prefix)
            .field("deadline", &self.inner.deadline)
            .finish_non_exhaustive()
    }
}

/// Configures and connects a [`RedisStorage`]; made by [`RedisStorage::builder`].
///
/// ```no_run
/// use std::time::Duration;
/// use simpleio::RedisStorage;
/// # async fn run() -> Result<(), simpleio::storage::StorageError> {
/// let storage = RedisStorage::builder("redis://127.0.0.1/2")
///     .key_prefix("myapp:simpleio:")
///     .connect_timeout(Duration::from_millis(500))
///     .response_timeout(Duration::from_secs(1))
///     .connect()
///     .await?;
/// # let _ = storage;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStorageBuilder {
    url: String,
    prefix: String,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl fmt::Debug for RedisStorageBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the URL: it may carry a password, and builders end up in logs.
        f.debug_struct("RedisStorageBuilder")
            .field("key_prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
struct Timeouts {
    connect: Duration,
    response: Duration,
}

impl RedisStorageBuilder {
    /// The prefix of every key and of the pub/sub channel (default `simpleio:`). Give each
    /// application sharing a Redis its own; a database number in the URL does not separate
    /// pub/sub channels.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one attempt to connect to Redis may take (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long Redis may take to answer one command (default 2 s). An operation fails with
    /// [`StorageError::Unavailable`] after at most the connect timeout plus this.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Connects the command connection and subscribes the pub/sub one.
    ///
    /// Fails with [`StorageError::Unavailable`] if the URL is invalid or Redis cannot be
    /// reached. Must be called within a Tokio runtime, which then runs the background task that
    /// forwards signals.
    pub async fn connect(self) -> Result<RedisStorage, StorageError> {
        let timeouts = Timeouts {
            connect: self.connect_timeout,
            response: self.response_timeout,
        };
        let deadline = timeouts.connect + timeouts.response;
        let client = redis::Client::open(self.url.as_str())
            .map_err(|e| StorageError::Unavailable(format!("invalid Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeouts.connect))
            .set_response_timeout(Some(timeouts.response))
            // Few, quick retries: a request should fail fast with 503 rather than wait out an
            // outage; the next request starts a new reconnection anyway.
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = within(
            deadline,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await?;
        let channel = format!("{}signals", self.prefix);
        // Subscribed before returning, so that no signal published after `connect` is missed.
        let pubsub = subscribe(&client, &channel, timeouts).await?;
        let (signals, _) = broadcast::channel(SIGNAL_CAPACITY);
        let subscriber = tokio::spawn(run_subscriber(
            client,
            channel.clone(),
            signals.clone(),
            pubsub,
            timeouts,
        ));
        Ok(RedisStorage {
            inner: Arc::new(Inner {
                conn,
                prefix: self.prefix,
                channel,
                signals,
                deadline,
                _subscriber: AbortOnDrop(subscriber),
            }),
        })
    }
}

impl RedisStorage {
    /// Connects to the Redis at `url` (`redis://[user:password@]host[:port][/db]`) with the
    /// default settings. See [`RedisStorage::builder`] for the others.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), simpleio::storage::StorageError> {
    /// let storage = simpleio::RedisStorage::connect("redis://127.0.0.1/").await?;
    /// # let _ = storage;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(url: impl Into<String>) -> Result<Self, StorageError> {
        Self::builder(url).connect().await
    }

    /// A builder for a storage on the Redis at `url`, to set the key prefix and timeouts.
    pub fn builder(url: impl Into<String>) -> RedisStorageBuilder {
        RedisStorageBuilder {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
        }
    }

    /// The prefix of this storage's keys.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Runs one of the scripts below with the common leading arguments (see `PRELUDE`).
    async fn eval<T: FromRedisValue>(
        &self,
        script: &Script,
        args: impl FnOnce(&mut ScriptInvocation<'_>),
    ) -> Result<T, StorageError> {
        let mut invocation = script.prepare_invoke();
        invocation
            .arg(&self.inner.prefix)
            .arg(Epoch::random().as_str())
            .arg(RESYNC_JSON.as_str());
        args(&mut invocation);
        let mut conn = self.inner.conn.clone();
        within(self.inner.deadline, invocation.invoke_async(&mut conn)).await
    }

    fn dedup_key(&self, key: &DedupKey) -> String {
        // Client and message ids cannot contain ':', so the user, last, may contain anything.
        format!(
            "{}d:{}:{}:{}",
            self.inner.prefix,
            key.client.as_str(),
            key.id.as_str(),
            key.user.as_str()
        )
    }
}

/// Runs `op` within `deadline`, turning every failure into a [`StorageError`].
async fn within<T>(
    deadline: Duration,
    op: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, StorageError> {
    match tokio::time::timeout(deadline, op).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(storage_error(err)),
        Err(_) => Err(StorageError::Unavailable(format!(
            "Redis did not answer within {deadline:?}"
        ))),
    }
}

fn storage_error(err: redis::RedisError) -> StorageError {
    debug!(cause = %err, "Redis operation failed");
    match err.kind() {
        redis::ErrorKind::UnexpectedReturnType | redis::ErrorKind::Parse => {
            StorageError::Corrupt(format!("Redis: {err}"))
        }
        _ => StorageError::Unavailable(format!("Redis: {err}")),
    }
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt(format!("unexpected reply from Redis: {what}"))
}

fn signal_json(signal: Signal) -> Result<String, StorageError> {
    serde_json::to_string(&signal)
        .map_err(|e| StorageError::Corrupt(format!("cannot encode a signal: {e}")))
}

fn decode_signal(payload: &[u8]) -> Result<Signal, serde_json::Error> {
    serde_json::from_slice::<Signal>(payload)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .min(MAX_EXACT)
}

fn parse_u64(s: &str, what: &str) -> Result<u64, StorageError> {
    s.parse().map_err(|_| corrupt(what))
}

/// Decodes a log entry: `pos:expires_at:client:event_len:event` followed by the JSON payload.
fn parse_entry(entry: String) -> Result<StoredMessage, StorageError> {
    let bad = || corrupt("a log entry");
    let mut parts = entry.splitn(5, ':');
    let pos = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let _expires_at = parts.next().ok_or_else(bad)?;
    let _client = parts.next().ok_or_else(bad)?;
    let event_len: usize = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let rest = parts.next().ok_or_else(bad)?;
    let event = rest.get(..event_len).ok_or_else(bad)?;
    let data = rest.get(event_len..).ok_or_else(bad)?;
    let data = RawValue::from_string(data.to_owned()).map_err(|_| bad())?;
    Ok(StoredMessage {
        pos,
        event: event.into(),
        data: Arc::from(data),
    })
}

/// Aborts a task when dropped, so the signal task ends with the last storage handle.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn subscribe(
    client: &redis::Client,
    channel: &str,
    timeouts: Timeouts,
) -> Result<PubSub, StorageError> {
    let mut pubsub = within(timeouts.connect, client.get_async_pubsub()).await?;
    within(timeouts.response, pubsub.subscribe(channel)).await?;
    Ok(pubsub)
}

/// Forwards signals from the pub/sub connection, forever: when it drops, gets it back with
/// backoff and sends [`Signal::Resync`], since anything published meanwhile was missed.
async fn run_subscriber(
    client: redis::Client,
    channel: String,
    signals: broadcast::Sender<Signal>,
    mut pubsub: PubSub,
    timeouts: Timeouts,
) {
    loop {
        let cause = pump(pubsub, &signals, timeouts.response).await;
        warn!(%cause, "lost the Redis pub/sub connection; reconnecting");
        let mut delay = BACKOFF_MIN;
        let mut attempts = 0u32;
        pubsub = loop {
            // Jitter, so that many nodes do not reconnect in lockstep.
            let jitter = Duration::from_millis(fastrand::u64(0..=delay.as_millis() as u64 / 2));
            tokio::time::sleep(delay + jitter).await;
            attempts += 1;
            match subscribe(&client, &channel, timeouts).await {
                Ok(pubsub) => break pubsub,
                Err(err) => {
                    warn!(cause = %err, attempts, "cannot reconnect the Redis pub/sub connection");
                    delay = (delay * 2).min(BACKOFF_MAX);
                }
            }
        };
        warn!(attempts, "Redis pub/sub connection is back; waiters resync");
        // No receiver is fine: nobody is waiting.
        let _ = signals.send(Signal::Resync);
    }
}

/// Reads signals until the connection fails; returns why it did.
async fn pump(pubsub: PubSub, signals: &broadcast::Sender<Signal>, timeout: Duration) -> String {
    let (mut sink, mut stream) = pubsub.split();
    let start = tokio::time::Instant::now() + PING_EVERY;
    let mut ping = tokio::time::interval_at(start, PING_EVERY);
    // After a stall, one ping is enough; a burst of them would only add load.
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return "the connection closed".to_owned();
                };
                match decode_signal(msg.get_payload_bytes()) {
                    Ok(signal) => {
                        let _ = signals.send(signal);
                    }
                    // Someone else publishing on our channel is not our problem to crash on.
                    Err(err) => warn!(cause = %err, "ignored an unreadable signal from Redis"),
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => return format!("ping failed: {err}"),
                    Err(_) => return format!("no answer to a ping within {timeout:?}"),
                }
            }
        }
    }
}

static RESYNC_JSON: LazyLock<String> =
    LazyLock::new(|| signal_json(Signal::Resync).unwrap_or_default());

/// Shared by every script. `ARGV[1]` is the key prefix, `ARGV[2]` a fresh random epoch to take
/// if none is stored, `ARGV[3]` the `Resync` signal to publish then. Lua numbers are doubles:
/// `str` prints them exactly (tostring would switch to exponent notation past 14 digits).
const PRELUDE: &str = r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local P = ARGV[1]
local function str(n) return string.format('%.0f', n) end
local function num(v) return tonumber(v) or 0 end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- A missing epoch key means the data is gone (flushed, or a restart without persistence):
-- take a new epoch so that no old cursor is trusted, and wake everyone to resync.
local function current_epoch()
  local e = redis.call('GET', P .. 'epoch')
  if e then return e end
  redis.call('SET', P .. 'epoch', ARGV[2])
  redis.call('PUBLISH', P .. 'signals', ARGV[3])
  return ARGV[2]
end
local function key(user, what) return P .. 'u:' .. user .. ':' .. what end
local function parse(entry)
  local pos, exp, client = string.match(entry, '^(%d+):(%d+):([%w_%-]*):')
  return tonumber(pos), tonumber(exp), client
end
local function drop_expired(u, now)
  local ek = key(u, 'exp')
  local gone = redis.call('ZRANGEBYSCORE', ek, '-inf', str(now))
  if #gone == 0 then return end
  local lk = key(u, 'log')
  for _, p in ipairs(gone) do redis.call('ZREMRANGEBYSCORE', lk, p, p) end
  redis.call('ZREMRANGEBYSCORE', ek, '-inf', str(now))
end
-- Every user key expires together once nothing needs it: past `t` (the latest message expiry
-- or presence seen so far) plus a grace. Keys created since the last call get it too.
local function touch(u, t)
  local mk = key(u, 'meta')
  local upto = num(redis.call('HGET', mk, 'until'))
  if t > upto then
    upto = t
    redis.call('HSET', mk, 'until', str(upto))
  end
  local at = str(upto + GRACE_MS)
  for _, what in ipairs({'log', 'exp', 'meta', 'cur', 'keep'}) do
    redis.call('PEXPIREAT', key(u, what), at)
  end
end
"#;

fn script(body: &str) -> Script {
    Script::new(&source(body))
}

fn source(body: &str) -> String {
    format!("{PRELUDE}{body}").replace("GRACE_MS", &IDLE_GRACE.as_millis().to_string())
}

/// `ARGV[4]`: nothing. Returns the epoch.
static EPOCH: LazyLock<Script> = LazyLock::new(|| script("return current_epoch()"));

/// `ARGV[4]` max_queue, `ARGV[5]` n, then five per message: user, client (or ''), expires_at,
/// body (`event_len:event` + data), the user's `Appended` signal. Returns the epoch, then per
/// message its position or 'full'.
static APPEND: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
local epoch = current_epoch()
local maxq = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
-- Only messages at or below the watermark can be delivered (every cursor is at most the
-- watermark), so the search for one to evict stops there.
local function evict_one_delivered(u)
  local lk, ck = key(u, 'log'), key(u, 'cur')
  local wm = str(num(redis.call('HGET', key(u, 'meta'), 'wm')))
  local offset = 0
  while true do
    local chunk = redis.call('ZRANGEBYSCORE', lk, '-inf', wm, 'LIMIT', offset, 128)
    if #chunk == 0 then return false end
    for _, entry in ipairs(chunk) do
      local pos, _, c = parse(entry)
      if c == '' or num(redis.call('HGET', ck, c)) >= pos then
        redis.call('ZREM', lk, entry)
        redis.call('ZREM', key(u, 'exp'), str(pos))
        return true
      end
    end
    offset = offset + #chunk
  end
end
local out = {epoch}
local users, order = {}, {}
for i = 0, n - 1 do
  local b = 6 + i * 5
  local u, c, exp, body = ARGV[b], ARGV[b + 1], tonumber(ARGV[b + 2]), ARGV[b + 3]
  local seen = users[u]
  if not seen then
    drop_expired(u, now)
    seen = {signal = ARGV[b + 4], upto = 0, stored = false}
    users[u] = seen
    table.insert(order, u)
  end
  local lk = key(u, 'log')
  if redis.call('ZCARD', lk) >= maxq and not evict_one_delivered(u) then
    table.insert(out, 'full')
  else
    local mk = key(u, 'meta')
    -- Clock-based, so positions never start over below a cursor a client still holds, even
    -- after this user's keys expired.
    local pos = math.max(now * 1000, num(redis.call('HGET', mk, 'last')) + 1)
    redis.call('HSET', mk, 'last', str(pos))
    redis.call('ZADD', lk, str(pos), str(pos) .. ':' .. str(exp) .. ':' .. c .. ':' .. body)
    redis.call('ZADD', key(u, 'exp'), str(exp), str(pos))
    table.insert(out, str(pos))
    seen.stored = true
    seen.upto = math.max(seen.upto, exp)
  end
end
for _, u in ipairs(order) do
  local seen = users[u]
  if seen.stored then
    touch(u, seen.upto)
    redis.call('PUBLISH', P .. 'signals', seen.signal)
  end
end
return out
"#,
    )
});

/// `ARGV[4]` user, `[5]` client, `[6]` '1' if a cursor was sent, `[7]` its epoch, `[8]` its
/// position, `[9]` limit, `[10]` presence ttl (ms), `[11]` the `Confirmed` signal. Returns the
/// epoch, the new cursor, then the entries read.
static FETCH: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local u, c = ARGV[4], ARGV[5]
local now = now_ms()
local epoch = current_epoch()
drop_expired(u, now)
local lk, mk, ck, kk = key(u, 'log'), key(u, 'meta'), key(u, 'cur'), key(u, 'keep')
local head = 0
local top = redis.call('ZRANGE', lk, -1, -1)
if #top > 0 then head = parse(top[1]) end
local wm = num(redis.call('HGET', mk, 'wm'))
local start
local advanced = false
if ARGV[6] == '1' and ARGV[7] == epoch then
  local cursor = tonumber(ARGV[8])
  -- Never confirm beyond the log: that would confirm messages appended later.
  local confirmed = math.min(cursor, head)
  local recorded = num(redis.call('HGET', ck, c))
  -- The client's own cursor confirms messages addressed to it even when the watermark is
  -- already past them, so its advance is a confirmation too.
  if confirmed > recorded then
    redis.call('HSET', ck, c, str(confirmed))
    advanced = true
  end
  if confirmed > wm then
    wm = confirmed
    redis.call('HSET', mk, 'wm', str(wm))
    advanced = true
  end
  start = cursor
else
  local recorded = redis.call('HGET', ck, c)
  if recorded then
    start = tonumber(recorded)
  else
    -- A new client starts at the watermark, or just before the earliest message addressed to
    -- it that lies at or below the watermark.
    start = wm
    local below = redis.call('ZRANGEBYSCORE', lk, '-inf', str(wm))
    for _, entry in ipairs(below) do
      local pos, _, to = parse(entry)
      if to == c then
        start = math.min(start, pos - 1)
        break
      end
    end
    redis.call('HSET', ck, c, str(start))
  end
end

local limit = tonumber(ARGV[9])
local messages = {}
local cursor = math.max(start, head)
local last_read = start
local offset = 0
local full = false
while not full do
  local chunk = redis.call('ZRANGEBYSCORE', lk, '(' .. str(start), '+inf', 'LIMIT', offset, 128)
  if #chunk == 0 then break end
  for _, entry in ipairs(chunk) do
    if #messages >= limit then
      cursor = last_read
      full = true
      break
    end
    local pos, _, to = parse(entry)
    if to == '' or to == c then
      table.insert(messages, entry)
      last_read = pos
    end
  end
  offset = offset + #chunk
end

local seen_until = now + tonumber(ARGV[10])
local kept = redis.call('ZSCORE', kk, c)
if not kept or tonumber(kept) < seen_until then redis.call('ZADD', kk, str(seen_until), c) end
local live = redis.call('ZSCORE', P .. 'live', u)
if not live or tonumber(live) < seen_until then
  redis.call('ZADD', P .. 'live', str(seen_until), u)
end
redis.call('ZREMRANGEBYSCORE', P .. 'live', '-inf', str(now))
local newest = redis.call('ZRANGE', P .. 'live', -1, -1, 'WITHSCORES')
if #newest > 0 then
  redis.call('PEXPIREAT', P .. 'live', str(tonumber(newest[2]) + GRACE_MS))
end
-- Forget clients gone quiet, a few per fetch, unless a message is still addressed to them:
-- those keep their cursor until that message expires.
local stale = redis.call('ZRANGEBYSCORE', kk, '-inf', str(now), 'LIMIT', 0, 16)
if #stale > 0 then
  local addressed = {}
  for _, entry in ipairs(redis.call('ZRANGE', lk, 0, -1)) do
    local _, exp, to = parse(entry)
    if to ~= '' then addressed[to] = math.max(addressed[to] or 0, exp) end
  end
  for _, gone in ipairs(stale) do
    if addressed[gone] then
      redis.call('ZADD', kk, str(addressed[gone]), gone)
    else
      redis.call('ZREM', kk, gone)
      redis.call('HDEL', ck, gone)
    end
  end
end
touch(u, seen_until)
if advanced then redis.call('PUBLISH', P .. 'signals', ARGV[11]) end

local out = {epoch, str(cursor)}
for _, entry in ipairs(messages) do table.insert(out, entry) end
return out
"#,
    )
});

/// `ARGV[4]` the epoch asked about, `[5]` n, then three per target: user, client (or ''),
/// position. Returns {'lost'} or one of 'd', 'p', 'e' per target.
static DELIVERY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if current_epoch() ~= ARGV[4] then return {'lost'} end
local now = now_ms()
local out = {}
for i = 0, tonumber(ARGV[5]) - 1 do
  local b = 6 + i * 3
  local u, c, pos = ARGV[b], ARGV[b + 1], tonumber(ARGV[b + 2])
  local confirmed
  if c == '' then
    confirmed = num(redis.call('HGET', key(u, 'meta'), 'wm'))
  else
    confirmed = num(redis.call('HGET', key(u, 'cur'), c))
  end
  if pos <= confirmed then
    table.insert(out, 'd')
  else
    local found = redis.call('ZRANGEBYSCORE', key(u, 'log'), str(pos), str(pos))
    local state = 'e'
    if #found > 0 then
      local _, exp = parse(found[1])
      if exp > now then state = 'p' end
    end
    table.insert(out, state)
  end
end
return out
"#,
    )
});

/// `ARGV[4]` the dedup key, `[5]` lease (ms). Returns {'acquired'}, {'progress'} or
/// {'done', outcome}.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('SET', ARGV[4], 'p', 'NX', 'PX', ARGV[5]) then return {'acquired'} end
local v = redis.call('GET', ARGV[4])
if v and string.sub(v, 1, 1) == 'd' then return {'done', string.sub(v, 2)} end
return {'progress'}
"#,
    )
});

/// `ARGV[4]` the dedup key, `[5]` the outcome, `[6]` ttl (ms), `[7]` the `Completed` signal.
static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
redis.call('SET', ARGV[4], 'd' .. ARGV[5], 'PX', ARGV[6])
redis.call('PUBLISH', P .. 'signals', ARGV[7])
return 1
"#,
    )
});

/// No more arguments. Returns the users seen within their presence ttl.
static LIVE_USERS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = str(now_ms())
redis.call('ZREMRANGEBYSCORE', P .. 'live', '-inf', now)
return redis.call('ZRANGEBYSCORE', P .. 'live', '(' .. now, '+inf')
"#,
    )
});

#[async_trait]
impl Storage for RedisStorage {
    async fn epoch(&self) -> Result<Epoch, StorageError> {
        let epoch: String = self.eval(&EPOCH, |_| {}).await?;
        Ok(Epoch::new(epoch))
    }

    async fn append(
        &self,
        messages: Vec<NewMessage>,
        max_queue: usize,
    ) -> Result<Appended, StorageError> {
        let count = messages.len();
        let mut encoded = Vec::with_capacity(count);
        for m in &messages {
            let signal = signal_json(Signal::Appended {
                user: m.user.clone(),
            })?;
            let body = format!("{}:{}{}", m.event.len(), m.event, m.data.get());
            encoded.push((m, body, signal));
        }
        let reply: Vec<String> = self
            .eval(&APPEND, |inv| {
                inv.arg(max_queue.min(MAX_EXACT as usize)).arg(count);
                for (m, body, signal) in &encoded {
                    inv.arg(m.user.as_str())
                        .arg(m.client.as_ref().map_or("", |c| c.as_str()))
                        .arg(m.expires_at.min(MAX_EXACT))
                        .arg(body.as_str())
                        .arg(signal.as_str());
                }
            })
            .await?;
        let mut reply = reply.into_iter();
        let epoch = Epoch::new(reply.next().ok_or_else(|| corrupt("no epoch"))?);
        let outcomes = reply
            .map(|o| match o.as_str() {
                "full" => Ok(AppendOutcome::QueueFull),
                pos => parse_u64(pos, "a position").map(AppendOutcome::Stored),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if outcomes.len() != count {
            return Err(corrupt("wrong number of append outcomes"));
        }
        Ok(Appended { epoch, outcomes })
    }

    async fn fetch(&self, request: FetchRequest) -> Result<FetchBatch, StorageError> {
        let confirmed = signal_json(Signal::Confirmed {
            user: request.user.clone(),
        })?;
        let (has_cursor, cursor_epoch, cursor_pos) = match &request.cursor {
            Some((epoch, pos)) => ("1", epoch.as_str(), (*pos).min(MAX_EXACT)),
            None => ("0", "", 0),
        };
        let reply: Vec<String> = self
            .eval(&FETCH, |inv| {
                inv.arg(request.user.as_str())
                    .arg(request.client.as_str())
                    .arg(has_cursor)
                    .arg(cursor_epoch)
                    .arg(cursor_pos)
                    .arg(request.limit.min(MAX_EXACT as usize))
                    .arg(millis(request.presence_ttl))
                    .arg(confirmed.as_str());
            })
            .await?;
        let mut reply = reply.into_iter();
        let epoch = Epoch::new(reply.next().ok_or_else(|| corrupt("no epoch"))?);
        let cursor = parse_u64(
            &reply.next().ok_or_else(|| corrupt("no cursor"))?,
            "a cursor",
        )?;
        let messages = reply.map(parse_entry).collect::<Result<Vec<_>, _>>()?;
        Ok(FetchBatch {
            epoch,
            cursor,
            messages,
        })
    }

    async fn delivery(
        &self,
        epoch: &Epoch,
        targets: &[DeliveryTarget],
    ) -> Result<Vec<DeliveryState>, StorageError> {
        let reply: Vec<String> = self
            .eval(&DELIVERY, |inv| {
                inv.arg(epoch.as_str()).arg(targets.len());
                for t in targets {
                    inv.arg(t.user.as_str())
                        .arg(t.client.as_ref().map_or("", |c| c.as_str()))
                        .arg(t.pos.min(MAX_EXACT));
                }
            })
            .await?;
        if reply.first().map(String::as_str) == Some("lost") {
            return Ok(vec![DeliveryState::Lost; targets.len()]);
        }
        if reply.len() != targets.len() {
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

    async fn claim(&self, key: &DedupKey, lease: Duration) -> Result<Claim, StorageError> {
        let redis_key = self.dedup_key(key);
        // PX 0 is an error in Redis; a zero lease means "gone at once" anyway.
        let lease = millis(lease).max(1);
        let reply: Vec<String> = self
            .eval(&CLAIM, |inv| {
                inv.arg(redis_key.as_str()).arg(lease);
            })
            .await?;
        let mut reply = reply.into_iter();
        match (reply.next().as_deref(), reply.next()) {
            (Some("acquired"), None) => Ok(Claim::Acquired),
            (Some("progress"), None) => Ok(Claim::InProgress),
            (Some("done"), Some(outcome)) => Ok(Claim::Done(outcome)),
            _ => Err(corrupt("a dedup claim")),
        }
    }

    async fn complete(
        &self,
        key: &DedupKey,
        outcome: &str,
        ttl: Duration,
    ) -> Result<(), StorageError> {
        let redis_key = self.dedup_key(key);
        let signal = signal_json(Signal::Completed {
            user: key.user.clone(),
        })?;
        let _: i64 = self
            .eval(&COMPLETE, |inv| {
                inv.arg(redis_key.as_str())
                    .arg(outcome)
                    .arg(millis(ttl).max(1))
                    .arg(signal.as_str());
            })
            .await?;
        Ok(())
    }

    async fn live_users(&self) -> Result<Vec<UserId>, StorageError> {
        let users: Vec<String> = self.eval(&LIVE_USERS, |_| {}).await?;
        Ok(users.into_iter().map(UserId::from).collect())
    }

    async fn publish(&self, signal: Signal) -> Result<(), StorageError> {
        let json = signal_json(signal)?;
        let mut conn = self.inner.conn.clone();
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(&self.inner.channel).arg(json);
        within(self.inner.deadline, publish.query_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.inner.signals.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_decode_with_colons_in_the_event_and_data() {
        let m = parse_entry(r#"1700000000000001:1700000600000:tab-1:5:a:b:c{"x":":"}"#.into())
            .expect("valid entry");
        assert_eq!(m.pos, 1_700_000_000_000_001);
        assert_eq!(&*m.event, "a:b:c");
        assert_eq!(m.data.get(), r#"{"x":":"}"#);
    }

    #[test]
    fn broken_entries_are_corrupt_not_panics() {
        for bad in [
            "",
            "1:2:c",
            "x:2::1:ab",
            "1:2::9:ab",
            "1:2::1:é\"",
            "1:2::0:{",
        ] {
            assert!(
                matches!(parse_entry(bad.into()), Err(StorageError::Corrupt(_))),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn scripts_print_large_numbers_exactly() {
        // The prelude's `str` must not be `tostring`, which prints 1.7e+15.
        assert!(PRELUDE.contains("string.format('%.0f', n)"));
        let full = source("return GRACE_MS");
        assert!(
            !full.contains("GRACE_MS"),
            "a placeholder was left in a script"
        );
        assert!(full.ends_with("return 60000"));
    }

    #[test]
    fn a_builder_does_not_print_its_password() {
        let builder = RedisStorage::builder("redis://:hunter2@127.0.0.1/");
        assert!(!format!("{builder:?}").contains("hunter2"));
    }

    #[test]
    fn the_resync_signal_is_encoded_once() {
        assert_eq!(*RESYNC_JSON, r#""resync""#);
    }
}
