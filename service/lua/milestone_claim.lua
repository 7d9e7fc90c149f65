-- Claim a global milestone judged on the sum of the shards (service/shards.py):
-- the first caller to bring a higher power of ten gets it, every later one gets 0,
-- so it is announced once across instances. Nothing is claimed while the hub's
-- own state (this memory) has not been restored after a loss.
--
-- KEYS: milestone_global hub_epoch
-- ARGV: the power of ten reached, as a decimal string
-- Returns the milestone (a string) or 0
if redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
-- Powers of ten are exact doubles up to 1e22, so this comparison is exact.
if (tonumber(redis.call('GET', KEYS[1]) or '0') or 0) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
return 0
