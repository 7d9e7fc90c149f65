-- An admin sets a user's count; the global count moves by the same amount
-- in the same step, so the invariant holds after edits too.
--
-- KEYS: names board global dirty epoch nonces
-- ARGV: canon count
if redis.call('EXISTS', KEYS[5]) == 0 then
  return {'restoring'}
end
local display = redis.call('HGET', KEYS[1], ARGV[1])
if not display then
  return {'missing'}
end
local old = tonumber(redis.call('ZSCORE', KEYS[2], display) or '0')
local count = tonumber(ARGV[2])
local global = redis.call('INCRBY', KEYS[3], count - old)
-- Counts stay JavaScript-safe integers (at most 2^53 - 1), which the page shows
-- exactly; a double compares exactly against that bound.
if global > 9007199254740991 then
  redis.call('INCRBY', KEYS[3], old - count)
  return {'limit'}
end
redis.call('ZADD', KEYS[2], count, display)
redis.call('SADD', KEYS[4], ARGV[1])
-- The old count goes back too: the audit log records before and after.
return {'ok', display, global, redis.call('HGET', KEYS[6], ARGV[1]), old}
