
local room, m = ARGV[4], member(ARGV[5], ARGV[6])
redis.call('SREM', P .. 'room:' .. room, m)
redis.call('SREM', mkey(m, 'rooms'), room)
return 1
