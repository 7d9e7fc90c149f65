-- Failed admin authentications from one address in its current window.
--
-- KEYS: the address's failure counter
-- Returns {failures, ms left in the window (negative when there is none)}
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
return {n, redis.call('PTTL', KEYS[1])}
