
local room, u, c = ARGV[4], ARGV[5], ARGV[6]
local m = member(u, c)
if c ~= '' then ensure_client(u, c, now_ms(), tonumber(ARGV[7]), tonumber(ARGV[8])) end
redis.call('SADD', P .. 'room:' .. room, m)
redis.call('SADD', mkey(m, 'rooms'), room)
if c ~= '' then keep_client(m, tonumber(ARGV[8])) end
return 1
