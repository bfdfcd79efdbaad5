-- Ack one delivery and keep it as a dead letter, if its receipt is still held.
-- KEYS: seq, queue base. ARGV: receipt, reason, detail.
local Q, receipt = KEYS[2], ARGV[1]
if redis.call('ZREM', Q .. ':leased', receipt) == 0 then
  return 0
end
local fields = record(Q, uid_of(receipt), 'c', 'n')
unlease(Q, receipt, fields[2], fields[4])
bury(Q, uid_of(receipt), ARGV[2], ARGV[3], now_ms(), fields[2], leases_of(receipt, fields[5]))
tally_flush()
return 1
