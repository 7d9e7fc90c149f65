-- Reserve a name, atomically with the per-address join limit, so two
-- instances can never hand the same name (ignoring case) to two players.
--
-- KEYS: nonces names board lex dirty epoch join_rate
-- ARGV: canon display nonce limit_per_minute
if redis.call('EXISTS', KEYS[6]) == 0 then
  return {'restoring'}
end
local used = redis.call('INCR', KEYS[7])
if used == 1 then
  redis.call('EXPIRE', KEYS[7], 60)
end
if used > tonumber(ARGV[4]) then
  return {'rate', redis.call('TTL', KEYS[7])}
end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[3]) == 0 then
  return {'taken'}
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[2])
redis.call('ZADD', KEYS[4], 0, ARGV[1])
redis.call('SADD', KEYS[5], ARGV[1])
return {'ok'}
