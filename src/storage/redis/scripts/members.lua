
local rk = P .. 'room:' .. ARGV[4]
local page = redis.call('SSCAN', rk, ARGV[5], 'COUNT', ARGV[6])
local out = {page[1]}
for _, m in ipairs(page[2]) do
  -- A client with no record expired without being reaped (no node reaped for a whole
  -- grace): it is gone, so is its membership.
  if string.sub(m, 1, 2) == 'c:' and not redis.call('ZSCORE', P .. 'presence', m) then
    redis.call('SREM', rk, m)
  else
    table.insert(out, m)
  end
end
return out
