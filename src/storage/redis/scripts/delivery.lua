
if current_epoch() ~= ARGV[4] then return {'lost'} end
local now = now_ms()
local out, noted = {}, {}
for i = 0, tonumber(ARGV[5]) - 1 do
  local b = 6 + i * 4
  local u, c, ns, pos = ARGV[b], ARGV[b + 1], ARGV[b + 2], tonumber(ARGV[b + 3])
  local confirmed
  if c == '' then
    confirmed = num(redis.call('HGET', key(u, 'wm'), ns))
  else
    confirmed = client_confirmed(u, c, ns)
  end
  if pos <= confirmed then
    table.insert(out, 'd')
  else
    local found = redis.call('ZRANGEBYSCORE', key(u, 'log'), str(pos), str(pos))
    -- Still waited for: this node's interest in the user's confirmations is kept up.
    if not noted[u] then
      if note_interest(u, 'w', now + INTEREST_WAIT_MS, now) then touch(u, now, {'n'}) end
      noted[u] = true
    end
    local state = 'e'
    if #found > 0 then
      local _, exp = parse(found[1])
      if exp > now then state = 'p' end
    end
    table.insert(out, state)
  end
end
return out
