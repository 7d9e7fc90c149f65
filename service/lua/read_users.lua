-- Display name, nonce, count and last announced milestone of each canonical name
-- (false when deleted), for a snapshot too large to read in one step; and the batch
-- ids these players recorded since the cut, read at the same instant as their counts,
-- so SQL holds a batch's id exactly when it holds that batch's clicks.
--
-- KEYS: names nonces board milestone_personal idempotency_new
-- ARGV: canon...
-- Returns {rows, ids}: ids as ZRANGE WITHSCORES gives them (member, expiry ms).
local out, wanted = {}, {}
for _, canon in ipairs(ARGV) do
  local display = redis.call('HGET', KEYS[1], canon)
  if display then
    wanted[canon] = true
    table.insert(out, {display, redis.call('HGET', KEYS[2], canon) or '',
                       redis.call('ZSCORE', KEYS[3], display) or '0',
                       redis.call('HGET', KEYS[4], canon) or '0'})
  else
    table.insert(out, false)
  end
end
-- Members are "canon\nid\nanswer". Only ids recorded since the cut are here: a few
-- seconds of clicks.
local ids = {}
local recorded = redis.call('ZRANGE', KEYS[5], 0, -1, 'WITHSCORES')
for i = 1, #recorded, 2 do
  local canon = string.match(recorded[i], '^([^\n]*)\n')
  if canon and wanted[canon] then
    table.insert(ids, recorded[i])
    table.insert(ids, recorded[i + 1])
  end
end
return {out, ids}
