-- Book a token of one rate-limit bucket (conveyor.limits.store.book, in Lua). Standalone:
-- the only key is KEYS[1], the bucket (a string: the due time of its next token, seconds
-- on Redis TIME, expiring once the bucket is full again), so it runs on Redis Cluster too.
-- ARGV: interval, tolerance, after, horizon (seconds). Returns {granted 0/1, wait as text}.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local after, horizon = tonumber(ARGV[3]), tonumber(ARGV[4])
local due = tonumber(redis.call('GET', KEYS[1]) or '') or now
if due < now then due = now end
-- further ahead than this rate could have booked (the rate was raised at run time): the
-- furthest it could, stored even if nothing is granted
local cap = now + horizon + tolerance + interval
local clamped = due > cap
if clamped then due = cap end
local earliest = math.max(now + math.max(after, 0), due - tolerance)
local wait = earliest - now
if wait > horizon then
  if clamped then
    redis.call('SET', KEYS[1], string.format('%.17g', due), 'PX', math.ceil((due - now) * 1000) + 1000)
  end
  return {0, string.format('%.17g', wait - horizon)}
end
local tat = math.max(due, earliest) + interval
redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
return {1, string.format('%.17g', wait)}
