-- Stage one chunk of a bulk publish (conveyor/brokers/redis/staging.py) while its producer
-- encodes the next: each message gets its uid and its Q:m value now and waits, as a chunk
-- record on the stage list, for commit_stage.lua to index it. Until then no reader sees it
-- (every reader finds messages through the queue's zsets; nothing lists Q:m).
-- KEYS: seq, queue base, stage list. ARGV: as ack_publish.lua's without receipts (queue,
-- wake-up list, 0, '0', dedupe_ms, stride, then the messages).
-- Returns how many were staged. Every message is checked before the first write.
local Q, stage = KEYS[2], KEYS[3]
local dedupe, stride = tonumber(ARGV[5]), tonumber(ARGV[6])
if not is_stage(stage) or ARGV[3] ~= '0' or not dedupe or (stride ~= 5 and stride ~= 2)
    or (#ARGV - 6) % stride ~= 0 then
  return redis.error_reply('conveyor stage: bad arguments')
end
local now = now_ms()
local prios, dues, count = checked_messages(7, stride, now)
if not prios then
  return redis.error_reply('conveyor stage: bad priority, countdown or eta for ' .. dues)
end
local ids = {}
for k = 1, count do
  ids[k] = ARGV[7 + (k - 1) * stride]
end
if count == 0 then
  return 0
end
local base = reserve(count)
-- The zset entries too, so that the commit has no per-message work but the dedupe's.
local values, ready, delayed, nr, nd = {}, {}, {}, 0, 0
for k = 1, count do
  local uid = base + k
  values[2 * k - 1], values[2 * k] = uid, ARGV[6 + k * stride]
  if dues[k] > 0 then
    delayed[nd + 1], delayed[nd + 2], delayed[nd + 3], nd = k, prios[k], dues[k], nd + 3
  else
    ready[nr + 1], ready[nr + 2], nr = score(prios[k], uid), uid, nr + 2
  end
end
chunked('HSET', Q .. ':m', values)
redis.call('RPUSH', stage, cmsgpack.pack({Q, ARGV[2], dedupe, base, ids, ready, delayed}))
redis.call('ZADD', STAGES, fmt(now + STAGE_TTL), stage)
return count
