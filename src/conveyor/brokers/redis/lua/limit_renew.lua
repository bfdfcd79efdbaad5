-- Renew concurrency slots of one limit (KEYS[1], a zset holder -> deadline in ms on Redis
-- TIME). ARGV: ttl_ms, holders... Holders no longer there (expired, released) stay gone.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.17g', now))
local deadline = now + tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', string.format('%.17g', deadline), ARGV[i])
end
if renewed > 0 then
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[1], math.ceil(tonumber(last[2])))
end
return renewed
