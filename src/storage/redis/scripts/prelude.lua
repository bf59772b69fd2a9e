
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
-- Members: `u:USER`, or `c:CLIENT:USER` (client ids have no ':'); their keys add ':' .. what.
local function cmember(u, c) return 'c:' .. c .. ':' .. u end
local function member(u, c)
  if c == '' then return 'u:' .. u end
  return cmember(u, c)
end
local function mkey(m, what) return P .. m .. ':' .. what end
local function key(u, what) return P .. 'u:' .. u .. ':' .. what end
-- pos, expires_at, client ('' for all) and namespace of a log entry, the id of its shared
-- payload (`{P}p:ID`) if it refers to one, its sender (hex) if it has one, and the size of its
-- data as written (digits), if it was (nil for an entry older than byte limits: it counts as
-- 0).
local function parse(entry)
  local pos, exp, client, at = string.match(entry, '^(%d+):(%d+):([%w_%-]*):()')
  local sender, after_sender = string.match(entry, '^=(%x*):()', at)
  if sender then at = after_sender end
  local size, after_size = string.match(entry, '^#(%d+):()', at)
  if size then at = after_size end
  local nslen, ns_at = string.match(entry, '^(%d+):()', at)
  local after = ns_at + tonumber(nslen)
  local shared
  -- A '!' before the payload marks a message that asks for replies.
  local from = after + 1
  if string.sub(entry, from, from) == '!' then from = from + 1 end
  if string.sub(entry, from, from) == '*' then shared = string.sub(entry, from + 1) end
  return tonumber(pos), tonumber(exp), client, string.sub(entry, ns_at, after - 1), shared, sender,
    size
end
-- The set of the positions of a user's entries sent by `s` (hex), their share of the queue.
local function skey(u, s) return key(u, s .. ':from') end
-- The cursor by which client `c` confirms its own messages in `ns`: 0 unless it reads `ns`.
local function client_confirmed(u, c, ns)
  local rec = redis.call('HMGET', mkey(cmember(u, c), 'rec'), 'cur', 'ns')
  if not rec[1] or not rec[2] then return 0 end
  for _, n in ipairs(cjson.decode(rec[2])) do
    if n == ns then return tonumber(rec[1]) end
  end
  return 0
end
-- An entry's name in the user's `ix` and `exp`: namespace, client and position, sorted by
-- them, so that a prefix `nslen:ns:client:` names the entries of one namespace to one client
-- (or to the user, client ''), in position order. Positions are below 2^53: 16 digits.
local function ixm(ns, c, pos) return #ns .. ':' .. ns .. ':' .. c .. ':' .. string.format('%016.0f', pos) end
local function ix_prefix(ns, c) return #ns .. ':' .. ns .. ':' .. c .. ':' end
-- An entry's name in `exp`: its `ixm` name, `:=` and its sender (hex) if it has one, and `:#`
-- and the size of its data (if it has one: entries older than byte limits have none), so that
-- expiring it finds the sender's set and the bytes it held without reading the entry.
local function expm(m, s, size)
  if s then m = m .. ':=' .. s end
  if size then m = m .. ':#' .. size end
  return m
end
-- namespace, client, position, sender (hex, or nil) and size (digits, or nil) of an `ixm` or
-- `expm` name.
local function parse_ixm(m)
  local nslen, at = string.match(m, '^(%d+):()')
  local after = at + tonumber(nslen)
  local c, pos, rest = string.match(string.sub(m, after + 1), '^([%w_%-]*):(%d+)(.*)$')
  local s, size
  if rest ~= '' then
    local after_s
    s, after_s = string.match(rest, '^:=(%x*)()')
    if s then rest = string.sub(rest, after_s) end
    size = string.match(rest, '^:#(%d+)$')
  end
  return string.sub(m, at, after - 1), c, tonumber(pos), s, size
end
-- The entries of `ix` under `prefix` after position `after`, at most `limit`, as positions.
local function ix_after(ik, prefix, after, limit)
  local got = redis.call('ZRANGEBYLEX', ik, '(' .. prefix .. string.format('%016.0f', after),
    '(' .. prefix .. ';', 'LIMIT', 0, limit)
  local out = {}
  for i, m in ipairs(got) do out[i] = tonumber(string.sub(m, -16)) end
  return out
end
-- Removes one entry with its index names and its place in its sender's share. (Its bytes are
-- the caller's to subtract.)
local function remove_entry(u, ns, c, pos, s, size)
  local m = ixm(ns, c, pos)
  redis.call('ZREMRANGEBYSCORE', key(u, 'log'), str(pos), str(pos))
  redis.call('ZREM', key(u, 'ix'), m)
  redis.call('ZREM', key(u, 'exp'), expm(m, s, size))
  if s then redis.call('ZREM', skey(u, s), str(pos)) end
