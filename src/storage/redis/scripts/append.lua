
local nu, np, n = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
-- A shared payload is written once, if a message stored uses it, to expire a grace after the
-- last of them: its entries are gone by then (expired), unless they went earlier. One that an
-- earlier call stored (an earlier chunk of the fan-out) is only referred to, if its key is
-- still there (no eviction, no flush took it), and its expiry moved if this call needs it later.
local shared = {}
for j = 1, np do
  local b = 8 + nu * 2 + j * 3
  shared[j] = {id = ARGV[b], known = tonumber(ARGV[b + 1]), value = ARGV[b + 2], upto = 0}
  if shared[j].known > 0 and redis.call('EXISTS', P .. 'p:' .. shared[j].id) == 0 then
    return {}
  end
end
local now = now_ms()
local epoch = current_epoch()
local maxq, per_sender = tonumber(ARGV[4]), tonumber(ARGV[5])
local max_bytes, sender_bytes = tonumber(ARGV[6]), tonumber(ARGV[7])
-- A message to the user is delivered once its namespace's watermark reaches it, one to a
-- client once that client's cursor does while it reads the namespace. What a user's
-- watermarks and clients' cursors are is read once per call, when first needed.
local function evict_state(seen)
  local ev = seen.evict
  if not ev then
    local pairs_ = redis.call('HGETALL', key(seen.id, 'wm'))
    ev = {wm = {}, bound = 0, confirmed = {}, from = '-inf', budget = EVICT_SCAN}
    for i = 1, #pairs_, 2 do
      local w = tonumber(pairs_[i + 1])
      ev.wm[pairs_[i]] = w
      if w > ev.bound then ev.bound = w end
    end
    seen.evict = ev
  end
  return ev
end
local function delivered(seen, ev, pos, c, ns)
  local upto
  if c == '' then
    upto = ev.wm[ns] or 0
  else
    local k = c .. ':' .. ns
    upto = ev.confirmed[k]
    if not upto then
      upto = client_confirmed(seen.id, c, ns)
      ev.confirmed[k] = upto
    end
  end
  return upto >= pos
end
-- What the call knows of sender `s`'s share of a user's queue: their count (`ZCARD` of their
-- set), read only once it matters and nil until then; their bytes, read with the user's
-- `meta` if the call has a message of theirs (`known`), else only what the call removed, to
-- subtract at the end; and where the search for one of their entries to evict stands.
local function share_of(seen, s)
  local share = seen.shares[s]
  if not share then
    share = {bytes = 0, known = false, from = '-inf', budget = EVICT_SCAN}
    seen.shares[s] = share
    if not seen.share_order then seen.share_order = {} end
    table.insert(seen.share_order, s)
  end
  return share
end
-- Takes an entry that left the log (of sender `s` or nil, `size` bytes) off the call's bytes
-- of the user's queue and of the sender's share, and off the sender's count.
local function gone(seen, s, size)
  seen.bytes = seen.bytes - size
  if s then
    local share = share_of(seen, s)
    share.bytes = share.bytes - size
    if share.count then share.count = share.count - 1 end
  end
end
-- Takes what `drop_expired` removed off the call's bytes and counts (see `gone`).
local function gone_all(seen, removed)
  for i = 1, #removed, 2 do gone(seen, removed[i] or nil, removed[i + 1]) end
end
-- Removes an entry, keeping the call's counts and bytes of the user's log and of its sender's
-- share.
local function forget(seen, ns, c, pos, s, size)
  remove_entry(seen.id, ns, c, pos, s, size)
  seen.card = seen.card - 1
  gone(seen, s, num(size))
end
-- No cursor is above the highest watermark, so the search for a delivered entry to evict
-- stops there (an expired one it passes goes too). The search goes from the oldest entry on,
-- and looks at no more than EVICT_SCAN undelivered entries per user and call: what it passed
-- stays undelivered within the call, so each search resumes where the last one stopped, and a
-- log whose delivered entries lie behind more undelivered ones than that refuses the message
-- (QueueFull) until they expire.
local function evict_one_delivered(seen)
  local ev = evict_state(seen)
  local lk = key(seen.id, 'log')
  while ev.budget > 0 and ev.bound > 0 do
    local chunk = redis.call('ZRANGEBYSCORE', lk, ev.from, str(ev.bound), 'LIMIT', 0, ev.budget)
    if #chunk == 0 then break end
    for _, entry in ipairs(chunk) do
      local pos, exp, c, ns, _, s, size = parse(entry)
      ev.from = '(' .. str(pos)
      if exp <= now or delivered(seen, ev, pos, c, ns) then
        forget(seen, ns, c, pos, s, size)
        return true
      end
      ev.budget = ev.budget - 1
    end
  end
  ev.budget = 0
  return false
