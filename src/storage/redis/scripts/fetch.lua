
local u, c = ARGV[4], ARGV[5]
local limit, ttl, grace = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local nsjson = ARGV[14]
-- `nsl` as given (recorded, and confirmed in); `distinct` each once (read).
local nsl, distinct, wanted = {}, {}, {}
for i = 1, tonumber(ARGV[16]) do
  nsl[i] = ARGV[16 + i]
  if not wanted[nsl[i]] then
    wanted[nsl[i]] = true
    table.insert(distinct, nsl[i])
  end
end
local now = now_ms()
local epoch = current_epoch()
local lk, wk, lv, ik = key(u, 'log'), key(u, 'wm'), key(u, 'live'), key(u, 'ix')
local m = cmember(u, c)
local rk = mkey(m, 'rec')
-- The client's record: its cursor, its namespaces (as JSON), the cursor `w` that every
-- watermark of those namespaces is known to have reached, and `kept`, the time its keys
-- expire at. Fields that change are written at once, below.
-- `nd` and `nx`: the node it last polled on, and until when that node's interest in the user
-- is noted (see `note_interest`).
local rec = redis.call('HMGET', rk, 'cur', 'ns', 'w', 'kept', 'nd', 'nx')
-- A client with no record is refused while its user has the most clients: those in `live`
-- (polled and not reaped, lapsed or not). One that polled before has a cursor, so a poll
-- costs nothing more; one with a record made by join or set_data is in `presence`. Nothing is
-- written before this.
if not rec[1] and redis.call('ZCARD', lv) >= tonumber(ARGV[15])
    and not redis.call('ZSCORE', lv, c) and not redis.call('ZSCORE', P .. 'presence', m) then
  return {'limit'}
end
-- All of them: the index read below must find no expired entry. The work is what it removes,
-- and their bytes come off the queue's, in a command per sender (none if nothing expired).
local expired, removed = drop_expired(u, now, -1)
if expired > 0 then subtract_bytes(u, removed) end
-- The last position given: no cursor is confirmed beyond it, and one beyond it reads from it.
local head = num(redis.call('HGET', key(u, 'meta'), 'last'))
local recorded, same_ns, kept = rec[1], rec[2] == nsjson, num(rec[4])
local fields = {}
local function set(f, v) table.insert(fields, f) table.insert(fields, v) end
-- User keys this fetch may create, to get their expiry (see `touch`).
local fresh = {}
-- This node has a poll of the user (this one) for up to a presence TTL: it notes so for two,
-- again once half of that is gone, so that a poll never outlives its node's interest.
if rec[5] ~= NODE or num(rec[6]) < now + ttl then
  if note_interest(u, 'p', now + 2 * ttl, now) then table.insert(fresh, 'n') end
  set('nd', NODE)
  set('nx', str(now + 2 * ttl))
end
local function watermarks()
  if #distinct == 0 then return {} end
  return redis.call('HMGET', wk, unpack(distinct))
end
local start, w
local advanced = false
local confirmed_at = 0
if ARGV[6] == '1' and ARGV[7] == epoch then
  local cursor = tonumber(ARGV[8])
  -- Never confirm beyond the log: that would confirm messages appended later.
  local confirmed = math.min(cursor, head)
  confirmed_at = confirmed
  local was = num(recorded)
  -- The client's own cursor confirms messages addressed to it even when the watermark is
  -- already past them, so its advance is a confirmation too.
  if confirmed > was then advanced = true end
  if confirmed > was or not recorded then set('cur', str(math.max(confirmed, was))) end
  -- Watermarks only move up: with the same namespaces, a cursor no higher than one they all
  -- reached moves none of them.
  if not same_ns or confirmed > num(rec[3]) then
    local wms = watermarks()
    for i, ns in ipairs(distinct) do
      if confirmed > num(wms[i]) then
        if not wms[i] then table.insert(fresh, 'wm') end
        redis.call('HSET', wk, ns, str(confirmed))
        advanced = true
      end
    end
    w = str(confirmed)
  end
  -- A cursor beyond the log reads from its end: nothing written later is skipped.
  start = confirmed
elseif recorded then
  start = tonumber(recorded)
