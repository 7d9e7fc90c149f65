-- Everything a tick shows, read at one instant. It also drops instances
-- whose heartbeat expired, so a SIGKILLed instance's connections stop
-- counting as online without anyone having to clean up after it.
--
-- It also hands out the clock that tick ids come from: Redis's TIME plus an
-- offset, never below the last value handed out (nor the caller's floor, which
-- covers a Redis that lost the clock key). When TIME steps back (an NTP step, a
-- failover to a host whose clock is behind), the offset grows by the step, so
-- ticks keep coming instead of stopping until the clock catches up.
--
-- KEYS: global board clicks_total presence_expiry presence_count epoch clock
-- ARGV: top_n floor_ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local clock = redis.call('HMGET', KEYS[7], 'offset', 'last')
local offset, last = tonumber(clock[1] or '0'), tonumber(clock[2] or '0')
last = math.max(last, tonumber(ARGV[2] or '0'))
local mono = now + offset
if mono < last then
  offset = last - now
  mono = last
  redis.call('HSET', KEYS[7], 'offset', offset)
end
if mono > last then
  redis.call('HSET', KEYS[7], 'last', mono)
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)
if #expired > 0 then
  redis.call('HDEL', KEYS[5], unpack(expired))
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
end
local online = 0
for _, c in ipairs(redis.call('HVALS', KEYS[5])) do
  online = online + tonumber(c)
end
return {
  redis.call('GET', KEYS[1]) or '0',
  redis.call('ZCARD', KEYS[2]),
  redis.call('GET', KEYS[3]) or '0',
  online,
  redis.call('EXISTS', KEYS[6]),
  now,
  redis.call('ZREVRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES'),
  mono,
}