end
-- One entry of the user's log that can go: an expired one while the call may remove more of
-- them (the first removal took all it was allowed to, so some may be left; up to
-- EXPIRE_SLACK more per user and call), else a delivered one.
local function evict_one(seen)
  if seen.more_expired > 0 then
    local expired, removed = drop_expired(seen.id, now, 1)
    if expired > 0 then
      gone_all(seen, removed)
      seen.card = seen.card - 1
      seen.more_expired = seen.more_expired - 1
      return true
    end
    seen.more_expired = 0
  end
  return evict_one_delivered(seen)
end
-- The same for a sender at their share of the user's queue, among their own entries only
-- (their set of positions, from the oldest on): one that expired or was delivered makes room.
-- At most EVICT_SCAN entries that could not go are looked at per user, sender and call.
local function evict_one_of(seen, s, share)
  local ev = evict_state(seen)
  local lk, sk = key(seen.id, 'log'), skey(seen.id, s)
  while share.budget > 0 do
    local chunk = redis.call('ZRANGEBYSCORE', sk, share.from, '+inf', 'LIMIT', 0, share.budget)
    if #chunk == 0 then break end
    for _, p in ipairs(chunk) do
      share.from = '(' .. p
      local entry = redis.call('ZRANGEBYSCORE', lk, p, p)[1]
      if not entry then
        -- A place whose entry is gone holds nothing: it goes, which is the room needed.
        redis.call('ZREM', sk, p)
        if share.count then share.count = share.count - 1 end
        return true
      end
      local pos, exp, c, ns, _, _, size = parse(entry)
      if exp <= now or delivered(seen, ev, pos, c, ns) then
        forget(seen, ns, c, pos, s, size)
        return true
      end
      share.budget = share.budget - 1
    end
  end
  share.budget = 0
  return false
end
-- Whether a message of `size` bytes from `s` fits in their share of the user's queue, as far
-- as the call knows. Their count is read only once the log is large enough for it to matter.
local function fits_share(seen, s, share, size)
  if share.bytes + size > sender_bytes then return false end
  if seen.card < per_sender then return true end
  if not share.count then share.count = redis.call('ZCARD', skey(seen.id, s)) end
  return share.count < per_sender
end
local out = {epoch}
local users = {}
for i = 1, nu do
  users[i] = {id = ARGV[9 + i * 2], json = ARGV[10 + i * 2], upto = 0, stored = false, count = 0,
    shares = {}, sent = {}, senders = {}, more_expired = 0}
end
local first = 11 + nu * 2 + np * 3
-- Per user, the number of the call's messages and their senders, whose bytes are read once.
for i = 0, n - 1 do
  local b = first + i * 8
  local seen, s = users[tonumber(ARGV[b])], ARGV[b + 5]
  seen.count = seen.count + 1
  if s ~= '-' then
    if not seen.wanted then seen.wanted, seen.wants = {}, {} end
    if not seen.wants[s] then
      seen.wants[s] = true
      table.insert(seen.wanted, s)
    end
  end