else
  -- A client seen for the first time (a record made by join or set_data has no cursor yet)
  -- starts at the lowest watermark of its namespaces, or just before the earliest message
  -- addressed to it that lies at or below it.
  local lowest
  for _, w in ipairs(watermarks()) do
    if not lowest or num(w) < lowest then lowest = num(w) end
  end
  start = lowest or 0
  -- The index names the earliest entry to this client in each namespace, whatever lies below.
  for _, ns in ipairs(distinct) do
    local earliest = ix_after(ik, ix_prefix(ns, c), 0, 1)[1]
    if earliest and earliest <= start then start = earliest - 1 end
  end
  set('cur', str(start))
end
if not same_ns then
  set('ns', nsjson)
  -- What `w` says holds for the namespaces it was set with.
  w = w or '0'
end
if w then set('w', w) end

-- Read through the index: the entries after `start` of each namespace read, to the user and
-- to this client, at most limit + 1 of each, merged in position order. Entries of other
-- namespaces and clients are never looked at, so the work is bounded by the batch (times the
-- namespaces read), however many of them lie in between. The first limit + 1 of the merge
-- are the log's first matching entries, whatever each list left out.
local found, truncated = {}, false
for _, ns in ipairs(distinct) do
  for _, to in ipairs({'', c}) do
    local got = ix_after(ik, ix_prefix(ns, to), start, limit + 1)
    if #got > limit then truncated = true end
    for _, pos in ipairs(got) do table.insert(found, pos) end
  end
end
table.sort(found)

local messages, payloads, shared = {}, {}, {}
local last_read, looked = start, start
local i = 1
while i <= #found and #messages < limit do
  local pos = found[i]
  local entry = redis.call('ZRANGEBYSCORE', lk, str(pos), str(pos))[1]
  local id
  if entry then id = select(5, parse(entry)) end
  -- Each shared payload once per batch. One that is gone (an eviction policy took it) takes
  -- its entries with it: they are skipped, as if expired.
  if id and payloads[id] == nil then
    payloads[id] = redis.call('GET', P .. 'p:' .. id)
    if payloads[id] then
      table.insert(shared, id)
      table.insert(shared, payloads[id])
    end
  end
  if entry and (not id or payloads[id]) then
    table.insert(messages, entry)
    last_read = pos
  end
  looked = pos
  i = i + 1
end
local cursor
if i <= #found then
  -- The limit stopped the read.
  cursor = last_read
elseif truncated then
  -- Skipped entries used up what the index gave: read up to there, the rest next time.
  cursor = looked
else
  cursor = math.max(start, head)
end

-- The client arrives if it has not polled since it was last reaped (or ever); its user comes
-- online if no other client of theirs has. A client whose presence lapsed but that was not
-- reaped yet has not left: its departure was not reported, so neither is an arrival.
local seen = now + ttl
redis.call('ZADD', P .. 'presence', str(seen), m)
local arrival = ''
if redis.call('ZADD', lv, str(seen), c) == 1 then
  if redis.call('ZCARD', lv) == 1 then arrival = 'online' else arrival = 'arrived' end
  table.insert(fresh, 'live')
end
local latest = redis.call('ZRANGE', lv, -1, -1, 'WITHSCORES')
redis.call('ZADD', P .. 'live', latest[2], u)
-- The client's keys, the global zsets and the user's keys must outlive `seen + grace`: they
-- are given a time at least that, a step ahead, when it passes `kept`.
local moved = seen + grace > kept
if moved then
  kept = math.ceil((seen + grace) / EXPIRY_STEP_MS) * EXPIRY_STEP_MS
  set('kept', str(kept))
end
if #fields > 0 then redis.call('HSET', rk, unpack(fields)) end
if moved then
  local at = str(kept)
  for _, what in ipairs({'rec', 'data', 'rooms'}) do redis.call('PEXPIREAT', mkey(m, what), at) end
  extend(P .. 'presence', kept, now)
  extend(P .. 'live', kept, now)
end
if moved or #fresh > 0 then touch(u, kept, fresh) end
if ARGV[13] ~= '' then signal_user(u, 'p', now, ARGV[13]) end
if advanced then
  local quoted
  if string.find(epoch, '^[%w_%-]*$') then quoted = '"' .. epoch .. '"' else quoted = cjson.encode(epoch) end
  signal_user(u, 'w', now, '{"confirmed":{"epoch":' .. quoted .. ','
    .. ARGV[12] .. ',"cursor":' .. str(confirmed_at) .. '}}')
end

local out = {epoch, str(cursor), arrival, str(#shared / 2)}
for _, v in ipairs(shared) do table.insert(out, v) end
for _, entry in ipairs(messages) do table.insert(out, entry) end
return out
