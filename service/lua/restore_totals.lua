-- First step of a restore: the all-time click total and the per-minute
-- buckets are added (never set) to whatever was counted since Redis came
-- back. The "totals" flag makes the step happen once even if retried.
--
-- KEYS: restore clicks_total minutes
-- ARGV: clicks_total, then minute, clicks pairs
if redis.call('HGET', KEYS[1], 'totals') == '1' then
  return 0
end
redis.call('INCRBY', KEYS[2], ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[1], 'totals', '1')
return 1
