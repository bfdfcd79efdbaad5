-- Index the next chunk of a stage (stage.lua): the dedupe, then each message into its
-- queue's ready or delayed zset, as ack_publish.lua would have at publish. A producer sends
-- one call per chunk it staged, once every message was encoded.
-- KEYS: seq, stage list. Returns how many were added; -1 when no chunk is left and the
-- stage was never committed whole (the sweep dropped it: its producer publishes it all
-- again), -2 when it was (a call sent again after a lost connection).
local stage = KEYS[2]
if not is_stage(stage) then
  return redis.error_reply('conveyor commit_stage: bad arguments')
end
local packed = redis.call('LPOP', stage)
if not packed then
  return redis.call('EXISTS', stage .. ':done') == 1 and -2 or -1
end
if redis.call('LLEN', stage) == 0 then
  redis.call('ZREM', STAGES, stage)
  redis.call('SET', stage .. ':done', 1, 'PX', STAGE_TTL)
end
local chunk = chunk_of(packed)
if not chunk then
  return 0  -- not one stage.lua wrote: nothing of it can be indexed
end
local Q, wake_key, dedupe, base, ids, prios, dues = unpack(chunk)
local now = now_ms()
local seen, slot_key = {}, nil
if dedupe > 0 then
  seen, slot_key = published(Q, ids, dedupe, now)
end
local ready, delayed, dropped, remembered = {}, {}, {}, {}
local nr, nd, added = 0, 0, 0
for k = 1, #ids do
  local uid = base + k
  if seen[k] then
    dropped[#dropped + 1] = uid
  else
    added = added + 1
    remembered[added] = ids[k]
    local due = dues[k]
    if due > now then
      -- c = 'd': counted in Q:tally as delayed (see tally() in common.lua)
      redis.call('HSET', Q .. ':msg:' .. uid, 'c', 'd')
      tally(Q, 'd', prios[k], 1)
      delayed[nd + 1], delayed[nd + 2], nd = fmt(due), uid, nd + 2
    else
      ready[nr + 1], ready[nr + 2], nr = score(prios[k], uid), uid, nr + 2
    end
  end
end
chunked('ZADD', Q .. ':ready', ready)
chunked('ZADD', Q .. ':delayed', delayed)
chunked('HDEL', Q .. ':m', dropped)
if slot_key then
  remember(slot_key, remembered, dedupe, now)
end
if added > 0 then
  wake(wake_key)
end
tally_flush()
return added
