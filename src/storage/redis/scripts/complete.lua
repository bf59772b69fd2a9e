
local ttl = tonumber(ARGV[8])
if ttl <= 0 then
  redis.call('DEL', rk)
  redis.call('ZREM', uk, name)
  redis.call('ZREM', ck, id)
else
  local now = now_ms()
  redis.call('SET', rk, 'd' .. ARGV[7], 'PX', ARGV[8])
  -- A record whose lease lapsed may have lost its place: it takes a new one, beyond the
  -- limits (a handled message must be remembered), and the next claim makes room again.
  local seq = redis.call('ZSCORE', uk, name)
  if not seq then seq = next_seq(now) end
  order(now, tonumber(seq), now + ttl)
end
redis.call('PUBLISH', P .. 'signals', ARGV[9])
return 1
