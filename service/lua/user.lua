-- Display name, count and competition rank of the users with these canonical names.
--
-- KEYS: names board
-- ARGV: canon...
local out = {}
for _, canon in ipairs(ARGV) do
  local display = redis.call('HGET', KEYS[1], canon)
  if display then
    local count = redis.call('ZSCORE', KEYS[2], display) or '0'
    local rank = redis.call('ZCOUNT', KEYS[2], '(' .. count, '+inf') + 1
    table.insert(out, {display, count, rank})
  end
end
return out
