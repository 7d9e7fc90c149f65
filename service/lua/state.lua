-- Everything a tick shows, read at one instant. It also drops instances
-- whose heartbeat expired, so a SIGKILLed instance's connections stop
-- counting as online without anyone having to clean up after it.
--
-- KEYS: global board clicks_total presence_expiry presence_count epoch
-- ARGV: top_n
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
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
}
