-- One queue's messages per state and priority (the dashboard's queues page). KEYS: seq,
-- queue base. ARGV: cap. Returns four arrays (ready, delayed, leased, dead) of ten counts,
-- priority 0 first; {-1} for a state of more than cap messages, which is not split.
-- Ready messages are counted by priority band of their scores (ZCOUNT, O(log n) each); the
-- other states keep no per-priority structure, so each member's hash is read: one HGET per
-- message, which is why it stops at cap.
local Q, cap = KEYS[2], tonumber(ARGV[1])
local ready = {}
for p = 0, 9 do
  local band = 9 - p
  ready[p + 1] = redis.call('ZCOUNT', Q .. ':ready', fmt(band * BAND), '(' .. fmt((band + 1) * BAND))
end
local function split(kind, receipts)
  local key = Q .. ':' .. kind
  if redis.call('ZCARD', key) > cap then
    return {-1}
  end
  local counts = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
  for _, member in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    local uid = member
    if receipts then
      uid = string.match(member, '^(.*):') or member
    end
    local p = int_of(redis.call('HGET', Q .. ':msg:' .. uid, 'p'))
    if p and p <= 9 then
      counts[p + 1] = counts[p + 1] + 1
    end
  end
  return counts
end
return {ready, split('delayed', false), split('leased', true), split('dead', false)}
