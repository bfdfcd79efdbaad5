-- Helpers prepended to every broker script. Key names are made in conveyor/_redis_keys.py
-- and given to each script in KEYS, so a script touches the keys of one queue, all in one
-- hash slot (Redis Cluster): KEYS[1] is the sequence counter, KEYS[2..] the base name of
-- each queue the call is about, '{<p>:<q>}' (one hash tag per queue). Under a base Q:
--
--   Q:ready          zset uid -> score(priority, sequence), lowest served first
--   Q:delayed        zset uid -> due time (ms, Redis TIME)
--   Q:leased         zset receipt "<uid>:<n>" -> lease deadline (ms)
--   Q:dead           zset uid -> sequence (oldest first)
--   Q:m              hash uid -> '<priority> <length of id> <id><body>', or, when the body
--                    holds the id (an envelope does, near its start), '<priority> <length of
--                    id>:<its position in the body> <body>': what never changes of each
--                    message (one hash per queue: a hash per message holding a body over
--                    hash-max-listpack-value is a hash table, ~50 bytes a field; packed by the
--                    client: packed_value() in conveyor/brokers/redis/publish.py)
--   Q:msg:<uid>      hash of what changes, made by the first change (a delay, a lease ending
--                    unacked, a burial): a ready message never leased has none.
--                    n (leases so far, never decreases: it makes each receipt unique;
--                    written when a lease ends unacked - sweep, release, burial - as the
--                    receipt carries it: a lease itself writes nothing),
--                    u (leases not charged: released, or before a replay), so the
--                    delivery count is n - u,
--                    s (ready score, when it is not the one given at publish),
--                    c (tally mark, below), r, d, at (dead-letter reason, detail, time),
--                    p (a priority a replay repaired). Versions before 2026-12 kept the whole
--                    message here (id, p, b, and before that q, the queue's name: the queue
--                    is the one of Q, readers use that) and no Q:m entry: record() reads
--                    both layouts, a field of this hash winning over the packed one
--   Q:pub:<slot>     set of the ids publish() added in one slot of time (the dedupe
--                    window long), expiring after the next slot: see ack_publish.lua
--   Q:departures     hash uid -> '<reason> <length of id> <id><body>': a message the sweep
--                    dead-lettered or purge deleted, until a worker did its bookkeeping
--   Q:departed       zset uid -> claimed until (ms; 0: not taken): see departures.lua
--   Q:tally          hash '<d|l|x><priority>' -> delayed, leased, dead messages of that
--                    priority ('-': a priority no score can be made of), 'ok' once complete:
--                    see tally() below and priority_counts.lua
--
-- The sequence counter (KEYS[1]) is '{<p>}:seq' on a single server, one for all queues, so
-- FIFO within a priority holds across queues; on Cluster it is 'Q:seq', one per queue.
-- Small publishes wait on the prefix's ingress list, '{<p>}:in', until the next script
-- queues them (ingress.lua; entries that name no queue go to '{<p>}:in:unroutable').
-- A large bulk publish waits, staged, on '{<p>}:stage:<token>' (its deadline in '{<p>}:stages')
-- until its commit queues it (staging.lua).
-- A queue's wake-up list (at most one token; idle consumers BLPOP it) is '{<p>}:wake:<q>':
-- on a single server scripts push it themselves (its name is an argument); on Cluster it is
-- in another slot, the argument is '' and the client pushes it after the call.
--
-- Each redis.call costs a few microseconds: hot paths make as few as they can.
--
-- Redis does not roll back a script that fails half-way, so every script reads and checks
-- what it will use (its arguments, the fields of each message hash) before its first write
-- for it, and writes only what cannot fail: a message with a field no script could use
-- (a priority that is not an integer 0-9, a count that is not an integer, no body) is
-- dead-lettered as 'malformed' with a detail naming the field - never half-moved or lost.
local SEQ = KEYS[1]
local BAND = 1e14

-- Lua's tostring and '..' write numbers with 14 significant digits; scores need all of them.
-- (A number given to redis.call goes on with 17, as '%.17g': exact for every score.)
local function fmt(x)
  return string.format('%.17g', x)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end

-- Reserve n fresh sequence numbers; returns the one before the first.
local function reserve(n)
  return redis.call('INCRBY', SEQ, n) - n
end

-- Push a token on a wake-up list unless it holds one ('' = the client does it: Cluster).
local function wake(key)
  if key ~= '' and redis.call('LLEN', key) == 0 then
    redis.call('RPUSH', key, 1)
  end
end

-- 9 first, then FIFO: a message published ready gets its uid as sequence. A number, for
-- redis.call (formatting it here cost a bulk publish ~0.3 us per message).
local function score(priority, seq)
  return (9 - priority) * BAND + seq
end

-- Make uid ready again behind everything queued now (requeue, promotion, replay).
local function requeue(Q, uid, priority)
  local s = score(priority, reserve(1) + 1)
  redis.call('ZADD', Q .. ':ready', s, uid)
  redis.call('HSET', Q .. ':msg:' .. uid, 's', s)
