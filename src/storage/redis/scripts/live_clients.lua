
return redis.call('ZRANGEBYSCORE', key(ARGV[4], 'live'), '(' .. str(now_ms()), '+inf')
