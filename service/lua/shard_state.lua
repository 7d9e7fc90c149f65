-- One shard's part of a tick (service/shards.py), read at one instant: its share of
-- the global count and of the click total, its players, its top, and whether it
-- holds the whole truth (its epoch). The caller sums the shards and merges the tops;
-- presence and the tick clock come from state.lua on the hub.
--
-- KEYS: global board clicks_total epoch
-- ARGV: top_n
return {
  redis.call('GET', KEYS[1]) or '0',
  redis.call('ZCARD', KEYS[2]),
  redis.call('GET', KEYS[3]) or '0',
  redis.call('EXISTS', KEYS[4]),
  redis.call('ZREVRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES'),
}
