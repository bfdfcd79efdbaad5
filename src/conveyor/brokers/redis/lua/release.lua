-- Return leased messages of one queue to their old place in it without charging the delivery
-- (a message whose record cannot be queued is dead-lettered as 'malformed' instead).
-- KEYS: seq, queue base. ARGV: wake-up list ('' on Cluster), receipt...
local Q = KEYS[2]
local released = 0
for i = 2, #ARGV do
  local receipt = ARGV[i]
  local uid = uid_of(receipt)
  local key = Q .. ':msg:' .. uid
  local fields = record(Q, uid, 'n', 'u', 's', 'c')
  local held = redis.call('ZREM', Q .. ':leased', receipt) == 1
  if held then
    unlease(Q, receipt, fields[2], fields[7])
  end
  if held and fields[1] then
    local problem = message_problem(uid, fields[2], fields[3], fields[4], fields[5])
    if problem then
      bury(Q, uid, 'malformed', problem, now_ms(), fields[2], leases_of(receipt, fields[4]))
    else
      local u = (int_of(fields[5]) or 0) + 1
      redis.call('HSET', key, 'n', leases_of(receipt, fields[4]), 'u', u)
      local s = finite(fields[6])
      redis.call('ZADD', Q .. ':ready', s and fmt(s) or score(int_of(fields[2]), uid), uid)
      released = released + 1
    end
  end
end
if released > 0 then
  wake(ARGV[1])
end
tally_flush()
return released
