-- Display name, nonce, count and last announced milestone of each canonical name
-- (false when deleted), for a snapshot too large to read in one step.
--
-- KEYS: names nonces board milestone_personal
-- ARGV: canon...
local out = {}
for _, canon in ipairs(ARGV) do
  local display = redis.call('HGET', KEYS[1], canon)
  if display then
    table.insert(out, {display, redis.call('HGET', KEYS[2], canon) or '',
                       redis.call('ZSCORE', KEYS[3], display) or '0',
                       redis.call('HGET', KEYS[4], canon) or '0'})
  else
    table.insert(out, false)
  end
end
return out