end
-- Per user, what the call needs of its keys is read once, and written back once at the end:
-- a fan-out costs a few commands per message.
for i = 0, n - 1 do
  local b = first + i * 8
  local seen, c, exp = users[tonumber(ARGV[b])], ARGV[b + 1], tonumber(ARGV[b + 2])
  local payload, body, s = shared[tonumber(ARGV[b + 3])], ARGV[b + 4], ARGV[b + 5]
  local size_s, origin = ARGV[b + 6], ARGV[b + 7]
  local size = tonumber(size_s)
  if s == '-' then s = nil end
  local u = seen.id
  if not seen.last then
    -- One read: the last position, the keys' expiry, the bytes of the queue and those of
    -- each sender of the call's messages to this user.
    local got
    if seen.wanted then
      local fields = {'last', 'until', 'k', 'b'}
      for _, w in ipairs(seen.wanted) do table.insert(fields, '=' .. w) end
      got = redis.call('HMGET', key(u, 'meta'), unpack(fields))
    else
      got = redis.call('HMGET', key(u, 'meta'), 'last', 'until', 'k', 'b')
    end
    seen.last, seen.until_, seen.more = num(got[1]), num(got[2]), got[3]
    -- The log, `exp`, `ix` and `meta` expire together: no `last`, no log, no bytes.
    local logged = got[1] and true or false
    seen.bytes = logged and num(got[4]) or 0
    seen.bytes_read = seen.bytes
    for j, w in ipairs(seen.wanted or {}) do
      local share = share_of(seen, w)
      share.known = true
      share.bytes = logged and num(got[4 + j]) or 0
      share.bytes_read = share.bytes
    end
    if logged then
      -- Enough expired entries to make room for this call's messages, and some more: a mass
      -- expiry is cleared over several calls, never by one.
      local most = seen.count + EXPIRE_SLACK
      local expired, removed = drop_expired(u, now, most)
      if expired > 0 then gone_all(seen, removed) end
      if expired >= most then seen.more_expired = EXPIRE_SLACK end
      seen.card = redis.call('ZCARD', key(u, 'log'))
    else
      seen.card = 0
    end
    seen.was_empty = seen.card == 0
  end
  -- A send whose origin the user's log remembers was stored before (a handler run again
  -- after a crash): its outcome is that position, and nothing is stored. Origins live in
  -- `orig` (origin -> position) and `origx` (origin by expiry); a few lapsed ones are swept
  -- per user and call, and the keys expire with the last of them.
  local ok, ox, known
  if origin ~= '' then
    ok, ox = key(u, 'orig'), key(u, 'origx')
    if not seen.origins_swept then
      seen.origins_swept = true
      local lapsed = redis.call('ZRANGEBYSCORE', ox, '-inf', str(now), 'LIMIT', 0, 16)
      if #lapsed > 0 then
        redis.call('ZREM', ox, unpack(lapsed))
        redis.call('HDEL', ok, unpack(lapsed))
      end
    end
    local until_ = redis.call('ZSCORE', ox, origin)
    if until_ and tonumber(until_) > now then known = redis.call('HGET', ok, origin) end
  end
  if known then
    table.insert(out, known)
  else
  -- The sender's share first: a sender at theirs, in count or in bytes, makes room among
  -- their own entries; then the user's queue, among everyone's. Each eviction removes an
  -- entry for good, so the loops are bounded by what was added before. A message larger than
  -- a limit by itself is refused at once, evicting nothing.
  local full = false
  if s then
    local share = seen.shares[s]
    if size > sender_bytes then full = true end
    while not full and not fits_share(seen, s, share, size) do
      if not evict_one_of(seen, s, share) then full = true end
    end
  end
  if not full and size > max_bytes then full = true end
  -- A message that asks for replies gets an ack record (see the reply script), as many as the
  -- queue holds messages: records outlive delivered messages, so they are counted apart.
  local nslen0, ns_at0 = string.match(body, '^(%d+):()')
  local asks = string.sub(body, ns_at0 + tonumber(nslen0), ns_at0 + tonumber(nslen0) + 1) == ':!'
  local ak, ax
  if asks and not full then
    ak, ax = key(u, 'acks'), key(u, 'ackx')
    local lapsed = redis.call('ZRANGEBYSCORE', ax, '-inf', str(now), 'LIMIT', 0, 16)
    if #lapsed > 0 then
      redis.call('HDEL', ak, unpack(lapsed))
      redis.call('ZREM', ax, unpack(lapsed))
    end
    if redis.call('ZCARD', ax) >= maxq then full = true end
  end
  while not full and (seen.card >= maxq or seen.bytes + size > max_bytes) do
    if not evict_one(seen) then full = true end
  end
  if full then
    table.insert(out, 'full')
  else
    -- Clock-based, so positions never start over below a cursor a client still holds, even
    -- after this user's keys expired.
    local pos = math.max(now * 1000, seen.last + 1)
    seen.last = pos
    seen.card = seen.card + 1
    seen.bytes = seen.bytes + size
    local p = str(pos)
    local from = ''
    if s then from = '=' .. s .. ':' end
    redis.call('ZADD', key(u, 'log'), p,
      p .. ':' .. str(exp) .. ':' .. c .. ':' .. from .. '#' .. size_s .. ':' .. body)
    local nslen, at = string.match(body, '^(%d+):()')
    local m = ixm(string.sub(body, at, at + tonumber(nslen) - 1), c, pos)
    redis.call('ZADD', key(u, 'ix'), 0, m)
    redis.call('ZADD', key(u, 'exp'), str(exp), expm(m, s, size_s))
    if s then
      redis.call('ZADD', skey(u, s), p, p)
      local share = seen.shares[s]
      share.bytes = share.bytes + size
      if share.count then share.count = share.count + 1 end
      if not seen.sent[s] then
        seen.sent[s] = true
        table.insert(seen.senders, s)
      end
    end
    if asks then
      redis.call('HSET', ak, p, str(exp) .. ':' .. c)
      redis.call('ZADD', ax, str(exp), p)
      extend(ak, exp + GRACE_MS, now)
      extend(ax, exp + GRACE_MS, now)
    end
    table.insert(out, p)
    seen.stored = true
    seen.upto = math.max(seen.upto, exp)
    if payload then payload.upto = math.max(payload.upto, exp) end
    -- Remembered while the user has fewer than the queue's limit of them: past it a send is
    -- stored without, so a user sent to without end costs a bounded amount.
    if origin ~= '' and redis.call('ZCARD', ox) < maxq then
      redis.call('HSET', ok, origin, p)
      redis.call('ZADD', ox, str(exp), origin)
      extend(ok, exp, now)
      extend(ox, exp, now)
    end
  end
  end
