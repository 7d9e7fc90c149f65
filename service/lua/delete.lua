-- An admin deletes a user: the count leaves the global count, the token's
-- nonce is dropped (so the token dies) and the name becomes free, in one step.
--
-- KEYS: names board global dirty epoch nonces lex provisional tombstones milestone_personal
--       skeletons
-- ARGV: canon skeleton [nonce: delete only the user holding this token, else answer 'missing']
if redis.call('EXISTS', KEYS[5]) == 0 then
  return {'restoring'}
end
local display = redis.call('HGET', KEYS[1], ARGV[1])
if not display or (ARGV[3] and redis.call('HGET', KEYS[6], ARGV[1]) ~= ARGV[3]) then
  return {'missing'}
end
local old = tonumber(redis.call('ZSCORE', KEYS[2], display) or '0')
local nonce = redis.call('HGET', KEYS[6], ARGV[1])
redis.call('ZREM', KEYS[2], display)
local global = redis.call('DECRBY', KEYS[3], old)
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[6], ARGV[1])
redis.call('ZREM', KEYS[7], ARGV[1])
redis.call('SREM', KEYS[8], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[10], ARGV[1])
if redis.call('HGET', KEYS[11], ARGV[2]) == ARGV[1] then
  redis.call('HDEL', KEYS[11], ARGV[2])
end
-- Remember which token died, so a restore after a Redis loss cannot bring it back.
-- Keyed by the nonce: a name deleted twice between snapshots keeps both tokens dead.
if nonce then
  redis.call('HSET', KEYS[9], nonce, ARGV[1])
end
return {'ok', display, global, nonce, old}
