-- Prepended after the prelude to the scripts of a staged bulk publish (stage, commit_stage,
-- abort_stage) and to the sweep, which drops stages nobody committed (their producer died).
-- A stage is a list, '{<p>}:stage:<token>', of chunk records written by stage.lua; the zset
-- '{<p>}:stages' holds each stage's deadline. Single server only (Cluster never stages).
local STAGE_TTL = 300000  -- ms a stage waits for its next chunk or its commit
local STAGES = PREFIX and '{' .. PREFIX .. '}:stages'
local STAGE_HEAD = PREFIX and '{' .. PREFIX .. '}:stage:'

-- Whether key names a stage of this prefix (a script writes only keys whose types it knows).
local function is_stage(key)
  return STAGE_HEAD ~= nil and #key > #STAGE_HEAD and string.sub(key, 1, #STAGE_HEAD) == STAGE_HEAD
end

-- The fields of a chunk record: queue base, wake-up list, dedupe_ms, the uid before the
-- first, the ids of its messages, then the ready zset's entries of those ready now (score,
-- uid, ...) and (index in ids, priority, due time, ...) of the others.
local function chunk_of(packed)
  local ok, chunk = pcall(cmsgpack.unpack, packed)
  if not ok or type(chunk) ~= 'table' or type(chunk[1]) ~= 'string' or type(chunk[4]) ~= 'number'
      or type(chunk[5]) ~= 'table' or type(chunk[6]) ~= 'table' or type(chunk[7]) ~= 'table'
      or string.sub(chunk[1], 1, #PREFIX + 2) ~= '{' .. PREFIX .. ':' then
    return nil
  end
  return chunk
end

-- Drop a stage: the Q:m values of its chunks (never indexed: no reader saw them), the list
-- and its deadline. Returns how many messages it held.
local function unstage(stage)
  local dropped = 0
  if not is_stage(stage) then
    redis.call('ZREM', STAGES, stage)
    return 0
  end
  for _, packed in ipairs(redis.call('LRANGE', stage, 0, -1)) do
    local chunk = chunk_of(packed)
    if chunk then
      local uids, base = {}, chunk[4]
      for k = 1, #chunk[5] do
        uids[k] = base + k
      end
      chunked('HDEL', chunk[1] .. ':m', uids)
      dropped = dropped + #uids
    end
  end
  redis.call('DEL', stage)
  redis.call('ZREM', STAGES, stage)
  return dropped
end
