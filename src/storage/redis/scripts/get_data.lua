
return redis.call('HGET', mkey(member(ARGV[4], ARGV[5]), 'data'), ARGV[6])
