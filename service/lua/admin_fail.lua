-- Count a failed admin authentication from one address. The window starts with the
-- first failure and is not extended by later ones, and every instance sees the same
-- count.
--
-- KEYS: the address's failure counter
-- ARGV: window in ms
-- Returns {failures, ms left in the window}
local n = redis.call('INCR', KEYS[1])
if n == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return {n, redis.call('PTTL', KEYS[1])}
