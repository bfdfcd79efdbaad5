-- List dead letters, oldest first. ARGV: prefix, limit, queue ('' = all).
-- Returns (id, queue, body, reason, detail, dead_at, deliveries) * k.
local limit = tonumber(ARGV[2])
local queues = ARGV[3] ~= '' and {ARGV[3]} or redis.call('SMEMBERS', P .. 'queues')
local found = {}
for _, q in ipairs(queues) do
  local top = redis.call('ZRANGE', P .. 'dead:' .. q, 0, limit - 1, 'WITHSCORES')
  for i = 1, #top, 2 do
    found[#found + 1] = {top[i], tonumber(top[i + 1])}
  end
end
table.sort(found, function(a, b) return a[2] < b[2] end)
local out = {}
for i = 1, math.min(limit, #found) do
  local f = redis.call('HMGET', P .. 'msg:' .. found[i][1], 'id', 'q', 'b', 'r', 'd', 'at', 'n', 'u')
  for k = 1, 6 do
    out[#out + 1] = f[k]
  end
  out[#out + 1] = (tonumber(f[7]) or 0) - (tonumber(f[8]) or 0)
end
return out
