
local u, c = ARGV[4], ARGV[5]
local now, ttl, grace = now_ms(), tonumber(ARGV[9]), tonumber(ARGV[10])
local m = member(u, c)
if c ~= '' then ensure_client(u, c, now, ttl, grace) end
local dk = mkey(m, 'data')
if ARGV[7] == '1' then
  redis.call('HSET', dk, ARGV[6], ARGV[8])
else
  redis.call('HDEL', dk, ARGV[6])
end
if c == '' then touch(u, now + ttl + grace, {'data'}) else keep_client(m, grace) end
return 1
