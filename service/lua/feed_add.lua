-- Append an entry to the activity feed and announce it to every instance, in one
-- round trip (a join waits for it). The message is spliced around the new stream
-- id, so the entry's JSON is never decoded here.
--
-- KEYS: activity stream
-- ARGV: max entries (approximate), entry JSON without id, channel,
--       message head (up to `"id":"`), message tail (from the closing quote on)
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4] .. id .. ARGV[5])
return id
