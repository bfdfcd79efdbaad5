-- Replay one queue's dead letters (back to the queue, fresh delivery count) or purge them.
-- KEYS: seq, queue base. ARGV: wake-up list ('' on Cluster), 'replay' | 'purge',
-- '1' for all or '0', id... Returns {how many, how many replayed}.
-- (A dead uid whose record is gone is removed, and counted, by either.)
local Q = KEYS[2]
local replay, all = ARGV[2] == 'replay', ARGV[3] == '1'
local wanted = {}
for i = 4, #ARGV do
  wanted[ARGV[i]] = true
end
local count, replayed = 0, 0
local dead = Q .. ':dead'
for _, uid in ipairs(redis.call('ZRANGE', dead, 0, -1)) do
  local key = Q .. ':msg:' .. uid
  local fields = record(Q, uid, 'n', 'c')
  if all or wanted[fields[1]] then
    redis.call('ZREM', dead, uid)
    if fields[5] == 'x' then
      tally(Q, 'x', fields[2], -1)
    end
    if replay and fields[1] then
      -- n stays (old receipts stay stale); a priority or count no script could use
      -- (a message dead-lettered as 'malformed' for it) is repaired: 5, 0.
      local n = int_of(fields[4]) or 0
      local priority = int_of(fields[2])
      if not priority or priority > 9 then
        priority = 5
      end
      redis.call('HDEL', key, 'r', 'd', 'at')
      redis.call('HSET', key, 'p', priority, 'n', n, 'u', n)
      requeue(Q, uid, priority)
      replayed = replayed + 1
    else
      forget(Q, {uid})
    end
    count = count + 1
  end
end
if replayed > 0 then
  wake(ARGV[1])
end
tally_flush()
return {count, replayed}
