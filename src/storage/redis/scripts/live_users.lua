
-- A page of the live users: `ZSCAN` visits the whole index a page per call, so that many
-- users never hold Redis in one command; a user is live if their latest seen-until is ahead.
local page = redis.call('ZSCAN', P .. 'live', ARGV[4], 'COUNT', ARGV[5])
local now = now_ms()
local out = {page[1]}
local items = page[2]
for i = 1, #items, 2 do
  if tonumber(items[i + 1]) > now then table.insert(out, items[i]) end
end
return out
