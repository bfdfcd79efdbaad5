-- Ack finished messages of the call's queues (as ack_publish does), then lease up to limit
-- messages from the queues: due delayed ones first become ready, then the lowest scores win
-- (priority 9 first, FIFO within a priority, across the queues of the call: on Cluster a call
-- has one queue). With a revoked-key prefix, each leased message says whether its id is
-- revoked (that key exists), so the worker needs no second round trip.
-- KEYS: seq, base of each queue. ARGV: limit, lease_ms, promote_max, revoked prefix ('' on
-- Cluster: the client asks), then (queue, wake-up list) per queue, then (k, receipt) per ack,
-- k the position of the receipt's queue among the call's queues (1 = the first).
-- Returns {next_due_ms} when nothing is ready (-1: nothing delayed), else
-- {more, (receipt, id, queue, priority, body, deliveries, revoked) * k}, more = 1 when ready
-- work was left behind (the token was passed on to the next consumer where a wake-up list was
-- given). A picked message whose hash cannot be leased (see message_problem) is dead-lettered
-- as 'malformed' instead.
local limit, lease_ms, promote_max = int_of(ARGV[1]), finite(ARGV[2]), int_of(ARGV[3])
local revoked_prefix = ARGV[4]
local nq = #KEYS - 1
local first_ack = 5 + 2 * nq
if not (limit and lease_ms and promote_max) or #ARGV < first_ack - 1
    or (#ARGV - first_ack + 1) % 2 ~= 0 then
  return redis.error_reply('conveyor lease: bad arguments')
end
local queues = {}
for k = 2, #KEYS do
  queues[#queues + 1] = {KEYS[k], ARGV[3 + 2 * (k - 1)], ARGV[4 + 2 * (k - 1)]}
end
for i = first_ack, #ARGV, 2 do
  local queue = queues[int_of(ARGV[i]) or 0]
  if not queue then
    return redis.error_reply('conveyor lease: bad arguments')
  end
end
-- The acks of each queue in four calls, not two per ack: which receipts are still leased
-- (an expired lease's message went to another consumer: its record stays), then one ZREM of
-- those and forget() (a DEL of their hashes, an HDEL of Q:m).
local acked = {}
for i = first_ack, #ARGV, 2 do
  local k = int_of(ARGV[i])
  acked[k] = acked[k] or {}
  table.insert(acked[k], ARGV[i + 1])
end
for k, receipts in pairs(acked) do
  local Q = queues[k][1]
  local held, uids = {}, {}
  for start = 1, #receipts, 1000 do
    local last = math.min(#receipts, start + 999)
    local scores = redis.call('ZMSCORE', Q .. ':leased', unpack(receipts, start, last))
    for j = start, last do
      if scores[j - start + 1] then
        held[#held + 1] = receipts[j]
        uids[#uids + 1] = uid_of(receipts[j])
        unlease_acked(Q, receipts[j])  -- before forget(): an old receipt reads the record
      end
    end
  end
  chunked('ZREM', Q .. ':leased', held)
  forget(Q, uids)
end
local now = now_ms()
-- Over several queues, one EXISTS says whether any has delayed messages (usually none):
-- a call per queue would make every lease's cost grow with the number of queues. (Up to
-- 1000 keys per EXISTS: unpack has a stack limit.)
local delayed = {}
for k, queue in ipairs(queues) do
  delayed[k] = queue[1] .. ':delayed'
end
if #queues == 1 or #queues > 1000 or redis.call('EXISTS', unpack(delayed)) > 0 then
  for _, queue in ipairs(queues) do
    promote(queue[1], now, promote_max)
  end
end

local picked, left = {}, {}
if #queues == 1 then
  local top = redis.call('ZRANGE', queues[1][1] .. ':ready', 0, limit - 1)
  for i = 1, #top do
    picked[i] = {top[i], queues[1]}
  end
  left[1] = #picked == limit  -- maybe more: a cheap guess instead of a ZCARD
else
  local candidates = {}
  for k, queue in ipairs(queues) do
    local top = redis.call('ZRANGE', queue[1] .. ':ready', 0, limit - 1, 'WITHSCORES')
    for i = 1, #top, 2 do
      candidates[#candidates + 1] = {top[i], queue, tonumber(top[i + 1]), k}
    end
    left[k] = #top == 2 * limit
  end
  table.sort(candidates, function(a, b) return a[3] < b[3] end)
  for i, c in ipairs(candidates) do
    if i <= limit then
      picked[#picked + 1] = c
    else
      left[c[4]] = true
    end
  end
end

if #picked == 0 then
  local next_due = -1
  for _, queue in ipairs(queues) do
    local first = redis.call('ZRANGE', queue[1] .. ':delayed', 0, 0, 'WITHSCORES')
    if first[2] then
      local wait = math.max(1, math.ceil(tonumber(first[2]) - now))
      if next_due < 0 or wait < next_due then
        next_due = wait
      end
    end
  end
  tally_flush()
  return {next_due}
end

-- Read every picked message before the first write for any of them.
local by_queue = {}
for _, item in ipairs(picked) do
  local group = by_queue[item[2][1]] or {}
  by_queue[item[2][1]] = group
  group[#group + 1] = item
end
for Q, items in pairs(by_queue) do
  local uids = {}
  for i, item in ipairs(items) do
    uids[i] = item[1]
  end
  for i, fields in ipairs(records(Q, uids, 'n', 'u')) do
    items[i][5] = fields
  end
end
if #queues == 1 then
  local uids = {}
  for i, item in ipairs(picked) do
    uids[i] = item[1]
  end
  redis.call('ZREM', queues[1][1] .. ':ready', unpack(uids))
else
  for _, item in ipairs(picked) do
    redis.call('ZREM', item[2][1] .. ':ready', item[1])
  end
end

local deadline = fmt(now + lease_ms)
local more = 0
local waking = {}
for k in pairs(left) do
  if left[k] then
    more = 1
    if queues[k][3] ~= '' then
      waking[#waking + 1] = queues[k][3]
    end
  end
end
-- Work left behind: pass the wake-up on to the next blocked consumer. A wake-up list holds
-- at most one token, so when each exists (a busy worker: the usual case) one EXISTS is all.
if #waking > 0 and (#waking == 1 or #waking > 1000
    or redis.call('EXISTS', unpack(waking)) < #waking) then
  for _, key in ipairs(waking) do
    wake(key)
  end
end
local out = {more}
-- One EXISTS says whether any leased id is revoked (usually none): then no call per message.
local any_revoked = false
if revoked_prefix ~= '' then
  local flags = {}
  for _, item in ipairs(picked) do
    if item[5][1] then
      flags[#flags + 1] = revoked_prefix .. item[5][1]
    end
  end
  any_revoked = chunked('EXISTS', nil, flags) > 0
end
local leased = {}  -- the ZADD of every receipt: deadline, receipt pairs
for _, item in ipairs(picked) do
  local uid, Q, q, fields = item[1], item[2][1], item[2][2], item[5]
  if fields[1] then  -- else the message is gone: only its uid was left to remove
    local problem = message_problem(uid, fields[2], fields[3], fields[4], fields[5])
    if problem then
      bury(Q, uid, 'malformed', problem, now, fields[2])
    else
      local n = (int_of(fields[4]) or 0) + 1  -- written when the lease ends unacked
      local receipt = uid .. ':' .. n .. ':' .. fields[2]
      tally(Q, 'l', fields[2], 1)
      leased[Q] = leased[Q] or {}
      table.insert(leased[Q], deadline)
      table.insert(leased[Q], receipt)
      out[#out + 1] = receipt
      out[#out + 1] = fields[1]
      out[#out + 1] = q
      out[#out + 1] = int_of(fields[2])
      out[#out + 1] = fields[3]
      out[#out + 1] = n - (int_of(fields[5]) or 0)
      if any_revoked then
        out[#out + 1] = redis.call('EXISTS', revoked_prefix .. fields[1])
      else
        out[#out + 1] = 0
      end
    end
  end
end
-- A queue's leases are few (those in flight), so Redis keeps Q:leased as a listpack, where
-- every insert scans the whole set: 16 leases added to 50 cost it ~21 us instead of ~3.6 us
-- as a skiplist (and ZMSCORE, ZREM likewise). A member longer than zset-max-listpack-value
-- (64 bytes by default) converts the set for the rest of its life, so when a batch is large
-- enough to matter, one is added before the leases and removed after them (never seen).
local SKIPLIST_MEMBER = string.rep('~', 512)
for Q, pairs_ in pairs(leased) do
  local key = Q .. ':leased'
  local convert = #pairs_ >= 16 and redis.call('OBJECT', 'ENCODING', key) ~= 'skiplist'
  if convert then
    redis.call('ZADD', key, 0, SKIPLIST_MEMBER)
  end
  for start = 1, #pairs_, 2000 do
    redis.call('ZADD', key, unpack(pairs_, start, math.min(#pairs_, start + 1999)))
  end
  if convert then
    redis.call('ZREM', key, SKIPLIST_MEMBER)
  end
end
tally_flush()
return out
