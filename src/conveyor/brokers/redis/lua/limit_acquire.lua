-- Hold a concurrency slot. Standalone, one key: KEYS[1] is a zset holder -> deadline (ms,
-- Redis TIME) of one limit. ARGV: limit, holder, ttl_ms. Expired holders are dropped first;
-- a holder acquiring again renews its deadline. Returns 1 if held, 0 if the limit is full.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.17g', now))
local limit, holder = tonumber(ARGV[1]), ARGV[2]
if not redis.call('ZSCORE', KEYS[1], holder) and redis.call('ZCARD', KEYS[1]) >= limit then
  return 0
end
local deadline = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], string.format('%.17g', deadline), holder)
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], math.ceil(tonumber(last[2])))
return 1
