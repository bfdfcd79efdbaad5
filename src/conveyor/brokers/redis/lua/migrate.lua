-- Move the keys of Conveyor before 0.2 (names built from the prefix alone: '<p>:ready:<q>',
-- '<p>:msg:<uid>', ...) to the names with hash tags (common.lua), on a single server (keys
-- of every slot in one script: never run on Cluster, which old versions did not support).
-- KEYS: old set of queues, new set of queues, old counter, new counter. ARGV: old prefix
-- ('<p>:'), then for each queue: its name, its new base, its new wake-up list.
-- Returns how many messages moved. Runs once: afterwards the old set is gone.
local moved = 0
local old = ARGV[1]
local function rename(from, to)
  if redis.call('EXISTS', from) == 1 then
    redis.call('RENAME', from, to)
  end
end
for i = 2, #ARGV, 3 do
  local q, Q, wake_key = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  for _, kind in ipairs({'ready', 'delayed', 'dead', 'leased'}) do
    local key = old .. kind .. ':' .. q
    for _, member in ipairs(redis.call('ZRANGE', key, 0, -1)) do
      rename(old .. 'msg:' .. uid_of(member), Q .. ':msg:' .. uid_of(member))
      moved = moved + 1
    end
    rename(key, Q .. ':' .. kind)
  end
  redis.call('DEL', old .. 'wake:' .. q)
  wake(wake_key)  -- consumers look at once
  redis.call('SADD', KEYS[2], q)
end
local seq = tonumber(redis.call('GET', KEYS[3]) or '0')
if seq > tonumber(redis.call('GET', KEYS[4]) or '0') then
  redis.call('SET', KEYS[4], seq)
end
redis.call('DEL', KEYS[1], KEYS[3])
return moved
