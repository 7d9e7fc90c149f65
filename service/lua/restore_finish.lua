-- Last step of a restore: drop players who clicked after the loss with the
-- token of a user deleted before it (their tombstones are in SQL), then mark
-- Redis authoritative again.
--
-- KEYS: restore nonces names board global lex provisional epoch dirty
-- ARGV: epoch_value, then canon nonce pairs of dead tokens
if redis.call('EXISTS', KEYS[8]) == 1 then
  return 0  -- another restorer finished first
end
for i = 2, #ARGV, 2 do
  local canon, nonce = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', KEYS[2], canon) == nonce then
    local display = redis.call('HGET', KEYS[3], canon)
    local old = tonumber(redis.call('ZSCORE', KEYS[4], display) or '0')
    redis.call('ZREM', KEYS[4], display)
    redis.call('DECRBY', KEYS[5], old)
    redis.call('HDEL', KEYS[2], canon)
    redis.call('HDEL', KEYS[3], canon)
    redis.call('ZREM', KEYS[6], canon)
    redis.call('SADD', KEYS[9], canon)
  end
end
redis.call('DEL', KEYS[7])
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[8], ARGV[1], 'NX')
return 1
