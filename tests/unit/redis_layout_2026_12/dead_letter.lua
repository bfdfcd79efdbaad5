-- Ack one delivery and keep it as a dead letter, if its receipt is still held.
-- KEYS: seq, queue base. ARGV: receipt, reason, detail.
local Q, receipt = KEYS[2], ARGV[1]
if redis.call('ZREM', Q .. ':leased', receipt) == 0 then
  return 0
end
local fields = redis.call('HMGET', Q .. ':msg:' .. uid_of(receipt), 'p', 'c')
unlease(Q, receipt, fields[1], fields[2])
bury(Q, uid_of(receipt), ARGV[2], ARGV[3], now_ms(), fields[1])
tally_flush()
return 1
