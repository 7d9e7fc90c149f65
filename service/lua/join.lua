-- Reserve a name, atomically with the per-address join limit, so two
-- instances can never hand the same name (ignoring case) to two players.
--
-- KEYS: nonces names board lex dirty epoch join_rate skeletons skeletons_version
-- ARGV: canon display nonce limit_per_minute (0: none here) skeleton skeletons_version
if redis.call('EXISTS', KEYS[6]) == 0 then
  return {'restoring'}
end
if redis.call('GET', KEYS[9]) ~= ARGV[6] then
  return {'unindexed'}
end
-- limit 0: the caller applied the join limit itself (on a cluster the address's
-- counter is a hub key, in another hash slot than this shard's).
if tonumber(ARGV[4]) > 0 then
  local used = redis.call('INCR', KEYS[7])
  if used == 1 then
    redis.call('EXPIRE', KEYS[7], 60)
  end
  if used > tonumber(ARGV[4]) then
    return {'rate', redis.call('TTL', KEYS[7])}
  end
end
-- A name that looks like a taken one (the same UTS #39 skeleton) is taken too;
-- an entry whose owner has since been deleted no longer counts.
local owner = redis.call('HGET', KEYS[8], ARGV[5])
if owner and owner ~= ARGV[1] and redis.call('HEXISTS', KEYS[1], owner) == 1 then
  return {'taken', redis.call('HGET', KEYS[2], owner) or owner}
end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[3]) == 0 then
  return {'taken', redis.call('HGET', KEYS[2], ARGV[1]) or ARGV[2]}
end
redis.call('HSET', KEYS[8], ARGV[5], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[2])
redis.call('ZADD', KEYS[4], 0, ARGV[1])
redis.call('SADD', KEYS[5], ARGV[1])
return {'ok'}
