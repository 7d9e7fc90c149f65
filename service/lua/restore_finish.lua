-- Last step of a restore: drop players who clicked after the loss with the
-- token of a user deleted before it (their tombstones are in SQL), then mark
-- Redis authoritative again.
--
-- The caller checked the provisional names it read against SQL; a dead token
-- may click (and become provisional) after that read. So only the names
-- checked, with the nonce checked, leave the provisional set, and the restore
-- finishes only once the set is empty; otherwise the caller checks the newcomers.
--
-- KEYS: restore nonces names board global lex provisional epoch dirty generation
--       milestone_global
-- ARGV: epoch_value generation milestone_global, then canon nonce dead(0|1) triples
-- Returns 1 finished, 0 another restorer finished first, 2 names left to check.
if redis.call('EXISTS', KEYS[8]) == 1 then
  return 0
end
for i = 4, #ARGV, 3 do
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
-- The next cut's generation follows the last committed one, and the global
-- milestone memory is the larger of SQL's and (none, before now) Redis's.
for i, key in ipairs({KEYS[10], KEYS[11]}) do
  if tonumber(redis.call('GET', key) or '0') < tonumber(ARGV[i + 1]) then
    redis.call('SET', key, ARGV[i + 1])
  end
end
redis.call('SET', KEYS[8], ARGV[1], 'NX')
return 1
