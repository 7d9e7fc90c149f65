-- The snapshot's consistent cut: everything changed since the last snapshot,
-- read at one instant, so global == sum(users) holds in SQL as well.
-- Changed names move to an in-flight set that stays until the SQL commit;
-- a snapshot that dies is retried from it, so no change is ever forgotten.
-- Each cut takes the next generation number and marks the in-flight sets as
-- its own: only its commit may empty them (drop_cut.lua), and SQL refuses a
-- generation that is not above the last one it committed.
--
-- One shard's keys only (one hash slot on a Redis Cluster); the snapshot job takes
-- every shard's cut and commits them together. The hub's global milestone is read
-- apart from the cuts (it only grows, so a later read is as good).
--
-- KEYS: epoch dirty dirty_inflight nonces names board global clicks_total minutes
--       tombstones tombstones_inflight generation inflight_owner milestone_personal
--       idempotency_new idempotency_inflight, then the breakdown hashes of the days wanted
-- ARGV: first_minute last_minute max_users
-- With more than max_users changed names, reading them all here would block Redis
-- for seconds: the users are then left out ('large'), for the caller to read in chunks.
local FIRST_BREAKDOWN = 17
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'restoring'}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SUNIONSTORE', KEYS[3], KEYS[3], KEYS[2])
  redis.call('DEL', KEYS[2])
end
if redis.call('EXISTS', KEYS[10]) == 1 then
  local pending = redis.call('HGETALL', KEYS[10])
  -- One field at a time: unpack() cannot spread more than a few thousand values.
  for i = 1, #pending, 2 do
    redis.call('HSET', KEYS[11], pending[i], pending[i + 1])
  end
  redis.call('DEL', KEYS[10])
end
-- Batch ids recorded since the last cut, with their first answers, until they expire.
if redis.call('EXISTS', KEYS[15]) == 1 then
  redis.call('ZUNIONSTORE', KEYS[16], 2, KEYS[16], KEYS[15], 'AGGREGATE', 'MAX')
  redis.call('DEL', KEYS[15])
end
local clock = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[16], '-inf', tonumber(clock[1]) * 1000)
local generation = redis.call('INCR', KEYS[12])
redis.call('SET', KEYS[13], generation)
local users, deleted = {}, {}
local large = redis.call('SCARD', KEYS[3]) > tonumber(ARGV[3])
local changed = {}
if not large then
  changed = redis.call('SMEMBERS', KEYS[3])
end
for _, canon in ipairs(changed) do
  local display = redis.call('HGET', KEYS[5], canon)
  if display then
    local count = redis.call('ZSCORE', KEYS[6], display) or '0'
    table.insert(users, canon)
    table.insert(users, display)
    table.insert(users, redis.call('HGET', KEYS[4], canon) or '')
    table.insert(users, count)
    table.insert(users, redis.call('HGET', KEYS[14], canon) or '0')
  else
    table.insert(deleted, canon)
  end
end
-- HMGET in chunks: Lua's unpack() cannot spread more than a few thousand values.
local minutes = {}
local first, last = tonumber(ARGV[1]), tonumber(ARGV[2])
for chunk = first, last, 60 * 1000 do
  local fields = {}
  for minute = chunk, math.min(last, chunk + 60 * 999), 60 do
    table.insert(fields, tostring(minute))
  end
  local values = redis.call('HMGET', KEYS[9], unpack(fields))
  for i, v in ipairs(values) do
    if v then
      table.insert(minutes, fields[i])
      table.insert(minutes, v)
    end
  end
end
local breakdowns = {}
for i = FIRST_BREAKDOWN, #KEYS do
  table.insert(breakdowns, redis.call('HGETALL', KEYS[i]))
end
local t = redis.call('TIME')
return {
  large and 'large' or 'ok',
  redis.call('GET', KEYS[7]) or '0',
  redis.call('GET', KEYS[8]) or '0',
  tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000),
  users,
  deleted,
  minutes,
  redis.call('HGETALL', KEYS[11]),
  breakdowns,
  generation,
  redis.call('ZRANGE', KEYS[16], 0, -1, 'WITHSCORES'),
}
