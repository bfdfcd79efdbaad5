-- List one queue's dead letters, oldest first. KEYS: seq, queue base. ARGV: limit.
-- Returns (id, queue, body, reason, detail, dead_at, deliveries, burial sequence) * k.
local Q, limit = KEYS[2], tonumber(ARGV[1])
local out = {}
local dead = redis.call('ZRANGE', Q .. ':dead', 0, limit - 1, 'WITHSCORES')
for i = 1, #dead, 2 do
  local f = record(Q, dead[i], 'q', 'r', 'd', 'at', 'n', 'u')
  for _, k in ipairs({1, 4, 3, 5, 6, 7}) do
    out[#out + 1] = f[k]
  end
  out[#out + 1] = (tonumber(f[8]) or 0) - (tonumber(f[9]) or 0)
  out[#out + 1] = dead[i + 1]
end
return out
