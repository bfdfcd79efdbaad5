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
local Q, wake_key, dedupe, base, ids, ready, delayed = unpack(chunk)
local now = now_ms()
local seen, slot_key = {}, nil
if dedupe > 0 then
  seen, slot_key = published(Q, ids, dedupe, now)
end
local remembered, added = ids, #ids
if next(seen) then
  -- Some were published already (a retry): leave them out, and drop their staged values.
  local dropped, kept, n = {}, {}, 0
  remembered, added = {}, 0
  for k = 1, #ids do
    if seen[k] then
      dropped[#dropped + 1] = base + k
    else
      added = added + 1
      remembered[added] = ids[k]
    end
  end
  for i = 1, #ready, 2 do
    if not seen[ready[i + 1] - base] then
      kept[n + 1], kept[n + 2], n = ready[i], ready[i + 1], n + 2
    end
  end
  ready = kept
  chunked('HDEL', Q .. ':m', dropped)
end
chunked('ZADD', Q .. ':ready', ready)
local due, nd = {}, 0
for i = 1, #delayed, 3 do
  local k = delayed[i]
  if not seen[k] then
    local uid = base + k
    -- c = 'd': counted in Q:tally as delayed (see tally() in common.lua); a due time passed
    -- meanwhile is made ready by the next lease or sweep (promote())
    redis.call('HSET', Q .. ':msg:' .. uid, 'c', 'd')
    tally(Q, 'd', delayed[i + 1], 1)
    due[nd + 1], due[nd + 2], nd = fmt(delayed[i + 2]), uid, nd + 2
  end
end
chunked('ZADD', Q .. ':delayed', due)
if slot_key then
  remember(slot_key, remembered, dedupe, now)
end
if added > 0 then
  wake(wake_key)
end
tally_flush()
return added
