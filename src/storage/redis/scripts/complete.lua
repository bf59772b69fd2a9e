
local ttl = tonumber(ARGV[8])
local now = now_ms()
if ttl <= 0 then
  redis.call('DEL', rk)
  redis.call('ZREM', uk, name)
  redis.call('ZREM', ck, id)
else
  redis.call('SET', rk, 'd' .. ARGV[7], 'PX', ARGV[8])
  -- A record whose lease lapsed may have lost its place: it takes a new one, beyond the
  -- limits (a handled message must be remembered), and the next claim makes room again.
  local seq = redis.call('ZSCORE', uk, name)
  if not seq then seq = next_seq(now) end
  order(now, tonumber(seq), now + ttl)
end
-- A retry of this message waits for it on the nodes that found it in progress.
signal_user(u, 'w', now, ARGV[9])
return 1
