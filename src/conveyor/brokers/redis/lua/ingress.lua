-- Prepended to every broker script after common.lua (core.py: PRELUDE): the publish dedupe
-- and the ingress list, queued before the script's own work.

-- Publish dedupe: the ids published to Q are kept in one set per dedupe_ms-long slot of
-- time, Q:pub:<slot>, expiring when the slot after it ends; an id is skipped when the
-- current slot's set or the one before holds it, so an id is remembered for at least
-- dedupe_ms (at most twice that). One set entry per message (no key and no expiry of its
-- own), and a few calls per publish call whatever its size.
-- Returns seen (seen[j]: skip ids[j], also when it came earlier in ids) and the slot's set.
local function published(Q, ids, dedupe, now)
  local slot = math.floor(now / dedupe)
  local slot_key, before_key = Q .. ':pub:' .. slot, Q .. ':pub:' .. (slot - 1)
  local seen, fresh = {}, {}
  for start = 1, #ids, 1000 do
    local last = math.min(#ids, start + 999)
    local here = redis.call('SMISMEMBER', slot_key, unpack(ids, start, last))
    local before = redis.call('SMISMEMBER', before_key, unpack(ids, start, last))
    for j = start, last do
      local id = ids[j]
      if here[j - start + 1] == 1 or before[j - start + 1] == 1 or fresh[id] then
        seen[j] = true
      else
        fresh[id] = true
      end
    end
  end
  return seen, slot_key
end

-- Remember ids as published in the slot's set (see published()).
local function remember(slot_key, ids, dedupe, now)
  if #ids > 0 then
    chunked('SADD', slot_key, ids)
    redis.call('PEXPIREAT', slot_key, fmt((math.floor(now / dedupe) + 2) * dedupe))
  end
end

-- The messages of a publish call (ack_publish.lua, stage.lua): ARGV from first on, stride 5
-- (id, priority, countdown_ms, eta_ms, value) or 2 (id, value: ready now, its priority the
-- value's first digit). Returns each one's priority and due time (0: ready now) and their
-- count, or nil and the id of the first whose priority, countdown or eta is not one.
local function checked_messages(first, stride, now)
  local priorities, dues, count = {}, {}, 0
  for j = first, #ARGV, stride do
    local priority, due = nil, 0
    if stride == 2 then
      local digit, space = string.byte(ARGV[j + 1], 1, 2)
      if digit and digit >= 48 and digit <= 57 and space == 32 then
        priority = digit - 48
      end
    else
      priority = int_of(ARGV[j + 1])
      local countdown, eta = finite(ARGV[j + 2]), finite(ARGV[j + 3])
      if not countdown or not eta then
        priority = nil
      elseif math.max(now + countdown, eta) > now then
        due = math.max(now + countdown, eta)
      end
    end
    if not priority or priority > 9 then
      return nil, ARGV[j]
    end
    count = count + 1
    priorities[count], dues[count] = priority, due
  end
  return priorities, dues, count
end

-- The ingress list. A publish of a few messages ready now (publish.py, most delay() calls)
-- pushes each as one entry, '<dedupe_ms> <length of wake> <wake><Q:m value>', on
-- '{<p>}:in' with one RPUSH, and a token on the queue's wake-up list <wake>,
-- '{<p>}:wake:<q>' (the queue's base, '{<p>:<q>}', is made from it): the cheapest writes
-- for redis-server (a publish script call costs it ~15 us more, mostly the script
-- machinery). The first script of any queue after that (this prelude, below) queues every
-- entry in the order they were pushed, before it reads or writes anything: so FIFO across
-- queues and priorities, the dedupe and every count and read hold as if the messages had
-- been published by ack_publish.lua; and it leaves at most one token on each wake-up list
-- it fed (the producers push one per message, a command less than keeping them single).
-- Producers keep the list short (INGRESS_LIMIT in publish.py): queueing is ~4 us per message.
-- A value whose priority is not one is queued first and dead-lettered as 'malformed' by the
-- lease; an entry naming no queue of this prefix is moved to '{<p>}:in:unroutable' (the
-- last 1000 kept): a script writes only keys of its own prefix, whose types it knows.
-- On Cluster nothing is pushed: the name below is then the queue's own, always empty.
local PREFIX = string.match(SEQ or '', '^{([^}]*)}:seq$')
local INGRESS = PREFIX and '{' .. PREFIX .. '}:in'
local function absorb()
  -- pcall: a key of another type there (not ours) fails the producers' RPUSH, not every script
  local entries = redis.pcall('LRANGE', INGRESS, 0, -1)
  if entries.err or #entries == 0 then
    return
  end
  local now = now_ms()
  local base = reserve(#entries)
  local groups, order, unroutable = {}, {}, {}
  for k, entry in ipairs(entries) do
    local dedupe, n, at = string.match(entry, '^(%d+) (%d+) ()')
    local wake = n and string.sub(entry, at, at + tonumber(n) - 1)
    local prefix, queue = string.match(wake or '', '^{([^}]*)}:wake:(.+)$')
    if not queue or #wake ~= tonumber(n) or prefix ~= PREFIX then
      unroutable[#unroutable + 1] = entry
    else
      local key = dedupe .. ' ' .. wake
      local group = groups[key]
      if not group then
        group = {Q = '{' .. prefix .. ':' .. queue .. '}', wake = wake, dedupe = tonumber(dedupe),
                 n = 0, ids = {}, uids = {}, values = {}, prios = {}, bad = {}}
        groups[key] = group
        order[#order + 1] = group
      end
      local value = string.sub(entry, at + #wake)
      -- The id and priority only (unpacked() would copy the body too).
      local p, len, pos, from = string.match(value, '^(%d) (%d+):?(%d*) ()')
      if p then
        from = from + (tonumber(pos) or 1) - 1
        local j = group.n + 1  -- (a counter: Lua finds #t by a binary search)
        group.n = j
        group.ids[j], group.uids[j], group.values[j] = string.sub(value, from, from + len - 1),
            base + k, value
        group.prios[j] = tonumber(p)
      else  -- queued first, never deduplicated: the lease dead-letters it as 'malformed'
        group.bad[#group.bad + 1] = {base + k, value}
      end
    end
  end
  for _, group in ipairs(order) do
    local seen, slot_key = {}, nil
    if group.dedupe > 0 and #group.ids > 0 then
      seen, slot_key = published(group.Q, group.ids, group.dedupe, now)
    end
    local values, ready, remembered, n, kept = {}, {}, {}, 0, 0
    for j, uid in ipairs(group.uids) do
      if not seen[j] then
        values[n + 1], values[n + 2] = uid, group.values[j]
        ready[n + 1], ready[n + 2] = score(group.prios[j], uid), uid
        n, kept = n + 2, kept + 1
        remembered[kept] = group.ids[j]
      end
    end
    for _, item in ipairs(group.bad) do
      values[n + 1], values[n + 2] = item[1], item[2]
      ready[n + 1], ready[n + 2] = score(9, item[1]), item[1]
      n = n + 2
    end
    chunked('HSET', group.Q .. ':m', values)
    chunked('ZADD', group.Q .. ':ready', ready)
    if slot_key then
      remember(slot_key, remembered, group.dedupe, now)
    end
    redis.call('LTRIM', group.wake, 0, 0)
  end
  if #unroutable > 0 then
    chunked('RPUSH', INGRESS .. ':unroutable', unroutable)
    redis.call('LTRIM', INGRESS .. ':unroutable', -1000, -1)
  end
  -- Last: a call that failed half-way queues them again (twice, never lost).
  redis.call('LTRIM', INGRESS, #entries, -1)
end

-- Every broker script (KEYS[1] its sequence counter) queues the ingress list first.
if INGRESS then
  absorb()
end
