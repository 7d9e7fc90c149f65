-- One batch of clicks, atomically: check the token's nonce, apply the
-- per-player rate limit, then raise the user's count, the global count, the
-- leaderboard and the minute bucket together. Because it all happens in one
-- script, global == sum(user counts) holds at every instant, on any number of
-- instances.
--
-- It also counts the click in today's breakdowns (device, browser, platform,
-- country) and notices milestones, still in the same single round trip.
--
-- KEYS: nonces names board global clicks_total minutes dirty epoch provisional rate lex
--       bd_device bd_browser bd_platform bd_country countries milestone_global
--       milestone_personal
-- ARGV: canon display nonce n limit window_ms device browser platform country
local canon, display, nonce = ARGV[1], ARGV[2], ARGV[3]
local n, limit, window = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local stored = redis.call('HGET', KEYS[1], canon)
local provisional = false
if stored ~= nonce then
  if stored or redis.call('EXISTS', KEYS[8]) == 1 then
    return {'token'}
  end
  -- Redis lost its data and the restore has not run yet: the signature
  -- vouches for the player, and the restore adds the snapshot to what
  -- is counted from here on.
  provisional = true
end

-- Sliding log of the last window's accepted batches, newest first, as
-- "ms:n". It never holds more than `limit` entries, so this loop is short.
local entries = redis.call('LRANGE', KEYS[10], 0, -1)
local used, kept = 0, 0
local stamps, counts = {}, {}
for i, entry in ipairs(entries) do
  local sep = string.find(entry, ':', 1, true)
  local ts = tonumber(string.sub(entry, 1, sep - 1))
  if ts <= now - window then break end
  local c = tonumber(string.sub(entry, sep + 1))
  used, kept = used + c, i
  stamps[i], counts[i] = ts, c
end
if kept < #entries then
  if kept == 0 then
    redis.call('DEL', KEYS[10])
  else
    redis.call('LTRIM', KEYS[10], 0, kept - 1)
  end
end
if used + n > limit then
  if n > limit then
    return {'rate', -1}
  end
  local need, freed = used + n - limit, 0
  for i = kept, 1, -1 do
    freed = freed + counts[i]
    if freed >= need then
      return {'rate', stamps[i] + window - now}
    end
  end
  return {'rate', window}
end
redis.call('LPUSH', KEYS[10], now .. ':' .. n)
redis.call('PEXPIRE', KEYS[10], window)

if provisional then
  redis.call('HSET', KEYS[1], canon, nonce)
  redis.call('HSET', KEYS[2], canon, display)
  redis.call('ZADD', KEYS[11], 0, canon)
  redis.call('SADD', KEYS[9], canon)
end
local user = redis.call('ZINCRBY', KEYS[3], n, display)
local global = redis.call('INCRBY', KEYS[4], n)
redis.call('INCRBY', KEYS[5], n)
redis.call('HINCRBY', KEYS[6], math.floor(now / 60000) * 60, n)
redis.call('SADD', KEYS[7], canon)
for i = 0, 3 do
  redis.call('HINCRBY', KEYS[12 + i], ARGV[7 + i], n)
end
redis.call('ZINCRBY', KEYS[16], n, ARGV[10])
local rank = redis.call('ZCOUNT', KEYS[3], '(' .. user, '+inf') + 1

-- A milestone is crossed when the count passes a power of ten (global from
-- 1,000, personal from 100). Each value is announced once: the highest one
-- announced is remembered, so a count that drops and climbs again is quiet.
-- Provisional clicks (before a restore) announce nothing.
local function crossed(before, after, first)
  local m = first
  while m <= after do
    if before < m then
      return m
    end
    m = m * 10
  end
  return 0
end
local global_milestone = crossed(global - n, global, 1000)
local personal_milestone = crossed(tonumber(user) - n, tonumber(user), 100)
if provisional then
  global_milestone, personal_milestone = 0, 0
end
if global_milestone > 0 then
  if tonumber(redis.call('GET', KEYS[17]) or '0') < global_milestone then
    redis.call('SET', KEYS[17], global_milestone)
  else
    global_milestone = 0
  end
end
if personal_milestone > 0 then
  if tonumber(redis.call('HGET', KEYS[18], canon) or '0') < personal_milestone then
    redis.call('HSET', KEYS[18], canon, personal_milestone)
  else
    personal_milestone = 0
  end
end
return {'ok', tonumber(user), global, rank, global_milestone, personal_milestone}
