-- Drop a stage its producer gave up (a bad argument after the first chunks were staged).
-- KEYS: seq, stage list. Returns how many messages it held.
local stage = KEYS[2]
if not is_stage(stage) then
  return redis.error_reply('conveyor abort_stage: bad arguments')
end
return unstage(stage)
