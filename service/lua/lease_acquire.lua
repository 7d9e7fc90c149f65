-- Take the snapshot lease if nobody holds it. The number grows with every
-- acquisition and tells holders apart in the lease's value; it is not the
-- fence the SQL store checks: that one the new leader claims from SQL, since
-- this counter goes back with a Redis data loss or a lagging replica.
--
-- KEYS: lease fence
-- ARGV: worker_id ttl_ms
local holder = redis.call('GET', KEYS[1])
if holder then
  -- A re-sent call finds the lease it already took: answer with that fence.
  local prefix = ARGV[1] .. ':'
  if string.sub(holder, 1, #prefix) == prefix then
    return tonumber(string.sub(holder, #prefix + 1))
  end
  return 0
end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. fence, 'PX', ARGV[2])
return fence
