-- Ack finished messages (as ack_publish does), then lease up to limit messages from the given
-- queues: due delayed ones first become ready, then the lowest scores win (priority 9 first,
-- FIFO within a priority, across all the queues). Each leased message says whether its id is
-- revoked (a revoked:<id> key exists), so the worker needs no second round trip to ask.
-- ARGV: prefix, limit, lease_ms, promote_max, nacks, (queue, receipt) * nacks, queue...
-- Returns {next_due_ms} when nothing is ready (-1: nothing delayed), else
-- {0, (receipt, id, queue, priority, body, deliveries, revoked) * k}.
local limit, lease_ms, promote_max = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local qstart = 6 + 2 * tonumber(ARGV[5])
for i = 6, qstart - 1, 2 do
  if redis.call('ZREM', P .. 'leased:' .. ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('DEL', P .. 'msg:' .. uid_of(ARGV[i + 1]))
  end
end
local queues = {}
for i = qstart, #ARGV do
  queues[#queues + 1] = ARGV[i]
end
local now = now_ms()
for _, q in ipairs(queues) do
  promote(q, now, promote_max)
end

local picked, left = {}, {}
if #queues == 1 then
  local q = queues[1]
  local popped = redis.call('ZPOPMIN', P .. 'ready:' .. q, limit)
  for i = 1, #popped, 2 do
    picked[#picked + 1] = {popped[i], q}
  end
  left[q] = #picked == limit  -- maybe more: a cheap guess instead of a ZCARD
else
  local candidates = {}
  for _, q in ipairs(queues) do
    local top = redis.call('ZRANGE', P .. 'ready:' .. q, 0, limit - 1, 'WITHSCORES')
    for i = 1, #top, 2 do
      candidates[#candidates + 1] = {top[i], q, tonumber(top[i + 1])}
    end
    left[q] = #top == 2 * limit
  end
  table.sort(candidates, function(a, b) return a[3] < b[3] end)
  for i, c in ipairs(candidates) do
    if i <= limit then
      redis.call('ZREM', P .. 'ready:' .. c[2], c[1])
      picked[#picked + 1] = c
    else
      left[c[2]] = true
    end
  end
end

if #picked == 0 then
  local next_due = -1
  for _, q in ipairs(queues) do
    local first = redis.call('ZRANGE', P .. 'delayed:' .. q, 0, 0, 'WITHSCORES')
    if first[2] then
      local wait = math.max(1, math.ceil(tonumber(first[2]) - now))
      if next_due < 0 or wait < next_due then
        next_due = wait
      end
    end
  end
  return {next_due}
end

local deadline = fmt(now + lease_ms)
local out = {0}
for _, item in ipairs(picked) do
  local uid, q = item[1], item[2]
  local key = P .. 'msg:' .. uid
  local fields = redis.call('HMGET', key, 'id', 'p', 'b', 'u')
  if fields[1] then
    local n = redis.call('HINCRBY', key, 'n', 1)
    local receipt = uid .. ':' .. n
    redis.call('ZADD', P .. 'leased:' .. q, deadline, receipt)
    out[#out + 1] = receipt
    out[#out + 1] = fields[1]
    out[#out + 1] = q
    out[#out + 1] = fields[2]
    out[#out + 1] = fields[3]
    out[#out + 1] = n - (tonumber(fields[4]) or 0)
    out[#out + 1] = redis.call('EXISTS', P .. 'revoked:' .. fields[1])
  end
end
-- Work left behind: pass the wake-up on to the next blocked consumer.
for q, more in pairs(left) do
  if more then
    wake(q)
  end
end
return out
