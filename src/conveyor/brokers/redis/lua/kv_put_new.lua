-- Owned locks (conveyor.kv.locks): store ARGV[1] under KEYS[1] unless it has a value;
-- return nil if stored, else the value that is there. ARGV[2]: expiry in ms ('' for none).
local held = redis.call('GET', KEYS[1])
if held then
  return held
end
if ARGV[2] == '' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return false
