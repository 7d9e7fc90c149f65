-- Take the snapshot lease if nobody holds it. The fence number grows with
-- every acquisition; the SQL store refuses writes from an older fence, so a
-- leader that was paused past its lease cannot overwrite its successor.
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
