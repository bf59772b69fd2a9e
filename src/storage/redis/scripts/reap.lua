
local now = now_ms()
local limit = tonumber(ARGV[4])
local pk = P .. 'presence'
local lapsed = redis.call('ZRANGEBYSCORE', pk, '-inf', str(now), 'LIMIT', 0, limit)
local departed, order = {}, {}
-- Memberships go at most REAP_ROOMS per script: a client whose rooms are not all gone yet stays
-- lapsed in the presence index, and the next script goes on with it.
local budget, unfinished = REAP_ROOMS, false
for _, m in ipairs(lapsed) do
  local c, u = string.match(m, '^c:([%w_%-]+):(.*)$')
  local rooms = c and mkey(m, 'rooms')
  if c then
    if budget <= 0 then
      unfinished = true
      break
    end
    local popped = redis.call('SPOP', rooms, budget)
    for _, room in ipairs(popped) do
      redis.call('SREM', P .. 'room:' .. room, m)
    end
    budget = budget - #popped
    if redis.call('SCARD', rooms) > 0 then
      unfinished = true
      break
    end
  end
  redis.call('ZREM', pk, m)
  if c then
    redis.call('DEL', mkey(m, 'rec'), mkey(m, 'data'), rooms)
    -- Only clients that polled arrived, so only they depart; the rest just go.
    if redis.call('ZREM', key(u, 'live'), c) == 1 then
      if not departed[u] then
        departed[u] = {}
        table.insert(order, u)
      end
      table.insert(departed[u], c)
    end
  end
end
local out = {(unfinished or #lapsed >= limit) and '1' or '0'}
for _, u in ipairs(order) do
  local latest = redis.call('ZRANGE', key(u, 'live'), -1, -1, 'WITHSCORES')
  local offline = #latest == 0
  if offline then
    redis.call('ZREM', P .. 'live', u)
    redis.call('DEL', key(u, 'data'))
  else
    redis.call('ZADD', P .. 'live', latest[2], u)
  end
  local gone = departed[u]
  for i, c in ipairs(gone) do
    table.insert(out, u)
    table.insert(out, c)
    table.insert(out, (offline and i == #gone) and '1' or '0')
  end
end
return out
