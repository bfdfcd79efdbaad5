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
-- A stage whose producer never committed it (it died: staging.lua) is dropped, one a call.
if STAGES then
  local stale = redis.call('ZRANGEBYSCORE', STAGES, '-inf', fmt(now), 'LIMIT', 0, 1)[1]
  if stale then
    unstage(stale)
  end
end
local leased = Q .. ':leased'
local expired = redis.call('ZRANGEBYSCORE', leased, '-inf', fmt(now), 'LIMIT', 0, batch)
-- Read every expired message before the first write for any of them.
local uids = {}
for i, receipt in ipairs(expired) do
  uids[i] = uid_of(receipt)
end
local found = records(Q, uids, 'n', 'u', 's', 'c')
local requeued = 0
for i, receipt in ipairs(expired) do
  redis.call('ZREM', leased, receipt)
  local uid, fields = uid_of(receipt), found[i]
  unlease(Q, receipt, fields[2], fields[7])
  if fields[1] then  -- else the message is gone: only its lease was left to remove
    local problem = message_problem(uid, fields[2], fields[3], fields[4], fields[5])
    local n = leases_of(receipt, fields[4])
    if not problem and n == 0 then
      problem = 'the message has no lease count'
    end
    if problem then
      bury(Q, uid, 'malformed', problem, now, fields[2], n > 0 and n or nil)
    else
      local count = n - (int_of(fields[5]) or 0)
      if count >= max_deliveries then
        depart(Q, uid, 'worker_lost', fields[1], fields[3])
        local detail = 'lease expired after ' .. count .. ' deliveries'
        bury(Q, uid, 'worker_lost', detail, now, fields[2], n)
      else
        redis.call('HSET', Q .. ':msg:' .. uid, 'n', n)
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
