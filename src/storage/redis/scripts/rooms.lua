
return redis.call('SMEMBERS', mkey(member(ARGV[4], ARGV[5]), 'rooms'))