end
-- Removes up to `most` expired entries, those expiring first: the work is what it removes.
-- Returns how many it removed and, if any, their senders and sizes, two per entry in one list:
-- the sender (hex, or false) and the size (0 for an entry written without one), so that the
-- caller subtracts their bytes.
local function drop_expired(u, now, most)
  local ek = key(u, 'exp')
  local names = redis.call('ZRANGEBYSCORE', ek, '-inf', str(now), 'LIMIT', 0, most)
  if #names == 0 then return 0 end
  local lk, ik = key(u, 'log'), key(u, 'ix')
  local removed = {}
  for i, m in ipairs(names) do
    local ns, c, pos, s, size = parse_ixm(m)
    redis.call('ZREMRANGEBYSCORE', lk, str(pos), str(pos))
    redis.call('ZREM', ik, ixm(ns, c, pos))
    if s then redis.call('ZREM', skey(u, s), str(pos)) end
    removed[2 * i - 1], removed[2 * i] = s or false, num(size)
  end
  -- They are the lowest scores of `exp`.
  redis.call('ZREMRANGEBYRANK', ek, 0, #names - 1)
  return #names, removed
end
-- The bytes of a user's queue are in `meta`: `b` for all of it, `=HEX` for what sender HEX
-- sent (no field once it is 0). Subtracts what `drop_expired` removed outside an append: a
-- command for the total and one per sender (two if that sender's bytes come to 0).
local function subtract_bytes(u, removed)
  local mk = key(u, 'meta')
  local total, senders, order = 0, {}, {}
  for i = 1, #removed, 2 do
    local s, size = removed[i], removed[i + 1]
    total = total + size
    if s then
      if not senders[s] then
        senders[s] = 0
        table.insert(order, s)
      end
      senders[s] = senders[s] + size
    end
  end
  if total > 0 then redis.call('HINCRBY', mk, 'b', -total) end
  for _, s in ipairs(order) do
    local f = '=' .. s
    if senders[s] > 0 and redis.call('HINCRBY', mk, f, -senders[s]) <= 0 then
      redis.call('HDEL', mk, f)
    end
  end
end
-- Every user key but `rooms` expires together once nothing needs it: a grace after `until`
-- in `meta`, which is at least `t` (the latest message expiry or client record expiry seen so
-- far) and moves in steps of EXPIRY_STEP_MS. Every user key that exists has that expiry: the
-- keys are given it when `until` moves, and a key made since (`fresh`, the suffixes of those
-- the caller may have created) when it is made.
-- Marks the user as having more than a log (`k`: clients, watermarks, data), so that an
-- append knows to keep those keys too.
local function touch(u, t, fresh)
  local mk = key(u, 'meta')
  local got = redis.call('HMGET', mk, 'until', 'k')
  local upto = num(got[1])
  local whats = fresh
  if t > upto or not got[2] then
    if t > upto then upto = math.ceil(t / EXPIRY_STEP_MS) * EXPIRY_STEP_MS end
    redis.call('HSET', mk, 'until', str(upto), 'k', '1')
    whats = {'log', 'exp', 'ix', 'meta', 'wm', 'live', 'data', 'n'}
  end
  local at = str(upto + GRACE_MS)
  for _, what in ipairs(whats) do redis.call('PEXPIREAT', key(u, what), at) end
end
-- Moves the expiry of `k` to `at` unless it is already later.
local function extend(k, at, now)
  local ttl = redis.call('PTTL', k)
  if ttl == -1 or (ttl >= 0 and now + ttl < at) then redis.call('PEXPIREAT', k, str(at)) end
end
-- A client's keys expire `grace` after its seen-until in `presence`: reap comes first. A
-- fetch moves them in steps, to the time in `rec`'s `kept`; this sets them to the exact
-- time, which may be earlier, so it drops `kept`: the next fetch moves them again.
local function keep_client(m, grace)
  local seen = redis.call('ZSCORE', P .. 'presence', m)
  if not seen then return end
  local at = str(tonumber(seen) + grace)
  redis.call('HDEL', mkey(m, 'rec'), 'kept')
  for _, what in ipairs({'rec', 'data', 'rooms'}) do redis.call('PEXPIREAT', mkey(m, what), at) end
end
-- The record of client `c` for `join` and `set_data`: if it has none, one that is kept for
-- `ttl` as if it had polled, but is not live (it is not in the user's `live`).
local function ensure_client(u, c, now, ttl, grace)
  local m = cmember(u, c)
  local seen = now + ttl
  if redis.call('ZADD', P .. 'presence', 'NX', str(seen), m) == 1 then
    extend(P .. 'presence', seen + grace, now)
    touch(u, seen + grace, {})
  end
  return m
end

-- Signals go to the nodes that need them, not to every node. `NODE`, the last argument of
-- every script, is the node (the storage handle) running it; each node subscribes to its own
-- channel `{P}n:NODE` (and to `{P}signals`, which carries what every node needs: resyncs and
-- volatile messages). A user's `n` names the nodes that need its signals, by the time that
-- need lapses: `p` then a node's id for a node with polls of the user's clients, `w` then its
-- id for one waiting for the user's confirmations, replies or completions. It is a user key
-- (see `touch`), and holds at most two members per live node. Signals are wakeups, never the
-- only way to learn something (waiters recheck on a timer), so an interest that lapsed early
-- costs latency, not a message.
local NODE = ARGV[#ARGV]
local function node_channel(node) return P .. 'n:' .. node end
-- Notes that this node needs `u`'s signals of `kind` until `until_`. True if that made `n`
-- or put this node in it anew: its expiry is then the caller's to set, as for any user key
-- it makes. A node's first note is the moment to drop the members whose need lapsed (nodes
-- that stopped), so the set holds live nodes only, however many came and went.
local function note_interest(u, kind, until_, now)
  local k = key(u, 'n')
  if redis.call('ZADD', k, str(until_), kind .. NODE) == 0 then return false end
  redis.call('ZREMRANGEBYSCORE', k, '-inf', str(now))
  return true
end
-- The other nodes with a live interest of `kind` in `u`.
local function interested(u, kind, now)
  local nodes = {}
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', key(u, 'n'), '(' .. str(now), '+inf')) do
    if string.sub(m, 1, 1) == kind and string.sub(m, 2) ~= NODE then
      table.insert(nodes, string.sub(m, 2))
    end
  end
  return nodes
end
-- Publishes `json` to this node and to every other node with a live `kind` interest in `u`.
local function signal_user(u, kind, now, json)
  redis.call('PUBLISH', node_channel(NODE), json)
  for _, node in ipairs(interested(u, kind, now)) do
    redis.call('PUBLISH', node_channel(node), json)
  end
end
