-- One queue's messages per state and priority (the dashboard's queues page). KEYS: seq,
-- queue base. ARGV: step. Returns four arrays (ready, delayed, leased, dead) of ten counts,
-- priority 0 first ({-1}: a state not split), then 1 if Q:tally is complete, else 0.
-- Ready messages are counted by priority band of their scores (ZCOUNT, O(log n) each); the
-- others are read from Q:tally, which the scripts moving messages keep (common.lua).
-- A queue written by a version without Q:tally holds messages it does not count yet: until
-- it is complete each call counts up to `step` more (ZSCAN over delayed, then leased, then
-- dead; each uncounted one is marked and counted, so none counts twice, and every message
-- that arrives meanwhile is counted on arrival). Only a complete tally is shown, and only a
-- state whose counts add up to its size (else a message's hash is gone, or a client of an
-- older version moved messages): the page never guesses.
local Q, step = KEYS[2], int_of(ARGV[1])
local T = Q .. ':tally'
local ready = {}
for p = 0, 9 do
  local band = 9 - p
  ready[p + 1] = redis.call('ZCOUNT', Q .. ':ready', fmt(band * BAND), '(' .. fmt((band + 1) * BAND))
end
local names = {d = 'delayed', l = 'leased', x = 'dead'}
local complete = redis.call('HGET', T, 'ok') == '1'
if not complete then
  local at = redis.call('HMGET', T, 'at', 'cursor')
  local state, cursor = at[1] or 'd', at[2] or '0'
  local reply = redis.call('ZSCAN', Q .. ':' .. names[state], cursor, 'COUNT', step or 1000)
  local found = reply[2]
  for i = 1, #found, 2 do
    local member = found[i]
    -- A lease of this version ('<uid>:<n>:<priority>') was counted when it was made.
    if not (state == 'l' and receipt_priority(member)) then
      local uid = uid_of(member)
      local mark = state == 'l' and member or state
      local fields = record(Q, uid, 'c')
      if fields[1] and fields[4] ~= mark then
        redis.call('HSET', Q .. ':msg:' .. uid, 'c', mark)
        tally(Q, state, fields[2], 1)
      end
    end
  end
  tally_flush()
  local after = ({d = 'l', l = 'x'})[state]
  if reply[1] ~= '0' then
    redis.call('HSET', T, 'at', state, 'cursor', reply[1])
  elseif after then
    redis.call('HSET', T, 'at', after, 'cursor', '0')
  else
    redis.call('HSET', T, 'ok', '1')
    redis.call('HDEL', T, 'at', 'cursor')
    complete = true
  end
end
local out = {ready}
for _, state in ipairs({'d', 'l', 'x'}) do
  local counts = {-1}
  if complete then
    local fields = {}
    for p = 0, 9 do
      fields[p + 1] = state .. p
    end
    fields[11] = state .. '-'
    local values = redis.call('HMGET', T, unpack(fields))
    local sum = 0
    for i = 1, 11 do
      values[i] = tonumber(values[i]) or 0
      sum = sum + values[i]
    end
    if sum == redis.call('ZCARD', Q .. ':' .. names[state]) then
      counts = {unpack(values, 1, 10)}
    end
  end
  out[#out + 1] = counts
end
out[#out + 1] = complete and 1 or 0
return out
