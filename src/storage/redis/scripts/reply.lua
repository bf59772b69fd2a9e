
-- An ack record per message that asked for replies: `acks` (position -> 'expiry:client', the
-- client '' for a message to the user as a whole) and `ackx` (positions by expiry), made by
-- the append. A message's replies are in `r<position>` (client -> JSON), expiring with it;
-- `repx` names each reply ('position:client:size') by expiry and `repb` counts their bytes,
-- the user's bound. A few lapsed records and replies are swept per call.
local u, c, pos, data = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local per_message, max_bytes = tonumber(ARGV[8]), tonumber(ARGV[9])
local epoch = current_epoch()
local now = now_ms()
local ak, ax, rx, rb = key(u, 'acks'), key(u, 'ackx'), key(u, 'repx'), key(u, 'repb')
local lapsed = redis.call('ZRANGEBYSCORE', ax, '-inf', str(now), 'LIMIT', 0, 16)
if #lapsed > 0 then
  redis.call('HDEL', ak, unpack(lapsed))
  redis.call('ZREM', ax, unpack(lapsed))
end
local gone = redis.call('ZRANGEBYSCORE', rx, '-inf', str(now), 'LIMIT', 0, 64)
if #gone > 0 then
  local freed = 0
  for _, name in ipairs(gone) do freed = freed + tonumber(string.match(name, ':(%d+)$')) end
  redis.call('ZREM', rx, unpack(gone))
  if redis.call('DECRBY', rb, freed) <= 0 then redis.call('DEL', rb) end
end
local record = redis.call('HGET', ak, pos)
if not record then return 'unknown' end
local exp, to = string.match(record, '^(%d+):(.*)$')
exp = tonumber(exp)
if exp <= now or (to ~= '' and to ~= c) then return 'unknown' end
local rk = key(u, 'r' .. pos)
if redis.call('HEXISTS', rk, c) == 1 then return 'duplicate' end
if redis.call('HLEN', rk) >= per_message then return 'full' end
if num(redis.call('GET', rb)) + #data > max_bytes then return 'full' end
redis.call('HSET', rk, c, data)
redis.call('PEXPIREAT', rk, str(exp + GRACE_MS))
redis.call('ZADD', rx, str(exp), pos .. ':' .. c .. ':' .. #data)
redis.call('INCRBY', rb, #data)
extend(rx, exp + GRACE_MS, now)
extend(rb, exp + GRACE_MS, now)
signal_user(u, 'w', now, '{"replied":{"epoch":' .. cjson.encode(epoch) .. ',' .. ARGV[10])
return 'recorded'
