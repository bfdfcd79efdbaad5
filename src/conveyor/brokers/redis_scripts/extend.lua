-- Renew leases to now + lease_ms. ARGV: prefix, lease_ms, (queue, receipt) * n.
-- XX: a receipt that is no longer leased stays gone.
local deadline = fmt(now_ms() + tonumber(ARGV[2]))
local renewed = 0
for i = 3, #ARGV, 2 do
  renewed = renewed + redis.call('ZADD', P .. 'leased:' .. ARGV[i], 'XX', 'CH', deadline, ARGV[i + 1])
end
return renewed
