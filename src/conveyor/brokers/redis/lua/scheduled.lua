-- List one queue's delayed messages, soonest due first. KEYS: seq, queue base.
-- ARGV: limit. Returns (id, queue, body, priority, due in ms) * k; a uid whose hash is gone
-- is skipped.
local Q, limit = KEYS[2], tonumber(ARGV[1])
local top = redis.call('ZRANGE', Q .. ':delayed', 0, limit - 1, 'WITHSCORES')
local found = {}
for i = 1, #top, 2 do
  found[#found + 1] = {top[i], tonumber(top[i + 1]), tonumber(top[i]) or 0}
end
-- Equal due times in publish order (uids compare as numbers, the zset compares strings).
table.sort(found, function(a, b) return a[2] < b[2] or (a[2] == b[2] and a[3] < b[3]) end)
local uids = {}
for i = 1, #found do
  uids[i] = found[i][1]
end
local out = {}
for i, f in ipairs(records(Q, uids, 'q')) do
  if f[1] and f[3] then
    out[#out + 1] = f[1]
    out[#out + 1] = f[4] or ''
    out[#out + 1] = f[3]
    out[#out + 1] = int_of(f[2]) or 5
    out[#out + 1] = fmt(found[i][2])
  end
end
return out
