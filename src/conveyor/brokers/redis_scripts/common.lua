-- Helpers prepended to every broker script. ARGV[1] is the key prefix; keys are built here
-- because a batch touches a varying set of queues (a single server is assumed, not Cluster).
--
--   <p>:seq          counter: message uids and FIFO sequence numbers
--   <p>:queues       set of known queue names
--   <p>:ready:<q>    zset uid -> score(priority, sequence), lowest served first
--   <p>:delayed:<q>  zset uid -> due time (ms, Redis TIME)
--   <p>:leased:<q>   zset receipt "<uid>:<n>" -> lease deadline (ms)
--   <p>:dead:<q>     zset uid -> sequence (oldest first)
--   <p>:msg:<uid>    hash id, q, p (priority), b (body),
--                    n (leases so far, never decreases: it makes each receipt unique),
--                    u (leases not charged: released, or before a replay), so the
--                    delivery count is n - u,
--                    s (ready score, when it is not the one given at publish),
--                    r, d, at (dead-letter reason, detail, time)
--   <p>:wake:<q>     list holding at most one token; idle consumers BLPOP it
--   <p>:published:<id>  set by publish(), expiring: that id is not added again meanwhile
--
-- Each redis.call costs a few microseconds: hot paths make as few as they can.
local P = ARGV[1] .. ':'
local BAND = 1e14

-- Redis turns Lua numbers into strings with 14 significant digits; scores need all of them.
local function fmt(x)
  return string.format('%.17g', x)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end

-- Reserve n fresh sequence numbers; returns the one before the first.
local function reserve(n)
  return redis.call('INCRBY', P .. 'seq', n) - n
end

local function wake(q)
  local key = P .. 'wake:' .. q
  if redis.call('LLEN', key) == 0 then
    redis.call('RPUSH', key, 1)
  end
end

-- 9 first, then FIFO: a message published ready gets its uid as sequence.
local function score(priority, seq)
  return fmt((9 - priority) * BAND + seq)
end

-- Make uid ready again behind everything queued now (requeue, promotion, replay).
local function requeue(q, uid, priority)
  local s = score(priority, reserve(1) + 1)
  redis.call('ZADD', P .. 'ready:' .. q, s, uid)
  redis.call('HSET', P .. 'msg:' .. uid, 's', s)
end

local function uid_of(receipt)
  return string.match(receipt, '^[^:]+')
end

local function bury(uid, q, reason, detail, now)
  redis.call('HSET', P .. 'msg:' .. uid, 'r', reason, 'd', detail, 'at', fmt(now / 1000))
  redis.call('ZADD', P .. 'dead:' .. q, reserve(1) + 1, uid)
end

-- Move up to max due delayed messages of q to its ready set, behind what is already there.
local function promote(q, now, max)
  local key = P .. 'delayed:' .. q
  local found = redis.call('ZRANGEBYSCORE', key, '-inf', fmt(now), 'WITHSCORES', 'LIMIT', 0, max)
  if #found == 0 then
    return 0
  end
  -- Equal due times tie-break by uid (publish order), numerically: the zset compares strings.
  local due = {}
  for i = 1, #found, 2 do
    due[#due + 1] = {found[i], tonumber(found[i + 1]), tonumber(found[i])}
  end
  table.sort(due, function(a, b) return a[2] < b[2] or (a[2] == b[2] and a[3] < b[3]) end)
  local uids = {}
  for i, item in ipairs(due) do
    uids[i] = item[1]
    requeue(q, item[1], tonumber(redis.call('HGET', P .. 'msg:' .. item[1], 'p')))
  end
  redis.call('ZREM', key, unpack(uids))
  return #uids
end
