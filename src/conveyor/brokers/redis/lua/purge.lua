-- Delete up to batch ready and batch delayed messages of one queue (leased ones stay), each
-- recorded as a departure ('purged').
-- KEYS: seq, queue base. ARGV: batch. Returns {deleted, more}.
local Q, batch = KEYS[2], tonumber(ARGV[1])
local deleted, more = 0, 0
for _, kind in ipairs({':ready', ':delayed'}) do
  local key = Q .. kind
  local uids = redis.call('ZRANGE', key, 0, batch - 1)
  if #uids > 0 then
    for i, fields in ipairs(records(Q, uids, 'c')) do
      if fields[1] and fields[3] then
        depart(Q, uids[i], 'purged', fields[1], fields[3])
      end
      if kind == ':delayed' and fields[4] == 'd' then
        tally(Q, 'd', fields[2], -1)
      end
    end
    forget(Q, uids)
    redis.call('ZREM', key, unpack(uids))
    deleted = deleted + #uids
    if #uids == batch then
      more = 1
    end
  end
end
tally_flush()
return {deleted, more}
