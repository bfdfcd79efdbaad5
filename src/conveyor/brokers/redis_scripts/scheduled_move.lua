-- Make delayed messages ready now (behind what is queued) or delete them.
-- ARGV: prefix, 'run' | 'cancel', id... Returns how many. Looks at every delayed message
-- (ids are not indexed), like dead_move.
local run = ARGV[2] == 'run'
local wanted = {}
for i = 3, #ARGV do
  wanted[ARGV[i]] = true
end
local count = 0
local now = now_ms()
for _, q in ipairs(redis.call('SMEMBERS', P .. 'queues')) do
  local delayed = P .. 'delayed:' .. q
  local moved = false
  for _, uid in ipairs(redis.call('ZRANGE', delayed, 0, -1)) do
    local key = P .. 'msg:' .. uid
    local fields = redis.call('HMGET', key, 'id', 'p')
    if fields[1] and wanted[fields[1]] then
      redis.call('ZREM', delayed, uid)
      if run then
        local problem = priority_problem(uid, fields[2])
        if problem then
          bury(uid, q, 'malformed', problem, now)
        else
          requeue(q, uid, int_of(fields[2]))
          moved = true
        end
      else
        redis.call('DEL', key)
      end
      count = count + 1
    end
  end
  if moved then
    wake(q)
  end
end
return count
