-- What one queue could give a lease now (Cluster, a consumer of several queues: the client
-- splits its lease between the queues by these scores). Makes due delayed messages ready first.
-- KEYS: seq, queue base. ARGV: limit, promote_max.
-- Returns {next_due_ms (-1: nothing delayed), score of each of the first limit ready...}.
local Q = KEYS[2]
local limit, promote_max = int_of(ARGV[1]), int_of(ARGV[2])
if not (limit and promote_max) then
  return redis.error_reply('conveyor peek: bad arguments')
end
local now = now_ms()
promote(Q, now, promote_max)
local top = redis.call('ZRANGE', Q .. ':ready', 0, limit - 1, 'WITHSCORES')
local next_due = -1
local first = redis.call('ZRANGE', Q .. ':delayed', 0, 0, 'WITHSCORES')
if first[2] then
  next_due = math.max(1, math.ceil(tonumber(first[2]) - now))
end
local out = {next_due}
for i = 2, #top, 2 do
  out[#out + 1] = top[i]
end
return out
