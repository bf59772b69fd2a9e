
if redis.call('GET', rk) ~= 'p' .. ARGV[8] then return 0 end
local now = now_ms()
redis.call('PEXPIRE', rk, ARGV[7])
-- The order sets outlive the record they hold.
local at = math.ceil((now + tonumber(ARGV[7])) / EXPIRY_STEP_MS) * EXPIRY_STEP_MS
extend(uk, at, now)
extend(ck, at, now)
return 1
