-- Ack one delivery and keep it as a dead letter, if its receipt is still held.
-- ARGV: prefix, queue, receipt, reason, detail.
local q, receipt = ARGV[2], ARGV[3]
if redis.call('ZREM', P .. 'leased:' .. q, receipt) == 0 then
  return 0
end
bury(uid_of(receipt), q, ARGV[4], ARGV[5], now_ms())
return 1
