-- Claim a global milestone judged on the sum of the shards (service/shards.py):
-- the first caller to bring a higher power of ten gets it, every later one gets 0,
-- so it is announced once across instances. The caller's claim id is kept beside
-- it, so a call re-sent after a lost reply (the ticker's client retries) gets its own
-- claim back instead of 0, and the milestone is not lost. Nothing is claimed while
-- the hub's own state (this memory) has not been restored after a loss.
--
-- KEYS: milestone_global hub_epoch milestone_claim
-- ARGV: the power of ten reached (a decimal string), the caller's claim id
-- Returns the milestone (a string) or 0
if redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
-- Powers of ten are exact doubles up to 1e22, so these comparisons are exact.
local announced = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if announced < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[3], ARGV[2], 'EX', 3600)
  return ARGV[1]
end
if announced == tonumber(ARGV[1]) and redis.call('GET', KEYS[3]) == ARGV[2] then
  return ARGV[1]
end
return 0
