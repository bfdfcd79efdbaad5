-- Take (claim) or forget departures of one queue (see Q:departures in common.lua).
-- KEYS: seq, queue base. ARGV: 'take', limit (>= 1), claim (ms) | 'forget', uid...
-- take returns {uid, value, uid, value, ...} of unclaimed departures, now claimed;
-- forget returns how many it deleted.
local Q = KEYS[2]
local claims, values = Q .. ':departed', Q .. ':departures'
if ARGV[1] == 'take' then
  local limit, claim = int_of(ARGV[2]), tonumber(ARGV[3])
  if not (limit and claim and limit >= 1) then
    return redis.error_reply('conveyor departures: bad arguments')
  end
  local now = now_ms()
  local uids = redis.call('ZRANGEBYSCORE', claims, '-inf', fmt(now), 'LIMIT', 0, limit)
  local out = {}
  for _, uid in ipairs(uids) do
    local value = redis.call('HGET', values, uid)
    if value then
      redis.call('ZADD', claims, fmt(now + claim), uid)
      out[#out + 1] = uid
      out[#out + 1] = value
    else
      redis.call('ZREM', claims, uid)
    end
  end
  return out
end
local deleted = 0
for i = 2, #ARGV do
  redis.call('ZREM', claims, ARGV[i])
  deleted = deleted + redis.call('HDEL', values, ARGV[i])
end
return deleted
