
local u, c, id = ARGV[4], ARGV[5], ARGV[6]
local function dkey(c_, id_) return P .. 'd:' .. c_ .. ':' .. id_ .. ':' .. u end
local uk, ck = P .. 'du:' .. u, P .. 'dc:' .. c .. ':' .. u
local name = c .. ':' .. id
local rk = dkey(c, id)
-- Claim numbers follow the clock (ms × 1000), one past the user's latest if that is not less.
local function next_seq(now)
  local top = redis.call('ZRANGE', uk, -1, -1, 'WITHSCORES')
  local seq = now * 1000
  if top[2] and tonumber(top[2]) >= seq then seq = tonumber(top[2]) + 1 end
  return seq
end
local function order(now, seq, until_)
  redis.call('ZADD', uk, str(seq), name)
  redis.call('ZADD', ck, str(seq), id)
  local at = math.ceil(until_ / EXPIRY_STEP_MS) * EXPIRY_STEP_MS
  extend(uk, at, now)
  extend(ck, at, now)
end
