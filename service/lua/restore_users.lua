-- One batch of a restore, applied only if the cursor is where this restorer
-- expects it (compare-and-set): two restorers, or a retried batch, can
-- never add the same user twice. Each user's count is added to the board and
-- to the global count in the same step, so the invariant holds throughout.
-- The memory of announced milestones comes back too (nothing is announced
-- before the restore finishes), so no milestone is announced twice.
--
-- One shard's keys (one hash slot on a Redis Cluster).
-- KEYS: restore nonces names board global lex provisional epoch milestone_personal
-- ARGV: expected_cursor new_cursor, then canon display nonce count milestone quints
-- Returns 1 applied, 0 the cursor moved (another restorer), -1 the restore is over.
if redis.call('EXISTS', KEYS[8]) == 1 then
  return -1
end
if (redis.call('HGET', KEYS[1], 'cursor') or '') ~= ARGV[1] then
  return 0
end
for i = 3, #ARGV, 5 do
  local canon, display, nonce, count = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local milestone = tonumber(ARGV[i + 4])
  local stored = redis.call('HGET', KEYS[2], canon)
  if stored and stored ~= nonce then
    -- The name was clicked after the loss with a token the snapshot does not
    -- know: the snapshot's owner wins and that token's clicks are dropped.
    local other = redis.call('HGET', KEYS[3], canon)
    if other then
      local old = tonumber(redis.call('ZSCORE', KEYS[4], other) or '0')
      redis.call('ZREM', KEYS[4], other)
      redis.call('DECRBY', KEYS[5], old)
    end
  end
  redis.call('HSET', KEYS[2], canon, nonce)
  redis.call('HSET', KEYS[3], canon, display)
  redis.call('ZADD', KEYS[6], 0, canon)
  redis.call('ZINCRBY', KEYS[4], count, display)
  redis.call('INCRBY', KEYS[5], count)
  redis.call('SREM', KEYS[7], canon)
  if milestone > 0 then
    redis.call('HSET', KEYS[9], canon, milestone)
  end
end
redis.call('HSET', KEYS[1], 'cursor', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'users', (#ARGV - 2) / 5)
return 1
