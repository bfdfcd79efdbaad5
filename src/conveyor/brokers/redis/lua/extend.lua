-- Renew leases of one queue to now + lease_ms. KEYS: seq, queue base. ARGV: lease_ms, receipt...
-- XX: a receipt that is no longer leased stays gone.
local leased = KEYS[2] .. ':leased'
local deadline = fmt(now_ms() + tonumber(ARGV[1]))
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', leased, 'XX', 'CH', deadline, ARGV[i])
end
return renewed
