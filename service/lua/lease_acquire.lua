-- Take the snapshot lease if nobody holds it. The fence number grows with
-- every acquisition; the SQL store refuses writes from an older fence, so a
-- leader that was paused past its lease cannot overwrite its successor.
--
-- KEYS: lease fence
-- ARGV: worker_id ttl_ms
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. fence, 'PX', ARGV[2])
return fence
