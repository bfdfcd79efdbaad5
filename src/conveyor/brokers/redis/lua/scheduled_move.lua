-- Make some of one queue's delayed messages ready now (behind what is queued) or delete them.
-- KEYS: seq, queue base. ARGV: wake-up list ('' on Cluster), 'run' | 'cancel', id...
-- Returns {how many, how many made ready}. Looks at every delayed message of the queue (ids
-- are not indexed), like dead_move.
local Q = KEYS[2]
local run = ARGV[2] == 'run'
local wanted = {}
for i = 3, #ARGV do
  wanted[ARGV[i]] = true
end
local count, moved = 0, 0
local now = now_ms()
local delayed = Q .. ':delayed'
for _, uid in ipairs(redis.call('ZRANGE', delayed, 0, -1)) do
  local fields = record(Q, uid, 'c')
  if fields[1] and wanted[fields[1]] then
    local problem = run and priority_problem(uid, fields[2])
    redis.call('ZREM', delayed, uid)
    if fields[4] == 'd' then
      tally(Q, 'd', fields[2], -1)
    end
    if not run then
      forget(Q, {uid})
    elseif problem then
      bury(Q, uid, 'malformed', problem, now, fields[2])
    else
      requeue(Q, uid, int_of(fields[2]))
      moved = moved + 1
    end
    count = count + 1
  end
end
if moved > 0 then
  wake(ARGV[1])
end
tally_flush()
return {count, moved}
