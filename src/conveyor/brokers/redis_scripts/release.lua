-- Return leased messages to their old place in the queue without charging the delivery.
-- ARGV: prefix, (queue, receipt) * n.
local released = 0
for i = 2, #ARGV, 2 do
  local q, receipt = ARGV[i], ARGV[i + 1]
  if redis.call('ZREM', P .. 'leased:' .. q, receipt) == 1 then
    local uid = uid_of(receipt)
    local key = P .. 'msg:' .. uid
    redis.call('HINCRBY', key, 'u', 1)
    local fields = redis.call('HMGET', key, 's', 'p')
    redis.call('ZADD', P .. 'ready:' .. q, fields[1] or score(tonumber(fields[2]), uid), uid)
    wake(q)
    released = released + 1
  end
end
return released
