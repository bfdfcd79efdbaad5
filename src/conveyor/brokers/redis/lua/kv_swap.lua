-- Owned locks (conveyor.kv.locks): replace the value ARGV[1] of KEYS[1] by ARGV[2] with
-- expiry ARGV[3] ms ('' for none); 1 if replaced, 0 if KEYS[1] holds another value or none.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[3] == '' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
