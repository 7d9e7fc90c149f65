-- One page of the leaderboard, with the rank of its first row. Ranks are
-- "competition" ranks: players with equal counts share a rank.
--
-- KEYS: board
-- ARGV: offset limit
local offset, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local rows = redis.call('ZREVRANGE', KEYS[1], offset, offset + limit - 1, 'WITHSCORES')
local first = 0
if #rows > 0 then
  first = redis.call('ZCOUNT', KEYS[1], '(' .. rows[2], '+inf') + 1
end
return {redis.call('ZCARD', KEYS[1]), first, rows}
