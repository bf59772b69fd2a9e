
local lease, per_client, per_user = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local held = 'p' .. ARGV[10]
local v = redis.call('GET', rk)
if v then
  if string.sub(v, 1, 1) == 'd' then return {'done', string.sub(v, 2)} end
  if v == held then
    redis.call('PEXPIRE', rk, lease)
    return {'acquired'}
  end
  -- The retry waits for the record's completion here.
  local now = now_ms()
  if note_interest(u, 'w', now + INTEREST_WAIT_MS, now) then touch(u, now, {'n'}) end
  return {'progress', str(math.max(redis.call('PTTL', rk), 0))}
end
-- No record: one whose key expired may still have its place in the order. A new claim
-- takes a new place.
redis.call('ZREM', uk, name)
redis.call('ZREM', ck, id)
local in_client, in_user = redis.call('ZCARD', ck), redis.call('ZCARD', uk)
local forget, planned = {}, {}
local crank, urank, budget = 0, 0, CLAIM_EVICT
while budget > 0 do
  local oldest, limit
  if in_client >= per_client then
    -- The client's records are the user's too: while the client is over, only its own go.
    local got = redis.call('ZRANGE', ck, crank, crank)[1]
    if not got then break end
    crank = crank + 1
    oldest, limit = c .. ':' .. got, per_client
  elseif in_user >= per_user then
    local got = redis.call('ZRANGE', uk, urank, urank)[1]
    if not got then break end
    urank = urank + 1
    if not planned[got] then oldest, limit = got, per_user end
  else
    break
  end
  if oldest then
    budget = budget - 1
    local oc, oid = string.match(oldest, '^([^:]*):(.*)$')
    local ov = redis.call('GET', dkey(oc, oid))
    if ov and string.sub(ov, 1, 1) == 'p' then return {'limit', str(limit)} end
    planned[oldest] = true
    table.insert(forget, {oc, oid})
    if oc == c then in_client = in_client - 1 end
    in_user = in_user - 1
  end
end
for _, f in ipairs(forget) do
  redis.call('DEL', dkey(f[1], f[2]))
  redis.call('ZREM', uk, f[1] .. ':' .. f[2])
  redis.call('ZREM', P .. 'dc:' .. f[1] .. ':' .. u, f[2])
end
local now = now_ms()
redis.call('SET', rk, held, 'PX', lease)
order(now, next_seq(now), now + lease)
return {'acquired'}
