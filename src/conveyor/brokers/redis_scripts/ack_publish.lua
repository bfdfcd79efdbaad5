-- Ack leased messages, then add new ones (publish, retry_later). ARGV: prefix, nacks,
-- all_held ('1': add nothing unless every receipt was still held), dedupe_ms (> 0: skip a
-- message whose id was published in the last dedupe_ms; publish() only, so a retried publish
-- whose reply was lost adds nothing), (queue, receipt) * nacks,
-- then (id, queue, priority, countdown_ms, eta_ms, body) * n.
-- A receipt no longer held (its lease expired and was reclaimed) acks nothing.
-- Every message is checked before the first write: a bad one fails the call, adding nothing.
local nacks = int_of(ARGV[2])
local dedupe = tonumber(ARGV[4])
if not nacks or not dedupe or (#ARGV - 4 - 2 * nacks) % 6 ~= 0 then
  return redis.error_reply('conveyor publish: bad arguments')
end
for j = 5 + 2 * nacks, #ARGV, 6 do
  local priority = int_of(ARGV[j + 2])
  if not priority or priority > 9 or not finite(ARGV[j + 3]) or not finite(ARGV[j + 4]) then
    return redis.error_reply('conveyor publish: bad priority, countdown or eta for ' .. ARGV[j])
  end
end
local i = 5
local held = 0
for _ = 1, nacks do
  if redis.call('ZREM', P .. 'leased:' .. ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('DEL', P .. 'msg:' .. uid_of(ARGV[i + 1]))
    held = held + 1
  end
  i = i + 2
end
if ARGV[3] == '1' and held < nacks then
  return 0
end
local count = (#ARGV - i + 1) / 6
if count == 0 then
  return 0
end
local now = now_ms()
local base = reserve(count)
local touched = {}
local added = 0
for k = 1, count do
  local id = ARGV[i]
  if dedupe <= 0 or redis.call('SET', P .. 'published:' .. id, 1, 'NX', 'PX', dedupe) then
    added = added + 1
    local q, priority = ARGV[i + 1], tonumber(ARGV[i + 2])
    local due = math.max(now + tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4]))
    local uid = base + k
    redis.call('HSET', P .. 'msg:' .. uid, 'id', id, 'q', q, 'p', priority, 'b', ARGV[i + 5])
    if due > now then
      redis.call('ZADD', P .. 'delayed:' .. q, fmt(due), uid)
    else
      redis.call('ZADD', P .. 'ready:' .. q, score(priority, uid), uid)
    end
    if not touched[q] then
      touched[q] = true
      redis.call('SADD', P .. 'queues', q)
      wake(q)
    end
  end
  i = i + 6
end
return added