end
for _, payload in ipairs(shared) do
  if payload.upto > 0 then
    local pk = P .. 'p:' .. payload.id
    local at = payload.upto + GRACE_MS
    if payload.known > 0 then
      if payload.upto > payload.known then extend(pk, at, now) end
    elseif redis.call('SET', pk, payload.value, 'NX') then
      redis.call('PEXPIREAT', pk, str(at))
    else
      -- Stored meanwhile by another call that found it gone: never shorten its expiry.
      extend(pk, at, now)
    end
  end
end
-- Per user, what changed in `meta` is written in one HSET: the last position, `until`, the
-- bytes of the queue and of the shares the call read (see `subtract_bytes`). The shares of
-- senders with no message in the call only lost entries: their bytes go down by HINCRBY.
-- A user's keys expire together (see `touch`). `until` moves in steps of EXPIRY_STEP_MS, so
-- that a user receiving many messages has their expiries moved once a step, not per message;
-- keys this call created (an empty log) get theirs at once.
local function push(t, a, b)
  t[#t + 1] = a
  t[#t + 1] = b
end
for _, seen in ipairs(users) do
  local u = seen.id
  local mk = key(u, 'meta')
  local fields = {}
  if seen.bytes ~= seen.bytes_read then push(fields, 'b', str(math.max(seen.bytes, 0))) end
  if seen.share_order then
    local dels = {}
    for _, s in ipairs(seen.share_order) do
      local share, f = seen.shares[s], '=' .. s
      if share.known then
        if share.bytes ~= share.bytes_read then
          if share.bytes > 0 then push(fields, f, str(share.bytes)) else table.insert(dels, f) end
        end
      elseif share.bytes < 0 and redis.call('HINCRBY', mk, f, str(share.bytes)) <= 0 then
        table.insert(dels, f)
      end
    end
    if #dels > 0 then redis.call('HDEL', mk, unpack(dels)) end
  end
  local whats
  if seen.stored then
    push(fields, 'last', str(seen.last))
    if seen.upto > seen.until_ then
      seen.until_ = math.ceil(seen.upto / EXPIRY_STEP_MS) * EXPIRY_STEP_MS
      push(fields, 'until', str(seen.until_))
      if seen.more then
        whats = {'log', 'exp', 'ix', 'meta', 'wm', 'live', 'data', 'n'}
      else
        whats = {'log', 'exp', 'ix', 'meta', 'n'}
      end
    elseif seen.was_empty then
      whats = {'log', 'exp', 'ix'}
    end
  end
  -- Only a user whose log existed, or that stored a message, has anything to write: `meta`
  -- exists then, or gets its expiry below.
  if #fields > 0 then redis.call('HSET', mk, unpack(fields)) end
  if seen.stored then
    local at = str(seen.until_ + GRACE_MS)
    for _, what in ipairs(whats or {}) do redis.call('PEXPIREAT', key(u, what), at) end
    -- A sender's set expires with the log as it is now, after every entry in it: `until` is
    -- past their expiries, and only moves later. So a set outlives its entries, whatever
    -- moves the user's other keys afterwards.
    for _, s in ipairs(seen.senders) do redis.call('PEXPIREAT', skey(u, s), at) end
  end
end
-- The longest queue among the call's users, as it is now: last in the reply.
local deepest = 0
for _, seen in ipairs(users) do
  if seen.card and seen.card > deepest then deepest = seen.card end
end
table.insert(out, 'depth:' .. str(deepest))
-- One signal per node for the whole call, naming each user that stored a message once: this
-- node's names them all, another node's those it has polls of. The senders wait here for the
-- confirmations and replies, so this node notes its interest in them.
local named, by_node, nodes = {}, {}, {}
for _, seen in ipairs(users) do
  if seen.stored then
    table.insert(named, seen.json)
    if note_interest(seen.id, 'w', now + INTEREST_WAIT_MS, now) then
      redis.call('PEXPIREAT', key(seen.id, 'n'), str(seen.until_ + GRACE_MS))
    end
    for _, node in ipairs(interested(seen.id, 'p', now)) do
      if not by_node[node] then
        by_node[node] = {}
        table.insert(nodes, node)
      end
      table.insert(by_node[node], seen.json)
    end
  end
end
local function appended(list) return '{"appended":{"users":[' .. table.concat(list, ',') .. ']}}' end
if #named > 0 then redis.call('PUBLISH', node_channel(NODE), appended(named)) end
for _, node in ipairs(nodes) do redis.call('PUBLISH', node_channel(node), appended(by_node[node])) end
return out
