-- Replay dead letters (back to their queue, fresh delivery count) or purge them.
-- ARGV: prefix, 'replay' | 'purge', '1' for all or '0', id... Returns how many.
local replay, all = ARGV[2] == 'replay', ARGV[3] == '1'
local wanted = {}
for i = 4, #ARGV do
  wanted[ARGV[i]] = true
end
local count = 0
for _, q in ipairs(redis.call('SMEMBERS', P .. 'queues')) do
  local dead = P .. 'dead:' .. q
  local replayed = false
  for _, uid in ipairs(redis.call('ZRANGE', dead, 0, -1)) do
    local key = P .. 'msg:' .. uid
    local fields = redis.call('HMGET', key, 'id', 'p', 'n')
    if all or wanted[fields[1]] then
      redis.call('ZREM', dead, uid)
      if replay then
        redis.call('HDEL', key, 'r', 'd', 'at')
        redis.call('HSET', key, 'u', fields[3] or 0)  -- n stays: old receipts stay stale
        requeue(q, uid, tonumber(fields[2]))
        replayed = true
      else
        redis.call('DEL', key)
      end
      count = count + 1
    end
  end
  if replayed then
    wake(q)
  end
end
return count
