-- First step of a restore: the all-time click total, the per-minute buckets,
-- the breakdown counters and the country board are added (never set) to
-- whatever was counted since Redis came back. The "totals" flag makes the
-- step happen once even if retried.
--
-- One shard's keys (one hash slot on a Redis Cluster).
-- KEYS: epoch restore clicks_total minutes countries, then one breakdown hash per entry
--       of ARGV[2].hashes
-- ARGV: clicks_total, json {"minutes": [[minute, clicks]], "countries": [[code, clicks]],
--       "hashes": [[[value, clicks], ...] per breakdown key]}
-- Another restorer may have finished (and deleted the progress hash) meanwhile.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return -1
end
if redis.call('HGET', KEYS[2], 'totals') == '1' then
  return 0
end
local data = cjson.decode(ARGV[2])
redis.call('INCRBY', KEYS[3], ARGV[1])
for _, pair in ipairs(data.minutes) do
  redis.call('HINCRBY', KEYS[4], pair[1], pair[2])
end
for _, pair in ipairs(data.countries) do
  redis.call('ZINCRBY', KEYS[5], pair[2], pair[1])
end
for i, pairs in ipairs(data.hashes) do
  for _, pair in ipairs(pairs) do
    redis.call('HINCRBY', KEYS[5 + i], pair[1], pair[2])
  end
end
redis.call('HSET', KEYS[2], 'totals', '1')
return 1
