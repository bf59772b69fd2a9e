
return redis.call('ZRANGEBYSCORE', P .. 'live', '(' .. str(now_ms()), '+inf')
