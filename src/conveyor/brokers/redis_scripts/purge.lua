-- Delete up to batch ready and batch delayed messages of each queue (leased ones stay).
-- ARGV: prefix, batch, queue... Returns {deleted, more}.
local batch = tonumber(ARGV[2])
local deleted, more = 0, 0
for i = 3, #ARGV do
  for _, kind in ipairs({'ready:', 'delayed:'}) do
    local key = P .. kind .. ARGV[i]
    local uids = redis.call('ZRANGE', key, 0, batch - 1)
    if #uids > 0 then
      for _, uid in ipairs(uids) do
        redis.call('DEL', P .. 'msg:' .. uid)
      end
      redis.call('ZREM', key, unpack(uids))
      deleted = deleted + #uids
      if #uids == batch then
        more = 1
      end
    end
  end
end
return {deleted, more}
