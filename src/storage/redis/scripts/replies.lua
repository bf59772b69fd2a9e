
if current_epoch() ~= ARGV[4] then return {'lost'} end
local now = now_ms()
local out, noted = {}, {}
for i = 0, tonumber(ARGV[5]) - 1 do
  local u, pos = ARGV[6 + i * 2], ARGV[7 + i * 2]
  local record = redis.call('HGET', key(u, 'acks'), pos)
  local exp = record and tonumber(string.match(record, '^(%d+):'))
  if not exp or exp <= now then
    table.insert(out, '0')
  else
    -- Still taking replies, and asked about: this node still waits for them.
    if not noted[u] then
      if note_interest(u, 'w', now + INTEREST_WAIT_MS, now) then touch(u, now, {'n'}) end
      noted[u] = true
    end
    -- At most one reply per client of the user: a bounded read.
    local found = redis.call('HGETALL', key(u, 'r' .. pos))
    table.insert(out, str(#found / 2))
    for _, v in ipairs(found) do table.insert(out, v) end
  end
end
return out
