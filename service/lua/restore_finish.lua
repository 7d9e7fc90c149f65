-- Last step of a restore: drop players who clicked after the loss with the
-- token of a user deleted before it (their tombstones are in SQL), then mark
-- Redis authoritative again.
--
-- The caller checked the provisional names it read against SQL; a dead token
-- may click (and become provisional) after that read. So only the names
-- checked, with the nonce checked, leave the provisional set, and the restore
-- finishes only once the set is empty; otherwise the caller checks the newcomers.
--
-- One shard's keys (one hash slot on a Redis Cluster); the hub's part of a restore
-- (the global milestone memory, the secret) is restore_hub.lua.
--
-- KEYS: restore nonces names board global lex provisional epoch dirty generation
-- ARGV: epoch_value generation, then canon nonce dead(0|1) triples
-- Returns 1 finished, 0 another restorer finished first, 2 names left to check.
if redis.call('EXISTS', KEYS[8]) == 1 then
  return 0
end
for i = 3, #ARGV, 3 do
  local canon, nonce, dead = ARGV[i], ARGV[i + 1], ARGV[i + 2] == '1'
  local current = redis.call('HGET', KEYS[2], canon)
  if current == nonce or not current then
    if current and dead then
      local display = redis.call('HGET', KEYS[3], canon)
      local old = tonumber(redis.call('ZSCORE', KEYS[4], display) or '0')
      redis.call('ZREM', KEYS[4], display)
      redis.call('DECRBY', KEYS[5], old)
      redis.call('HDEL', KEYS[2], canon)
      redis.call('HDEL', KEYS[3], canon)
      redis.call('ZREM', KEYS[6], canon)
      redis.call('SADD', KEYS[9], canon)
    end
    redis.call('SREM', KEYS[7], canon)
  end
end
if redis.call('SCARD', KEYS[7]) > 0 then
  return 2
end
redis.call('DEL', KEYS[1])
-- The next cut's generation follows the shard's last committed one.
if tonumber(redis.call('GET', KEYS[10]) or '0') < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[10], ARGV[2])
end
redis.call('SET', KEYS[8], ARGV[1], 'NX')
return 1