end

-- id, priority, body of a Q:m value. A damaged one gives what message_problem() names: a
-- priority that is not one, no body (an id running past the end), no priority (no shape).
local function unpacked(v)
  local p, len, pos, at = string.match(v, '^([^ ]*) (%d+):?(%d*) ()')
  if not p then
    return '', nil, v
  end
  if pos ~= '' then
    local body = string.sub(v, at)
    return string.sub(body, tonumber(pos), tonumber(pos) + tonumber(len) - 1), p, body
  end
  local stop = at + tonumber(len)
  if stop > #v + 1 then
    return string.sub(v, at), p, nil
  end
  return string.sub(v, at, stop - 1), p, string.sub(v, stop)
end

-- Each uid's fields {id, p, b, then the names given} (false: missing), from both layouts (see
-- Q:m and Q:msg above): per 1000 uids one HMGET of Q:m and one EXISTS of their hashes, then
-- an HMGET of each hash only if any exists (fresh messages have none: the usual lease).
local function records(Q, uids, ...)
  local out, none = {}, {false, false, false}
  for _ = 1, select('#', ...) do
    none[#none + 1] = false
  end
  for start = 1, #uids, 1000 do
    local last = math.min(#uids, start + 999)
    local packed = redis.call('HMGET', Q .. ':m', unpack(uids, start, last))
    local hashes = {}
    for i = start, last do
      hashes[#hashes + 1] = Q .. ':msg:' .. uids[i]
    end
    local any = redis.call('EXISTS', unpack(hashes)) > 0
    for i = start, last do
      local f = any and redis.call('HMGET', hashes[i - start + 1], 'id', 'p', 'b', ...)
          or {unpack(none)}
      local v = packed[i - start + 1]
      if v then
        local id, p, b = unpacked(v)
        -- false, as HMGET gives a missing field: a nil would end a reply's array there
        f[1], f[2], f[3] = f[1] or id, f[2] or p or false, f[3] or b or false
      end
      out[i] = f
    end
  end
  return out
end

local function record(Q, uid, ...)
  return records(Q, {uid}, ...)[1]
end

-- Delete messages of Q (acked, purged, cancelled) in both layouts, up to 1000 a call.
local function forget(Q, uids)
  for start = 1, #uids, 1000 do
    local last = math.min(#uids, start + 999)
    local hashes = {}
    for i = start, last do
      hashes[#hashes + 1] = Q .. ':msg:' .. uids[i]
    end
    redis.call('DEL', unpack(hashes))
    redis.call('HDEL', Q .. ':m', unpack(uids, start, last))
  end
end

local function uid_of(receipt)
  return string.match(receipt, '^[^:]+') or ''
end

-- x as a whole number 0 <= x < 1e15, or nil (tonumber alone accepts '1.5', 'inf', '0x1f',
-- ' 5', '1e3' and '0\0', none of which HINCRBY takes: a string must be Redis's own spelling).
local function int_of(x)
  if type(x) == 'string' and not (x == '0' or string.match(x, '^[1-9]%d*$')) then
    return nil
  end
  local n = tonumber(x)
  if n and n == math.floor(n) and n >= 0 and n < 1e15 then
    return n
  end
  return nil
end

-- The lease count of a lease ending unacked: its receipt's ('<uid>:<n>[:<priority>]'), or
-- the hash's n (the greater: an older version counted in the hash first).
local function leases_of(receipt, n)
  local counted = int_of(string.match(receipt, '^[^:]*:([^:]*)')) or 0
  return math.max(counted, int_of(n) or 0)
end

-- x as a finite number, or nil.
local function finite(x)
  local n = tonumber(x)
  if n and n == n and n > -math.huge and n < math.huge then
    return n
  end
  return nil
end

local function shown(x)
  if not x then
    return 'missing'
  end
  return "'" .. string.sub(tostring(x), 1, 40) .. "'"
end

-- Why uid (a member of a queue's sorted sets) with priority p cannot be queued, or nil.
local function priority_problem(uid, p)
  if not int_of(uid) then
    return 'message uid ' .. shown(uid) .. ' is not a number'
  end
  local prio = int_of(p)
  if not prio or prio > 9 then
    return 'priority ' .. shown(p) .. ' is not an integer 0-9'
  end
  return nil
end

-- Why a message hash (fields p, b, n, u) cannot be leased, or nil.
local function message_problem(uid, p, b, n, u)
  local problem = priority_problem(uid, p)
  if problem then
    return problem
  end
  if not b then
    return 'the message has no body'
  end
  if n and not int_of(n) then
    return 'lease count ' .. shown(n) .. ' is not an integer'
  end
  if u and not int_of(u) then
    return 'release count ' .. shown(u) .. ' is not an integer'
  end
  return nil
end

-- Record a message that leaves without a worker settling it (Broker.take_departures).
local function depart(Q, uid, reason, id, body)
  redis.call('HSET', Q .. ':departures', uid, reason .. ' ' .. #id .. ' ' .. id .. body)
  redis.call('ZADD', Q .. ':departed', 0, uid)
end

-- Q:tally counts each delayed, leased and dead message under its priority, changed by the
-- same script that moves the message, so it cannot drift. A message entering one of these
-- states is always counted; one leaving is uncounted only if it was counted: Q:tally may
-- predate the message (an older version left it there uncounted, priority_counts.lua counts
-- those once). A delayed or dead message is counted when its hash's c is 'd' or 'x'; a lease
-- when its receipt is '<uid>:<n>:<priority>' (an older version's '<uid>:<n>': when c is
-- the receipt). Changes made in a loop gather in `tallied`, written by tally_flush().
-- (A lease call's acks and leases of one priority cancel out: often no write at all.)
local tallied = {}
local function tally(Q, state, p, by)
  local field
  if type(p) == 'string' and #p == 1 and p >= '0' and p <= '9' then
    field = state .. p  -- the usual case, without int_of's pattern
  else
    local prio = int_of(p)
    field = state .. ((prio and prio <= 9) and prio or '-')
  end
  local fields = tallied[Q]
  if not fields then
    fields = {}
    tallied[Q] = fields
  end
  fields[field] = (fields[field] or 0) + by
end

local function tally_flush()
  for Q, fields in pairs(tallied) do
    for field, by in pairs(fields) do
      if by ~= 0 then
        redis.call('HINCRBY', Q .. ':tally', field, by)
      end
    end
  end
  tallied = {}
end

-- The priority a receipt of this version carries, or nil.
local function receipt_priority(receipt)
  local first = string.find(receipt, ':', 1, true)
  local second = first and string.find(receipt, ':', first + 1, true)
  return second and string.sub(receipt, second + 1) or nil
end

-- Uncount a lease leaving Q:leased; p, c: its hash's fields (used for an old receipt only).
local function unlease(Q, receipt, p, c)
  local counted = receipt_priority(receipt)
  if counted then
    tally(Q, 'l', counted, -1)
  elseif c == receipt then
    tally(Q, 'l', p, -1)
  end
end

-- The same before an ack deletes the message: its hash is read for an old receipt only.
local function unlease_acked(Q, receipt)
  local counted = receipt_priority(receipt)
  if counted then
    tally(Q, 'l', counted, -1)
  else
    local fields = record(Q, uid_of(receipt), 'c')
    unlease(Q, receipt, fields[2], fields[4])
  end
end

-- Dead-letter uid (its priority field p; n: the lease count of the lease it ends, if any).
local function bury(Q, uid, reason, detail, now, p, n)
  local key = Q .. ':msg:' .. uid
  if n then
    redis.call('HSET', key, 'r', reason, 'd', detail, 'at', fmt(now / 1000), 'c', 'x', 'n', n)
  else
    redis.call('HSET', key, 'r', reason, 'd', detail, 'at', fmt(now / 1000), 'c', 'x')
  end
  redis.call('ZADD', Q .. ':dead', reserve(1) + 1, uid)
  tally(Q, 'x', p, 1)
end

-- Move up to max due delayed messages of Q to its ready set, behind what is already there
-- (a message whose priority no score can be made of is dead-lettered instead).
local function promote(Q, now, max)
  local key = Q .. ':delayed'
  local found = redis.call('ZRANGEBYSCORE', key, '-inf', fmt(now), 'WITHSCORES', 'LIMIT', 0, max)
  if #found == 0 then
    return 0
  end
  -- Equal due times tie-break by uid (publish order), numerically: the zset compares strings.
  local due = {}
  for i = 1, #found, 2 do
    due[#due + 1] = {found[i], tonumber(found[i + 1]), tonumber(found[i]) or 0}
  end
  table.sort(due, function(a, b) return a[2] < b[2] or (a[2] == b[2] and a[3] < b[3]) end)
  local uids = {}
  for i, item in ipairs(due) do
    uids[i] = item[1]
  end
  local found = records(Q, uids, 'c')
  for i, item in ipairs(due) do
    local fields = found[i]
    if fields[4] == 'd' then
      tally(Q, 'd', fields[2], -1)
    end
    if fields[1] then  -- else the message is gone: only its uid is left to remove
      local problem = priority_problem(item[1], fields[2])
      if problem then
        bury(Q, item[1], 'malformed', problem, now, fields[2])
      else
        requeue(Q, item[1], int_of(fields[2]))
      end
    end
  end
  redis.call('ZREM', key, unpack(uids))
  tally_flush()
  return #uids
end

-- redis.call(command, head, items...) in chunks of 1000 items (unpack has a stack limit);
-- the replies' sum (ZADD, ZREM, DEL, EXISTS count). Items in pairs stay paired (1000 is even).
local function chunked(command, head, items)
  local total = 0
  for start = 1, #items, 1000 do
    local last = math.min(#items, start + 999)
    if head then
      total = total + redis.call(command, head, unpack(items, start, last))
    else
      total = total + redis.call(command, unpack(items, start, last))
    end
  end
  return total
end
