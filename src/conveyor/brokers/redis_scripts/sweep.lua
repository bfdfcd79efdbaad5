-- Return expired leases to their queue (or dead-letter them once they reached max_deliveries)
-- and make due delayed messages ready, at most batch of each per queue.
-- ARGV: prefix, max_deliveries, batch. Returns {moved, more}.
local max_deliveries, batch = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local moved, more = 0, 0
for _, q in ipairs(redis.call('SMEMBERS', P .. 'queues')) do
  local leased = P .. 'leased:' .. q
  local expired = redis.call('ZRANGEBYSCORE', leased, '-inf', fmt(now), 'LIMIT', 0, batch)
  local requeued = 0
  for _, receipt in ipairs(expired) do
    redis.call('ZREM', leased, receipt)
    local uid = uid_of(receipt)
    local fields = redis.call('HMGET', P .. 'msg:' .. uid, 'n', 'u', 'p')
    if fields[1] then
      local count = tonumber(fields[1]) - (tonumber(fields[2]) or 0)
      if count >= max_deliveries then
        bury(uid, q, 'worker_lost', 'lease expired after ' .. count .. ' deliveries', now)
      else
        requeue(q, uid, tonumber(fields[3]))
        requeued = requeued + 1
      end
    end
  end
  local promoted = promote(q, now, batch)
  if requeued + promoted > 0 then
    wake(q)
  end
  if #expired == batch or promoted == batch then
    more = 1
  end
  moved = moved + #expired + promoted
end
return {moved, more}
