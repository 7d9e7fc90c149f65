-- An instance says it is alive and how many connections it holds. Expiry is
-- computed from Redis's clock, the same clock state.lua compares against,
-- so skewed instance clocks cannot keep a dead instance online.
--
-- KEYS: presence_expiry presence_count
-- ARGV: instance_id connections ttl_ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return now
