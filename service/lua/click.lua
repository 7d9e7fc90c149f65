-- Clicks, atomically. Each entry is one player's batch of n clicks: check the
-- token's nonce, apply the per-player rate limit, then raise the user's count,
-- the global count, the leaderboard, the minute bucket and today's breakdowns
-- together, and notice milestones. The whole call is one script, so
-- global == sum(user counts) holds at every instant, on any number of
-- instances. An instance sends the entries of many players in one call (one
-- round trip for all clicks that arrived while the previous call was out), and
-- the shared counters (global, total, minute, breakdowns, countries) are
-- written once per call with the sums, not once per entry.
--
-- KEYS: nonces names board global clicks_total minutes dirty epoch provisional lex
--       bd_device bd_browser bd_platform bd_country countries milestone_global
--       milestone_personal idempotency_new, then per entry: its rate key and its
--       idempotency key
--       (milestone_global is not read when sharded: any key of the shard stands in)
-- ARGV: limit window_ms idempotency_ttl_ms sharded others, then per entry: canon display
--       nonce n device browser platform country id ('' when the batch carries no id)
--       sharded is 1 when this is one of several shards (service/shards.py): then the
--       global count is this shard's plus `others` (the other shards' sum as the caller
--       last read it), ranks are left to readers (0) and global milestones to the ticker.
-- Returns per entry: {'ok', user, global, rank, global_milestone, personal_milestone},
--       {'dup', user, global, rank} (the first answer to this id), {'mismatch', first_n},
--       {'token'}, {'rate', retry_ms} or {'limit'} (the user's count would pass 2^53 - 1);
--       global and global_milestone are decimal strings (exact past 2^53)
local COMMON, FIELDS, HEAD = 18, 9, 5
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local idem_ttl = tonumber(ARGV[3])
local sharded, others = ARGV[4] == '1', tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local restored = redis.call('EXISTS', KEYS[8]) == 1
-- The global count as this call moves it; written back once at the end. Lua
-- numbers are doubles, exact only to 2^53, so it is kept as Redis's decimal
-- string split into a high part and its last nine digits, both exact.
local global_text = redis.call('GET', KEYS[4]) or '0'
local global_high = tonumber(string.sub(global_text, 1, -10)) or 0
local global_low = tonumber(string.sub(global_text, -9))
-- A user's count is a sorted-set score, a double: it stops at 2^53 - 1.
local MAX_COUNT = 9007199254740991
local added = 0
local tallies = {{}, {}, {}, {}}  -- per breakdown dimension: value -> clicks
local announced_global = nil  -- the global milestone memory, read once per call

-- The global count after `plus` more clicks than at the start of the call, as
-- an exact decimal string.
local function global_after(plus)
  local low = global_low + plus
  local high = global_high + math.floor(low / 1e9)
  low = low % 1e9
  if high > 0 then
    return string.format('%d%09d', high, low)
  end
  return string.format('%d', low)
end

-- A milestone is a power of ten (global from 1,000, personal from 100). A click
-- announces the highest one the count has reached if it is above the highest
-- announced so far, which is remembered (and snapshotted and restored): each value
-- is announced once, a count that drops and climbs again is quiet, and one reached
-- while a restore was pending is announced by the first click after it.
-- For the global count, given as a decimal string: the power of ten with as many
-- digits, as a string (exact past 2^53), or 0 below 1,000.
local function reached_global(text)
  if #text >= 4 then
    return '1' .. string.rep('0', #text - 1)
  end
  return 0
end

local function reached(count, first)
  local m, top = first, 0
  while m <= count do
    top, m = m, m * 10
  end
  return top
end

-- Sliding log of the last window's accepted batches, newest first, as
-- "ms:n". It never holds more than `limit` entries, so this loop is short.
-- Returns nil when the batch fits (and records it), else the wait in ms.
local function rate_limited(key, n)
  local entries = redis.call('LRANGE', key, 0, -1)
  local used, kept = 0, 0
  local stamps, counts = {}, {}
  for i, entry in ipairs(entries) do
    local sep = string.find(entry, ':', 1, true)
    local ts = sep and tonumber(string.sub(entry, 1, sep - 1))
    local c = sep and tonumber(string.sub(entry, sep + 1))
    -- An entry we did not write ends the log like an expired one (trimmed below).
    if not (ts and c) or ts <= now - window then break end
    used, kept = used + c, i
    stamps[i], counts[i] = ts, c
  end
  if kept < #entries then
    if kept == 0 then
      redis.call('DEL', key)
    else
      redis.call('LTRIM', key, 0, kept - 1)
    end
  end
  if used + n > limit then
    if n > limit then
      return -1
    end
    local need, freed = used + n - limit, 0
    for i = kept, 1, -1 do
      freed = freed + counts[i]
      if freed >= need then
        return stamps[i] + window - now
      end
    end
    return window
  end
  redis.call('LPUSH', key, now .. ':' .. n)
  redis.call('PEXPIRE', key, window)
  return nil
end

local function click(rate_key, idem_key, canon, display, nonce, n, profile, id)
  local stored = redis.call('HGET', KEYS[1], canon)
  local provisional = false
  if stored ~= nonce then
    if stored or restored then
      return {'token'}
    end
    -- Redis lost its data and the restore has not run yet: the signature
    -- vouches for the player, and the restore adds the snapshot to what
    -- is counted from here on. No milestones until then: counts are partial.
    provisional = true
  end
  -- A batch sent again with its id (after a time-out, a reconnect, another instance)
  -- gets the first answer and counts nothing. The record expires after idem_ttl.
  -- After a data loss the records come back with the restore: until then a batch
  -- with an id waits ('restoring'), or one counted before the loss would count again.
  if id ~= '' and not restored then
    return {'restoring'}
  end
  if id ~= '' then
    local first = redis.call('GET', idem_key)
    if first then
      local fn, fuser, fglobal, frank = string.match(first, '^(%d+):(%d+):(%d+):(%d+)$')
      if not fn then
        -- Not a record we wrote: count the batch as new and overwrite it below.
      elseif tonumber(fn) ~= n then
        return {'mismatch', tonumber(fn)}
      else
        return {'dup', tonumber(fuser), fglobal, tonumber(frank)}
      end
    end
  end
  -- No count exceeds the global one, so the user's score needs reading only when
  -- the global count itself would pass the limit (digit strings of equal length
  -- compare like the numbers).
  local global = global_after(added + n)
  if (#global > 16 or (#global == 16 and global > '9007199254740991'))
      and tonumber(redis.call('ZSCORE', KEYS[3], display) or '0') + n > MAX_COUNT then
    return {'limit'}
  end
  local wait = rate_limited(rate_key, n)
  if wait then
    return {'rate', wait}
  end
  if provisional then
    redis.call('HSET', KEYS[1], canon, nonce)
    redis.call('HSET', KEYS[2], canon, display)
    redis.call('ZADD', KEYS[10], 0, canon)
    redis.call('SADD', KEYS[9], canon)
  end
  local user = redis.call('ZINCRBY', KEYS[3], n, display)
  added = added + n
  redis.call('SADD', KEYS[7], canon)
  for i = 1, 4 do
    tallies[i][profile[i]] = (tallies[i][profile[i]] or 0) + n
  end
  local rank, shown = 0, global
  if sharded then
    shown = global_after(added + others)
  else
    rank = redis.call('ZCOUNT', KEYS[3], '(' .. user, '+inf') + 1
  end

  local global_milestone, personal_milestone = 0, 0
  if restored then
    if not sharded then
      global_milestone = reached_global(global)
    end
    personal_milestone = reached(tonumber(user), 100)
  end
  if global_milestone ~= 0 then
    -- Powers of ten are exact doubles up to 1e22, so these comparisons are exact.
    announced_global = announced_global or tonumber(redis.call('GET', KEYS[16]) or '0') or 0
    if announced_global < tonumber(global_milestone) then
      announced_global = tonumber(global_milestone)
      redis.call('SET', KEYS[16], global_milestone)
    else
      global_milestone = 0
    end
  end
  if personal_milestone > 0 then
    if (tonumber(redis.call('HGET', KEYS[17], canon) or '0') or 0) < personal_milestone then
      redis.call('HSET', KEYS[17], canon, personal_milestone)
    else
      personal_milestone = 0
    end
  end
  if id ~= '' then
    local record = string.format('%d:%d:%s:%d', n, tonumber(user), shown, rank)
    redis.call('SET', idem_key, record, 'PX', idem_ttl)
    -- For the next snapshot, so a restore can put it back (take_cut.lua).
    redis.call('ZADD', KEYS[18], now + idem_ttl, canon .. '\n' .. id .. '\n' .. record)
  end
  return {'ok', tonumber(user), shown, rank, global_milestone, personal_milestone}
end

local replies = {}
for entry = 0, (#ARGV - HEAD) / FIELDS - 1 do
  local a = HEAD + entry * FIELDS
  local profile = {ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], ARGV[a + 8]}
  replies[entry + 1] = click(
    KEYS[COMMON + 1 + 2 * entry], KEYS[COMMON + 2 + 2 * entry], ARGV[a + 1], ARGV[a + 2],
    ARGV[a + 3], tonumber(ARGV[a + 4]), profile, ARGV[a + 9]
  )
end
if added > 0 then
  redis.call('INCRBY', KEYS[4], added)
  redis.call('INCRBY', KEYS[5], added)
  redis.call('HINCRBY', KEYS[6], math.floor(now / 60000) * 60, added)
  for i = 1, 4 do
    for value, clicks in pairs(tallies[i]) do
      redis.call('HINCRBY', KEYS[10 + i], value, clicks)
    end
  end
  for country, clicks in pairs(tallies[4]) do
    redis.call('ZINCRBY', KEYS[15], clicks, country)
  end
end
return replies
