-- Return one queue's expired leases to it, at the place they had there (or dead-letter them
-- once they reached max_deliveries, or as 'malformed' if their hash cannot be queued), and
-- make due delayed messages ready, at most batch of each.
-- KEYS: seq, queue base. ARGV: wake-up list ('' on Cluster), max_deliveries, batch.
-- Returns {moved, more, made ready}.
local Q = KEYS[2]
local max_deliveries, batch = int_of(ARGV[2]), int_of(ARGV[3])
if not (max_deliveries and batch) then
  return redis.error_reply('conveyor sweep: bad arguments')
end
local now = now_ms()
local leased = Q .. ':leased'
local expired = redis.call('ZRANGEBYSCORE', leased, '-inf', fmt(now), 'LIMIT', 0, batch)
-- Read every expired message before the first write for any of them.
local found = {}
for i, receipt in ipairs(expired) do
  found[i] = redis.call('HMGET', Q .. ':msg:' .. uid_of(receipt), 'id', 'p', 'b', 'n', 'u', 's', 'c')
end
local requeued = 0
for i, receipt in ipairs(expired) do
  redis.call('ZREM', leased, receipt)
  local uid, fields = uid_of(receipt), found[i]
  unlease(Q, receipt, fields[2], fields[7])
  if fields[1] then  -- else the message is gone: only its lease was left to remove
    local problem = message_problem(uid, fields[2], fields[3], fields[4], fields[5])
        or (not fields[4] and 'the message has no lease count')
    if problem then
      bury(Q, uid, 'malformed', problem, now, fields[2])
    else
      local count = int_of(fields[4]) - (int_of(fields[5]) or 0)
      if count >= max_deliveries then
        depart(Q, uid, 'worker_lost', fields[1], fields[3])
        bury(Q, uid, 'worker_lost', 'lease expired after ' .. count .. ' deliveries', now, fields[2])
      else
        -- Its own score: back where it was in the queue, ahead of what came after it.
        local s = finite(fields[6])
        redis.call('ZADD', Q .. ':ready', s and fmt(s) or score(int_of(fields[2]), uid), uid)
        requeued = requeued + 1
      end
    end
  end
end
tally_flush()
local promoted = promote(Q, now, batch)
if requeued + promoted > 0 then
  wake(ARGV[1])
end
local more = (#expired == batch or promoted == batch) and 1 or 0
return {#expired + promoted, more, requeued + promoted}
