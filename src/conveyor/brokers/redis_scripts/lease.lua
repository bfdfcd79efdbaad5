-- Ack finished messages (as ack_publish does), then lease up to limit messages from the given
-- queues: due delayed ones first become ready, then the lowest scores win (priority 9 first,
-- FIFO within a priority, across all the queues). Each leased message says whether its id is
-- revoked (a revoked:<id> key exists), so the worker needs no second round trip to ask.
-- ARGV: prefix, limit, lease_ms, promote_max, nacks, (queue, receipt) * nacks, queue...
-- Returns {next_due_ms} when nothing is ready (-1: nothing delayed), else
-- {0, (receipt, id, queue, priority, body, deliveries, revoked) * k}. A picked message whose
-- hash cannot be leased (see message_problem) is dead-lettered as 'malformed' instead.
local limit, lease_ms, promote_max = int_of(ARGV[2]), finite(ARGV[3]), int_of(ARGV[4])
local nacks = int_of(ARGV[5])
if not (limit and lease_ms and promote_max and nacks) then
  return redis.error_reply('conveyor lease: bad arguments')
end
local qstart = 6 + 2 * nacks
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
  local top = redis.call('ZRANGE', P .. 'ready:' .. q, 0, limit - 1)
  for i = 1, #top do
    picked[i] = {top[i], q}
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

-- Read every picked message before the first write for any of them.
for _, item in ipairs(picked) do
  item[4] = redis.call('HMGET', P .. 'msg:' .. item[1], 'id', 'p', 'b', 'n', 'u')
end
if #queues == 1 then
  local uids = {}
  for i, item in ipairs(picked) do
    uids[i] = item[1]
  end
  redis.call('ZREM', P .. 'ready:' .. queues[1], unpack(uids))
else
  for _, item in ipairs(picked) do
    redis.call('ZREM', P .. 'ready:' .. item[2], item[1])
  end
end

local deadline = fmt(now + lease_ms)
local out = {0}
for _, item in ipairs(picked) do
  local uid, q, fields = item[1], item[2], item[4]
  if fields[1] then  -- else the message is gone: only its uid was left to remove
    local problem = message_problem(uid, fields[2], fields[3], fields[4], fields[5])
    if problem then
      bury(uid, q, 'malformed', problem, now)
    else
      local n = redis.call('HINCRBY', P .. 'msg:' .. uid, 'n', 1)
      local receipt = uid .. ':' .. n
      redis.call('ZADD', P .. 'leased:' .. q, deadline, receipt)
      out[#out + 1] = receipt
      out[#out + 1] = fields[1]
      out[#out + 1] = q
      out[#out + 1] = int_of(fields[2])
      out[#out + 1] = fields[3]
      out[#out + 1] = n - (int_of(fields[5]) or 0)
      out[#out + 1] = redis.call('EXISTS', P .. 'revoked:' .. fields[1])
    end
  end
end
-- Work left behind: pass the wake-up on to the next blocked consumer.
for q, more in pairs(left) do
  if more then
    wake(q)
  end
end
return out
