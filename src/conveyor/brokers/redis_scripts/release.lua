-- Return leased messages to their old place in the queue without charging the delivery
-- (a message whose hash cannot be queued is dead-lettered as 'malformed' instead).
-- ARGV: prefix, (queue, receipt) * n.
local released = 0
for i = 2, #ARGV, 2 do
  local q, receipt = ARGV[i], ARGV[i + 1]
  local uid = uid_of(receipt)
  local key = P .. 'msg:' .. uid
  local fields = redis.call('HMGET', key, 'id', 'p', 'b', 'n', 'u', 's')
  if redis.call('ZREM', P .. 'leased:' .. q, receipt) == 1 and fields[1] then
    local problem = message_problem(uid, fields[2], fields[3], fields[4], fields[5])
    if problem then
      bury(uid, q, 'malformed', problem, now_ms())
    else
      redis.call('HINCRBY', key, 'u', 1)
      local s = finite(fields[6])
      redis.call('ZADD', P .. 'ready:' .. q, s and fmt(s) or score(int_of(fields[2]), uid), uid)
      wake(q)
      released = released + 1
    end
  end
end
return released
