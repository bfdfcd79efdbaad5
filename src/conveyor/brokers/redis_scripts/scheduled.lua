-- List delayed messages, soonest due first. ARGV: prefix, limit, queue ('' = all).
-- Returns (id, queue, body, priority, due in ms) * k; a uid whose hash is gone is skipped.
local limit = tonumber(ARGV[2])
local queues = ARGV[3] ~= '' and {ARGV[3]} or redis.call('SMEMBERS', P .. 'queues')
local found = {}
for _, q in ipairs(queues) do
  local top = redis.call('ZRANGE', P .. 'delayed:' .. q, 0, limit - 1, 'WITHSCORES')
  for i = 1, #top, 2 do
    found[#found + 1] = {top[i], tonumber(top[i + 1]), tonumber(top[i]) or 0}
  end
end
table.sort(found, function(a, b) return a[2] < b[2] or (a[2] == b[2] and a[3] < b[3]) end)
local out = {}
for i = 1, math.min(limit, #found) do
  local f = redis.call('HMGET', P .. 'msg:' .. found[i][1], 'id', 'q', 'b', 'p')
  if f[1] and f[3] then
    out[#out + 1] = f[1]
    out[#out + 1] = f[2] or ''
    out[#out + 1] = f[3]
    out[#out + 1] = int_of(f[4]) or 5
    out[#out + 1] = fmt(found[i][2])
  end
end
return out
