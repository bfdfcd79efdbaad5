-- Ack leased messages of one queue, then add new ones to one queue (publish, retry_later).
-- KEYS: seq, base of the acked queue, base of the queue published to (the same on Cluster,
-- unless the client checked both are in one slot).
-- ARGV: queue published to, its wake-up list ('' on Cluster), nacks,
-- all_held ('1': add nothing unless every receipt was still held), dedupe_ms (> 0: skip a
-- message whose id was published to this queue in the last dedupe_ms; publish() only, so a
-- retried publish whose reply was lost adds nothing: see published() in ingress.lua), stride,
-- receipt * nacks, then the messages: stride 5, (id, priority, countdown_ms, eta_ms, value)
-- each; stride 2, (id, value) each, a message ready now whose priority is its value's first
-- digit (most calls: three arguments less to read per message). A value is the message's
-- Q:m value (packed by the client: it costs Lua a string copy and search per message).
-- Returns how many were added.
-- A receipt no longer held (its lease expired and was reclaimed) acks nothing.
-- Every message is checked before the first write: a bad one fails the call, adding nothing.
local A, Q = KEYS[2], KEYS[3]
local wake_key = ARGV[2]
local nacks = int_of(ARGV[3])
local dedupe = tonumber(ARGV[5])
local stride = tonumber(ARGV[6])
if not nacks or not dedupe or (stride ~= 5 and stride ~= 2)
    or (#ARGV - 6 - nacks) % stride ~= 0 then
  return redis.error_reply('conveyor publish: bad arguments')
end
local first = 7 + nacks
local now = now_ms()
local priorities, dues, count = checked_messages(first, stride, now)
if not priorities then
  return redis.error_reply('conveyor publish: bad priority, countdown or eta for ' .. dues)
end
local held = {}
for i = 7, 6 + nacks do
  if redis.call('ZREM', A .. ':leased', ARGV[i]) == 1 then
    unlease_acked(A, ARGV[i])
    held[#held + 1] = uid_of(ARGV[i])
  end
end
forget(A, held)
held = #held
tally_flush()
if ARGV[4] == '1' and held < nacks then
  return 0
end
local i = first
if count == 0 then
  return 0
end
local base = reserve(count)
local added = 0
local seen, slot_key = {}, nil
if dedupe > 0 then
  local ids = {}
  for k = 1, count do
    ids[k] = ARGV[i + (k - 1) * stride]
  end
  seen, slot_key = published(Q, ids, dedupe, now)
end
-- The Q:m values go in one HSET and the zset entries in one ZADD per zset (a redis.call per
-- message costs more).
-- (Counters rather than #t: Lua finds a table's length by a binary search.)
local values, ready, delayed, remembered = {}, {}, {}, {}
local nv, nr, nd = 0, 0, 0
for k = 1, count do
  if not seen[k] then
    added = added + 1
    remembered[added] = ARGV[i]
    local priority, due = priorities[k], dues[k]
    local uid = base + k
    values[nv + 1], values[nv + 2], nv = uid, ARGV[i + stride - 1], nv + 2
    if due > 0 then
      -- c = 'd': counted in Q:tally as delayed (see tally() in common.lua)
      redis.call('HSET', Q .. ':msg:' .. uid, 'c', 'd')
      tally(Q, 'd', priority, 1)
      delayed[nd + 1], delayed[nd + 2], nd = fmt(due), uid, nd + 2
    else
      ready[nr + 1], ready[nr + 2], nr = (9 - priority) * BAND + uid, uid, nr + 2
    end
  end
  i = i + stride
end
chunked('HSET', Q .. ':m', values)
if #ready > 0 then
  redis.call('ZADD', Q .. ':ready', unpack(ready))
end
if #delayed > 0 then
  redis.call('ZADD', Q .. ':delayed', unpack(delayed))
end
if slot_key then
  remember(slot_key, remembered, dedupe, now)
end
if added > 0 then
  wake(wake_key)
end
tally_flush()
return added
